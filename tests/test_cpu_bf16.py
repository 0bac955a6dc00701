"""--bf16 on a CPU without native bf16 warns once, and still trains in bf16 (no silent fallback)."""

from pathlib import Path

import pytest
import torch

from clearpeft import train as train_module
from clearpeft.config import TrainConfig


def test_native_bf16_follows_the_cpu_flags():
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else None
    if flags is None:
        pytest.skip("no /proc/cpuinfo")
    assert train_module.native_bf16_cpu() == ("avx512_bf16" in flags or "amx_bf16" in flags)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is for CPUs")
@pytest.mark.parametrize("native", [False, True])
def test_bf16_without_native_support_warns_once(tmp_path, monkeypatch, native):
    monkeypatch.setattr(train_module, "native_bf16_cpu", lambda: native)
    lines = []
    cfg = TrainConfig.from_mapping({"dataset": "sst5", "routing": "none", "epochs": 1, "max_train_samples": 32,
                                    "max_eval_samples": 16, "max_length": 16, "bf16": True, "compile": "off",
                                    "out": str(tmp_path / "run")})
    summary = train_module.train(cfg, progress=False, log=lines.append)
    warnings = [line for line in lines if "without native bf16" in line]
    assert len(warnings) == (0 if native else 1)
    assert summary["epochs"] == 1


def test_runs_of_either_precision_follow_each_other_in_one_process(tmp_path):
    """fit() in a notebook, once in fp32 and then with bf16: accelerate keeps one precision per process,
    and the second run must get the one it asks for instead of an error."""
    from accelerate.state import AcceleratorState

    for n, bf16 in enumerate([False, True, False]):
        cfg = TrainConfig.from_mapping({"dataset": "sst5", "routing": "none", "epochs": 1, "max_train_samples": 32,
                                        "max_eval_samples": 16, "max_length": 16, "bf16": bf16, "compile": "off",
                                        "out": str(tmp_path / f"run{n}")})
        assert train_module.train(cfg, progress=False, log=lambda m: None)["epochs"] == 1
        assert AcceleratorState().mixed_precision == ("bf16" if bf16 else "no")
