"""--refit: which samples and labels the second stage trains on (hand-computed cases), the noisy dev split, and
one real two-stage run on SST-5."""

import csv
import json
import math

import numpy as np
import pytest

from clearpeft.noise import NoiseSpec, apply_noise
from clearpeft.refit import class_floor, handed_over, handover_margin, noisy_dev_factor, read_report, trusted_labels


def test_drop_leaves_out_the_flagged_samples():
    # 40 samples, 2 classes: floor = ceil(0.1 * 40 / 2) = 2; both classes keep more than that
    given = np.array([0] * 20 + [1] * 20)
    flags = np.zeros(40, bool)
    flags[[0, 1, 2, 25, 30]] = True
    kept, labels = trusted_labels(flags, given, given, np.ones(40), np.ones(40), 2, "drop")
    assert class_floor(40, 2) == 2
    assert kept.tolist() == [i for i in range(40) if i not in (0, 1, 2, 25, 30)]
    assert np.array_equal(labels, given[kept])


def test_a_class_the_flag_would_empty_keeps_its_best_scored_samples():
    # class 2 has 4 samples, all flagged; the floor is ceil(0.1 * 60 / 3) = 2
    given = np.array([0] * 28 + [1] * 28 + [2] * 4)
    flags = np.zeros(60, bool)
    flags[56:] = True  # every sample labelled 2
    score = np.zeros(60)
    score[56:] = [0.1, 0.7, 0.3, 0.6]
    kept, labels = trusted_labels(flags, given, given, score, np.ones(60), 3, "drop")
    assert class_floor(60, 3) == 2
    assert kept.tolist() == list(range(56)) + [57, 59]  # the two best-scored of class 2 (0.7 and 0.6)
    assert labels[-2:].tolist() == [2, 2] and set(labels.tolist()) == {0, 1, 2}


def test_second_stage_takes_the_first_stages_steps():
    from clearpeft.refit import second_stage_epochs

    assert second_stage_epochs(6, 2000, 1000) == 12  # half the samples: twice the epochs
    assert second_stage_epochs(6, 2000, 1800) == 7
    assert second_stage_epochs(6, 2000, 100) == 24  # at most 4x
    assert second_stage_epochs(6, 2000, 2000) == 6


def test_relabel_takes_confident_predictions_and_drops_the_rest():
    given = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    flags = np.array([False, False, False, True, False, False, False, False, True, True])
    predicted = np.array([0, 0, 0, 1, 1, 1, 1, 1, 0, 0])
    confidence = np.array([0.9, 0.9, 0.9, 0.95, 0.9, 0.9, 0.9, 0.9, 0.5, 0.92])
    kept, labels = trusted_labels(flags, given, predicted, np.ones(10), confidence, 2, "relabel", 0.9)
    # 3 (0.95 -> label 1) and 9 (0.92 -> label 0) are relabelled, 8 (0.5) is left out
    assert kept.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 9]
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 0]


def test_dev_noise_is_the_training_noise_from_its_own_stream():
    rng = np.random.default_rng(5)
    train, dev = rng.integers(0, 5, 4000), rng.integers(0, 5, 4000)
    spec = NoiseSpec.parse("symmetric:0.6")
    a = apply_noise(train, 5, spec, 0)
    b = apply_noise(dev, 5, spec, [0, 1])
    assert abs(b.realized_rate - 0.48) < 0.03 and abs(a.realized_rate - 0.48) < 0.03  # η (K-1)/K
    assert not np.array_equal(a.corrupted[:100], b.corrupted[:100])
    # instance noise: the dev split is corrupted by the training split's W, the same function of the text
    features = rng.normal(size=(300, 8))
    inst = NoiseSpec.parse("instance:0.4")
    first = apply_noise(train[:300], 5, inst, 0, features=features)
    again = apply_noise(train[:300], 5, inst, [0, 1], features=features, projection=first.projection)
    other = apply_noise(train[:300], 5, inst, [0, 1], features=features)
    assert first.projection.shape == (8, 5)

    def likeliest_wrong(probs, y):  # W alone decides which wrong class a sample is most likely to get
        return np.where(np.arange(5) == y[:, None], -1.0, probs).argmax(1)

    y = train[:300]
    assert np.array_equal(likeliest_wrong(first.sample_probs, y), likeliest_wrong(again.sample_probs, y))
    assert not np.array_equal(likeliest_wrong(first.sample_probs, y), likeliest_wrong(other.sample_probs, y))


@pytest.mark.slow
def test_refit_drop_trains_a_second_stage_on_the_unflagged_samples(tmp_path):
    from clearpeft import load_run
    from clearpeft.config import TrainConfig
    from clearpeft.data import load_data
    from clearpeft.train import train

    cfg = TrainConfig(dataset="sst5", peft="lora", routing="clean", noise="symmetric:0.6", epochs=2,
                      warmup_epochs=1, max_train_samples=160, max_eval_samples=64, batch_size=16, max_length=32,
                      refit="drop", out=str(tmp_path / "run"))
    summary = train(cfg, progress=False, log=lambda m: None)
    run = tmp_path / "run"
    with open(run / "clean_probs.csv", newline="") as handle:
        report = list(csv.DictReader(handle))  # the first stage's report stays the run's
    # the default flag is p < 0.5 alone, not the report's union flag (which flags at least as many)
    flagged = {int(r["index"]) for r in report if float(r["clean_prob"]) < 0.5}
    assert 0 < len(flagged) <= sum(r["is_label_issue"] == "True" for r in report) < 160
    with open(run / "refit" / "noisy_labels.csv", newline="") as handle:
        second = list(csv.DictReader(handle))
    assert len(second) == summary["kept_samples"] >= 160 - len(flagged)  # the floor may add back a few
    first_texts = {r["index"]: r["text"] for r in csv.DictReader(open(run / "noisy_labels.csv", newline=""))}
    kept_texts = {r["text"] for r in second}
    assert kept_texts <= set(first_texts.values())
    assert {first_texts[str(i)] for i in range(160) if i not in flagged} <= kept_texts
    assert summary["kept_fraction"] == pytest.approx(len(second) / 160)
    first = json.loads((run / "first_stage_summary.json").read_text())
    assert summary["first_stage"] == first and first["routing"] == "clean" and "refit" not in first
    assert summary["refit"] == "drop" and summary["routing"] == "clean" and summary["refit_routing"] == "none"
    assert summary["refit_flag"] == "clean-prob"
    second_summary = json.loads((run / "refit" / "summary.json").read_text())
    assert summary["refit_epochs"] == second_summary["epochs"] == round(2 * 160 / len(second))  # the same steps
    assert summary == json.loads((run / "summary.json").read_text())
    # the stage handed over is the one with the better dev accuracy, and the run's numbers are its own
    stage = handed_over(first, second_summary, "best-dev", 64, 5)  # max_eval_samples dev sentences, 5 classes
    assert summary["handed_over"] == stage
    a, eta = first["dev_peak_acc"], first["estimated_noise_rate"]
    assert summary["handover_margin"] == pytest.approx(max(0, 1 - eta * 5 / 4) * math.sqrt(a * (1 - a) / 64))
    chosen = second_summary if stage == "second" else first
    for key in ("delivered_acc", "peak_acc", "avg_acc", "last_acc", "kept_epoch", "epochs"):
        assert summary[key] == chosen[key]
        assert summary["second_stage"][key] == second_summary[key]
    # the noise estimate is the first stage's (it read every label as given)
    for key in ("estimated_noise_rate", "noise_rate_source", "fit_noise_rate", "floor_noise_rate", "cl_noise_rate"):
        assert summary[key] == first[key]
    # kept_noise_rate is the share of wrong labels among the samples kept (whether the flag cleans the labels
    # is measured at scale in docs/refit.md; 160 samples and 2 epochs are too few for the loss fit to)
    r = read_report(run)
    kept, labels = trusted_labels(r["clean_prob"] < 0.5, r["given"], r["predicted"], r["score"],
                                  np.zeros(160), 5, "drop")
    assert [first_texts[str(i)] for i in kept] == [row["text"] for row in second]
    true = np.array([int(row["label"]) for row in csv.DictReader(open(run / "noisy_labels.csv", newline=""))])
    assert summary["kept_noise_rate"] == pytest.approx(np.mean(labels != true[kept]))
    # every class survives, and the delivered weights are the chosen stage's
    assert len({r["noisy_label"] for r in second}) == 5
    test = load_data("sst5").test.subset(64, 0)
    probs = load_run(run).predict_proba(test.texts)
    assert np.mean(probs.argmax(1) == test.labels) == pytest.approx(summary["delivered_acc"], abs=1.5 / 64)
    assert (run / "first_stage_weights" / "trained.safetensors").exists() == (stage == "second")
    card = (run / "weights" / "README.md").read_text()
    assert "`--refit drop`" in card and f"on {len(second)} training samples" in card
    assert f"these weights are the {stage} stage's" in card


def test_the_second_stage_is_handed_over_only_when_dev_prefers_it():
    first = {"dev_peak_acc": 0.40, "dev_last_acc": 0.30}
    assert handed_over(first, {"dev_peak_acc": 0.41, "dev_last_acc": 0.29}, "best-dev") == "second"
    assert handed_over(first, {"dev_peak_acc": 0.41, "dev_last_acc": 0.29}, "last") == "first"
    assert handed_over(first, {"dev_peak_acc": 0.40, "dev_last_acc": 0.30}, "best-dev") == "first"  # a tie
    assert handed_over({}, {}, "best-dev") == "second"  # no dev split: what --refit asked for
    # with the dev size, the second stage must be ahead by more than one standard error of the first's:
    # sqrt(0.4 * 0.6 / 1000) = 0.0155, sqrt(0.4 * 0.6 / 100) = 0.049
    assert handed_over(first, {"dev_peak_acc": 0.415}, "best-dev", 1000) == "first"
    assert handed_over(first, {"dev_peak_acc": 0.416}, "best-dev", 1000) == "second"
    assert handed_over(first, {"dev_peak_acc": 0.44}, "best-dev", 100) == "first"
    assert handed_over(first, {"dev_peak_acc": 0.45}, "best-dev", 100) == "second"


def test_the_margin_shrinks_with_the_estimated_noise_as_noisy_dev_labels_shrink_a_gain():
    # symmetric noise eta over K classes: noisy accuracy = eta / (K - 1) + a (1 - eta K / (K - 1))
    assert noisy_dev_factor(0.6, 5) == pytest.approx(0.25)
    assert noisy_dev_factor(0.2, 5) == pytest.approx(0.75)
    assert noisy_dev_factor(0.6, 77) == pytest.approx(1 - 0.6 * 77 / 76)
    assert noisy_dev_factor(0.9, 5) == 0.0  # past (K - 1) / K a noisy dev set cannot rank: no margin
    assert noisy_dev_factor(None, 5) == noisy_dev_factor(0.0, 5) == noisy_dev_factor(0.3, None) == 1.0
    first = {"dev_peak_acc": 0.40, "estimated_noise_rate": 0.6}
    se = math.sqrt(0.4 * 0.6 / 1000)
    assert handover_margin(first, "best-dev", 1000) == pytest.approx(se)  # without K: the full standard error
    assert handover_margin(first, "best-dev", 1000, 5) == pytest.approx(0.25 * se)
    # a dev gain of 0.01 (under the standard error 0.0155) hands over at 60% estimated noise, not on clean labels
    assert handed_over(first, {"dev_peak_acc": 0.41}, "best-dev", 1000, 5) == "second"
    clean = {"dev_peak_acc": 0.40, "estimated_noise_rate": 0.0}
    assert handed_over(clean, {"dev_peak_acc": 0.41}, "best-dev", 1000, 5) == "first"
    assert handed_over(clean, {"dev_peak_acc": 0.416}, "best-dev", 1000, 5) == "second"
