"""Synthetic label noise for the training split: symmetric, asymmetric and instance-dependent.

Every draw comes from ``np.random.default_rng(seed)``, so the same labels, spec, seed (and features) give the
same noisy labels. The realized rate and the empirical transition matrix are returned with the labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import UserError

KINDS = ("clean", "symmetric", "symmetric-exclusive", "asymmetric", "instance")
INSTANCE_STD = 0.1  # spread of the per-sample flip rates q_i (Xia et al., 2020)


@dataclass(frozen=True)
class NoiseSpec:
    """A noise kind and its rate η in [0, 1]."""

    kind: str
    rate: float

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"unknown noise kind {self.kind!r}: use one of {', '.join(KINDS)}")
        if not (isinstance(self.rate, (int, float)) and math.isfinite(self.rate) and 0.0 <= self.rate <= 1.0):
            raise UserError(f"noise rate {self.rate!r} is outside [0, 1]: give e.g. symmetric:0.6")
        if self.kind == "clean" and self.rate != 0.0:
            raise UserError(f"clean data has no noise rate (got {self.rate}): write just 'clean'")

    @classmethod
    def parse(cls, text: str) -> NoiseSpec:
        """``clean`` or ``none``, or ``KIND:RATE`` such as ``symmetric:0.6`` or ``instance:0.4``."""
        value = text.strip().lower()
        if value in ("clean", "none", ""):
            return cls("clean", 0.0)
        kind, sep, rate_text = value.partition(":")
        kind = kind.strip()
        if kind not in KINDS:
            raise UserError(f"unknown noise kind {kind!r} in {text!r}: use clean or KIND:RATE with KIND one of "
                            f"{', '.join(KINDS[1:])}")
        if not sep:
            if kind == "clean":
                return cls("clean", 0.0)
            raise UserError(f"noise {text!r} has no rate: write {kind}:RATE, e.g. {kind}:0.4")
        try:
            rate = float(rate_text)
        except ValueError:
            raise UserError(f"noise rate {rate_text.strip()!r} in {text!r} is not a number: "
                            f"write e.g. {kind}:0.4") from None
        return cls(kind, rate)

    def __str__(self) -> str:
        return "clean" if self.kind == "clean" else f"{self.kind}:{self.rate:g}"


@dataclass
class NoisyLabels:
    noisy: np.ndarray  # int64
    corrupted: np.ndarray  # bool, noisy != true
    realized_rate: float  # corrupted.mean()
    transition: np.ndarray  # K x K empirical P(noisy = j | true = i); rows without samples are zero
    # Instance noise only: each sample's row P(noisy = j | x_i), the distribution its noisy label was drawn from.
    sample_probs: np.ndarray | None = None
    # Instance noise only: the projection W (d x K) of the generator, so that another split (a noisy dev split)
    # can be corrupted by the same function of the text.
    projection: np.ndarray | None = None


def apply_noise(labels: np.ndarray, num_classes: int, spec: NoiseSpec, seed: int,
                features: np.ndarray | None = None, projection: np.ndarray | None = None) -> NoisyLabels:
    """Corrupt ``labels`` (ids in 0..num_classes-1) by ``spec``; ``features`` (n x d) are needed for instance,
    and ``projection`` (the W of another split's NoisyLabels) makes it the same function of the text as there.

    symmetric: with probability η the label is redrawn uniformly from all K classes, so it may stay the same
    (realized ≈ η(K-1)/K, as in the reference code). symmetric-exclusive: redrawn from the K-1 other classes.
    asymmetric: c -> (c-1) mod K with probability η. instance: Xia et al. (2020), see `instance_probabilities`.
    """
    true = np.asarray(labels)
    if true.ndim != 1 or (true.size and not np.issubdtype(true.dtype, np.integer)):
        raise UserError("labels must be a 1-D array of integer class ids")
    true = true.astype(np.int64)
    if true.size and (true.min() < 0 or true.max() >= num_classes):
        raise UserError(f"labels must lie in 0..{num_classes - 1}, found {true.min()}..{true.max()}")
    if spec.kind != "clean" and num_classes < 2:
        raise UserError(f"{spec} noise needs at least two classes, got {num_classes}")
    rng = np.random.default_rng(seed)
    n, k = len(true), num_classes
    probs = w = None
    if spec.kind == "clean":
        noisy = true.copy()
    elif spec.kind == "symmetric":
        flip = rng.random(n) < spec.rate
        noisy = np.where(flip, rng.integers(0, k, n), true)
    elif spec.kind == "symmetric-exclusive":
        flip = rng.random(n) < spec.rate
        noisy = np.where(flip, (true + rng.integers(1, k, n)) % k, true)
    elif spec.kind == "asymmetric":
        flip = rng.random(n) < spec.rate
        noisy = np.where(flip, (true - 1) % k, true)
    else:
        if features is None:
            raise UserError("instance-dependent noise needs features: pass the frozen encoder's embeddings")
        probs, w = instance_probabilities(true, k, spec.rate, rng, features, projection)
        # Inverse-CDF draw of one label per row; the clip guards against rounding at the top of the cumsum.
        noisy = np.minimum((probs.cumsum(axis=1) < rng.random(n)[:, None]).sum(axis=1), k - 1)
    noisy = noisy.astype(np.int64)
    corrupted = noisy != true
    return NoisyLabels(noisy, corrupted, float(corrupted.mean()) if n else 0.0,
                       transition_matrix(true, noisy, k), probs, w)


def noisy_labels_csv(texts: list[str], labels: np.ndarray, noisy: np.ndarray) -> str:
    """The training split as index,text,label,noisy_label CSV (``clearpeft noise --out`` and a run's
    noisy_labels.csv): ground truth beside what training sees, for anyone scoring a label-issue detector."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["index", "text", "label", "noisy_label"])
    for i, (text, y, z) in enumerate(zip(texts, labels, noisy)):
        writer.writerow([i, text, int(y), int(z)])
    return buf.getvalue()


def instance_probabilities(labels: np.ndarray, num_classes: int, rate: float, rng: np.random.Generator,
                           features: np.ndarray, projection: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample noisy-label distributions of the part-dependent generator of Xia et al. (2020), and its W.

    q_i ~ N(rate, 0.1²) truncated to [0, 1]; scores = x_i @ W with W (d x K) standard normal (or
    ``projection``) and x_i the L2-normalised feature row; the true class is excluded, the others share q_i by
    softmax of their scores, and the true class keeps 1 - q_i.
    """
    from scipy.stats import truncnorm

    x = np.asarray(features, dtype=np.float64)
    n = len(labels)
    if x.ndim != 2 or x.shape[0] != n:
        raise UserError(f"features must be an array of shape ({n}, d), got {x.shape}")
    if not np.isfinite(x).all():
        raise UserError("features contain NaN or infinite values")
    # Unit rows keep every score ~ N(0, 1) whatever the encoder's scale, so the softmax is neither flat nor one-hot.
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    lo, hi = (0.0 - rate) / INSTANCE_STD, (1.0 - rate) / INSTANCE_STD
    q = truncnorm.rvs(lo, hi, loc=rate, scale=INSTANCE_STD, size=n, random_state=rng)
    w = rng.standard_normal((x.shape[1], num_classes))  # drawn either way: the stream stays the same
    if projection is not None:
        if projection.shape != w.shape:
            raise UserError(f"the noise projection has shape {projection.shape}, the features need {w.shape}")
        w = projection
    scores = x @ w
    rows = np.arange(n)
    scores[rows, labels] = -np.inf
    scores -= scores.max(axis=1, keepdims=True)
    probs = np.exp(scores)
    probs *= (q / probs.sum(axis=1))[:, None]
    probs[rows, labels] = 1.0 - q
    return probs, w


def transition_matrix(true: np.ndarray, noisy: np.ndarray, num_classes: int) -> np.ndarray:
    """Row-normalised K x K matrix of P(noisy = j | true = i); all-zero rows for classes without samples."""
    true = np.asarray(true, dtype=np.int64)
    noisy = np.asarray(noisy, dtype=np.int64)
    counts = np.bincount(true * num_classes + noisy, minlength=num_classes * num_classes)
    counts = counts.reshape(num_classes, num_classes).astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
