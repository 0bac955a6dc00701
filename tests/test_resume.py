"""Kill a run with SIGKILL at chosen moments, resume it, and get the metrics of an uninterrupted run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from clearpeft.train import TIMING_FIELDS

pytestmark = pytest.mark.slow


def command(out, *extra):
    return [sys.executable, "-m", "clearpeft", "train", "--dataset", "sst5", "--peft", "adapter", "--noise",
            "symmetric:0.6", "--routing", "clean", "--epochs", "3", "--warmup-epochs", "2", "--max-train-samples",
            "160", "--max-eval-samples", "48", "--batch-size", "16", "--max-length", "32", "--seed", "3",
            "--out", str(out), "--json", *extra]


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


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """One uninterrupted run, the reference of both tests (and the damaged test's starting point)."""
    run = tmp_path_factory.mktemp("resume") / "whole"
    done = subprocess.run(command(run), capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    return run, json.loads(done.stdout)


def test_kill_at_three_moments_and_resume_matches_uninterrupted(tmp_path, whole):
    reference, summary = whole

    run = tmp_path / "killed"
    moments = [(1, "train", 1.0),   # a training step during warm-up
               (2, "train", 1.0),   # a routed training step after warm-up
               (2, "pass", 0.05)]    # the clean-probability pass of that first routed epoch
    for i, (epoch, phase, delay) in enumerate(moments):
        proc = subprocess.Popen(command(run, *(["--resume"] if i else [])), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        kill_when(run, proc, epoch, phase, delay)
        assert not (run / "summary.json").exists()
    again = subprocess.run(command(run, "--resume"), capture_output=True, text=True, timeout=1800)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming after epoch 2" in again.stderr
    assert rows(run) == rows(reference)
    assert json.loads(again.stdout)["avg_acc"] == summary["avg_acc"]


def test_damaged_checkpoint_falls_back_to_the_previous(tmp_path, whole):
    run = tmp_path / "run"
    shutil.copytree(whole[0], run)
    reference = rows(run)
    newest = run / "checkpoints" / "epoch-2"
    weights = next(newest.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    (run / "summary.json").unlink()  # as if killed after the last checkpoint, before the summary
    again = subprocess.run(command(run, "--resume"), capture_output=True, text=True, timeout=1800)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "damaged" in again.stderr and "resuming after epoch 2" in again.stderr
    assert rows(run) == reference
