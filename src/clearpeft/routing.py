"""CleaR's routing: per-sample clean probability from the training losses, and the gates drawn from it.

    p = CleanProbability(ema=0.9).fit(losses)               # 2-component GMM on the (smoothed) losses
    r = sample_gates("clean", p[batch_index], gamma, num_layers, generator)   # r ~ Bernoulli(γ·p)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

STRATEGIES = ("none", "clean", "deterministic", "random", "noisy")
# Upper bound γ of the gate probability (reference code, SPEC.md step 3).
DEFAULT_GAMMA = {"adapter": 0.7, "lora": 0.85, "prompt": 0.85, "bitfit": 0.9}


def gate_probability(strategy: str, p: torch.Tensor, gamma: float) -> torch.Tensor:
    """Probability that a sample's PEFT module is on, per sample (SPEC.md, ablations)."""
    if strategy == "clean":
        return gamma * p
    if strategy == "deterministic":
        return (p > 0.5).to(p.dtype)
    if strategy == "random":
        return torch.full_like(p, gamma)
    if strategy == "noisy":
        return gamma * (1.0 - p)
    raise ValueError(f"unknown routing strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


def sample_gates(strategy: str, p: torch.Tensor, gamma: float, num_layers: int,
                 generator: torch.Generator) -> torch.Tensor:
    """Independent gates per layer and sample: r[l, i] ~ Bernoulli(prob_i), shape [num_layers, batch]."""
    return gates_from_draws(strategy, p, gamma, torch.rand((p.shape[0], num_layers), generator=generator))


def gates_from_draws(strategy: str, p: torch.Tensor, gamma: float, draws: torch.Tensor) -> torch.Tensor:
    """Gates [num_layers, batch] from uniform draws [batch, num_layers]: r[l, i] = 1 if draws[i, l] < prob_i.
    The trainer draws one row per sample per epoch up front, so a sample's gates do not depend on which
    batch, or which process, it lands in."""
    prob = gate_probability(strategy, p.float(), gamma)
    return (draws.T < prob.unsqueeze(0)).float()


@dataclass
class CleanProbability:
    """Clean probability from per-sample losses: optional EMA across epochs, then a 2-component GMM whose
    lower-mean component is "clean".

    Fallbacks (with a warning, never a crash): non-finite losses are replaced by the largest finite loss
    (treated as the least clean); if fewer than two distinct loss values remain, or the GMM fails to
    converge or gives two components with the same mean, every sample gets p = 1, which makes the clean
    strategy route like ``random`` (Bernoulli(γ)) for that epoch.
    """

    ema: float | None = None  # weight of the previous smoothed loss: 0.9 means 0.9·previous + 0.1·new
    seed: int = 0
    smoothed: np.ndarray | None = field(default=None, repr=False)
    fallback: str | None = None

    def fit(self, losses: np.ndarray, smooth: bool = True) -> np.ndarray:
        """p from this epoch's losses. ``smooth=False`` fits the raw losses and leaves the EMA untouched: the
        trainer's warm-up passes, which only measure, do not enter the EMA (the reference code starts it with
        the first routed epoch)."""
        losses = np.asarray(losses, dtype=np.float64).copy()
        finite = np.isfinite(losses)
        if not finite.all():
            self._warn(f"{int((~finite).sum())} non-finite losses replaced by the largest finite loss")
            losses[~finite] = losses[finite].max() if finite.any() else 0.0
        if smooth:
            if self.ema is not None and self.smoothed is not None and self.smoothed.shape == losses.shape:
                losses = self.ema * self.smoothed + (1.0 - self.ema) * losses
            self.smoothed = losses
        self.fallback = None
        if np.unique(losses).size < 2:
            return self._all_clean(losses, "fewer than two distinct loss values")
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import GaussianMixture

        # Min-max scaling (as DivideMix) keeps the GMM's variance floor meaningful whatever the loss scale.
        scaled = (losses - losses.min()) / (losses.max() - losses.min())
        gmm = GaussianMixture(n_components=2, max_iter=20, tol=1e-2, reg_covar=5e-4, random_state=self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gmm.fit(scaled.reshape(-1, 1))
        means = gmm.means_.ravel()
        if not gmm.converged_ or np.isclose(means[0], means[1]):
            return self._all_clean(losses, "the loss GMM did not separate two components")
        clean = int(np.argmin(means))
        return gmm.predict_proba(scaled.reshape(-1, 1))[:, clean]

    def _all_clean(self, losses: np.ndarray, why: str) -> np.ndarray:
        self._warn(f"{why}; every sample gets clean probability 1 this epoch")
        self.fallback = why
        return np.ones_like(losses)

    @staticmethod
    def _warn(message: str) -> None:
        warnings.warn(f"clean probability: {message}", RuntimeWarning, stacklevel=3)
