"""CleaR itself (docs/method.md): what each epoch is, its gates, the routed loss, and the estimate of p and f_ens.

The training loop (train.py) calls these in order; everything CleaR decides is here, the loop only runs it:

    state = start_state(n_train, routing, estimator, history)             # fresh, or where a resumed run was
    plan = plan_epoch(routing, epoch, warmup_epochs, state.stood_down)    # warm-up, routed, or plain PEFT
    gates = step_gates(plan, state.p, gamma, draws)                       # r ~ Bernoulli(γ·p) per layer
    loss = routed_loss(logits, labels, teacher(plan, state, reg_weight), reg_weight, temperature)
    ... after the epoch, if pass_use(plan, epoch, warmup_epochs, epochs) says the pass is needed, the
    no-gradient pass over the training set with pass_gates(...) gives losses and logits:
    update_estimate(state, losses, logits, routes_next=..., guarded=...)  # p, f_ens for the next epoch

Every random draw comes from ``generator(seed, epoch, stream)``, one named stream per purpose, so a resumed
run draws what the uninterrupted run would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .routing import CleanProbability, gates_from_draws


# The random streams of an epoch, by purpose. The numbers are part of what a seed means: changing one changes
# every run's draws.
STREAMS = {"step_gates": 0, "pass_gates": 1, "eval_gates": 2}


def generator(seed: int, epoch: int, stream: str) -> torch.Generator:
    """The random stream of one (seed, epoch, purpose): runs and resumed runs draw the same numbers."""
    state = np.random.SeedSequence([seed, epoch, STREAMS[stream]]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


@dataclass
class CleaRState:
    """What CleaR carries from one epoch to the next (and through a checkpoint)."""

    p: np.ndarray                   # clean probability in use; 1 until warm-up ends
    ens_logits: np.ndarray | None   # f_ens per sample: the teacher of the consistency loss
    estimator: CleanProbability     # the GMM on the losses, with the adapter's loss EMA
    stood_down: bool                # clean-auto: the last fit showed no separate noisy mode


@dataclass(frozen=True)
class EpochPlan:
    routed: bool        # the run routes at all (--routing other than none)
    after_warmup: bool  # routing by p starts after the warm-up epochs
    plain: bool         # this epoch trains as plain PEFT: every module on, no consistency loss
    strategy: str       # gate strategy of the steps: random (Bernoulli(γ)) in warm-up, the run's after it


def plan_epoch(routing: str, epoch: int, warmup_epochs: int, stood_down: bool) -> EpochPlan:
    """Warm-up epochs gate every module with probability γ; later epochs route by p.
    clean-auto trains as plain PEFT in warm-up and whenever its last fit stood down (routing.py)."""
    routed = routing != "none"
    after_warmup = routed and epoch >= warmup_epochs
    plain = not routed or (routing == "clean-auto" and (stood_down or not after_warmup))
    return EpochPlan(routed, after_warmup, plain, routing if after_warmup else "random")


def start_state(n_train: int, routing: str, estimator: CleanProbability, history: list[dict],
                arrays: dict | None = None) -> CleaRState:
    """CleaR's state before the first epoch to train: p = 1 and no f_ens for a new run; for a resumed run the
    checkpoint's ``arrays`` (p, f_ens, smoothed losses) and clean-auto's last decision, which the last
    metrics line holds. clean-auto starts stood down: it trains as plain PEFT until a fit shows wrong labels."""
    guarded = routing == "clean-auto"
    stood_down = bool(history[-1].get("routing_stood_down", True)) if guarded and history else guarded
    state = CleaRState(p=np.ones(n_train), ens_logits=None, estimator=estimator, stood_down=stood_down)
    if arrays is not None:
        state.p, state.ens_logits = arrays["p"], arrays.get("ens_logits")
        state.estimator.smoothed = arrays.get("smoothed_losses")
    return state


def pass_use(plan: EpochPlan, epoch: int, warmup_epochs: int, epochs: int) -> tuple[bool, bool]:
    """(routes_next, used) of the pass after ``epoch``: whether the next epoch routes by p, and whether this
    pass's p and f_ens will be used at all (not after the last epoch). Passes that are not used only measure."""
    routes_next = plan.routed and epoch + 1 >= warmup_epochs
    return routes_next, routes_next and epoch + 1 < epochs


def step_gates(plan: EpochPlan, p: np.ndarray, gamma: float, draws: torch.Tensor) -> Callable:
    """gates(index) -> r [num_layers, batch] for the training steps, r[l, i] ~ Bernoulli(γ·p_i),
    from the epoch's uniform draws [n_train, num_layers]; None (every module on) for a plain epoch."""
    if plan.plain:
        return lambda index: None
    p_tensor = torch.as_tensor(p, dtype=torch.float32)
    return lambda index: gates_from_draws(plan.strategy, p_tensor[index], gamma, draws[index])


def pass_gates(plan: EpochPlan, p: np.ndarray, gamma: float, draws: torch.Tensor, how: str) -> Callable:
    """gates(index, k) of the k-th routed pass that measures the losses and f_ens.
    ``random`` (the reference code): Bernoulli(γ) for every sample, whatever p is. ``routed`` gates as the
    steps did, so a routed-off sample is measured without its modules and its p feeds on itself."""
    if not plan.routed:
        return lambda index, k: None
    strategy = plan.strategy if how == "routed" else "random"
    p_tensor = torch.as_tensor(p, dtype=torch.float32)
    return lambda index, k: gates_from_draws(strategy, p_tensor[index], gamma, draws[k, index])


def teacher(plan: EpochPlan, state: CleaRState, reg_weight: float) -> torch.Tensor | None:
    """f_ens per sample for the consistency loss, from the first routed epoch on."""
    if not plan.after_warmup or plan.plain or reg_weight <= 0 or state.ens_logits is None:
        return None
    return torch.as_tensor(state.ens_logits)


def soft_cross_entropy(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """-Σ_c softmax(teacher/T)_c · log softmax(logits/T)_c per sample, the teacher detached."""
    target = F.softmax(teacher_logits.detach() / temperature, dim=-1)
    return -(target * F.log_softmax(logits / temperature, dim=-1)).sum(-1)


def routed_loss(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None,
                reg_weight: float, temperature: float,
                gate_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch loss, per-sample CE): mean CE(f(x; δ_r), ỹ) + λ·mean CE_soft(f/T, f_ens/T).
    ``gate_weight`` (the --gate-weighted-loss diagnosis, not CleaR) weights each sample by its share of layers
    routed on: the never-routed classifier head would otherwise train on a routed-off sample's frozen features."""
    per_sample = F.cross_entropy(logits, labels, reduction="none")
    consistency = soft_cross_entropy(logits, teacher_logits, temperature) if teacher_logits is not None else None
    if gate_weight is not None:
        loss_i = per_sample if consistency is None else per_sample + reg_weight * consistency
        return (gate_weight * loss_i).sum() / gate_weight.sum().clamp_min(1e-8), per_sample
    loss = per_sample.mean()
    if consistency is not None:
        loss = loss + reg_weight * consistency.mean()
    return loss, per_sample


def update_estimate(state: CleaRState, losses: np.ndarray, ens_logits: np.ndarray, routes_next: bool,
                    guarded: bool) -> np.ndarray:
    """Fit p to this epoch's per-sample losses (EMA, 2-component GMM, p = posterior of the
    low-loss component) and return it. Only before a routed epoch do p and f_ens (the mean logits of the
    pass) come into use, and only then does the loss EMA advance; warm-up fits only measure. clean-auto
    stands down for the next epoch when the fit shows no mode of wrong labels (routing.py)."""
    estimate = state.estimator.fit(losses, smooth=routes_next)
    state.stood_down = guarded and not state.estimator.shows_label_noise()
    if routes_next:
        state.p, state.ens_logits = estimate, ens_logits
    return estimate
