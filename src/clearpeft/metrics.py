"""The paper's metrics: Peak / Avg / Last test accuracy, training dynamics on clean and corrupted samples,
and how well the clean probability separates them."""

from __future__ import annotations

import numpy as np


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(predictions) == np.asarray(labels))) if len(labels) else float("nan")


def summarize_curve(accuracies: list[float]) -> dict[str, float]:
    """Peak = best epoch, Avg = mean over all epochs (punishes a late collapse), Last = final epoch."""
    values = np.asarray(accuracies, dtype=float)
    return {"peak_acc": float(values.max()), "avg_acc": float(values.mean()), "last_acc": float(values[-1])}


def training_dynamics(predictions: np.ndarray, true_labels: np.ndarray, given_labels: np.ndarray) -> dict[str, float]:
    """Learning on clean samples; memorization and correction on corrupted ones (paper Figures 1 and 4)."""
    predictions, true_labels, given_labels = map(np.asarray, (predictions, true_labels, given_labels))
    corrupted = true_labels != given_labels
    clean = ~corrupted
    nan = float("nan")
    def share(mask, target):
        return float(np.mean(predictions[mask] == target[mask])) if mask.any() else nan

    return {
        "clean_learning": share(clean, true_labels),
        "noisy_memorization": share(corrupted, given_labels),
        "noisy_correction": share(corrupted, true_labels),
    }


def detection_quality(clean_prob: np.ndarray, corrupted: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Clean samples are the positives: precision and recall of ``p > threshold``, and ROC AUC of p."""
    from sklearn.metrics import roc_auc_score

    clean = ~np.asarray(corrupted, dtype=bool)
    predicted = np.asarray(clean_prob) > threshold
    nan = float("nan")
    hits = int(np.sum(predicted & clean))
    return {
        "detect_precision": hits / int(predicted.sum()) if predicted.any() else nan,
        "detect_recall": hits / int(clean.sum()) if clean.any() else nan,
        "detect_auc": float(roc_auc_score(clean, clean_prob)) if 0 < clean.sum() < len(clean) else nan,
    }
