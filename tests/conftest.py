"""Shared fixtures: the real benchmark data in ../shared/data, and offline hub access."""

import os
from pathlib import Path

import pytest

# Before anything imports transformers or datasets, which read these at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on this 2-core machine: one thread each (and in the processes tests start),
    # not two each fighting over the cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
DATA_DIR = Path(os.environ.get("CLEARPEFT_DATA") or Path(__file__).parents[2] / "shared" / "data")
if DATA_DIR.is_dir():
    # Tests that load "sst5" by name without a data_dir find the local copy instead of the hub.
    os.environ.setdefault("CLEARPEFT_DATA", str(DATA_DIR))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "sst5").is_dir() or not (DATA_DIR / "banking77").is_dir():
        pytest.fail(f"benchmark data not found in {DATA_DIR}: set CLEARPEFT_DATA")
    return DATA_DIR


@pytest.fixture(scope="session")
def sst5(data_dir):
    from clearpeft.data import load_data

    return load_data("sst5", str(data_dir))


@pytest.fixture(scope="session")
def banking77(data_dir):
    from clearpeft.data import load_data

    return load_data("banking77", str(data_dir))


@pytest.fixture
def backbone_variant(tmp_path):
    """variant(**config) -> a model folder: the default backbone's files linked, its config.json changed
    (dropout off, fewer layers: the layers kept load their pre-trained weights)."""
    import json

    from clearpeft.backbone import resolve_model

    def variant(**changes) -> Path:
        source = Path(resolve_model("default"))
        folder = tmp_path / "backbone-variant"
        folder.mkdir()
        for item in source.iterdir():
            if item.name != "config.json":
                (folder / item.name).symlink_to(item)
        config = json.loads((source / "config.json").read_text())
        config.update(changes)
        (folder / "config.json").write_text(json.dumps(config))
        return folder

    return variant
