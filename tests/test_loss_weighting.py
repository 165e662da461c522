"""Loss weighting: each method's weights on scripted losses against its paper's formula worked by hand,
the gradients `backward` leaves on a toy model, state_dict round trips, and every YAML composing."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from mtl_cli.compose import compose_typed
from mtl_cli.config import LossWeightingConfig
from mtl_cli.errors import MtlError
from mtl_cli.loss_weighting import get

TASKS = ["a", "b"]


def scalar(value: float) -> torch.Tensor:
    """A loss that is a leaf: its .grad is the weight the method applied to it."""
    return torch.tensor(float(value), requires_grad=True)


class Toy(nn.Module):
    """Two shared linear layers (W: the second's weight) and a linear head per task, on fixed inputs
    and targets."""

    def __init__(self, tasks: list[str]):
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4))
        self.heads = nn.ModuleDict({task: nn.Linear(4, 1) for task in tasks})
        self.x = {task: torch.randn(5, 3) for task in tasks}
        self.y = {task: torch.randn(5, 1) * (i + 1) for i, task in enumerate(tasks)}

    def losses(self, tasks: list[str] | None = None, scale: float = 1.0) -> dict[str, torch.Tensor]:
        return {
            task: nn.functional.mse_loss(self.heads[task](torch.tanh(self.shared(self.x[task]))), scale * self.y[task])
            for task in tasks or list(self.heads)
        }

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.shared.parameters())


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def expected_grads(model: nn.Module, objective: torch.Tensor) -> dict[str, torch.Tensor]:
    names, params = zip(*model.named_parameters(), strict=True)
    values = torch.autograd.grad(objective, params, retain_graph=True, allow_unused=True)
    return {n: g for n, g in zip(names, values, strict=True) if g is not None}


def assert_grads_equal(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], msg=name)


def json_round_trip(state: dict) -> dict:
    # The training loop may keep the state in trainer_state.json: it must survive JSON.
    return json.loads(json.dumps(state))


# --- static ---------------------------------------------------------------------------------------


def test_static_uses_the_given_weights_and_one_for_the_rest() -> None:
    method = get("static").build(LossWeightingConfig(name="static", weights={"a": 2.5}), ["a", "b", "c"], 10)
    assert method.weights() == {"a": 2.5, "b": 1.0, "c": 1.0}
    assert method.parameters() == []
    losses = {"a": scalar(0.7), "c": scalar(1.3)}
    total = method.backward(losses, [])
    assert float(total) == pytest.approx(2.5 * 0.7 + 1.0 * 1.3)
    assert losses["a"].grad is not None and losses["c"].grad is not None
    assert float(losses["a"].grad) == 2.5 and float(losses["c"].grad) == 1.0


def test_static_backward_leaves_the_weighted_gradients_on_a_toy_model() -> None:
    model = Toy(TASKS)
    method = get("static").build(LossWeightingConfig(weights={"a": 0.3, "b": 4.0}), TASKS, 10)
    losses = model.losses()
    expected = expected_grads(model, 0.3 * losses["a"] + 4.0 * losses["b"])
    method.backward(losses, model.shared_parameters())
    assert_grads_equal(grads(model), expected)


# --- uncertainty ----------------------------------------------------------------------------------


def set_log_vars(method, values: dict[str, float]) -> None:
    with torch.no_grad():
        for p, task in zip(method.parameters(), method.tasks, strict=True):
            p.fill_(values[task])


def test_uncertainty_loss_and_log_variance_gradients_follow_kendall() -> None:
    method = get("uncertainty").build(LossWeightingConfig(name="uncertainty"), TASKS, 10)
    assert [float(p.detach()) for p in method.parameters()] == [0.0, 0.0]
    assert method.weights() == {"a": 1.0, "b": 1.0}
    s = {"a": 0.5, "b": -1.2}
    set_log_vars(method, s)
    assert method.weights() == pytest.approx({t: math.exp(-s[t]) for t in TASKS})
    values = {"a": 0.8, "b": 2.0}
    losses = {t: scalar(values[t]) for t in TASKS}
    total = method.backward(losses, [])
    assert float(total) == pytest.approx(sum(math.exp(-s[t]) * values[t] + s[t] for t in TASKS))
    for p, task in zip(method.parameters(), TASKS, strict=True):
        assert float(p.grad) == pytest.approx(1 - math.exp(-s[task]) * values[task])
        loss_grad = losses[task].grad
        assert loss_grad is not None and float(loss_grad) == pytest.approx(math.exp(-s[task]))


def test_uncertainty_with_one_task_per_step_touches_only_that_tasks_log_variance() -> None:
    method = get("uncertainty").build(LossWeightingConfig(name="uncertainty"), TASKS, 10)
    set_log_vars(method, {"a": 0.3, "b": 0.3})
    method.backward({"b": scalar(1.5)}, [])
    s_a, s_b = method.parameters()
    assert s_a.grad is None
    assert float(s_b.grad) == pytest.approx(1 - math.exp(-0.3) * 1.5)


def test_uncertainty_backward_leaves_the_weighted_gradients_on_a_toy_model() -> None:
    model = Toy(TASKS)
    method = get("uncertainty").build(LossWeightingConfig(name="uncertainty"), TASKS, 10)
    set_log_vars(method, {"a": 0.4, "b": -0.7})
    losses = model.losses()
    expected = expected_grads(model, math.exp(-0.4) * losses["a"] + math.exp(0.7) * losses["b"])
    method.backward(losses, model.shared_parameters())
    assert_grads_equal(grads(model), expected)


def test_uncertainty_state_round_trip_keeps_the_optimizers_parameters() -> None:
    method = get("uncertainty").build(LossWeightingConfig(name="uncertainty"), TASKS, 10)
    set_log_vars(method, {"a": 0.25, "b": -2.0})
    fresh = get("uncertainty").build(LossWeightingConfig(name="uncertainty"), TASKS, 10)
    params = fresh.parameters()
    fresh.load_state_dict(json_round_trip(method.state_dict()))
    assert fresh.weights() == method.weights()
    assert all(a is b for a, b in zip(params, fresh.parameters(), strict=True))


# --- DWA ------------------------------------------------------------------------------------------

STEPS_PER_EPOCH = 4
# One task per step, as a mixing sampler gives them: per epoch, the task and its loss at each step.
SCRIPT = [
    [("a", 2.0), ("b", 1.0), ("a", 1.0), ("b", 3.0)],  # epoch 1: averages a 1.5, b 2.0
    [("a", 1.0), ("a", 0.5), ("b", 1.0), ("b", 2.0)],  # epoch 2: a 0.75, b 1.5
    [("b", 0.6), ("a", 0.6), ("b", 1.2), ("a", 0.9)],  # epoch 3: a 0.75, b 0.9
    [("b", 0.6), ("b", 0.3), ("b", 0.5), ("b", 0.4)],  # epoch 4: a none (keeps 0.75), b 0.45
    [("a", 0.7), ("b", 0.9), ("a", 0.5), ("b", 0.9)],  # epoch 5: a 0.6 (ratio to the kept 0.75), b 0.9
]
AVERAGES = [
    {"a": 1.5, "b": 2.0},
    {"a": 0.75, "b": 1.5},
    {"a": 0.75, "b": 0.9},
    {"a": 0.75, "b": 0.45},
    {"a": 0.6, "b": 0.9},
]


def dwa_formula(older: dict[str, float], newer: dict[str, float], temperature: float) -> dict[str, float]:
    r = {t: newer[t] / older[t] for t in older}
    denominator = sum(math.exp(r[t] / temperature) for t in r)
    return {t: len(r) * math.exp(r[t] / temperature) / denominator for t in r}


def test_dwa_weights_follow_liu_et_al_on_scripted_losses() -> None:
    method = get("dwa").build(LossWeightingConfig(name="dwa", temperature=2.0), TASKS, STEPS_PER_EPOCH)
    assert method.needs_all_tasks is False and method.parameters() == []
    expected_per_epoch = [
        {"a": 1.0, "b": 1.0},
        {"a": 1.0, "b": 1.0},
        # r = (0.5, 0.75): b's loss fell less, so b gets more weight.
        dwa_formula(AVERAGES[0], AVERAGES[1], 2.0),
        dwa_formula(AVERAGES[1], AVERAGES[2], 2.0),
        # a had no step in epoch 4: its average stays 0.75, its ratio is 1.
        dwa_formula(AVERAGES[2], AVERAGES[3], 2.0),
    ]
    assert expected_per_epoch[2]["b"] > expected_per_epoch[2]["a"]
    for epoch, (steps, expected) in enumerate(zip(SCRIPT, expected_per_epoch, strict=True), start=1):
        for task, value in steps:
            assert method.weights() == pytest.approx(expected), f"epoch {epoch}"
            loss = scalar(value)
            method.backward({task: loss}, [])
            # The weight in force during the epoch is the one applied to the loss.
            assert loss.grad is not None and float(loss.grad) == pytest.approx(expected[task])
        assert sum(method.weights().values()) == pytest.approx(len(TASKS))
    assert method.weights() == pytest.approx(dwa_formula(AVERAGES[3], AVERAGES[4], 2.0))


def test_dwa_temperature_flattens_the_weights() -> None:
    sharp = get("dwa").build(LossWeightingConfig(temperature=0.05), TASKS, 1)
    flat = get("dwa").build(LossWeightingConfig(temperature=100.0), TASKS, 1)
    for method in (sharp, flat):
        for a, b in [(1.0, 1.0), (0.5, 1.0)]:
            method.backward({"a": scalar(a), "b": scalar(b)}, [])
    assert sharp.weights() == pytest.approx(dwa_formula({"a": 1.0, "b": 1.0}, {"a": 0.5, "b": 1.0}, 0.05))
    assert sharp.weights()["a"] < 0.01 and flat.weights() == pytest.approx({"a": 1.0, "b": 1.0}, abs=0.01)


def test_dwa_state_round_trip_mid_epoch() -> None:
    cfg = LossWeightingConfig(name="dwa", temperature=2.0)
    method = get("dwa").build(cfg, TASKS, STEPS_PER_EPOCH)
    steps = [step for epoch in SCRIPT for step in epoch]
    for task, value in steps[:10]:
        method.backward({task: scalar(value)}, [])
    resumed = get("dwa").build(cfg, TASKS, STEPS_PER_EPOCH)
    resumed.load_state_dict(json_round_trip(method.state_dict()))
    for task, value in steps[10:]:
        assert resumed.weights() == pytest.approx(method.weights())
        method.backward({task: scalar(value)}, [])
        resumed.backward({task: scalar(value)}, [])
    assert resumed.weights() == pytest.approx(dwa_formula(AVERAGES[3], AVERAGES[4], 2.0))


# --- GradNorm -------------------------------------------------------------------------------------

GRADNORM_TASKS = ["a", "b", "c"]


def gradnorm_reference(model: Toy, w: list[float], initial: list[float], alpha: float, scale: float):
    """The paper's L_grad written out literally (create_graph through grad_W(w_i L_i)), independent of
    the method: returns the losses, dL_grad/dw and G_i - stopgrad(G_bar * r_i^alpha)."""
    weights = torch.tensor(w, requires_grad=True)
    losses = model.losses(GRADNORM_TASKS, scale)
    last = model.shared[-1]
    assert isinstance(last, nn.Linear)
    W = last.weight
    norms = torch.stack(
        [
            torch.autograd.grad(weights[i] * losses[t], W, retain_graph=True, create_graph=True)[0].norm()
            for i, t in enumerate(GRADNORM_TASKS)
        ]
    )
    values = torch.stack([losses[t].detach() for t in GRADNORM_TASKS])
    relative = values / torch.tensor(initial)
    r = relative / relative.mean()
    gap = norms - (norms.mean() * r**alpha).detach()
    (dw,) = torch.autograd.grad(gap.abs().sum(), weights)
    return [float(v) for v in values], dw, gap.detach()


def expected_after_first_adam_step(w: list[float], dw: torch.Tensor, lr: float) -> list[float]:
    # Adam's first step moves each parameter by lr * g / (|g| + eps), i.e. lr against the gradient's sign.
    moved = [wi - lr * float(torch.sign(g)) for wi, g in zip(w, dw, strict=True)]
    return [len(moved) * m / sum(moved) for m in moved]


def test_gradnorm_first_step_moves_weights_against_gradient_norm_gaps_and_renormalises() -> None:
    model = Toy(GRADNORM_TASKS)
    cfg = LossWeightingConfig(name="gradnorm", alpha=1.5, weight_lr=0.025)
    method = get("gradnorm").build(cfg, GRADNORM_TASKS, 10)
    assert method.needs_all_tasks is True and method.parameters() == []
    assert method.weights() == {"a": 1.0, "b": 1.0, "c": 1.0}

    # First step: L(0) is this step's loss, every r_i = 1 and the target is G_bar.
    values = [float(loss.detach()) for loss in model.losses(GRADNORM_TASKS).values()]
    _, dw, gap_at_l0 = gradnorm_reference(model, [1.0, 1.0, 1.0], values, 1.5, 1.0)
    assert torch.equal(torch.sign(dw), torch.sign(gap_at_l0))
    losses = model.losses(GRADNORM_TASKS)
    expected_model_grads = expected_grads(model, torch.stack(list(losses.values())).sum())
    model.zero_grad()
    method.backward(model.losses(GRADNORM_TASKS), model.shared_parameters())

    assert_grads_equal(grads(model), expected_model_grads)
    w = method.weights()
    assert sum(w.values()) == pytest.approx(3.0)
    for i, task in enumerate(GRADNORM_TASKS):
        # A task whose gradient norm is above the mean gets less weight, and the reverse.
        assert (w[task] < 1.0) == bool(gap_at_l0[i] > 0), task
    assert list(w.values()) == pytest.approx(expected_after_first_adam_step([1.0, 1.0, 1.0], dw, 0.025), rel=1e-5)


def test_gradnorm_uses_loss_ratios_to_the_first_steps_losses() -> None:
    model = Toy(GRADNORM_TASKS)
    alpha, lr = 1.5, 0.05
    w = [1.3, 0.5, 1.2]
    initial = [0.9, 1.7, 4.0]
    state = {"weights": w, "initial_losses": initial, "adam": {}}
    method = get("gradnorm").build(LossWeightingConfig(alpha=alpha, weight_lr=lr), GRADNORM_TASKS, 10)
    method.load_state_dict(state)
    # Targets scaled by 1.5: each task's loss moves by a different factor from the scripted L(0).
    values, dw, gap = gradnorm_reference(model, w, initial, alpha, 1.5)
    # Not trivial: both directions occur, and alpha = 0 or 1 would move task a the other way.
    assert len(set(torch.sign(gap).tolist())) == 2
    for other_alpha in (0.0, 1.0):
        assert not torch.equal(torch.sign(gap), torch.sign(gradnorm_reference(model, w, initial, other_alpha, 1.5)[2]))
    relative = [v / l0 for v, l0 in zip(values, initial, strict=True)]
    assert len({round(r, 6) for r in relative}) == 3

    losses = model.losses(GRADNORM_TASKS, 1.5)
    objective = torch.stack([wi * losses[t] for wi, t in zip(w, GRADNORM_TASKS, strict=True)]).sum()
    expected_model_grads = expected_grads(model, objective)
    model.zero_grad()
    total = method.backward(model.losses(GRADNORM_TASKS, 1.5), model.shared_parameters())

    assert float(total) == pytest.approx(sum(wi * v for wi, v in zip(w, values, strict=True)))
    assert_grads_equal(grads(model), expected_model_grads)
    assert torch.equal(torch.sign(dw), torch.sign(gap))
    after = list(method.weights().values())
    assert after == pytest.approx(expected_after_first_adam_step(w, dw, lr), rel=1e-5)
    assert sum(after) == pytest.approx(3.0) and min(after) > 0


def test_gradnorm_matches_the_literal_formula_with_adam_over_several_steps() -> None:
    """Adam's later steps depend on the gradients' sizes, not only their signs: a reference run of the
    paper's L_grad (create_graph) with its own Adam must give the same weights at every step."""
    model = Toy(GRADNORM_TASKS)
    alpha, lr = 1.5, 0.1
    method = get("gradnorm").build(LossWeightingConfig(alpha=alpha, weight_lr=lr), GRADNORM_TASKS, 10)
    w = torch.ones(3, requires_grad=True)
    adam = torch.optim.Adam([w], lr=lr)
    initial = None
    for scale in (1.0, 1.3, 0.6, 2.0, 1.1):
        values = [float(loss.detach()) for loss in model.losses(GRADNORM_TASKS, scale).values()]
        initial = initial or values
        losses = model.losses(GRADNORM_TASKS, scale)
        objective = sum(wi * losses[t] for wi, t in zip(w.tolist(), GRADNORM_TASKS, strict=True))
        expected_model_grads = expected_grads(model, objective)
        _, dw, _ = gradnorm_reference(model, w.tolist(), initial, alpha, scale)
        adam.zero_grad()
        w.grad = dw
        adam.step()
        with torch.no_grad():
            w.mul_(3 / w.sum())

        model.zero_grad()
        method.backward(model.losses(GRADNORM_TASKS, scale), model.shared_parameters())
        assert_grads_equal(grads(model), expected_model_grads)
        assert list(method.weights().values()) == pytest.approx(w.tolist(), rel=1e-5)


def test_gradnorm_keeps_weights_positive() -> None:
    model = Toy(GRADNORM_TASKS)
    method = get("gradnorm").build(LossWeightingConfig(weight_lr=5.0), GRADNORM_TASKS, 10)
    for scale in (1.0, 3.0, 0.2, 5.0):
        model.zero_grad()
        method.backward(model.losses(GRADNORM_TASKS, scale), model.shared_parameters())
        w = method.weights()
        assert min(w.values()) > 0 and sum(w.values()) == pytest.approx(3.0)


def test_gradnorm_needs_every_task_at_every_step() -> None:
    model = Toy(GRADNORM_TASKS)
    method = get("gradnorm").build(LossWeightingConfig(), GRADNORM_TASKS, 10)
    with pytest.raises(MtlError, match="every task"):
        method.backward(model.losses(["a", "b"]), model.shared_parameters())


def test_gradnorm_state_round_trip_continues_identically() -> None:
    model = Toy(GRADNORM_TASKS)
    cfg = LossWeightingConfig(alpha=1.0, weight_lr=0.1)
    method = get("gradnorm").build(cfg, GRADNORM_TASKS, 10)
    for scale in (1.0, 1.2):
        method.backward(model.losses(GRADNORM_TASKS, scale), model.shared_parameters())
    resumed = get("gradnorm").build(cfg, GRADNORM_TASKS, 10)
    resumed.load_state_dict(json_round_trip(method.state_dict()))
    assert resumed.weights() == method.weights()
    for scale in (0.7, 1.4):
        method.backward(model.losses(GRADNORM_TASKS, scale), model.shared_parameters())
        resumed.backward(model.losses(GRADNORM_TASKS, scale), model.shared_parameters())
        assert list(resumed.weights().values()) == pytest.approx(list(method.weights().values()), rel=1e-6)


# --- configs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["equal", "static", "uncertainty", "dwa", "gradnorm"])
def test_every_yaml_composes_and_builds(name: str) -> None:
    overrides = [f"loss_weighting={name}"]
    if name == "static":
        overrides.append("++loss_weighting.weights.restaurants=2")
    cfg = compose_typed(overrides)
    assert cfg.loss_weighting.name == name
    if name == "static":
        assert cfg.loss_weighting.weights == {"restaurants": 2.0}
    tasks = list(cfg.task)
    method = get(name).build(cfg.loss_weighting, tasks, 10)
    assert set(method.weights()) == set(tasks)
    if name == "static":
        assert method.weights()["restaurants"] == 2.0


def test_yaml_overrides_reach_the_method() -> None:
    cfg = compose_typed(["loss_weighting=gradnorm", "loss_weighting.alpha=0.5", "loss_weighting.weight_lr=0.01"])
    method = get("gradnorm").build(cfg.loss_weighting, list(cfg.task), 10)
    assert method.alpha == 0.5 and method.optimizer.param_groups[0]["lr"] == 0.01
    cfg = compose_typed(["loss_weighting=dwa", "loss_weighting.temperature=5"])
    assert get("dwa").build(cfg.loss_weighting, list(cfg.task), 10).temperature == 5.0
