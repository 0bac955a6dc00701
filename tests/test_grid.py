"""Experiment grids (config checks, cells, skip and resume after SIGKILL, results.csv) and the report."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from clearpeft import runs
from clearpeft.cli import main
from clearpeft.errors import UserError
from clearpeft.study.grid import RESULT_COLUMNS, load_grid
from clearpeft.study.report import write_report
from clearpeft.peft import training_defaults
from clearpeft.train import TrainConfig, config_defaults

REPO = Path(__file__).parents[1]
AXES = "datasets: [sst5]\nnoises: [symmetric:0.6]\nmethods: [bitfit]\nroutings: [none, clean]\nseeds: [0]\n"
TINY = ("base: {max_train_samples: 48, max_eval_samples: 24, epochs: 2, warmup_epochs: 1, batch_size: 16, "
        "max_length: 32}\n" + AXES)
FIRST_RUN = Path("sst5/symmetric-0.6/bitfit-none-reg0-s0")
SECOND_RUN = Path("sst5/symmetric-0.6/bitfit-clean-reg1-s0")


def write(tmp_path, text, name="grid.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------- checking the file

BAD = {
    "unknown top-level key": ("method: [lora]\n" + AXES, "unknown key(s) method"),
    "unknown base field": ("base: {epoch: 3}\n" + AXES, "unknown option 'epoch'"),
    "bad value": ("base: {epochs: 0}\n" + AXES, "--epochs must be at least 1"),
    "wrong type": ("base: {epochs: six}\n" + AXES, "--epochs must be an integer, got 'six'"),
    "base sets an axis field": ("base: {seed: 3}\n" + AXES, "seed is set by the grid"),
    "unknown method": (AXES.replace("[bitfit]", "[lorra]"), "unknown method 'lorra'"),
    "unknown routing": (AXES.replace("[none, clean]", "[none, clear]"), "unknown routing 'clear'"),
    "bad noise": (AXES.replace("symmetric:0.6", "symmetric:1.5"), "outside [0, 1]"),
    "unknown data set": (AXES.replace("[sst5]", "[imdb]"), "unknown data set 'imdb'"),
    "empty axis": (AXES.replace("[bitfit]", "[]"), "methods is empty"),
    "missing axis": (AXES.replace("seeds: [0]\n", ""), "missing axis seeds"),
    "negative reg weight": (AXES + "reg_weights: [-1]\n", "--reg-weight must be at least 0, got -1"),
    "override sets an axis field": (AXES + "overrides: [{match: {}, set: {routing: none}}]\n",
                                    "routing is set by the grid"),
    "override without set": (AXES + "overrides: [{match: {method: bitfit}}]\n", "`set` is missing"),
    "override matches an unknown field": (AXES + "overrides: [{match: {epoch: 2}, set: {lr: 0.1}}]\n",
                                          "unknown option 'epoch'"),
    "override gives a bad value": (AXES + "overrides: [{match: {routing: clean}, set: {gamma: 1.5}}]\n",
                                   "--gamma must be in [0, 1], got 1.5"),
    "extra with an unknown key": (AXES + "extra: [{dataset: sst5, noise: clean, method: lora, routing: none, "
                                  "lr: 1}]\n", "unknown key(s) lr"),
    "extra without routing": (AXES + "extra: [{dataset: sst5, noise: clean, method: lora}]\n", "missing routing"),
    "no cells": ("base: {epochs: 2}\n", "the grid has no cells"),
    "not a mapping": ("- a\n- b\n", "must be a mapping"),
    "invalid YAML": ("base: [epochs\n" + AXES, "is not valid YAML"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_config_is_one_user_error_line(tmp_path, case):
    text, fragment = BAD[case]
    with pytest.raises(UserError) as info:
        load_grid(write(tmp_path, text))
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="cannot read grid config"):
        load_grid(tmp_path / "nope.yaml")


def test_bad_config_through_the_cli_exits_2_with_one_line(tmp_path):
    path = write(tmp_path, "base: {epochs: 0}\n" + AXES)
    done = subprocess.run([sys.executable, "-m", "clearpeft", "grid", str(path), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 2
    assert done.stderr.startswith("clearpeft: error:") and "--epochs must be at least 1" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()  # checked before anything is written


@pytest.mark.parametrize("argv", [["grid", "{tmp}/missing.yaml"], ["report", "{tmp}"], ["grid"],
                                  ["report", "{tmp}", "--bogus"]])
def test_cli_errors_in_process(tmp_path, capsys, argv):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clearpeft: error:") and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- cells

def test_cells_nine_per_noise_full_unrouted_plain_unregularized(tmp_path):
    planned = load_grid(write(tmp_path, "datasets: [sst5]\nnoises: [clean, symmetric:0.60]\n"
                                        "methods: [full, adapter, bitfit, prompt, lora]\nroutings: [none, clean]\n"
                                        "seeds: [0]\nreg_weights: [0.5, 1]\n"))
    cells = [r.cell for r in planned]
    # per noise: full, 4 plain (reg 0 once, not per reg weight), 4 x 2 regularized CleaR
    assert len(cells) == 2 * (1 + 4 + 8)
    assert [c.noise for c in cells[:13]] == ["clean"] * 13 and cells[13].noise == "symmetric:0.6"
    assert {(c.routing, c.reg_weight) for c in cells if c.method == "full"} == {("none", 0.0)}
    assert {c.reg_weight for c in cells if c.routing == "none"} == {0.0}
    assert all(":" not in r.cell.folder and " " not in r.cell.folder for r in planned)
    assert planned[1].cell.folder == "sst5/clean/adapter-none-reg0-s0"
    assert planned[2].cell.folder == "sst5/clean/adapter-clean-reg0.5-s0"
    assert planned[2].config.gamma == 0.7 and planned[2].config.peft == "adapter"  # resolved defaults


def test_overrides_in_order_extra_cells_and_seed_order(tmp_path):
    planned = load_grid(write(tmp_path, """
base: {epochs: 4}
datasets: [sst5, banking77]
noises: [symmetric:0.6]
methods: [lora, bitfit]
routings: [clean]
seeds: [1, 0]
overrides:
  - match: {dataset: banking77}
    set: {dev_holdout: 0.1, epochs: 3}
  - match: {method: [lora], noise: symmetric:0.60}
    set: {lr: 1e-3}
  - match: {epochs: 3, method: lora}
    set: {gamma: 0.5}
extra:
  - {dataset: sst5, noise: symmetric:0.6, method: bitfit, routing: [clean, noisy], reg_weight: 0}
  - {dataset: sst5, noise: symmetric:0.6, method: lora, routing: clean}
"""))
    by_folder = {r.cell.folder: r for r in planned}
    assert [r.cell.seed for r in planned] == [1] * 6 + [0] * 6  # seed by seed, extras inside each seed
    assert len(by_folder) == 12  # the second extra repeats a grid cell: it runs once
    lora_b = by_folder["banking77/symmetric-0.6/lora-clean-reg1-s0"].config
    assert (lora_b.dev_holdout, lora_b.epochs, lora_b.lr, lora_b.gamma) == (0.1, 3, 1e-3, 0.5)
    lora_s = by_folder["sst5/symmetric-0.6/lora-clean-reg1-s0"].config
    assert (lora_s.dev_holdout, lora_s.epochs, lora_s.lr, lora_s.gamma) == (0.0, 4, 1e-3, 0.85)
    assert by_folder["sst5/symmetric-0.6/bitfit-clean-reg1-s0"].config.lr == training_defaults("bitfit")["lr"]
    assert by_folder["sst5/symmetric-0.6/bitfit-noisy-reg0-s1"].config.reg_weight == 0.0


@pytest.mark.parametrize("name, count", [("cpu.yaml", 70), ("paper.yaml", 447)])
def test_shipped_configs_load(name, count):
    planned = load_grid(REPO / "experiments" / name)
    assert len(planned) == count
    folders = {r.cell.folder for r in planned}
    for routing, reg in (("random", 1), ("clean", 0), ("deterministic", 0), ("random", 0), ("noisy", 0)):
        assert f"sst5/symmetric-0.6/adapter-{routing}-reg{reg}-s0" in folders  # paper Table 3
    assert any(r.cell.noise == "instance:0.6" for r in planned)
    assert not any(r.cell.noise.startswith("instance") and r.cell.dataset == "banking77" for r in planned)
    assert all(r.config.dev_holdout == (0.1 if r.cell.dataset == "banking77" else 0.0) for r in planned)


def test_converged_protocol_is_the_papers_regime_with_the_dev_choices():
    """experiments/converged.yaml (written by experiments/lr_sweep_full.py): full training sets, constant rate,
    the dev-chosen rate per data set and method and E per data set; P1 (60% symmetric) first, then P2 (clean)."""
    planned = load_grid(REPO / "experiments" / "converged.yaml")
    assert len(planned) == 102
    with open(REPO / "results" / "lr_sweep_full.csv", newline="") as handle:
        chosen = {(r["dataset"], r["method"]): float(r["lr"]) for r in csv.DictReader(handle)
                  if r["chosen"] == "True" and r["phase"] == "confirm"}
    assert len(chosen) == 10
    for run in planned:
        c = run.config
        assert c.lr_schedule == "constant" and c.max_train_samples is None and c.warmup_epochs == 3
        assert c.epochs == {"sst5": 10, "banking77": 11}[run.cell.dataset]
        assert c.lr == chosen[(run.cell.dataset, run.cell.method)]
    assert [r.cell.noise for r in planned[:18]] == ["symmetric:0.6"] * 18
    assert [r.cell.noise for r in planned[18:36]] == ["clean"] * 18
    # P3, last because the grid runs seed 0 first: seeds 1 and 2 of P1's 16 PEFT and CleaR-PEFT cells
    p1 = sorted((r.cell.dataset, r.cell.method, r.cell.routing) for r in planned[:18] if r.cell.method != "full")
    for seed in (1, 2):
        p3 = [r for r in planned[70:] if r.cell.seed == seed]
        assert sorted((r.cell.dataset, r.cell.method, r.cell.routing) for r in p3) == p1 and len(p1) == 16
        assert {r.cell.noise for r in p3} == {"symmetric:0.6"}
    assert len(planned[70:]) == 32


def test_clean_auto_cells_are_the_cpu_cells_with_the_guard():
    from dataclasses import replace

    cpu = {r.cell.folder: r.config for r in load_grid(REPO / "experiments" / "cpu.yaml")}
    planned = load_grid(REPO / "experiments" / "clean_auto.yaml")
    guarded, seeds = planned[:16], planned[16:]
    assert all(r.cell.routing == "clean-auto" and r.cell.seed == 0 for r in guarded)
    assert [r.cell.noise for r in guarded[:8]] == ["clean"] * 8
    # then seeds 1 and 2 of CleaR and clean-auto in the one cell where the guard fell below CleaR at seed 0
    assert sorted((r.cell.routing, r.cell.seed) for r in seeds) == [("clean", 1), ("clean", 2), ("clean-auto", 1),
                                                                    ("clean-auto", 2)]
    assert {(r.cell.dataset, r.cell.noise, r.cell.method) for r in seeds} == {("banking77", "symmetric:0.6", "lora")}
    for run in planned:
        folder = run.cell.folder.replace("clean-auto-reg1", "clean-reg1")
        clear = cpu[folder[:folder.rindex("-s")] + "-s0"]
        assert replace(clear, routing=run.cell.routing, seed=run.cell.seed, out=run.config.out) == run.config


def test_speed_configs_are_the_cpu_cells_with_one_setting_changed():
    from dataclasses import replace

    cpu = {r.cell.folder: r.config for r in load_grid(REPO / "experiments" / "cpu.yaml")}
    for name, change in (("fp32.yaml", {"bf16": False}), ("estimate_train.yaml", {"estimate_from": "train"})):
        planned = load_grid(REPO / "experiments" / "speed" / name)
        assert planned and all(r.cell.method == "lora" and r.cell.routing == "clean" for r in planned)
        for run in planned:
            assert replace(cpu[run.cell.folder], out=run.config.out, **change) == run.config


# ---------------------------------------------------------------- a real tiny grid

def grid_command(config, out):
    return [sys.executable, "-m", "clearpeft", "grid", str(config), "--out", str(out), "--json"]


# Every grid here runs on one thread: at the same thread count runs are bit-identical (another thread count sums
# in another order, which moves the fit statistics in the 7th digit), so any two of them can be compared.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def rows(results_dir):
    with open(results_dir / "results.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == RESULT_COLUMNS
        return [{k: v for k, v in r.items() if k not in ("train_seconds", "run_dir")} for r in reader]


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):
    """The tiny grid (bitfit, routing none and clean: 2 runs), run once without interruption."""
    root = tmp_path_factory.mktemp("grid")
    config = write(root, TINY)
    done = subprocess.run(grid_command(config, root / "whole"), capture_output=True, text=True, timeout=1800,
                          env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["finished"] == 2
    assert "[2/2 done]" in done.stderr and "ETA" in done.stderr
    return config, root / "whole"


def test_a_run_older_than_a_config_field_resumes_as_that_fields_default(tmp_path):
    """A field added to TrainConfig after a run was made is missing from its config.json: the run used the
    field's default, so resuming it with the default is the same run, and with another value it is not."""
    config = asdict(TrainConfig(out=str(tmp_path)))
    older = {k: v for k, v in config.items() if k != "gate_weighted_loss"}
    (tmp_path / runs.CONFIG).write_text(json.dumps(older))
    assert runs.check_run_dir(tmp_path, config, resume=True, overwrite=False, defaults=config_defaults()) == tmp_path
    with pytest.raises(UserError, match=r"different config \(gate_weighted_loss\)"):
        runs.check_run_dir(tmp_path, {**config, "gate_weighted_loss": True}, resume=True, overwrite=False,
                           defaults=config_defaults())


@pytest.mark.slow
def test_killed_grid_restarts_without_redoing_finished_runs(tiny_grid):
    config, whole = tiny_grid
    out = whole.parent / "killed"
    proc = subprocess.Popen(grid_command(config, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=ONE_THREAD)
    first = out / FIRST_RUN / "summary.json"
    second_status = out / SECOND_RUN / "status.json"
    deadline = time.time() + 600
    # Kill once the first run has finished and the second has checkpointed its first epoch, so that the
    # restart both skips a finished run and resumes a half-finished one.
    while not (first.exists() and second_status.exists() and '"epoch": 1' in second_status.read_text()):
        assert proc.poll() is None and time.time() < deadline, "grid ended before the moment to kill it"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished_at = first.stat().st_mtime_ns
    assert not (out / SECOND_RUN / "summary.json").exists()

    again = subprocess.run(grid_command(config, out), capture_output=True, text=True, timeout=1800, env=ONE_THREAD)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "2 runs, 1 already finished" in again.stderr
    assert "[2/2] resuming" in again.stderr and "resuming after epoch 1" in again.stderr
    assert first.stat().st_mtime_ns == finished_at  # the first run was not redone
    assert rows(out) == rows(whole) and len(rows(out)) == 2
    with open(out / "results.csv", newline="") as handle:
        assert [r["run_dir"] for r in csv.DictReader(handle)] == [str(FIRST_RUN), str(SECOND_RUN)]

    # A third start has nothing left to do; a changed config is refused, not silently reused.
    assert json.loads(subprocess.run(grid_command(config, out), capture_output=True, text=True,
                                     timeout=1800).stdout)["ran_now"] == 0
    changed = write(whole.parent, TINY.replace("epochs: 2", "epochs: 3"), "changed.yaml")
    refused = subprocess.run(grid_command(changed, out), capture_output=True, text=True, timeout=1800)
    assert refused.returncode == 2 and "different config (epochs)" in refused.stderr


@pytest.mark.slow
def test_workers_run_the_same_runs_in_processes_of_their_own(tiny_grid):
    """--workers 2 (for a GPU that one small run leaves idle) trains both cells at once and ends with the same
    results as the tiny grid run one after the other: each run's draws come from its own seed, not from the
    process."""
    config, whole = tiny_grid
    out = whole.parent / "workers2"
    done = subprocess.run([*grid_command(config, out), "--workers", "2"], capture_output=True, text=True,
                          timeout=1800, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["ran_now"] == 2 and "[2/2 done]" in done.stderr
    assert rows(out) == rows(whole)
    for run in (FIRST_RUN, SECOND_RUN):
        def lines(folder):
            return [{k: v for k, v in json.loads(line).items() if "seconds" not in k}
                    for line in (folder / run / "metrics.jsonl").read_text().splitlines()]

        assert lines(out) == lines(whole)
    bad = subprocess.run([*grid_command(config, out), "--workers", "0"], capture_output=True, text=True, timeout=1800)
    assert bad.returncode == 2 and "--workers must be at least 1" in bad.stderr


@pytest.mark.slow
def test_report_on_the_tiny_grid(tiny_grid, tmp_path):
    _, whole = tiny_grid
    result = write_report(whole, tmp_path / "docs" / "results.md", tmp_path / "docs" / "figures")
    text = (tmp_path / "docs" / "results.md").read_text()
    assert result["runs"] == 2
    assert "| Method | Clean Peak | Clean Avg | Sym 20% Peak |" in text
    assert "| Full fine-tuning | — |" in text  # not run
    assert "| Full fine-tuning | 53.4 | 51.3 |" in text  # paper Table 1
    assert "| sst5 | symmetric:0.6 | bitfit | clean | 1 | 0 |" in text  # dynamics of the CleaR run
    # Delivered: the epoch of the best dev accuracy, on dev labels with the grid's noise
    delivered = text.split("## What a user gets: Delivered")[1].split("## Inference mode")[0]
    assert delivered.count("| sst5 | symmetric:0.6 | bitfit |") == 2 and delivered.count("of 2 | noisy |") == 2
    with open(whole / "results.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            lines = [json.loads(line) for line in (whole / row["run_dir"] / "metrics.jsonl").read_text().splitlines()]
            dev = [m["dev_acc"] for m in lines]
            assert float(row["delivered_acc"]) == lines[dev.index(max(dev))]["test_acc"]
    for name in ("figure1_sst5.png", "figure4_sst5.png"):
        assert (tmp_path / "docs" / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](figures/{name})" in text


# ---------------------------------------------------------------- the report on synthetic results

def synthetic_results(root: Path, datasets=("sst5",), seeds=(0, 1)) -> Path:
    """A results folder as a grid writes it, with made-up curves: every table and figure has data."""
    cells = []
    for dataset in datasets:
        for noise in ("clean", "symmetric:0.6", "asymmetric:0.4", "instance:0.6"):
            cells += [(dataset, noise, "full", "none", 0.0)]
            cells += [(dataset, noise, m, r, 0.0 if r == "none" else 1.0)
                      for m in ("adapter", "bitfit", "prompt", "lora") for r in ("none", "clean")]
        cells += [(dataset, "symmetric:0.6", "adapter", r, reg) for r, reg in
                  (("random", 1.0), ("clean", 0.0), ("deterministic", 0.0), ("random", 0.0), ("noisy", 0.0))]
    lines = [",".join(RESULT_COLUMNS)]
    for i, (dataset, noise, method, routing, reg) in enumerate(cells):
        for seed in seeds:
            folder = f"{dataset}/{noise.replace(':', '-')}/{method}-{routing}-reg{reg:g}-s{seed}"
            (root / folder).mkdir(parents=True)
            routed = routing != "none"
            lift = 0.05 if routing == "clean" else 0.0
            metrics = [{"epoch": e, "test_acc": 0.3 + 0.04 * e + lift - 0.01 * seed - 0.003 * i,
                        "test_acc_routed": 0.28 + 0.04 * e + lift - 0.01 * seed - 0.003 * i,
                        "clean_learning": 0.35 + 0.1 * e + lift, "noisy_memorization": 0.05 + 0.08 * e - 2 * lift,
                        "train_loss": 1.6 - 0.2 * e, "detect_auc": float("nan") if noise == "clean" else 0.8,
                        "gate_mean_clean": 0.7 if routed else None, "gate_mean_corrupted": 0.3 if routed else None}
                       for e in range(4)]
            (root / folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
            (root / folder / "config.json").write_text(json.dumps(
                {"model": "default", "epochs": 4, "warmup_epochs": 2, "max_train_samples": None, "eval_passes": 1}))
            accs = [m["test_acc"] for m in metrics]
            lines.append(f"{dataset},{noise},{method},{routing},{reg},{seed},{accs[-1]},{max(accs)},{sum(accs) / 4},"
                         f"{accs[-1]},0.48,0.45,10.0,{folder}")
    (root / "results.csv").write_text("\n".join(lines) + "\n")
    return root


def test_report_has_every_table_and_figure(tmp_path):
    results = synthetic_results(tmp_path / "results", datasets=("sst5", "banking77"))
    (results / "analysis.md").write_text("CleaR helps here.\n")
    result = write_report(results, tmp_path / "report.md", tmp_path / "figures")
    text = (tmp_path / "report.md").read_text()
    assert "## What the numbers say\n\nCleaR helps here.\n" in text
    # 2 data sets x 21 routed cells x 2 seeds, each 2 points lower routed than all on
    assert "mean +2.0 points over 84 routed runs (all-on higher in 84)" in text
    assert sorted(Path(f).name for f in result["figures"]) == [
        "figure1_banking77.png", "figure1_sst5.png", "figure4_banking77.png", "figure4_sst5.png"]
    assert all(Path(f).read_bytes()[:4] == b"\x89PNG" for f in result["figures"])
    assert "Missing curves" not in text and "Skipped" not in text
    assert re.search(r"\| \**\d+\.\d ± \d+\.\d\** \|", text) and "**" in text  # two seeds; bold best
    for heading in ("## SST-5: label noise", "## BANKING77: label noise", "## SST-5: instance-dependent noise",
                    "## Ablation on SST-5, Sym 60%", "## Routing dynamics", "## CleaR against the same PEFT"):
        assert heading in text
    assert "| Full fine-tuning | 92.9 | 88.8 |" in text  # paper Table 2
    assert "| Full fine-tuning | 53.4 | 49.0 | 43.9 |" in text  # paper Table 5
    assert "| CleaR w/ Noisy Routing | noisy | 0 |" in text and "| 46.9 | 34.3 |" in text  # paper Table 3
    assert "| SST-5 | Sym 60% | Avg | BitFit |" in text and "| +7.6 |" in text  # the paper's CleaR gain
    # 36 routed runs per data set (4 noises x 4 CleaR + 5 ablations) x 2 seeds: one dynamics row each
    dynamics = text.split("## Routing dynamics")[1].split("## Figures")[0]
    assert dynamics.count("| sst5 |") == 2 * (16 + 5) and "| 0.800 | 0.800 | 0.700 | 0.300 |" in dynamics


def test_report_of_several_protocols_has_a_section_each(tmp_path, capsys):
    cpu = synthetic_results(tmp_path / "cpu", datasets=("sst5",))
    converged = synthetic_results(tmp_path / "converged", datasets=("banking77",), seeds=(0,))
    (converged / "analysis.md").write_text("# Title\n\n## Part\n\nCleaR helps here.\n")
    assert main(["report", str(cpu), str(converged), "--out", str(tmp_path / "r.md"), "--figures",
                 str(tmp_path / "figs"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    text = (tmp_path / "r.md").read_text()
    assert result["runs"] == 2 * 41 + 41  # 4 noises x 9 cells + 5 ablation cells, per seed
    assert f"## Protocol `{cpu}` (82 runs)" in text and f"## Protocol `{converged}` (41 runs)" in text
    first, second = text.split(f"## Protocol `{converged}`")
    assert "### SST-5: label noise" in first and "### BANKING77: label noise" in second
    assert "#### Title" in second and "##### Part" in second  # the analysis sits below its section
    assert sorted(Path(f).relative_to(tmp_path / "figs").as_posix() for f in result["figures"]) == [
        "converged/figure1_banking77.png", "converged/figure4_banking77.png", "cpu/figure1_sst5.png",
        "cpu/figure4_sst5.png"]
    # Two seeds: CleaR's +4.7 points against a seed spread of 1 point is beyond two standard errors; one seed
    # has none.
    assert "| SST-5 | Sym 60% | Avg | BitFit | 31.9 | 36.6 | +4.7 | yes (SE 0.7) | +7.6 |" in first
    assert "| BANKING77 | Sym 60% | Avg | LoRA | 31.2 | 35.9 | +4.7 | — (1 seed) | +6.0 |" in second


def test_report_skips_figures_without_runs_and_notes_it(tmp_path):
    results = synthetic_results(tmp_path / "results", datasets=("banking77",), seeds=(0,))
    stale = tmp_path / "figures" / "figure1_sst5.png"
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    write_report(results, tmp_path / "report.md", tmp_path / "figures")
    text = (tmp_path / "report.md").read_text()
    assert "**Figure 1 (SST-5, Sym 60%):**" in text and "Skipped: no unrouted runs on SST-5" in text
    assert not stale.exists() and (tmp_path / "figures" / "figure1_banking77.png").exists()
    assert "No runs on SST-5 in these results." in text and not re.search(r"\d ± \d", text)  # one seed


def test_report_without_results_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no readable results.csv"):
        write_report(tmp_path, tmp_path / "r.md", tmp_path / "f")

