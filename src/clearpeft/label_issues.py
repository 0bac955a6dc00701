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

The run's estimate of how many labels are wrong lives here too (noise_rate_estimate): the larger of the loss
fit's reading and the confusion floor of the same final model's predictions (docs/refit.md).
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


def noise_rate_estimate(fit_rate: float | None, floor_rate: float | None) -> tuple[float | None, str | None]:
    """(estimate, source) of how many training labels are wrong: the larger of the loss fit's high-loss weight
    (``fit_rate``, > 0 only where the fit shows a mode of wrong labels) and the confusion floor
    (``floor_rate``, :func:`confusion_floor_noise_rate`). Both read low, in different places: the fit reads 0
    whenever the wrong labels form no mode of their own (asymmetric noise, SST-5's hard and wrong labels), the
    floor misses wrong labels that pile up on one class. Confident learning's count
    (:func:`confident_joint_noise_rate`) is no alternative: it takes a weak model's own errors for wrong labels
    and reads high even on clean labels where the model learns the task poorly (benchmarks/noise_rate.py,
    docs/refit.md)."""
    if floor_rate is None:
        return fit_rate, (None if fit_rate is None else "loss fit")
    if fit_rate is not None and fit_rate >= floor_rate:
        return fit_rate, "loss fit"
    return floor_rate, "confusion floor"


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


FLOOR_CONFUSABLE = 2  # classes a model is taken to mix each predicted class up with


def confusion_floor_noise_rate(probs: np.ndarray, given: np.ndarray, confusable: int = FLOOR_CONFUSABLE) -> float:
    """The share of wrong labels that spread over the other classes, read off the floor of the confusion
    between predicted and given labels. Within the samples predicted as class i, a wrong label that may be any
    other class adds the same share to every off-diagonal cell, while the model's own errors pile up on the
    few classes it confuses with i. So the cells left after dropping the ``confusable`` largest are the floor:
    their mean share times K - 1 estimates the rate, and the rows are averaged by their sizes. Unlike a count
    of disagreements it does not take a weak model's errors between neighbouring classes (SST-5's "negative"
    and "very negative") for wrong labels; it misses noise that piles up on one class (asymmetric, pair
    noise), which confident learning's count sees. With K <= ``confusable`` + 2 it keeps one cell per row;
    with two classes it is the disagreement rate."""
    probs, given = np.asarray(probs, dtype=np.float64), np.asarray(given, dtype=np.int64)
    k = probs.shape[1]
    if len(given) == 0 or k < 2:
        return 0.0
    keep = k - 1 - min(confusable, k - 2)
    confusion = np.bincount(probs.argmax(1) * k + given, minlength=k * k).reshape(k, k).astype(np.float64)
    off = np.sort(confusion[~np.eye(k, dtype=bool)].reshape(k, k - 1), axis=1)  # row i: cells (i, j != i)
    return float((off[:, :keep].mean(1) * (k - 1)).sum() / len(given))
