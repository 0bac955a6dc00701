"""One declarative TrainConfig: every entry point (train --config, train flags, a grid cell, fit(**options))
converts and checks a value the same way, before any data is read."""

import json

import pytest

import clearpeft
from clearpeft import cli
from clearpeft.config import Interval, TrainConfig
from clearpeft.errors import UserError
from clearpeft.study.grid import load_grid

# option: value as a YAML file would hold it -> a fragment of the one-line error
BAD = {
    "epochs: ten": ("epochs", "ten", "--epochs must be an integer, got 'ten'"),
    "gamma: 2": ("gamma", 2, "--gamma must be in [0, 1], got 2"),
    "noise: symmetric:1.5": ("noise", "symmetric:1.5", "outside [0, 1]"),
    "peft: lorra": ("peft", "lorra", "--peft must be lora, prompt, adapter, bitfit or full, got 'lorra'"),
    "batch_size: 0": ("batch_size", 0, "--batch-size must be at least 1, got 0"),
    "refit_flag: both": ("refit_flag", "both", "--refit-flag must be clean-prob or report, got 'both'"),
}
# A data set that does not exist: a bad option must be refused before the data would be read.
MISSING_DATA = "/nonexistent/data.csv"


def run_cli(capsys, argv):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, [line for line in captured.err.splitlines() if line.strip()]


@pytest.mark.parametrize("case", BAD)
def test_train_config_file_refuses_in_one_line(tmp_path, capsys, case):
    key, value, fragment = BAD[case]
    config = tmp_path / "c.yaml"
    config.write_text(f"dataset: {MISSING_DATA}\n{key}: {value}\n")
    code, _, err = run_cli(capsys, ["train", "--config", str(config), "--out", str(tmp_path / "run")])
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"clearpeft: error: config {config}: ") and fragment in err[0], err
    assert not (tmp_path / "run").exists()


def test_a_run_folder_name_the_os_cannot_take_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / ("r" * 256)  # one byte over NAME_MAX
    code, _, err = run_cli(capsys, ["train", "--dataset", MISSING_DATA, "--out", str(out)])
    assert code == 2 and len(err) == 1 and "a name longer than 255 bytes" in err[0], err
    assert TrainConfig(out=str(tmp_path / ("r" * 255))).out.endswith("r" * 255)


@pytest.mark.parametrize("case", BAD)
def test_train_flags_refuse_in_one_line(tmp_path, capsys, case):
    key, value, fragment = BAD[case]
    code, _, err = run_cli(capsys, ["train", "--dataset", MISSING_DATA, f"--{key.replace('_', '-')}", str(value),
                                    "--out", str(tmp_path / "run")])
    assert code == 2 and len(err) == 1 and fragment in err[0], err


@pytest.mark.parametrize("case", BAD)
def test_grid_cell_refuses_in_one_line(tmp_path, case):
    key, value, fragment = BAD[case]
    axes = {"datasets": "[sst5]", "noises": "[clean]", "methods": "[lora]", "routings": "[none]", "seeds": "[0]"}
    base = ""
    if key == "noise":
        axes["noises"] = f"[{value}]"
    elif key == "peft":
        axes["methods"] = f"[{value}]"
        fragment = "unknown method 'lorra'"  # a cell's method is named by the grid's key, not the flag
    else:
        base = f"base: {{{key}: {value}}}\n"
    path = tmp_path / "grid.yaml"
    path.write_text(base + "".join(f"{k}: {v}\n" for k, v in axes.items()))
    with pytest.raises(UserError) as info:
        load_grid(path)
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("case", BAD)
def test_fit_refuses_before_reading_data(tmp_path, case):
    key, value, fragment = BAD[case]
    with pytest.raises(UserError) as info:
        clearpeft.fit(MISSING_DATA, out=tmp_path / "run", **{key: value})
    assert str(info.value).startswith("fit(): ") and fragment in str(info.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value, expected", [("1e-3", 1e-3), (1e-3, 1e-3), (1, 1.0), ("2e-4 ", 2e-4)])
def test_number_like_text_is_a_number_everywhere(tmp_path, value, expected):
    assert TrainConfig.from_mapping({"lr": value}).lr == expected
    path = tmp_path / "grid.yaml"
    path.write_text(f"base: {{lr: {value}, epochs: 2.0}}\ndatasets: [sst5]\nnoises: [clean]\nmethods: [lora]\n"
                    "routings: [none]\nseeds: [0]\n")
    (run,) = load_grid(path)
    assert run.config.lr == expected and run.config.epochs == 2 and isinstance(run.config.epochs, int)


@pytest.mark.parametrize("mapping, fragment", [
    ({"epochs": 2.5}, "--epochs must be an integer, got 2.5"),
    ({"epochs": True}, "--epochs must be an integer, got True"),
    ({"bf16": "yes"}, "--bf16 must be true or false, got 'yes'"),
    ({"noise": 0.6}, "--noise must be text, got 0.6"),
    ({"lr": "fast"}, "--lr must be a number, got 'fast'"),
    ({"lr": 0}, "--lr must be greater than 0, got 0.0"),
    ({"lora_dropout": 1.0}, "--lora-dropout must be in [0, 1), got 1.0"),
    ({"max_train_samples": 0}, "--max-train-samples must be at least 1, got 0"),
    ({"epoch": 3}, "unknown option 'epoch'"),
])
def test_from_mapping_names_option_value_and_rule(mapping, fragment):
    with pytest.raises(UserError) as info:
        TrainConfig.from_mapping(mapping, "somewhere")
    assert str(info.value) == f"somewhere: {fragment}" if fragment.startswith("--") else fragment in str(info.value)


def test_per_method_defaults_are_checked_once_filled():
    resolved = TrainConfig.from_mapping({"peft": "prompt"}).resolved()
    assert resolved.lr > 0 and 0 <= resolved.gamma <= 1 and resolved.ensemble >= 1
    with pytest.raises(UserError, match="full fine-tuning has no PEFT modules to route"):
        TrainConfig.from_mapping({"peft": "full", "routing": "clean"}).resolved()


def test_method_options_default_to_the_method_configs():
    from clearpeft.peft import method_config

    config = TrainConfig()
    lora, prompt, adapter = method_config("lora"), method_config("prompt"), method_config("adapter")
    assert (config.lora_rank, config.lora_alpha, config.lora_dropout) == (lora.rank, lora.alpha, lora.dropout)
    assert config.prompt_length == prompt.length and config.adapter_size == adapter.bottleneck


def test_interval_ends():
    assert Interval(0, 1).holds(0) and Interval(0, 1).holds(1) and not Interval(0, 1).holds(float("nan"))
    assert Interval(0, 1, "left").holds(0) and not Interval(0, 1, "left").holds(1)
    assert not Interval(0, None, "neither").holds(0) and Interval(0, None, "neither").holds(1e-9)
    assert str(Interval(0, 0.9)) == "in [0, 0.9]" and str(Interval(1)) == "at least 1"


def test_yaml_config_with_text_learning_rate_trains(tmp_path, capsys):
    """`lr: 1e-3` is text to PyYAML; the run trains with 0.001 and records it."""
    config = tmp_path / "c.yaml"
    config.write_text("dataset: sst5\npeft: lora\nrouting: none\nlr: 1e-3\nepochs: 1\nmax_train_samples: 64\n"
                      "max_eval_samples: 32\nmax_length: 32\n")
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, ["train", "--config", str(config), "--out", str(out), "--json"])
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["lr"] == 1e-3
    summary = json.loads(stdout)
    assert summary["epochs"] == 1 and 0.0 <= summary["last_acc"] <= 1.0
