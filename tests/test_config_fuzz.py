"""Fuzzing every entry point of the options with Hypothesis: a CLI flag (cli.main), a key of a --config YAML file,
a grid cell, and a keyword of clearpeft.fit. A value of the wrong type or out of its declared range is one
UserError (exit 2 on the CLI) before any data is loaded; a value in range reaches training as the number it
says; nothing else (a TypeError, an OverflowError, a ValueError from a path) ever comes out.

Training is replaced by a stub that raises Reached, so no example loads data or a model: each runs in
milliseconds. The oracle reads each field's declared types and constraint (config.TrainConfig), not the code
that checks them."""

import math
import tempfile
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

import clearpeft
import clearpeft.data
import clearpeft.train
from clearpeft import cli
from clearpeft.config import Interval, TrainConfig, field_kinds
from clearpeft.errors import UserError
from clearpeft.study.grid import GRID_OWNED, load_grid

FIELDS = {f.name: f for f in fields(TrainConfig)}
PATH_FIELDS = {"out", "data_dir", "test_file", "model", "dataset"}
INT64 = 2**63 - 1
FUZZ = settings(max_examples=80, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SEEN = {"examples": 0, "refused": 0, "reached": 0}  # what the fuzz tried (printed by -s, counted by the lead)


@pytest.fixture(scope="module", autouse=True)
def tally():
    yield
    print(f"\nconfig fuzz: {SEEN['examples']} values tried, {SEEN['refused']} refused, {SEEN['reached']} accepted")


class Reached(Exception):
    """The stub of clearpeft.train.train: the options were accepted, and training would start now."""

    def __init__(self, cfg):
        super().__init__("reached training")
        self.cfg = cfg


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    def train(cfg, **kwargs):
        raise Reached(cfg)

    def load_data(*args, **kwargs):
        raise AssertionError("data was loaded before the options were checked")

    monkeypatch.setattr(clearpeft.train, "train", train)
    monkeypatch.setattr(clearpeft.data, "load_data", load_data)
    monkeypatch.setattr(clearpeft.data.loaders, "load_data", load_data)


def oracle(name, value):
    """(valid, value as the config holds it) by the field's declared types and constraint; valid None where
    this test does not decide (free text, or the noise parser's grammar)."""
    f = FIELDS[name]
    kinds, constraint = field_kinds(f), f.metadata["constraint"]
    if value is None:
        return type(None) in kinds, None
    if bool in kinds:
        return isinstance(value, bool), value
    if int in kinds or float in kinds:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            return False, None
        number = value
        if isinstance(value, str):
            try:
                number = int(value.strip())
            except ValueError:
                try:
                    number = float(value.strip())
                except ValueError:
                    return False, None
        if int in kinds:
            if isinstance(number, float):
                if not math.isfinite(number) or not number.is_integer():
                    return False, None
                number = int(number)
            if abs(number) > INT64:
                return False, None
        else:
            try:
                number = float(number)
            except OverflowError:
                return False, None
            if not math.isfinite(number):
                return False, None
        return constraint.holds(number), number
    if not isinstance(value, str):
        return False, None
    if isinstance(constraint, tuple):
        return value in constraint, value
    if name in PATH_FIELDS and "\x00" in value:
        return False, None
    return None, value


def settle(name, value, run):
    """Run one entry point and hold its outcome against the oracle."""
    valid, expected = oracle(name, value)
    SEEN["examples"] += 1
    try:
        code = run()
    except Reached as reached:
        SEEN["reached"] += 1
        assert valid is not False, f"{name}={value!r} was accepted"
        if valid and name not in ("out",):
            held = getattr(reached.cfg, name)
            assert held == expected and type(held) is type(expected), (name, value, held)
        return
    except UserError as exc:
        code = 2
        assert "\n" not in str(exc), str(exc)
    if code is None:  # load_grid returned its runs
        assert valid is not False, f"{name}={value!r} was accepted by the grid"
        return
    SEEN["refused"] += 1
    assert code == 2, (name, value, code)
    assert valid is not True, f"{name}={value!r} was refused"


NUMBERS = st.one_of(st.integers(-3, 3), st.integers(-2**70, 2**70), st.integers(10**300, 10**400),
                    st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1))
SPECIAL = st.sampled_from(["1e-3", " 5 ", "nan", "inf", "-inf", "-1", "1e400", "0x10", "3.0", "2.5", "", "1_000",
                           "9007199254740993", "18446744073709551616", "clean", "symmetric:0.6", "symmetric:nan",
                           "asymmetric:1e400", "lora", "full", "none", "clean-auto", "sst5", "a\x00b", "data.csv",
                           "on", "linear", "true"])
TEXT = st.one_of(SPECIAL, st.text(max_size=12), NUMBERS.map(str))
ANY = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT, st.lists(st.integers(), max_size=2),
                st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))


def extra_for(name, value):
    """Options that make an in-range value a whole config: full fine-tuning routes nothing."""
    return {"routing": "none"} if name == "peft" and value == "full" else {}


@FUZZ
@given(name=st.sampled_from(sorted(set(FIELDS) - {"dataset"})), value=ANY)
def test_fit_keywords(name, value):
    out = {"out": value} if name == "out" else {"out": "/nonexistent/fuzz-run"}
    options = {} if name == "out" else {name: value}

    def run():
        clearpeft.fit("sst5", **out, **options, **extra_for(name, value))

    settle(name, value, run)


@FUZZ
@given(name=st.sampled_from(sorted(n for n, f in FIELDS.items() if not isinstance(f.default, bool))), value=TEXT)
def test_cli_flags(name, value):
    flag = "--" + name.replace("_", "-")
    argv = ["train", f"{flag}={value}"] + ([] if name == "out" else ["--out", "/nonexistent/fuzz-run"])
    argv += [f"--{k}={v}" for k, v in extra_for(name, value).items()]
    settle(name, value, lambda: cli.main(argv))


@FUZZ
@given(name=st.sampled_from(sorted(FIELDS)), value=ANY)
def test_config_file_values(name, value):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.yaml"
        path.write_text(yaml.safe_dump({name: value, **extra_for(name, value)}))
        settle(name, value, lambda: cli.main(["train", "--config", str(path), "--out", f"{folder}/run"]))


AXIS_OF = {"seed": "seeds", "reg_weight": "reg_weights", "noise": "noises", "peft": "methods", "routing": "routings",
           "dataset": "datasets"}


@FUZZ
@given(name=st.sampled_from(sorted(set(FIELDS) - {"out"})), value=ANY)
def test_grid_cells(name, value):
    spec = {"datasets": ["sst5"], "noises": ["clean"], "methods": ["lora"], "routings": ["clean"], "seeds": [0]}
    if name in AXIS_OF:  # the cell's own keys come from the axes
        spec[AXIS_OF[name]] = [value]
        if name == "peft":
            spec["routings"] = ["none"]
    else:
        assert name not in GRID_OWNED
        spec["base"] = {name: value}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "grid.yaml"
        path.write_text(yaml.safe_dump(spec))

        def run():
            load_grid(path)  # every cell's config is built and checked here; None: accepted

        if name in ("noise", "peft", "routing", "dataset"):  # a cell's text keys: refused or taken, no crash
            try:
                run()
            except UserError as exc:
                assert "\n" not in str(exc)
            return
        settle(name, value, run)


def test_the_oracle_reads_the_declared_constraints():
    """A few fixed points, so that a fuzz passing with a broken oracle would show here."""
    assert oracle("epochs", "3") == (True, 3) and oracle("epochs", 0)[0] is False
    assert oracle("lr", "1e-3") == (True, 1e-3) and oracle("lr", float("inf"))[0] is False
    assert oracle("seed", 2**32)[0] is False and oracle("bf16", 1)[0] is False
    assert oracle("peft", "lorra")[0] is False and oracle("out", "a\x00b")[0] is False
    assert isinstance(FIELDS["gamma"].metadata["constraint"], Interval)


@pytest.mark.parametrize("name, value, fragment", [
    ("epochs", 10**400, "--epochs must be an integer of at most 9223372036854775807"),
    ("lr", "1e400", "--lr must be a finite number, got '1e400'"),
    ("gamma", float("nan"), "--gamma must be a finite number, got nan"),
    ("seed", 2**40, "--seed must be in [0, 4294967295]"),
    ("out", "runs/a\x00b", "holds a NUL byte"),
    ("dataset", "imdb", "unknown data set 'imdb'"),
], ids=["huge-int", "inf-text", "nan", "big-seed", "nul-path", "unknown-data"])
def test_found_by_the_fuzz(tmp_path, name, value, fragment):
    """Values that once crashed (OverflowError, a seed torch cannot take, ValueError: embedded null byte) or ran
    (an infinite learning rate, a data set name checked only when loading)."""
    options = {"out": tmp_path / "run"}
    if name != "dataset":
        options[name] = value
    with pytest.raises(UserError) as info:
        clearpeft.fit(value if name == "dataset" else "sst5", **options)
    assert fragment in str(info.value) and not (tmp_path / "run").exists()


def test_numbers_from_numpy_and_exact_integers():
    import numpy as np

    cfg = TrainConfig.from_mapping({"epochs": np.int64(3), "lr": np.float32(0.5), "bf16": np.bool_(True),
                                    "max_train_samples": "9007199254740993"})
    assert (cfg.epochs, cfg.lr, cfg.bf16, cfg.max_train_samples) == (3, 0.5, True, 9007199254740993)
    assert type(cfg.epochs) is int and type(cfg.bf16) is bool
