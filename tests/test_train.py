"""End-to-end training runs on a few hundred real SST-5 samples with the real default backbone."""

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from clearpeft.peft import training_defaults
from clearpeft.runs import LABEL_ISSUE_COLUMNS
from clearpeft.train import DYNAMICS_FIELDS, FIT_FIELDS, TIMING_FIELDS, TrainConfig, train

pytestmark = pytest.mark.slow


def small(tmp_path, name, **overrides):
    values = dict(dataset="sst5", peft="lora", routing="clean", noise="symmetric:0.6", epochs=3, warmup_epochs=1,
                  max_train_samples=192, max_eval_samples=96, batch_size=16, seed=0, eval_passes=2,
                  max_length=24, out=str(tmp_path / name))  # 24 tokens: a run takes well under half the time of full-length SST-5
    values.update(overrides)
    return TrainConfig(**values)


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def without_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    summary = train(small(tmp, "a"), progress=False, log=lambda m: None)
    return tmp / "a", summary


def test_run_folder_files_and_fields(lora_run):
    run, summary = lora_run
    for name in ("config.json", "noisy_labels.csv", "metrics.jsonl", "summary.json", "clean_probs.csv",
                 "weights/trained.safetensors", "weights/peft/adapter_config.json"):
        assert (run / name).exists(), name
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "epoch-1", "epoch-2"]
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    for r in rows:
        for key in ("test_acc", "test_acc_routed", "dev_acc", "clean_learning", "noisy_memorization",
                    "noisy_correction", "detect_precision", "detect_recall", "detect_auc", "gate_mean_clean",
                    "gate_mean_corrupted", "epoch_seconds"):
            assert key in r, key
        assert 0.0 <= r["test_acc"] <= 1.0 and 0.0 <= r["test_acc_routed"] <= 1.0
        assert r["epoch_seconds"] > 0
    # Warm-up routes every layer with probability γ = 0.85 for every sample, clean or not.
    assert abs(rows[0]["gate_mean_clean"] - 0.85) < 0.05 and abs(rows[0]["gate_mean_corrupted"] - 0.85) < 0.05
    assert rows[0]["routing_active"] is False and rows[2]["routing_active"] is True
    for key in ("peak_acc", "avg_acc", "last_acc", "method", "routing", "noise", "seed", "realized_noise_rate",
                "trainable_params", "train_seconds"):
        assert key in summary
    accs = [r["test_acc"] for r in rows]
    assert summary["peak_acc"] == max(accs) and math.isclose(summary["avg_acc"], sum(accs) / 3)
    assert summary["last_acc"] == accs[-1] and summary["trainable_params"] == 38789
    assert abs(summary["realized_noise_rate"] - 0.48) < 0.08  # 192 samples of 60% symmetric noise
    with open(run / "clean_probs.csv") as handle:
        probs = list(csv.DictReader(handle))
    assert len(probs) == 192 and tuple(probs[0]) == LABEL_ISSUE_COLUMNS
    values = [float(r["label_score"]) for r in probs]
    assert values == sorted(values) and 0.0 <= values[0] <= values[-1] <= 1.0
    assert all(r["is_label_issue"] == "True" for r in probs if float(r["clean_prob"]) < 0.5)  # p < 0.5 or more
    assert 0 < sum(r["is_label_issue"] == "True" for r in probs) < 192
    names = json.loads((run / "config.json").read_text())["label_names"]
    assert names[0] == "very negative" and all(names[int(r["given_label_id"])] == r["given_label"] for r in probs)
    config = json.loads((run / "config.json").read_text())
    assert config["lr"] == training_defaults("lora")["lr"] and config["gamma"] == 0.85 and "torch" in config["versions"]


def test_best_dev_weights_are_handed_over(lora_run):
    """--keep best-dev (the default): the weights of the epoch with the best dev accuracy, on dev labels with the
    run's injected noise; Delivered is that epoch's test accuracy, and the saved weights reproduce it."""
    from clearpeft import load_run
    from clearpeft.data import load_data

    run, summary = lora_run
    rows = metrics(run)
    dev = [r["dev_acc"] for r in rows]
    best = dev.index(max(dev))
    assert summary["keep"] == "best-dev" and summary["kept_epoch"] == best and summary["dev_labels"] == "noisy"
    assert summary["delivered_acc"] == rows[best]["test_acc"]
    # the dev labels carry the noise: accuracy on them differs from accuracy on the true dev labels
    assert any(r["dev_acc"] != r["dev_acc_clean"] for r in rows)
    test = load_data("sst5").test.subset(96, 0)
    probs = load_run(run).predict_proba(test.texts)
    assert np.mean(probs.argmax(1) == test.labels) == pytest.approx(summary["delivered_acc"], abs=1.5 / 96)
    assert json.loads((run / "checkpoints" / "best" / "kept.json").read_text())["epoch"] == best


def test_same_seed_same_metrics(lora_run, tmp_path):
    run, _ = lora_run
    train(small(tmp_path, "b"), progress=False, log=lambda m: None)
    assert without_timing(metrics(tmp_path / "b")) == without_timing(metrics(run))
    assert (tmp_path / "b" / "noisy_labels.csv").read_bytes() == (run / "noisy_labels.csv").read_bytes()


@pytest.mark.parametrize("peft,routing", [("adapter", "clean"), ("bitfit", "clean"), ("prompt", "clean"),
                                          ("full", "none"), ("bitfit", "none"), ("bitfit", "deterministic"),
                                          ("bitfit", "random"), ("bitfit", "noisy")])
def test_every_method_and_strategy_runs(tmp_path, peft, routing):
    # The fast settings (no pass CleaR does not use, no routed test pass) keep these smoke runs short and run
    # every method through them, the adapter's loss EMA included.
    summary = train(small(tmp_path, "r", peft=peft, routing=routing, epochs=2, max_train_samples=128,
                          max_eval_samples=64, no_dynamics=True, eval_passes=0), progress=False, log=lambda m: None)
    rows = metrics(tmp_path / "r")
    assert len(rows) == 2 and summary["method"] == peft and summary["routing"] == routing
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in rows)
    if routing == "none":
        assert rows[-1]["gate_mean_clean"] is None and rows[-1]["test_acc_routed"] == rows[-1]["test_acc"]
    if routing != "none":  # epoch 2 routes by the p of epoch 1: the gates are the seeded draws below γ·q(p)
        from safetensors.numpy import load_file

        from clearpeft import clear
        from clearpeft.backbone import encoder_config
        from clearpeft.routing import gates_from_draws

        run = tmp_path / "r"
        p = load_file(str(run / "checkpoints" / "epoch-0" / "routing_state.safetensors"))["p"]
        gamma = json.loads((run / "config.json").read_text())["gamma"]
        with open(run / "noisy_labels.csv") as handle:
            clean = np.array([r["label"] == r["noisy_label"] for r in csv.DictReader(handle)])
        layers = encoder_config(None).num_hidden_layers
        draws = torch.rand((len(p), layers), generator=clear.generator(0, 1, "step_gates"))
        share_on = gates_from_draws(routing, torch.as_tensor(p, dtype=torch.float32), gamma, draws).mean(0).numpy()
        assert rows[-1]["gate_mean_clean"] == pytest.approx(share_on[clean].mean(), abs=1e-6)  # float32 means
        assert rows[-1]["gate_mean_corrupted"] == pytest.approx(share_on[~clean].mean(), abs=1e-6)
        assert 0.0 < share_on.mean() < 1.0  # the check means something: gates both on and off
        if routing == "deterministic":  # all of a sample's gates 1 if p > 0.5, else all 0
            assert np.array_equal(share_on, (p > 0.5).astype(np.float32))


def test_cli_train_and_predict(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "clearpeft", "train", "--dataset", "sst5", "--peft", "bitfit", "--noise",
           "symmetric:0.6", "--routing", "clean", "--epochs", "2", "--warmup-epochs", "1", "--max-train-samples",
           "128", "--max-eval-samples", "64", "--max-length", "32", "--seed", "0", "--out", str(out), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["method"] == "bitfit" and summary["epochs"] == 2
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert again.returncode == 2 and "already holds a run" in again.stderr and "Traceback" not in again.stderr
    pred = subprocess.run([sys.executable, "-m", "clearpeft", "predict", str(out), "--text", "a great movie .",
                           "--text", "awful .", "--json"], capture_output=True, text=True, timeout=1800)
    assert pred.returncode == 0, pred.stderr[-2000:]
    rows = json.loads(pred.stdout)
    assert len(rows) == 2 and all(abs(sum(r["probabilities"]) - 1) < 1e-4 for r in rows)
    assert rows[0]["label_name"] in json.loads((out / "config.json").read_text())["label_names"]
    issues = subprocess.run([sys.executable, "-m", "clearpeft", "label-issues", str(out), "--top", "5"],
                            capture_output=True, text=True, timeout=1800)
    assert issues.returncode == 0, issues.stderr[-2000:]
    lines = issues.stdout.splitlines()
    with open(out / "clean_probs.csv") as handle:
        report = list(csv.DictReader(handle))[:5]
    assert len(lines) == 6 and lines[0].split()[:3] == ["score", "given", "label"]
    for line, row in zip(lines[1:], report):  # the five most suspicious, in order: score, given label name, text
        assert line.split()[0] == f"{float(row['label_score']):.3f}" and row["given_label"] in line
        assert row["text"][:60] in line


def test_yaml_config_with_flag_override(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("peft: bitfit\nrouting: none\nepochs: 5\nmax-train-samples: 64\nmax_eval_samples: 32\n")
    out = tmp_path / "yaml"
    done = subprocess.run([sys.executable, "-m", "clearpeft", "train", "--config", str(config), "--epochs", "1",
                           "--out", str(out), "--json"], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = json.loads((out / "config.json").read_text())
    assert saved["peft"] == "bitfit" and saved["epochs"] == 1 and saved["max_train_samples"] == 64


def count_training_passes(monkeypatch) -> list:
    """Record every pass over the training split (the per-epoch passes and the final one), counted, not timed:
    one entry per pass, the mean gate of its first routed draw over all samples (None: every module on)."""
    import clearpeft.train as module

    calls, prepared, real_prepare, real_pass = [], [], module.prepare_data, module.routed_logits

    def keep_data(*args, **kwargs):
        prepared.append(real_prepare(*args, **kwargs))
        return prepared[-1]

    def counting(core, split, batch_size, pad_id, passes, gates_for, accelerator):
        if split is prepared[-1].train:
            gates = gates_for(np.arange(len(split)), 0)
            calls.append(None if gates is None else float(gates.mean()))
        return real_pass(core, split, batch_size, pad_id, passes, gates_for, accelerator)

    monkeypatch.setattr(module, "prepare_data", keep_data)
    monkeypatch.setattr(module, "routed_logits", counting)
    return calls


def test_estimate_from_train_uses_the_steps_and_skips_the_pass(lora_run, tmp_path, monkeypatch):
    """--estimate-from train: p and f_ens from the epoch's own training steps; no extra pass over the data."""
    run, _ = lora_run
    passes = count_training_passes(monkeypatch)
    train(small(tmp_path, "cheap", estimate_from="train"), progress=False, log=lambda m: None)
    assert len(passes) == 1  # only the final pass that writes clean_probs.csv
    cheap, faithful = metrics(tmp_path / "cheap"), metrics(run)
    for a, b in zip(cheap, faithful):
        assert 0.0 <= a["detect_auc"] <= 1.0 and a["clean_prob_fallback"] is None
    # The estimate differs from the pass's (train mode, mid-epoch weights), and warm-up is the same for both.
    assert cheap[0]["train_loss"] == faithful[0]["train_loss"]
    assert cheap[0]["detect_auc"] != faithful[0]["detect_auc"]
    assert cheap[2]["detect_auc"] != faithful[2]["detect_auc"]  # another p, so other gates


def check_pass_gates(passes: list, rows: list[dict], pass_gates: str) -> None:
    """The per-sample pass after a routed epoch draws Bernoulli(γ) gates for every sample (the reference code's
    pass, --pass-gates random, the default): a sample routed off in training is still measured with its
    modules. --pass-gates routed draws them as the steps do, by γ·p, so the gates of the pass fall with p.
    ``passes``: count_training_passes of a 3-epoch run with --no-dynamics, ``rows`` its metrics."""
    # Passes after epoch 1 (warm-up: Bernoulli(γ) either way) and epoch 2 (routed), then the final all-on pass.
    assert len(passes) == 3 and passes[2] is None
    assert abs(passes[0] - 0.85) < 0.03
    steps_gate = (rows[1]["gate_mean_clean"] + rows[1]["gate_mean_corrupted"]) / 2  # epoch 2's steps: γ·p
    assert steps_gate < 0.8
    if pass_gates == "random":
        assert abs(passes[1] - 0.85) < 0.03
    else:
        assert passes[1] < 0.8 and abs(passes[1] - steps_gate) < 0.1


def test_routed_pass_gates_fall_with_p(tmp_path, monkeypatch):
    # (the default, random, is checked on the fast-settings run below: the same run but for this flag)
    passes = count_training_passes(monkeypatch)
    train(small(tmp_path, "routed", pass_gates="routed", epochs=3, no_dynamics=True, eval_passes=0),
          progress=False, log=lambda m: None)
    check_pass_gates(passes, metrics(tmp_path / "routed"), "routed")


def test_gate_weighted_loss_changes_only_routed_epochs(lora_run, tmp_path):
    """The --gate-weighted-loss diagnosis leaves warm-up alone (every sample is gated by γ there) and changes the
    routed epochs, where samples routed off no longer train the head."""
    run, _ = lora_run
    train(small(tmp_path, "weighted", gate_weighted_loss=True), progress=False, log=lambda m: None)
    weighted, faithful = without_timing(metrics(tmp_path / "weighted")), without_timing(metrics(run))
    assert weighted[0] == faithful[0]
    assert weighted[2]["train_loss"] != faithful[2]["train_loss"]


def test_fast_settings_skip_only_what_clear_does_not_use(lora_run, tmp_path, monkeypatch):
    """--no-dynamics makes the pass only before routed epochs (here after epochs 1 and 2 of 3, not after the last),
    --eval-passes 0 skips the routed test passes; the run trains exactly as with both, only the skipped
    metrics are null."""
    run, _ = lora_run
    passes = count_training_passes(monkeypatch)
    summary = train(small(tmp_path, "fast", no_dynamics=True, eval_passes=0), progress=False, log=lambda m: None)
    assert len(passes) == 3  # after epochs 1 and 2, and the final one
    check_pass_gates(passes, metrics(tmp_path / "fast"), "random")
    fast, full = without_timing(metrics(tmp_path / "fast")), without_timing(metrics(run))
    assert all(row.pop("test_acc_routed") is None for row in fast)
    assert summary["peak_acc_routed"] is None
    assert summary["peak_acc"] == json.loads((run / "summary.json").read_text())["peak_acc"]
    for row in full:
        del row["test_acc_routed"]
    assert fast[:2] == full[:2]
    assert fast[2]["detect_auc"] is None and fast[2]["noisy_memorization"] is None
    assert full[2]["detect_auc"] is not None
    assert all(fast[2][k] is None for k in FIT_FIELDS) and full[2]["estimated_noise_rate"] is not None
    unchanged = {k: v for k, v in full[2].items() if k not in DYNAMICS_FIELDS + FIT_FIELDS}
    assert {k: fast[2][k] for k in unchanged} == unchanged


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_lr_schedule_constant_keeps_the_rate_linear_decays_it(tmp_path, schedule):
    import torch

    train(small(tmp_path, "s", peft="bitfit", routing="none", epochs=2, max_train_samples=64, max_eval_samples=32,
                lr=1e-3, lr_schedule=schedule, no_dynamics=True, eval_passes=0), progress=False, log=lambda m: None)
    state = torch.load(tmp_path / "s" / "checkpoints" / "epoch-1" / "scheduler.bin", weights_only=False)
    assert state["last_epoch"] == 8  # 2 epochs of 4 steps of 16
    if schedule == "constant":  # the reference code's: no scheduler, no warm-up
        assert state["_last_lr"] == [1e-3]
    else:  # decayed to 0 at the last step
        assert state["_last_lr"] == [0.0]
    assert json.loads((tmp_path / "s" / "config.json").read_text())["lr_schedule"] == schedule


def test_a_run_older_than_lr_schedule_resumes_as_linear(tmp_path):
    """A run folder made before --lr-schedule existed has no such field in its config.json; it ran with the
    linear schedule, so --resume continues it with linear and refuses constant."""
    import shutil

    from clearpeft.errors import UserError

    tiny = dict(routing="none", epochs=2, max_train_samples=32, max_eval_samples=16, max_length=16, eval_passes=0)
    whole = tmp_path / "whole"
    train(small(tmp_path, "whole", **tiny), progress=False, log=lambda m: None)
    old = tmp_path / "old"
    shutil.copytree(whole, old)
    shutil.rmtree(old / "checkpoints" / "epoch-1")  # killed during epoch 2
    (old / "summary.json").unlink()
    config = json.loads((old / "config.json").read_text())
    del config["lr_schedule"]
    (old / "config.json").write_text(json.dumps(config))

    with pytest.raises(UserError, match=r"different config \(lr_schedule\)"):
        train(small(tmp_path, "old", lr_schedule="constant", **tiny), resume=True, progress=False, log=lambda m: None)
    lines = []
    train(small(tmp_path, "old", **tiny), resume=True, progress=False, log=lines.append)
    assert any("resuming after epoch 1" in line for line in lines)
    assert without_timing(metrics(old)) == without_timing(metrics(whole))  # the linear schedule's second epoch


def test_clean_auto_is_plain_peft_until_the_losses_show_a_noisy_mode(tmp_path):
    """clean-auto trains as plain PEFT (every module on, no consistency loss) in warm-up and in every epoch
    after a fit without a mode of wrong labels, and routes as CleaR after a fit with one; every epoch records
    the fit's statistics and the decision for the next epoch."""
    from clearpeft.routing import is_wrong_label_mode

    fast = dict(epochs=2, max_train_samples=128, max_eval_samples=64, eval_passes=0)  # the decision after epoch 1
    train(small(tmp_path, "auto", routing="clean-auto", **fast), progress=False, log=lambda m: None)
    train(small(tmp_path, "plain", routing="none", reg_weight=0.0, **fast), progress=False, log=lambda m: None)
    auto, plain = metrics(tmp_path / "auto"), metrics(tmp_path / "plain")
    for row in auto:
        assert 0.0 <= row["estimated_noise_rate"] <= row["high_loss_weight"] <= 1.0
        assert 0.0 <= row["flagged_rate"] <= 1.0
        wrong_labels = is_wrong_label_mode(row["loss_separation"], row["noisy_component_loss"], math.log(5))
        assert row["routing_stood_down"] == (not wrong_labels) == (row["estimated_noise_rate"] == 0.0)
    assert auto[0]["routing_active"] is False and auto[0]["gate_mean_clean"] == 1.0  # warm-up: all on
    for before, row in zip(auto, auto[1:]):
        assert row["routing_active"] == (not before["routing_stood_down"])
        assert (row["gate_mean_clean"] == 1.0) == before["routing_stood_down"]  # gates only after a noisy fit
    plain_prefix = next((e for e, r in enumerate(auto) if r["routing_active"]), len(auto))
    # At 60% noise the fit after the first epoch shows the mode of wrong labels: one plain epoch, then routing
    # that trains differently from plain PEFT.
    assert plain_prefix == 1 and auto[1]["gate_mean_clean"] < 1.0 and auto[1]["train_loss"] != plain[1]["train_loss"]
    for a, b in zip(auto[:plain_prefix], plain):  # the same training steps as plain PEFT, to the bit
        assert a["test_acc"] == b["test_acc"] and a["train_loss"] == b["train_loss"]
    summary = json.loads((tmp_path / "auto" / "summary.json").read_text())
    assert summary["routing"] == "clean-auto" and summary["fit_noise_rate"] == auto[-1]["estimated_noise_rate"]
    # the run's estimate: the larger of the fit's reading and the confusion's (its floor plus its one-way
    # flows), never 0 at 60% noise
    confusion = summary["floor_noise_rate"] + summary["one_way_noise_rate"]
    fit_wins = summary["fit_noise_rate"] >= confusion
    assert summary["noise_rate_source"] == ("loss fit" if fit_wins else "confusion floor + one-way flows"
                                            if summary["one_way_noise_rate"] else "confusion floor")
    assert summary["estimated_noise_rate"] == max(summary["fit_noise_rate"], confusion) > 0
