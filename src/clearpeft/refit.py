"""The second stage of ``--refit``: train again, as plain PEFT, on the training labels the first run trusts.

    kept, labels = trusted_labels(flags, given, predicted, score, num_labels, "drop")

CleaR finds the wrong labels far better than it uses that knowledge: in warm-up every module, and in every
epoch the never-routed classifier head, still learn from them. cleanlab's ``CleanLearning`` recipe (find the
issues, leave them out, train again) is what this stage does with the first run's own report
(clean_probs.csv). A sample is flagged (``refit_flag``) when its clean probability is below one half
(``clean-prob``, the default) or when the report's ``is_label_issue`` says so (``report``: p < 0.5 or confident
learning). The report's union flag finds more wrong labels, but on dev the second stage did better on the
samples p < 0.5 leaves (docs/refit.md): confident learning also flags the hard, correctly labelled samples the
second stage needs.

- ``drop``: a fresh model of the same method learns from the unflagged samples only;
- ``relabel``: a flagged sample whose predicted label has probability at least ``relabel_threshold`` takes
  that label, the other flagged samples are left out.

The label space stays the first stage's. A class the flag would empty (at 60% noise nearly all given labels
of a rare class can be wrong, and all of them flagged) keeps its ``class_floor`` best-scored samples, so the
second stage still knows every class and the test split has no label the training split lacks.

The second stage is handed over only when its dev accuracy beats the first stage's by a margin
(``handed_over``), as --keep best-dev chooses an epoch. The run folder keeps both stages: the first stage's
files where they always are (its report is the run's label-issue report), the second stage's run in
``refit/``. When the second stage is handed over, weights/ and summary.json's numbers are its own, with the
first stage's weights in ``first_stage_weights/``; summary.json keeps both (``first_stage``, ``second_stage``,
``handed_over``).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import runs

REFIT_DIR = "refit"
FIRST_STAGE_WEIGHTS = "first_stage_weights"
# A class keeps at least this share of the mean class size (or all it has, if fewer): the guard above.
CLASS_FLOOR_SHARE = 0.1


# The second stage trains on fewer samples; with the first stage's epochs it would take fewer optimizer steps
# and stop short (measured in docs/refit.md). So by default it takes as many steps as the first stage, up to
# this many times its epochs (--keep best-dev picks the epoch, so the longer run costs time, not accuracy).
MAX_EPOCH_FACTOR = 4


def second_stage_epochs(epochs: int, n_train: int, n_kept: int) -> int:
    """Epochs for ``n_kept`` samples that take about the optimizer steps of ``epochs`` over ``n_train``."""
    return max(epochs, min(MAX_EPOCH_FACTOR * epochs, round(epochs * n_train / max(n_kept, 1))))


def class_floor(n_train: int, num_labels: int) -> int:
    return max(1, math.ceil(CLASS_FLOOR_SHARE * n_train / num_labels))


def trusted_labels(flags: np.ndarray, given: np.ndarray, predicted: np.ndarray, score: np.ndarray,
                   predicted_prob: np.ndarray, num_labels: int, how: str,
                   relabel_threshold: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """(indices kept, their training labels) for the second stage.

    ``flags`` [n] bool: the samples flagged (``refit_flag``); ``given`` [n]: the labels trained on; ``predicted`` [n]
    and ``predicted_prob`` [n]: the first stage's label and its probability; ``score`` [n]: the probability
    of the given label (the report's ranking). ``how``: drop or relabel.
    """
    flags, given = np.asarray(flags, bool), np.asarray(given, np.int64)
    labels = given.copy()
    keep = ~flags
    if how == "relabel":
        confident = flags & (np.asarray(predicted_prob) >= relabel_threshold)
        labels[confident] = np.asarray(predicted, np.int64)[confident]
        keep |= confident
    elif how != "drop":
        raise ValueError(f"unknown refit {how!r}")
    floor = class_floor(len(given), num_labels)
    for c in range(num_labels):
        have = np.flatnonzero(keep & (labels == c))
        if len(have) >= floor:
            continue
        # the best-scored samples given this label that are not kept yet, until the floor (or all of them)
        candidates = np.flatnonzero((given == c) & ~keep)
        extra = candidates[np.argsort(-np.asarray(score)[candidates], kind="stable")][:floor - len(have)]
        keep[extra] = True
        labels[extra] = c
    kept = np.flatnonzero(keep)
    return kept, labels[kept]


def second_stage_bundle(data, kept: np.ndarray, labels: np.ndarray):
    """The data of a second stage: the kept training samples with their labels, the first stage's test split,
    and its dev split with the labels it selected by (noisy under --noise by default)."""
    from .data.loaders import DataBundle, Split

    b = data.bundle
    dev = Split(b.dev.texts, data.dev.labels) if b.dev is not None else None
    return DataBundle(b.name, list(b.label_names), Split([data.texts[i] for i in kept], labels), b.test, dev)


def read_report(run: Path) -> dict[str, np.ndarray]:
    """The first stage's clean_probs.csv as arrays in training-sample order: ``flags`` (is_label_issue),
    ``clean_prob`` (p), ``given``, ``predicted`` (label ids) and ``score`` (the given label's probability)."""
    with open(run / "clean_probs.csv", newline="", encoding="utf-8") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda r: int(r["index"]))
    return {"flags": np.array([r["is_label_issue"] == "True" for r in rows]),
            "clean_prob": np.array([float(r["clean_prob"]) for r in rows]),
            "given": np.array([int(r["given_label_id"]) for r in rows]),
            "predicted": np.array([int(r["predicted_label_id"]) for r in rows]),
            "score": np.array([float(r["label_score"]) for r in rows])}


def second_stage(cfg, data, first: dict, predicted_prob: np.ndarray, is_main: bool, train_fn, resume: bool,
                 progress: bool, log) -> dict:
    """Train the second stage of ``cfg`` (resolved) after its first stage ``first`` (summary) on ``data``
    (train.Prepared; ``predicted_prob`` [n]: the probability of the first stage's predicted label); returns
    the run's summary, which is then the second stage's."""
    out = Path(cfg.out)
    report = read_report(out)
    flags = report["clean_prob"] < 0.5 if cfg.refit_flag == "clean-prob" else report["flags"]
    kept, labels = trusted_labels(flags, report["given"], report["predicted"], report["score"],
                                  predicted_prob, data.bundle.num_labels, cfg.refit, cfg.relabel_threshold)
    bundle, second = data.bundle, second_stage_bundle(data, kept, labels)
    epochs = cfg.refit_epochs or second_stage_epochs(cfg.epochs, len(report["given"]), len(kept))
    warmup = min(cfg.warmup_epochs, epochs - 1) if cfg.refit_routing != "none" else cfg.warmup_epochs
    stage_cfg = replace(cfg, routing=cfg.refit_routing, noise="clean", refit="none", out=str(out / REFIT_DIR),
                        epochs=epochs, warmup_epochs=warmup,
                        max_train_samples=None, max_eval_samples=None, dev_holdout=0.0, dev_labels="clean",
                        no_dynamics=cfg.refit_routing == "none" or cfg.no_dynamics)
    true = np.asarray(bundle.train.labels)
    counts = np.bincount(labels, minlength=bundle.num_labels)
    log(f"refit ({cfg.refit}): training again on {len(kept)} of {len(true)} samples "
        f"({int(flags.sum())} flagged, {cfg.refit_flag}) for {epochs} epochs; smallest class {int(counts.min())}")
    done = (out / REFIT_DIR / runs.SUMMARY).exists()
    if done:
        summary = json.loads((out / REFIT_DIR / runs.SUMMARY).read_text())
    else:
        summary = train_fn(stage_cfg, resume=resume and (out / REFIT_DIR / runs.CONFIG).exists(),
                           overwrite=not resume, progress=progress, log=log, data=second)
    n_dev = len(data.dev.labels) if data.dev is not None else 0
    result = run_summary(cfg, first, summary, kept, labels, true, n_dev, epochs, data.bundle.num_labels)
    stage, margin = result["handed_over"], result["handover_margin"]
    if stage == "first":
        log(f"refit: the second stage's dev accuracy {_dev_acc(summary, cfg.keep):.4f} is not above the first "
            f"stage's {_dev_acc(first, cfg.keep):.4f} by more than the margin {margin:.4f}: the run hands over the "
            "first stage's weights")
    if is_main:
        weights, aside = out / "weights", out / FIRST_STAGE_WEIGHTS
        if stage == "second":
            if not aside.exists():
                os.replace(weights, aside)
            shutil.rmtree(weights, ignore_errors=True)
            shutil.copytree(out / REFIT_DIR / "weights", out / ".tmp-weights")
            os.replace(out / ".tmp-weights", weights)
        elif aside.exists():  # a resumed run that had swapped the weights before it stopped
            shutil.rmtree(weights, ignore_errors=True)
            os.replace(aside, weights)
        from .modelcard import write_model_card

        write_model_card(out, result)  # the card of the weights handed over: both stages
        runs.atomic_write_json(out / runs.SUMMARY, result)
    return result


def run_summary(cfg, first: dict, second: dict, kept: np.ndarray, labels: np.ndarray, true: np.ndarray,
                n_dev: int, epochs: int, num_labels: int | None = None) -> dict:
    """The run's summary.json from its two stages' summaries: the handed-over stage's numbers as the run's
    (``handed_over``), the first stage's noise estimate, what was kept (``kept`` [m] indices with their
    ``labels``; ``true`` [n] the training set's clean labels), both stages' metrics under ``first_stage`` and
    ``second_stage``. ``num_labels`` scales the hand-over margin (:func:`handover_margin`)."""
    injected = cfg.noise.strip().lower() not in ("clean", "none", "")
    kept_stats = {"kept_samples": int(len(kept)), "kept_fraction": len(kept) / len(true),
                  "kept_noise_rate": float(np.mean(labels != true[kept])) if injected and len(kept) else None}
    return two_stage_summary(cfg, first, second, kept_stats, n_dev, epochs, num_labels)


def two_stage_summary(cfg, first: dict, second: dict, kept_stats: dict, n_dev: int, epochs: int,
                      num_labels: int | None) -> dict:
    """:func:`run_summary` once the kept samples are counted (``kept_stats``: kept_samples, kept_fraction,
    kept_noise_rate); also what takes a finished run's hand-over again from its stages' summaries."""
    stage = handed_over(first, second, cfg.keep, n_dev, num_labels)
    margin = handover_margin(first, cfg.keep, n_dev, num_labels)
    return {**(second if stage == "second" else first), "routing": cfg.routing, "noise": cfg.noise,
            "dataset": cfg.dataset,
            "realized_noise_rate": first["realized_noise_rate"], "dev_labels": first["dev_labels"],
            **{k: first.get(k) for k in NOISE_RATE_FIELDS},
            "refit": cfg.refit, "refit_flag": cfg.refit_flag, "refit_routing": cfg.refit_routing,
            "refit_epochs": epochs, "handed_over": stage, "handover_margin": margin, "dev_samples": n_dev,
            **kept_stats,
            "first_stage": first, "second_stage": {k: second.get(k) for k in STAGE_FIELDS}}


# What summary.json keeps of the second stage under second_stage (the first stage's summary is kept whole).
STAGE_FIELDS = ("delivered_acc", "peak_acc", "avg_acc", "last_acc", "kept_epoch", "epochs", "dev_peak_acc",
                "dev_last_acc", "train_seconds")
# The noise estimate is the first stage's: it read the labels as given; the second stage sees only those kept.
NOISE_RATE_FIELDS = ("estimated_noise_rate", "noise_rate_source", "fit_noise_rate", "floor_noise_rate",
                     "one_way_noise_rate", "cl_noise_rate", "cl_noise_rate_dev")


def _dev_acc(summary: dict, keep: str) -> float | None:
    """Dev accuracy of the weights a stage hands over (the labels it selected by: noisy under --noise)."""
    value = summary.get("dev_peak_acc" if keep == "best-dev" else "dev_last_acc")
    return None if value is None else float(value)


def noisy_dev_factor(noise_rate: float | None, num_labels: int | None) -> float:
    """c = 1 - eta K / (K - 1), clipped to [0, 1]: the share of a clean-accuracy gain that shows on dev labels
    carrying symmetric noise at rate eta over K classes, since accuracy on such labels is
    eta / (K - 1) + a (1 - eta K / (K - 1)) for a model of clean accuracy a. 1 without an estimate."""
    if not noise_rate or not num_labels or num_labels < 2:
        return 1.0
    return min(1.0, max(0.0, 1.0 - noise_rate * num_labels / (num_labels - 1)))


def handover_margin(first: dict, keep: str, n_dev: int, num_labels: int | None = None) -> float:
    """c times one standard error of the first stage's dev accuracy a on n_dev samples, c sqrt(a (1 - a) / n_dev),
    where c is :func:`noisy_dev_factor` of the first stage's estimated noise rate (1 where none is given)."""
    a = _dev_acc(first, keep)
    if a is None or n_dev <= 0:
        return 0.0
    return noisy_dev_factor(first.get("estimated_noise_rate"), num_labels) * math.sqrt(a * (1 - a) / n_dev)


def handed_over(first: dict, second: dict, keep: str, n_dev: int = 0, num_labels: int | None = None) -> str:
    """"second" when the second stage's dev accuracy is above the first stage's by more than
    :func:`handover_margin` (no margin when ``n_dev`` is 0), else "first".

    The refit is a model choice like the epoch: it is made on dev, never on test. The margin guards clean
    data, where the second stage only drops samples the model needed: dev accuracy moves by about a standard
    error between equally good models, and the second stage's is the best of more epochs, so an equal second
    stage would win a bare comparison more often than not. Where the first stage estimates many wrong labels
    the guard shrinks with the factor c by which noisy dev labels shrink a real gain (a quarter of it on five
    classes at 60% noise): there the second stage trains on cleaner labels and a full standard error would
    keep a better model out (docs/refit.md measures both). Without a dev split there is nothing to choose
    by, and the second stage (what --refit asked for) is handed over.
    """
    a, b = _dev_acc(first, keep), _dev_acc(second, keep)
    if a is None or b is None:
        return "second"
    return "second" if b - a > handover_margin(first, keep, n_dev, num_labels) else "first"
