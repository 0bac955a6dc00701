"""Kill a run with SIGKILL at chosen moments, resume it, and get the metrics of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from clearpeft.train import TIMING_FIELDS

pytestmark = pytest.mark.slow


def command(out, *extra):
    return [sys.executable, "-m", "clearpeft", "train", "--dataset", "sst5", "--peft", "adapter", "--noise",
            "symmetric:0.6", "--routing", "clean", "--epochs", "4", "--warmup-epochs", "2", "--max-train-samples",
            "160", "--max-eval-samples", "48", "--batch-size", "16", "--seed", "3", "--out", str(out), "--json",
            *extra]


def rows(run):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def kill_when(run, proc, epoch, phase, delay=0.0):
    """SIGKILL the run once status.json reports ``phase`` of ``epoch`` (plus ``delay`` seconds)."""
    deadline = time.time() + 600
    while True:
        assert proc.poll() is None and time.time() < deadline, f"run ended before epoch {epoch} {phase}"
        try:
            status = json.loads((run / "status.json").read_text())
        except (OSError, ValueError):
            status = {}
        if status.get("epoch") == epoch and status.get("phase") == phase:
            break
        time.sleep(0.01)
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_kill_at_three_moments_and_resume_matches_uninterrupted(tmp_path):
    whole = subprocess.run(command(tmp_path / "whole"), capture_output=True, text=True, timeout=900)
    assert whole.returncode == 0, whole.stderr[-2000:]

    run = tmp_path / "killed"
    moments = [(1, "train", 1.0),   # a training step during warm-up
               (2, "pass", 0.05),    # the clean-probability pass of the first routed epoch
               (3, "train", 1.0)]   # a routed training step after warm-up
    for i, (epoch, phase, delay) in enumerate(moments):
        proc = subprocess.Popen(command(run, *(["--resume"] if i else [])), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        kill_when(run, proc, epoch, phase, delay)
        assert not (run / "summary.json").exists()
    again = subprocess.run(command(run, "--resume"), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming after epoch 3" in again.stderr
    assert rows(run) == rows(tmp_path / "whole")
    assert json.loads(again.stdout)["avg_acc"] == json.loads(whole.stdout)["avg_acc"]


def test_damaged_checkpoint_falls_back_to_the_previous(tmp_path):
    run = tmp_path / "run"
    first = subprocess.run(command(run), capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    reference = rows(run)
    newest = run / "checkpoints" / "epoch-3"
    weights = next(newest.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    (run / "summary.json").unlink()  # as if killed after the last checkpoint, before the summary
    again = subprocess.run(command(run, "--resume"), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "damaged" in again.stderr and "resuming after epoch 3" in again.stderr
    assert rows(run) == reference
