"""Kill a run with SIGKILL after a checkpoint, resume it, and get the metrics of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow
TIMING = {"epoch_seconds", "step_seconds", "pass_seconds", "eval_seconds"}


def command(out, *extra):
    return [sys.executable, "-m", "clearpeft", "train", "--dataset", "sst5", "--peft", "adapter", "--noise",
            "symmetric:0.6", "--routing", "clean", "--epochs", "3", "--warmup-epochs", "1", "--max-train-samples",
            "96", "--max-eval-samples", "48", "--batch-size", "16", "--seed", "3", "--out", str(out), "--json",
            *extra]


def rows(run):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_kill_and_resume_matches_uninterrupted(tmp_path):
    whole = subprocess.run(command(tmp_path / "whole"), capture_output=True, text=True, timeout=900)
    assert whole.returncode == 0, whole.stderr[-2000:]

    run = tmp_path / "killed"
    proc = subprocess.Popen(command(run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (run / "checkpoints" / "epoch-0").exists():  # killed during the epoch after the first checkpoint
        assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "summary.json").exists()

    again = subprocess.run(command(run, "--resume"), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming after epoch" in again.stderr
    assert rows(run) == rows(tmp_path / "whole")
    assert json.loads(again.stdout)["peak_acc"] == json.loads(whole.stdout)["peak_acc"]


def test_damaged_checkpoint_falls_back_to_the_previous(tmp_path):
    run = tmp_path / "run"
    first = subprocess.run(command(run), capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    reference = rows(run)
    newest = run / "checkpoints" / "epoch-2"
    weights = next(newest.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    # Pretend the run stopped after epoch 2's checkpoint was written but before the summary.
    (run / "summary.json").unlink()
    again = subprocess.run(command(run, "--resume"), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "damaged" in again.stderr and "resuming after epoch 2" in again.stderr
    assert rows(run) == reference
