"""--compile: what `auto` decides, and one small compiled run against the same run eager."""

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from clearpeft.study.grid import load_grid
from clearpeft.train import TrainConfig, compile_decision, planned_batches, train


def test_auto_compiles_the_converged_protocol_and_not_a_smoke_run(monkeypatch, sst5, banking77):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # auto decides so on a CPU only
    sizes = {"sst5": len(sst5.train.labels), "banking77": len(banking77.train.labels)}
    runs = load_grid("experiments/converged.yaml")
    assert len(runs) >= 36
    for run in runs:
        cfg = run.config
        n_train = sizes[cfg.dataset] - round(cfg.dev_holdout * sizes[cfg.dataset])
        assert planned_batches(cfg, n_train) >= 2670 and compile_decision(cfg, planned_batches(cfg, n_train)), run
    smoke = TrainConfig(dataset="sst5", max_train_samples=512, epochs=3, bf16=True)
    assert planned_batches(smoke, 512) == 48 and not compile_decision(smoke, 48)
    long_fp32 = replace(runs[0].config, bf16=False)  # fp32 steps gain too little on a CPU to repay compiling
    assert not compile_decision(long_fp32, 10_000)
    assert compile_decision(replace(smoke, compile="on"), 48) and not compile_decision(replace(runs[0].config, compile="off"), 10_000)


@pytest.mark.slow
def test_a_compiled_run_reproduces_the_eager_run(tmp_path, monkeypatch, backbone_variant):
    """fp32, so that only the order of float operations differs: Inductor fuses them, and its dropout masks come
    from torch's generator (fallback_random), so the same seed draws the same masks. No warm-up epoch: routed
    from the start, the run compiles three graphs (gated steps, gated passes, evaluation without gates) instead
    of four: one cold compile fewer. The backbone's first layer of 6: the same model code in a sixth of the
    graph. Inductor's cache persists between test sessions (a cold one is most of this test's time); what it
    caches are the compiled kernels and graphs, which the run still executes."""
    cache = Path(os.environ.get("CLEARPEFT_CACHE", Path.home() / ".cache" / "clearpeft")) / "inductor-tests"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
    base = dict(dataset="sst5", model=str(backbone_variant(num_hidden_layers=1)), peft="lora", routing="clean", noise="symmetric:0.6", epochs=2, warmup_epochs=0,
                max_train_samples=64, max_eval_samples=64, batch_size=16, eval_passes=1, seed=0)
    eager = train(TrainConfig(**base, compile="off", out=str(tmp_path / "eager")), progress=False, log=lambda m: None)
    compiled = train(TrainConfig(**base, compile="on", out=str(tmp_path / "compiled")), progress=False,
                     log=lambda m: None)
    assert compiled["compiled"] is True and eager["compiled"] is False
    rows = [[json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("eager", "compiled")]
    for a, b in zip(*rows):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
        assert abs(b["test_acc"] - a["test_acc"]) <= 1 / 64 and abs(b["test_acc_routed"] - a["test_acc_routed"]) <= 1 / 64
        assert b["detect_auc"] == pytest.approx(a["detect_auc"], abs=0.02)
