"""CleaR's routing: per-sample clean probability from the training losses, and the gates drawn from it.

    p = CleanProbability(ema=0.9).fit(losses)               # 2-component GMM on the (smoothed) losses
    r = sample_gates("clean", p[batch_index], gamma, num_layers, generator)   # r ~ Bernoulli(γ·p)

``clean-auto`` is CleaR with a guard (docs/clean-auto.md): it trains as plain PEFT (every module on, no consistency
loss; warm-up too: CleaR's warm-up gates, tried, lowered dev accuracy) until a fit of the losses shows a mode
of wrong labels, and from then on routes as CleaR for every epoch whose fit shows one. A mode of wrong labels
is a high-loss component that is (1) a mode of its own, Ashman's D of the two components above
``SEPARATION_THRESHOLD``, and (2) above chance level: its mean loss exceeds log K, the loss of the uniform guess,
so the model gives its samples' labels less than 1/K and believes another label. A mode far apart from the
rest (D above ``STRONG_SEPARATION``) counts from a little below chance (``NEAR_CHANCE_FRACTION`` · log K): a
slow learner of many classes still gives wrong labels nearly 1/K. On clean data the high-loss component is the
samples not learnt yet: the tail of one mode (D <= 2), or, for a slow learner on many classes, a mode well below
chance level (their labels already get more than 1/K); routing by p would switch their modules off.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

STRATEGIES = ("none", "clean", "clean-auto", "deterministic", "random", "noisy")
# Ashman's D = sqrt(2)·|μ1 − μ2| / sqrt(σ1² + σ2²) of the two loss components; D > 2 is the usual criterion for
# a mixture of two Gaussians that is cleanly bimodal (Ashman et al. 1994). Below it the "noisy" component is
# the tail of one mode (samples not learnt yet), and clean-auto stands down.
SEPARATION_THRESHOLD = 2.0
# A mode of wrong labels has a mean loss above this share of chance level (log K): its labels get about 1/K
# or less. Clean samples not learnt yet sat at 0.33-0.74 of log K at the guard's decisions on clean BANKING77.
CHANCE_FRACTION = 1.0
# ... or above this share of it when the mode is far apart (D above STRONG_SEPARATION). BANKING77 Prompt at 60%
# noise: D 3.1-3.4 at 0.93-0.97 log K, where routing raised dev accuracy (results/cpu-clean-auto/analysis.md);
# the clean cells' modes never had D above 2.62 nor, with D above 2, a mean loss above 0.86 log K.
STRONG_SEPARATION = 3.0
NEAR_CHANCE_FRACTION = 0.9


def gate_probability(strategy: str, p: torch.Tensor, gamma: float) -> torch.Tensor:
    """Probability that a sample's PEFT module is on, per sample (the paper's ablations: docs/method.md)."""
    if strategy in ("clean", "clean-auto"):  # clean-auto's stand-down epochs draw no gates at all
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
    chance_loss: float | None = None  # log K, the loss of the uniform guess (None: criterion (2) is not applied)
    smoothed: np.ndarray | None = field(default=None, repr=False)
    fallback: str | None = None
    fit_stats: dict = field(default_factory=dict)  # of the last fit: see _stats
    gmm: object = field(default=None, repr=False)  # the last fitted GaussianMixture (on min-max scaled losses)

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
        self.fit_stats, self.gmm = {}, None
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
        p = gmm.predict_proba(scaled.reshape(-1, 1))[:, clean]
        self.gmm = gmm
        self.fit_stats = _stats(gmm, clean, scaled, losses, p, self.chance_loss)
        return p

    def shows_label_noise(self) -> bool:
        """Whether the last fit found a mode of wrong labels (clean-auto routes only then)."""
        return self.fit_stats.get("estimated_noise_rate", 0.0) > 0.0

    def _all_clean(self, losses: np.ndarray, why: str) -> np.ndarray:
        self._warn(f"{why}; every sample gets clean probability 1 this epoch")
        self.fallback = why
        self.fit_stats = {"estimated_noise_rate": 0.0, "high_loss_weight": 0.0, "flagged_rate": 0.0,
                          "loss_separation": 0.0, "bic_gain": 0.0, "noisy_component_loss": None}
        return np.ones_like(losses)

    @staticmethod
    def _warn(message: str) -> None:
        warnings.warn(f"clean probability: {message}", RuntimeWarning, stacklevel=3)


def is_wrong_label_mode(separation: float, noisy_loss: float, chance_loss: float | None) -> bool:
    """Whether a fit's high-loss component is a mode of wrong labels (module docstring): a mode of its own
    (D above SEPARATION_THRESHOLD) above chance level (mean loss above CHANCE_FRACTION · log K), or one far
    apart (D above STRONG_SEPARATION) near it (above NEAR_CHANCE_FRACTION · log K); no chance criterion when
    ``chance_loss`` is None."""
    if chance_loss is None:
        return separation > SEPARATION_THRESHOLD
    return (separation > SEPARATION_THRESHOLD and noisy_loss > CHANCE_FRACTION * chance_loss) or \
        (separation > STRONG_SEPARATION and noisy_loss > NEAR_CHANCE_FRACTION * chance_loss)


def _stats(gmm, clean: int, scaled: np.ndarray, losses: np.ndarray, p: np.ndarray,
           chance_loss: float | None) -> dict:
    """What a fit says about the noise: the high-loss component's weight (the mean of 1 − p, which EM makes
    equal to it), the estimated noise rate (that weight where the component is a mode of wrong labels, see the
    module docstring, else 0: on clean data the weight is the samples not learnt yet, 0.2-0.4 on the clean
    cpu.yaml cells), the share flagged (p < 0.5), the components' separation (Ashman's D), the BIC gain of two
    components over one (positive: two fit better) and the high-loss component's mean loss."""
    from sklearn.mixture import GaussianMixture

    noisy = 1 - clean
    means, variances = gmm.means_.ravel(), gmm.covariances_.ravel()
    x = scaled.reshape(-1, 1)
    one = GaussianMixture(n_components=1, reg_covar=5e-4, random_state=0).fit(x)
    span = losses.max() - losses.min()
    separation = float(np.sqrt(2.0) * abs(means[noisy] - means[clean]) / np.sqrt(variances.sum()))
    noisy_loss = float(losses.min() + means[noisy] * span)
    weight = float(np.mean(1.0 - p))
    wrong_labels = is_wrong_label_mode(separation, noisy_loss, chance_loss)
    return {"estimated_noise_rate": weight if wrong_labels else 0.0, "high_loss_weight": weight,
            "flagged_rate": float(np.mean(p < 0.5)), "loss_separation": separation,
            "bic_gain": float(one.bic(x) - gmm.bic(x)) / len(x), "noisy_component_loss": noisy_loss}
