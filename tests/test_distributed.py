"""Data-parallel CleaR on 2 CPU processes (gloo), launched with torchrun as a user would."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clearpeft.routing import CleanProbability
from clearpeft.train import TIMING_FIELDS

pytestmark = pytest.mark.slow
HELPERS = Path(__file__).parent / "helpers"


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
TORCHRUN_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HELPERS)}


def torchrun(*args, cwd=None):
    return subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, env=TORCHRUN_ENV, cwd=cwd, timeout=1800)


def test_gathered_pass_equals_one_process(tmp_path):
    sys.path.insert(0, str(HELPERS))
    from accelerate import Accelerator
    from dist_pass import per_sample_pass

    done = torchrun(str(HELPERS / "dist_pass.py"), str(tmp_path), "300")
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in (0, 1)]
    assert int(ranks[0]["world"]) == 2
    logits, losses, p = per_sample_pass(Accelerator(cpu=True), 300)
    # What must be equal is equal: both processes hold the same gathered arrays and route by the same p.
    for key in ("losses", "logits", "p"):
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key])
    two = ranks[0]
    assert two["losses"].shape == (300,)
    # The same fp32 forward passes on other thread counts (torchrun sets OMP_NUM_THREADS=1) sum in another
    # order: logits of size ~1-10 agree to a few float32 ulps, so to 1e-5 relative and absolute.
    np.testing.assert_allclose(two["losses"], losses, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(two["logits"], logits, rtol=1e-5, atol=1e-5)
    # p is a function of the losses: on the same losses it is the same (float64 EM, rounding only) ...
    np.testing.assert_allclose(CleanProbability(seed=0).fit(two["losses"]), two["p"], rtol=0, atol=1e-9)
    # ... and on losses that differ by delta it moves by at most slope x delta, where slope bounds the
    # posterior's change per unit of a loss; twice that covers the refit of the means and variances.
    delta = float(np.abs(two["losses"] - losses).max())
    slope = posterior_slope(losses)
    print(f"max |p difference| {np.abs(two['p'] - p).max():.2e}, bound {2 * slope * delta + 1e-9:.2e}")
    np.testing.assert_allclose(two["p"], p, rtol=0, atol=2 * slope * delta + 1e-9)
    assert 0.2 < p.mean() < 0.9 and p.std() > 0.1  # the GMM split the losses (no all-clean fallback)


def posterior_slope(losses: np.ndarray, h: float = 1e-4) -> float:
    """max over samples of |dp_i/dl_i| for the GMM fitted on ``losses`` (central differences, fit held fixed)."""
    estimator = CleanProbability(seed=0)
    estimator.fit(losses)
    gmm, lo, span = estimator.gmm, losses.min(), losses.max() - losses.min()
    clean = int(np.argmin(gmm.means_.ravel()))

    def posterior(x):
        return gmm.predict_proba(((x - lo) / span).reshape(-1, 1))[:, clean]

    return float(np.abs(posterior(losses + h) - posterior(losses - h)).max() / (2 * h))


def test_two_process_run_matches_one_process(tmp_path, backbone_variant, capsys):
    # Dropout off: the one source of randomness that differs between one process and two (each process has its
    # own dropout stream), so that the two runs can be compared closely.
    model = backbone_variant(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    # --routing clean: the routing is what this compares. With clean-auto (the default) this run stands down
    # (the fit after warm-up sits at 0.96 log K, on 1 and 2 processes alike) and trains as plain PEFT, whose
    # test accuracy at this learning rate drifted by 0.024 between 1 and 2 processes.
    flags = ["--dataset", "banking77", "--model", str(model), "--peft", "lora", "--routing", "clean",
             "--noise", "symmetric:0.2",
             "--epochs", "2", "--warmup-epochs", "1", "--max-train-samples", "512", "--max-eval-samples", "500",
             "--max-length", "32", "--lr", "1e-2", "--eval-passes", "1", "--seed", "0", "--json"]
    from clearpeft.cli import main

    assert main(["train", *flags, "--out", str(tmp_path / "one")]) == 0  # one process: this one
    one = json.loads(capsys.readouterr().out)
    multi = torchrun("-m", "clearpeft", "train", *flags, "--out", str(tmp_path / "two"))
    assert multi.returncode == 0, multi.stderr[-3000:]
    two = json.loads(multi.stdout)  # only rank 0 prints its summary
    print("one process:", one["peak_acc"], one["avg_acc"], " two processes:", two["peak_acc"], two["avg_acc"])
    assert one["peak_acc"] > 0.1  # the runs learn: chance on BANKING77 is 1/77
    # Two processes sum the gradients in another order (gloo all-reduce): after 2 epochs the weights differ in
    # the last float32 digits, which can flip only test samples whose top two logits are that close. Allow
    # 5 of the 500 (0.01); a real difference in what the runs do (a sample trained twice, gates that
    # depend on the process) moves accuracy by several points.
    assert abs(one["peak_acc"] - two["peak_acc"]) <= 0.01
    assert abs(one["avg_acc"] - two["avg_acc"]) <= 0.01
    run = tmp_path / "two"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2  # one writer
    # Gates are drawn per sample, so the routing is the same on one process and on two.
    singles = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(rows, singles):
        assert abs(a["gate_mean_clean"] - b["gate_mean_clean"]) < 1e-9  # the same draws: exactly equal
        # AUC ranks ~100 corrupted against ~400 clean samples by p; the rounding drift above can swap only pairs
        # whose p are within ~1e-5, a handful of the 40,000 pairs: far below 0.01.
        assert abs(a["detect_auc"] - b["detect_auc"]) < 0.01
    assert sorted(p.name for p in (run / "checkpoints" / "epoch-1").glob("random_states_*")) == [
        "random_states_0.pkl", "random_states_1.pkl"]
    assert (run / "summary.json").exists() and (run / "clean_probs.csv").exists()


def test_two_process_run_killed_and_resumed_matches_uninterrupted(tmp_path):
    """kill -9 of the whole 2-process job in its last epoch, then --resume: the same metrics as a run never
    interrupted (every process restores its own random state from the checkpoint)."""
    import signal
    import time

    import psutil

    flags = ["--peft", "lora", "--noise", "symmetric:0.6", "--epochs", "2", "--warmup-epochs", "1",
             "--max-train-samples", "256", "--max-eval-samples", "128", "--max-length", "32", "--seed", "0", "--json"]
    whole = torchrun("-m", "clearpeft", "train", *flags, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    cut = tmp_path / "cut"
    job = subprocess.Popen([*TORCHRUN, "-m", "clearpeft", "train", *flags, "--out", str(cut)], env=TORCHRUN_ENV,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline:  # wait for the routed steps of the last epoch
        status = json.loads((cut / "status.json").read_text()) if (cut / "status.json").exists() else {}
        if status.get("epoch") == 1 and status.get("phase") == "train":
            break
        time.sleep(0.2)
    # torchrun runs its workers in sessions of their own: kill them all, as a crash of the machine would.
    for process in [*psutil.Process(job.pid).children(recursive=True), psutil.Process(job.pid)]:
        process.send_signal(signal.SIGKILL)
    job.wait()
    resumed = torchrun("-m", "clearpeft", "train", *flags, "--out", str(cut), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    def rows(run):
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS}
                for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert "resuming after epoch 1" in resumed.stderr
    assert len(rows(cut)) == 2 and rows(cut) == rows(tmp_path / "whole")
