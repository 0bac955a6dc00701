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
fit's reading and the confusion of the same final model's predictions, its floor plus its one-way flows
(docs/refit.md).
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


def noise_rate_estimate(fit_rate: float | None, floor_rate: float | None,
                        one_way_rate: float | None = None) -> tuple[float | None, str | None]:
    """(estimate, source) of how many training labels are wrong: the larger of the loss fit's high-loss weight
    (``fit_rate``, > 0 only where the fit shows a mode of wrong labels) and the confusion's reading, the floor
    (``floor_rate``, :func:`confusion_floor_noise_rate`) plus the one-way flows (``one_way_rate``,
    :func:`one_way_noise_rate`; 0 in runs made before it was recorded). Both read low, in different places:
    the fit reads 0 whenever the wrong labels form no mode of their own (asymmetric noise, SST-5's hard and
    wrong labels); the confusion misses wrong labels the model has learnt to predict, and those that pile up
    on a class the model also confuses. Confident learning's count (:func:`confident_joint_noise_rate`) is no
    alternative: it takes a weak model's own errors for wrong labels and reads high even on clean labels where
    the model learns the task poorly (benchmarks/noise_rate.py, docs/refit.md)."""
    if floor_rate is None:
        return fit_rate, (None if fit_rate is None else "loss fit")
    confusion = floor_rate + (one_way_rate or 0.0)
    if fit_rate is not None and fit_rate >= confusion:
        return fit_rate, "loss fit"
    return confusion, ("confusion floor + one-way flows" if one_way_rate else "confusion floor")


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


def confusion_counts(predicted: np.ndarray, given: np.ndarray, num_classes: int) -> np.ndarray:
    """[K, K] counts of the training samples by predicted label (row) and given label (column)."""
    cells = np.asarray(predicted, dtype=np.int64) * num_classes + np.asarray(given, dtype=np.int64)
    return np.bincount(cells, minlength=num_classes * num_classes).reshape(num_classes, num_classes).astype(np.float64)


def _spread(confusion: np.ndarray, confusable: int) -> np.ndarray:
    """Per predicted class (row), the mean of its off-diagonal cells after dropping the ``confusable`` largest:
    the share a wrong label that may be any other class adds to each cell."""
    k = confusion.shape[0]
    keep = k - 1 - min(confusable, k - 2)
    off = np.sort(confusion[~np.eye(k, dtype=bool)].reshape(k, k - 1), axis=1)  # row i: cells (i, j != i)
    return off[:, :keep].mean(1)


def confusion_floor_noise_rate(probs: np.ndarray, given: np.ndarray, confusable: int = FLOOR_CONFUSABLE) -> float:
    """The share of wrong labels that spread over the other classes, read off the floor of the confusion
    between predicted and given labels. Within the samples predicted as class i, a wrong label that may be any
    other class adds the same share to every off-diagonal cell, while the model's own errors pile up on the
    few classes it confuses with i. So the cells left after dropping the ``confusable`` largest are the floor:
    their mean share times K - 1 estimates the rate, and the rows are averaged by their sizes. Unlike a count
    of disagreements it does not take a weak model's errors between neighbouring classes (SST-5's "negative"
    and "very negative") for wrong labels; it misses noise that piles up on one class (asymmetric, pair
    noise), which :func:`one_way_noise_rate` adds where it flows one way. With K <= ``confusable`` + 2 it
    keeps one cell per row; with two classes it is the disagreement rate."""
    probs, given = np.asarray(probs, dtype=np.float64), np.asarray(given, dtype=np.int64)
    k = probs.shape[1]
    if len(given) == 0 or k < 2:
        return 0.0
    return float((_spread(confusion_counts(probs.argmax(1), given, k), confusable) * (k - 1)).sum() / len(given))


ONE_WAY_Z = 3.0  # a flow counts when it exceeds its reverse by this many Poisson deviations,
ONE_WAY_REVERSE = 0.1  # and its reverse is at most this share of it


def one_way_noise_rate(probs: np.ndarray, given: np.ndarray, confusable: int = FLOOR_CONFUSABLE,
                       z: float = ONE_WAY_Z, reverse: float = ONE_WAY_REVERSE) -> float:
    """The share of wrong labels that flow one way, from the class the model predicts to one other given
    label, above the floor (:func:`confusion_floor_noise_rate`), which drops such cells. A model confuses
    similar classes both ways (cells (i, j) and (j, i) both above the floor), so a cell only counts where its
    excess over the row's floor beats its reverse's by ``z`` Poisson deviations and the reverse's excess is at
    most ``reverse`` of it: labels of class i given as j, and almost never the other way, is what
    class-dependent noise between classes the model tells apart looks like (asymmetric noise on BANKING77
    intents). Between classes the model confuses (SST-5's neighbours) the flows mostly go both ways and count 0,
    as do wrong labels the model has learnt to predict."""
    probs, given = np.asarray(probs, dtype=np.float64), np.asarray(given, dtype=np.int64)
    k = probs.shape[1]
    if len(given) == 0 or k < 3:
        return 0.0
    confusion = confusion_counts(probs.argmax(1), given, k)
    excess = np.clip(confusion - _spread(confusion, confusable)[:, None], 0.0, None)
    np.fill_diagonal(excess, 0.0)
    one_way = (excess - excess.T > z * np.sqrt(confusion + confusion.T)) & (excess.T <= reverse * excess)
    return float(np.where(one_way, excess - excess.T, 0.0).sum() / len(given))
