"""Which training labels the report flags for review (its is_label_issue), from the final model.

    flags = label_issue_flags(p, probs, given)   # p [n] clean probability, probs [n, K], given [n] labels

A sample is flagged when its clean probability is below one half (p < 0.5: the loss GMM puts it in the
high-loss component) or when confident learning finds another label for it (Northcutt et al. 2021, cleanlab's
``filter_by="confident_learning"``): its confident label, the most probable among the classes j whose
probability reaches that class's threshold t_j (the mean probability of class j over the samples labelled j),
is not its given label. The two see different errors. p < 0.5 is one cut on the loss, good under symmetric
noise, but under class-dependent (asymmetric, instance-dependent) noise it flagged 0.36-0.71x as many samples
as were wrong; the per-class thresholds of confident learning follow each class's own confidence. Over the 14
runs of benchmarks/label_issues.py the union had mean F1 0.638, p < 0.5 alone 0.572, confident learning alone
0.609, "predicted label differs" 0.633. Written here (a dozen lines) rather than taken from cleanlab, which
stays an optional extra for the benchmark.
"""

from __future__ import annotations

import numpy as np


def class_thresholds(probs: np.ndarray, given: np.ndarray) -> np.ndarray:
    """t_j: the mean probability of class j over the samples labelled j (1.0 for a class nobody has, which
    then never counts as a confident label)."""
    num_classes = probs.shape[1]
    sums = np.bincount(given, weights=probs[np.arange(len(given)), given], minlength=num_classes)
    counts = np.bincount(given, minlength=num_classes)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 1.0)


def confident_flags(probs: np.ndarray, given: np.ndarray) -> np.ndarray:
    """Boolean [n]: the confident label exists and is not the given label."""
    probs, given = np.asarray(probs, dtype=np.float64), np.asarray(given, dtype=np.int64)
    above = probs >= class_thresholds(probs, given)
    confident = np.where(above, probs, -1.0).argmax(1)
    return above.any(1) & (confident != given)


def label_issue_flags(p: np.ndarray, probs: np.ndarray, given: np.ndarray) -> np.ndarray:
    """Boolean [n]: p < 0.5, or confident learning finds another label (module docstring)."""
    return (np.asarray(p) < 0.5) | confident_flags(probs, given)


def noise_rate_estimate(fit_rate: float | None, cl_rate: float | None) -> tuple[float | None, str | None]:
    """(estimate, source) of how many training labels are wrong: the loss fit's high-loss weight where the fit
    shows a mode of wrong labels (``fit_rate`` > 0), otherwise confident learning's in-sample count
    (``cl_rate``, :func:`confident_joint_noise_rate`). The fit reads 0 whenever the wrong labels form no mode of
    their own (asymmetric noise, SST-5's hard and wrong labels), however many there are; the count does not,
    but it takes a weak model's own errors for wrong labels, so on a task the model learns poorly it reads
    high even on clean labels (benchmarks/noise_rate.py, docs/refit.md)."""
    if fit_rate is not None and fit_rate > 0:
        return fit_rate, "loss fit"
    if cl_rate is not None:
        return cl_rate, "confident learning"
    return fit_rate, None


def confident_joint_noise_rate(probs: np.ndarray, given: np.ndarray) -> float:
    """The share of samples whose confident label is not the given one, after calibrating the confident joint
    (cleanlab's ``estimate_joint``): each given label's row of counts C[given, confident] is scaled to the
    number of samples that carry it, and the estimate is 1 - trace / n. A count of disagreements, so a model's
    own errors count as label errors: on probabilities from held-out data it reads the noise plus the share
    the model gets wrong among the confident samples."""
    probs, given = np.asarray(probs, dtype=np.float64), np.asarray(given, dtype=np.int64)
    if len(given) == 0:
        return 0.0
    k = probs.shape[1]
    above = probs >= class_thresholds(probs, given)
    has = above.any(1)
    confident = np.where(above, probs, -1.0).argmax(1)
    joint = np.bincount(given[has] * k + confident[has], minlength=k * k).reshape(k, k).astype(np.float64)
    counts = np.bincount(given, minlength=k).astype(np.float64)
    rows = joint.sum(1)
    joint *= np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)[:, None]
    return float(1.0 - np.trace(joint) / len(given))
