"""CleaR's own pieces (clear.py) on small hand-made inputs with hand-computed answers: no model, no data."""

import math

import numpy as np
import pytest
import torch

from clearpeft import clear
from clearpeft.routing import CleanProbability


def state(p=None, ens=None, routing="clean", history=()):
    estimator = CleanProbability(seed=0, chance_loss=math.log(5))
    out = clear.start_state(3 if p is None else len(p), routing, estimator, list(history))
    if p is not None:
        out.p = np.asarray(p, dtype=float)
    out.ens_logits = ens
    return out


# ------------------------------------------------------------------ the mode of an epoch

@pytest.mark.parametrize("routing, epoch, stood_down, expected", [
    # routing, epoch (warm-up 2), stood_down -> (routed, after_warmup, plain, strategy)
    ("none", 5, False, (False, False, True, "random")),
    ("clean", 0, False, (True, False, False, "random")),        # warm-up: Bernoulli(γ) gates
    ("clean", 1, False, (True, False, False, "random")),
    ("clean", 2, False, (True, True, False, "clean")),          # routed by p
    ("clean", 2, True, (True, True, False, "clean")),           # clean ignores the guard
    ("clean-auto", 0, False, (True, False, True, "random")),    # clean-auto's warm-up is plain PEFT
    ("clean-auto", 2, True, (True, True, True, "clean-auto")),  # stood down: plain PEFT
    ("clean-auto", 2, False, (True, True, False, "clean-auto")),
    ("noisy", 3, False, (True, True, False, "noisy")),
])
def test_plan_epoch(routing, epoch, stood_down, expected):
    plan = clear.plan_epoch(routing, epoch, 2, stood_down)
    assert (plan.routed, plan.after_warmup, plan.plain, plan.strategy) == expected


@pytest.mark.parametrize("routing, epoch, expected", [
    ("clean", 0, (False, False)),   # the next epoch is still warm-up: the pass only measures
    ("clean", 1, (True, True)),     # epoch 2 routes by this pass's p
    ("clean", 2, (True, True)),
    ("clean", 3, (True, False)),    # after the last epoch nothing uses it
    ("none", 1, (False, False)),
])
def test_pass_use(routing, epoch, expected):
    plan = clear.plan_epoch(routing, epoch, 2, False)
    assert clear.pass_use(plan, epoch, warmup_epochs=2, epochs=4) == expected


@pytest.mark.parametrize("routing, history, expected", [
    ("clean-auto", [], True),                                   # starts as plain PEFT
    ("clean-auto", [{"routing_stood_down": False}], False),     # resumed after a fit that routed
    ("clean-auto", [{"routing_stood_down": True}], True),
    ("clean-auto", [{}], True),                                 # a line without the field: stand down
    ("clean", [], False),
    ("clean", [{"routing_stood_down": None}], False),
])
def test_start_state_resumes_clean_auto_decision(routing, history, expected):
    assert state(routing=routing, history=history).stood_down is expected


def test_start_state_restores_checkpoint_arrays():
    estimator = CleanProbability(seed=0)
    arrays = {"p": np.array([0.2, 0.9]), "ens_logits": np.ones((2, 3), np.float32), "smoothed_losses": np.array([1.0, 2.0])}
    s = clear.start_state(2, "clean", estimator, [{"epoch": 0}], arrays)
    assert s.p.tolist() == [0.2, 0.9] and s.ens_logits.shape == (2, 3) and s.estimator.smoothed.tolist() == [1.0, 2.0]
    fresh = clear.start_state(2, "clean", CleanProbability(seed=0), [])
    assert fresh.p.tolist() == [1.0, 1.0] and fresh.ens_logits is None


# ------------------------------------------------------------------ gates

P = np.array([1.0, 0.5, 0.0])
DRAWS = torch.tensor([[0.1, 0.9], [0.3, 0.5], [0.0, 0.2]])  # [sample, layer]


def test_step_gates_route_by_gamma_times_p():
    # γ·p = 0.8, 0.4, 0: sample 0 is on in layer 0 (0.1 < 0.8) and off in layer 1 (0.9 >= 0.8), sample 1 on in
    # layer 0 only (0.3 < 0.4 <= 0.5), sample 2 off everywhere (no draw is below 0, not even 0.0).
    plan = clear.plan_epoch("clean", 3, 2, False)
    r = clear.step_gates(plan, P, 0.8, DRAWS)(torch.tensor([0, 1, 2]))
    assert r.tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    # the same sample gets the same gates in whatever batch it lands
    assert clear.step_gates(plan, P, 0.8, DRAWS)(torch.tensor([2, 0])).tolist() == [[0.0, 1.0], [0.0, 0.0]]


def test_step_gates_in_warm_up_and_plain_epochs():
    warm = clear.step_gates(clear.plan_epoch("clean", 0, 2, False), P, 0.8, DRAWS)(torch.tensor([0, 1, 2]))
    assert warm.tolist() == [[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]]  # Bernoulli(0.8) whatever p is
    plain = clear.step_gates(clear.plan_epoch("clean-auto", 3, 2, True), P, 0.8, DRAWS)
    assert plain(torch.tensor([0, 1])) is None  # every module on


def test_pass_gates_random_ignores_p_routed_follows_it():
    plan = clear.plan_epoch("clean", 3, 2, False)
    draws = DRAWS.unsqueeze(0)  # one pass
    random = clear.pass_gates(plan, P, 0.8, draws, "random")(torch.tensor([0, 1, 2]), 0)
    routed = clear.pass_gates(plan, P, 0.8, draws, "routed")(torch.tensor([0, 1, 2]), 0)
    assert random.tolist() == [[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]]
    assert routed.tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    assert clear.pass_gates(clear.plan_epoch("none", 3, 2, False), P, 0.8, draws, "random")(torch.tensor([0]), 0) is None


def test_generator_streams_are_named_and_fixed():
    a = torch.rand(4, generator=clear.generator(7, 2, "step_gates"))
    assert torch.equal(a, torch.rand(4, generator=clear.generator(7, 2, "step_gates")))
    assert not torch.equal(a, torch.rand(4, generator=clear.generator(7, 2, "pass_gates")))
    assert not torch.equal(a, torch.rand(4, generator=clear.generator(7, 3, "step_gates")))
    # the stream numbers are part of what a seed means: stream 0 is SeedSequence([seed, epoch, 0])
    words = np.random.SeedSequence([7, 2, 0]).generate_state(2, dtype=np.uint32)
    expected = torch.Generator().manual_seed(int(words[0]) << 31 | int(words[1]) >> 1)
    assert torch.equal(a, torch.rand(4, generator=expected))
    assert clear.STREAMS == {"step_gates": 0, "pass_gates": 1, "eval_gates": 2}


# ------------------------------------------------------------------ the routed loss

def test_routed_loss_without_teacher_is_mean_cross_entropy():
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    loss, per_sample = clear.routed_loss(logits, torch.tensor([0, 1]), None, reg_weight=1.0, temperature=1.0)
    # softmax of [log 3, 0] is [3/4, 1/4]; of [0, 0] it is [1/2, 1/2]
    assert per_sample.tolist() == pytest.approx([-math.log(0.75), math.log(2.0)])
    assert float(loss) == pytest.approx((-math.log(0.75) + math.log(2.0)) / 2)


def test_routed_loss_adds_the_consistency_term_at_temperature():
    logits = torch.tensor([[math.log(9.0), 0.0]])
    teacher = torch.tensor([[0.0, math.log(9.0)]])
    # at T = 2 the student is softmax([log 3, 0]) = [3/4, 1/4] and the teacher [1/4, 3/4]:
    # CE_soft = -(1/4 · log 3/4 + 3/4 · log 1/4); CE against label 0 at T = 1: -log(9/10)
    soft = -(0.25 * math.log(0.75) + 0.75 * math.log(0.25))
    loss, per_sample = clear.routed_loss(logits, torch.tensor([0]), teacher, reg_weight=0.5, temperature=2.0)
    assert float(per_sample[0]) == pytest.approx(-math.log(0.9))
    assert float(loss) == pytest.approx(-math.log(0.9) + 0.5 * soft)
    assert float(clear.soft_cross_entropy(logits, teacher, 2.0)[0]) == pytest.approx(soft)


def test_routed_loss_gate_weighting_drops_a_routed_off_sample():
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    loss, _ = clear.routed_loss(logits, torch.tensor([0, 1]), None, 1.0, 1.0, gate_weight=torch.tensor([1.0, 0.0]))
    assert float(loss) == pytest.approx(-math.log(0.75))


def test_consistency_gradient_does_not_reach_the_teacher():
    teacher = torch.tensor([[0.0, 1.0]], requires_grad=True)
    logits = torch.tensor([[1.0, 0.0]], requires_grad=True)
    loss, _ = clear.routed_loss(logits, torch.tensor([0]), teacher, 1.0, 1.0)
    loss.backward()
    assert teacher.grad is None and logits.grad is not None


def test_teacher_only_after_warm_up_with_regularization():
    ens = np.zeros((3, 2), np.float32)
    s = state(ens=ens)
    assert clear.teacher(clear.plan_epoch("clean", 0, 2, False), s, 1.0) is None       # warm-up
    assert clear.teacher(clear.plan_epoch("clean", 2, 2, False), s, 0.0) is None       # λ = 0
    assert clear.teacher(clear.plan_epoch("clean-auto", 2, 2, True), s, 1.0) is None   # stood down
    assert clear.teacher(clear.plan_epoch("clean", 2, 2, False), s, 1.0).shape == (3, 2)


# ------------------------------------------------------------------ the estimate of p and f_ens

# Six well-learnt samples and four whose mean loss (3.0) is above chance level for 5 classes (log 5 = 1.61):
# the GMM puts them in a separate high-loss component, a mode of wrong labels.
BIMODAL = np.array([0.08, 0.10, 0.12, 0.09, 0.11, 0.10, 2.9, 3.0, 3.1, 3.0])
LOGITS = np.arange(20, dtype=np.float32).reshape(10, 2)


def test_update_estimate_before_a_routed_epoch_sets_p_and_f_ens():
    s = state(p=np.ones(10), routing="clean-auto")
    p = clear.update_estimate(s, BIMODAL, LOGITS, routes_next=True, guarded=True)
    assert p[:6].min() > 0.99 and p[6:].max() < 0.01
    assert s.p is p and s.ens_logits is LOGITS
    assert s.stood_down is False  # a mode of wrong labels: clean-auto routes


def test_update_estimate_in_warm_up_only_measures():
    s = state(p=np.ones(10))
    p = clear.update_estimate(s, BIMODAL, LOGITS, routes_next=False, guarded=False)
    assert p[6:].max() < 0.01 and s.p.tolist() == [1.0] * 10 and s.ens_logits is None


def test_update_estimate_stands_down_without_a_mode_of_wrong_labels():
    # one mode: the highest losses are the tail of the clean samples, all below chance level
    losses = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8])
    s = state(p=np.ones(10), routing="clean-auto")
    clear.update_estimate(s, losses, LOGITS, routes_next=True, guarded=True)
    assert s.stood_down is True
    unguarded = state(p=np.ones(10))
    clear.update_estimate(unguarded, losses, LOGITS, routes_next=True, guarded=False)
    assert unguarded.stood_down is False
