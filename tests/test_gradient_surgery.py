"""PCGrad and CAGrad on toy gradients with hand-computed results, and their backward on a toy model;
their gradient-conflict statistics by hand, through a checkpoint, and in a tiny real run."""

from __future__ import annotations

import io
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mtl_cli.compose import compose_typed
from mtl_cli.config import LossWeightingConfig
from mtl_cli.loss_weighting import cagrad as cagrad_method
from mtl_cli.loss_weighting import get
from mtl_cli.loss_weighting import pcgrad as pcgrad_method
from mtl_cli.loss_weighting.surgery import (
    ConflictStats,
    cagrad,
    cagrad_with_weights,
    gram,
    pcgrad,
    task_gradients,
    write_gradient,
)
from tests.conftest import tiny_run


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pcgrad_reference(grads: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Algorithm 1 of Yu et al. 2020 on the vectors themselves, drawing the same random orders."""
    n = len(grads)
    projected = []
    for i in range(n):
        g = grads[i].clone()
        others = [j for j in range(n) if j != i]
        for k in torch.randperm(len(others), generator=generator).tolist():
            gj = grads[others[k]]
            if g @ gj < 0:
                g = g - (g @ gj) / (gj @ gj) * gj
        projected.append(g)
    return torch.stack(projected).sum(0)


# PCGrad


def test_pcgrad_two_conflicting_gradients_by_hand():
    # g1.g2 = -1: g1 -> g1 + g2/2 = (0.5, 0.5), g2 -> g2 + g1 = (0, 1); each is orthogonal to the other's original.
    g1, g2 = (1.0, 0.0), (-1.0, 1.0)
    assert torch.allclose(pcgrad(t(g1, g2), gen()), t(0.5, 1.5))
    assert t(0.5, 0.5) @ t(*g2) == 0 and t(0.0, 1.0) @ t(*g1) == 0


def test_pcgrad_no_conflict_is_the_plain_sum():
    grads = t((1.0, 0.0), (1.0, 1.0))
    assert torch.equal(pcgrad(grads, gen()), t(2.0, 1.0))
    orthogonal = t((1.0, 0.0), (0.0, 3.0))
    assert torch.equal(pcgrad(orthogonal, gen()), t(1.0, 3.0))


def test_pcgrad_identical_gradients_sum():
    assert torch.equal(pcgrad(t((1.0, 2.0), (1.0, 2.0)), gen()), t(2.0, 4.0))


def test_pcgrad_three_tasks_by_hand():
    # Only g1.g3 = -1 conflicts: g1 -> (1,0,0) + (-1,0,1)/2, g3 -> g3 + g1, g2 unchanged; order plays no part.
    grads = t((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (-1.0, 0.0, 1.0))
    for seed in range(5):
        assert torch.allclose(pcgrad(grads, gen(seed)), t(0.5, 1.0, 1.5))


def test_pcgrad_order_matters_with_three_conflicting_tasks_and_is_seeded():
    # g3 conflicts with g1 and g2; g1 projected off g3 first then conflicts with g2: (0.5, 0), else (0.5, -0.5).
    # Likewise g2 -> (0, 0.5) or (-0.5, 0.5); g3 ends at (0, 0) in either order.
    grads = t((1.0, 0.0), (0.0, 1.0), (-1.0, -1.0))
    possible = {
        (a[0] + b[0], a[1] + b[1]) for a, b in itertools.product([(0.5, 0.0), (0.5, -0.5)], [(0.0, 0.5), (-0.5, 0.5)])
    }
    results = set()
    for seed in range(20):
        out = pcgrad(grads, gen(seed))
        assert torch.equal(out, pcgrad(grads, gen(seed)))
        assert torch.allclose(out, pcgrad_reference(grads, gen(seed)))
        results.add(tuple(out.tolist()))
    assert results <= possible and len(results) > 1


def test_pcgrad_matches_the_vector_algorithm_on_random_gradients():
    rng = torch.Generator().manual_seed(1)
    for n in (2, 3, 5):
        grads = torch.randn(n, 50, generator=rng, dtype=torch.float64)
        assert torch.allclose(pcgrad(grads, gen(n)), pcgrad_reference(grads, gen(n)))


def test_pcgrad_zero_gradient_task():
    assert torch.equal(pcgrad(t((0.0, 0.0), (1.0, -1.0)), gen()), t(1.0, -1.0))


# CAGrad


def objective(grads: torch.Tensor, w: torch.Tensor, c: float) -> float:
    g0 = grads.mean(0)
    gw = w @ grads
    return float(gw @ g0 + c * g0.norm() * gw.norm())


def direction(grads: torch.Tensor, w: torch.Tensor, c: float) -> torch.Tensor:
    """The unscaled CAGrad update for given dual weights: g0 + c ||g0|| / ||g_w|| g_w."""
    g0 = grads.mean(0)
    gw = w @ grads
    return g0 + c * g0.norm() / gw.norm() * gw


def test_cagrad_c_zero_is_exactly_the_mean():
    grads = torch.randn(3, 20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cagrad(grads, 0.0), grads.mean(0))


def test_cagrad_orthogonal_unit_gradients_are_symmetric():
    # w = (1/2, 1/2) so g_w = g0 and d = (1 + c) g0, rescaled by 1 / (1 + c^2).
    grads = t((1.0, 0.0), (0.0, 1.0))
    c = 0.5
    d, w = cagrad_with_weights(grads, c)
    assert np.allclose(w, [0.5, 0.5], atol=1e-6)
    assert torch.allclose(d, t(0.6, 0.6), atol=1e-6)


def test_cagrad_is_conflict_averse_on_a_known_conflict():
    # The mean (0, 0.5) does not help g1 at all (g0.g1 = 0); CAGrad's update improves both tasks.
    grads = t((1.0, 0.0), (-1.0, 1.0))
    c = 0.5
    d = cagrad(grads, c) * (1 + c**2)
    g0 = grads.mean(0)
    assert (grads @ d).min() >= (grads @ g0).min()
    assert (grads @ d).min() > 0
    assert torch.isclose((d - g0).norm(), c * g0.norm())


@pytest.mark.parametrize("c", [0.1, 0.5, 1.0, 2.0])
def test_cagrad_is_conflict_averse_on_random_gradients(c):
    # The solved d maximises min_i g_i.d over the ball ||d - g0|| <= c ||g0||, which holds g0 itself.
    rng = torch.Generator().manual_seed(int(c * 10))
    for n in (2, 3, 4, 6):
        for _ in range(5):
            grads = torch.randn(n, 30, generator=rng, dtype=torch.float64)
            grads[0] -= 2 * grads[1]
            d = cagrad(grads, c) * (1 + c**2)
            g0 = grads.mean(0)
            assert (grads @ d).min() >= (grads @ g0).min() - 1e-9
            assert (d - g0).norm() <= c * g0.norm() * (1 + 1e-6)


def test_cagrad_matches_a_grid_search_for_two_tasks():
    rng = torch.Generator().manual_seed(3)
    for c in (0.2, 0.5, 0.9):
        grads = torch.randn(2, 10, generator=rng, dtype=torch.float64)
        grid = torch.linspace(0, 1, 20001, dtype=torch.float64)
        # `objective` at every grid point at once (one row per point): a Python loop took seconds.
        g0, gw = grads.mean(0), torch.stack([grid, 1 - grid], 1) @ grads
        values = (gw @ g0 + c * g0.norm() * gw.norm(dim=1)).numpy()
        best = grid[int(np.argmin(values))]
        d, w = cagrad_with_weights(grads, c)
        assert objective(grads, torch.from_numpy(w), c) <= values.min() + 1e-9
        assert abs(w[0] - best) < 1e-3
        expected = direction(grads, torch.stack([best, 1 - best]), c) / (1 + c**2)
        assert torch.allclose(d, expected, atol=1e-3)


def test_cagrad_single_task_and_zero_gradients():
    g = t((3.0, 4.0))
    assert torch.allclose(cagrad(g, 0.5), g[0] * 1.5 / 1.25)
    assert torch.equal(cagrad(t((0.0, 0.0), (0.0, 0.0)), 0.5), t(0.0, 0.0))


# The gradient plumbing on a toy model


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Linear(4, 3)
        self.heads = nn.ModuleDict({"a": nn.Linear(3, 1), "b": nn.Linear(3, 2)})
        self.inputs = {"a": torch.randn(5, 4), "b": torch.randn(6, 4)}

    def losses(self) -> dict[str, torch.Tensor]:
        """One forward pass (one graph) per task, as the training loop does with needs_all_tasks."""
        return {task: self.heads[task](torch.tanh(self.shared(x))).pow(2).mean() for task, x in self.inputs.items()}


def test_task_gradients_are_each_tasks_own_gradient():
    model = Toy()
    shared = list(model.shared.parameters())
    expected = {}
    for task, loss in model.losses().items():
        params = shared + list(model.heads[task].parameters())
        expected[task] = torch.autograd.grad(loss, params)

    grads, shapes = task_gradients(model.losses(), shared)
    assert shapes == [p.shape for p in shared]
    assert grads.shape == (2, sum(p.numel() for p in shared))
    for row, task in enumerate(["a", "b"]):
        flat = torch.cat([g.reshape(-1) for g in expected[task][: len(shared)]])
        assert torch.allclose(grads[row], flat)
        for p, g in zip(model.heads[task].parameters(), expected[task][len(shared) :], strict=True):
            assert p.grad is not None and torch.allclose(p.grad, g)
    assert all(p.grad is None for p in shared)

    write_gradient(shared, grads.sum(0))
    assert model.shared.weight.grad is not None and model.shared.bias.grad is not None
    assert torch.allclose(model.shared.weight.grad, expected["a"][0] + expected["b"][0])
    assert torch.allclose(model.shared.bias.grad, expected["a"][1] + expected["b"][1])


def test_existing_shared_grad_is_kept_and_added_to():
    theta = nn.Parameter(torch.zeros(2))
    theta.grad = torch.tensor([10.0, 20.0])
    grads, _ = task_gradients(linear_losses(theta, (1.0, 0.0), (-1.0, 1.0)), [theta])
    assert torch.equal(grads, torch.tensor([[1.0, 0.0], [-1.0, 1.0]]))
    assert torch.equal(theta.grad, torch.tensor([10.0, 20.0]))
    write_gradient([theta], grads.sum(0))
    assert torch.equal(theta.grad, torch.tensor([10.0, 21.0]))


def test_task_gradients_treats_an_untouched_parameter_as_zero():
    used, unused = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3))
    grads, _ = task_gradients({"a": (used * 2).sum(), "b": used.sum()}, [used, unused])
    assert torch.equal(grads, torch.tensor([[2.0, 2, 0, 0, 0], [1, 1, 0, 0, 0]]))


def linear_losses(theta: nn.Parameter, *directions) -> dict[str, torch.Tensor]:
    """loss_i = theta . g_i, so the shared gradient of task i is exactly g_i."""
    return {f"t{i}": theta @ torch.tensor(g) for i, g in enumerate(directions)}


def test_pcgrad_backward_writes_the_projected_sum():
    theta = nn.Parameter(torch.zeros(2))
    method = pcgrad_method.build(LossWeightingConfig(name="pcgrad"), ["t0", "t1"], 10)
    assert method.needs_all_tasks and method.parameters() == []
    method.backward(linear_losses(theta, (1.0, 0.0), (-1.0, 1.0)), [theta])
    assert theta.grad is not None and torch.allclose(theta.grad, torch.tensor([0.5, 1.5]))
    assert method.weights() == {"t0": 1.0, "t1": 1.0}


def test_cagrad_backward_writes_the_update_and_reports_weights():
    theta = nn.Parameter(torch.zeros(2))
    method = cagrad_method.build(LossWeightingConfig(name="cagrad", c=0.5), ["t0", "t1"], 10)
    method.backward(linear_losses(theta, (1.0, 0.0), (0.0, 1.0)), [theta])
    assert theta.grad is not None and torch.allclose(theta.grad, torch.tensor([0.6, 0.6]), atol=1e-6)
    assert method.weights() == pytest.approx({"t0": 1.0, "t1": 1.0}, abs=1e-5)

    # g1 is the task the mean serves worst here (g0.g1 = 0), so the dual weight goes to it: w* = (1, 0).
    theta.grad = None
    method.backward(linear_losses(theta, (1.0, 0.0), (-1.0, 1.0)), [theta])
    assert method.weights() == pytest.approx({"t0": 2.0, "t1": 0.0}, abs=1e-5)


@pytest.mark.parametrize("name", ["pcgrad", "cagrad"])
def test_backward_on_the_toy_model(name):
    model = Toy()
    shared = list(model.shared.parameters())
    ref_grads, _ = task_gradients(model.losses(), shared)
    head_b = model.heads["b"]
    assert isinstance(head_b, nn.Linear) and head_b.weight.grad is not None
    heads_grad = head_b.weight.grad.clone()
    model.zero_grad(set_to_none=True)

    method = get(name).build(LossWeightingConfig(name=name, c=0.4), ["a", "b"], 10)
    method.backward(model.losses(), shared)
    expected = pcgrad(ref_grads, gen()) if name == "pcgrad" else cagrad(ref_grads, 0.4)
    assert model.shared.weight.grad is not None and model.shared.bias.grad is not None
    assert torch.allclose(model.shared.weight.grad, expected[:12].reshape(3, 4))
    assert torch.allclose(model.shared.bias.grad, expected[12:])
    assert head_b.weight.grad is not None and torch.allclose(head_b.weight.grad, heads_grad)


def test_pcgrad_state_dict_restores_the_shuffle():
    grads = t((1.0, 0.0), (0.0, 1.0), (-1.0, -1.0))
    a = pcgrad_method.build(LossWeightingConfig(name="pcgrad"), ["x", "y", "z"], 10)
    pcgrad(grads, a.generator)
    state = a.state_dict()
    b = pcgrad_method.build(LossWeightingConfig(name="pcgrad"), ["x", "y", "z"], 10)
    b.load_state_dict(state)
    for _ in range(5):
        assert torch.equal(pcgrad(grads, a.generator), pcgrad(grads, b.generator))


def test_configs_compose():
    assert compose_typed(["loss_weighting=pcgrad"]).loss_weighting.name == "pcgrad"
    lw = compose_typed(["loss_weighting=cagrad"]).loss_weighting
    assert (lw.name, lw.c) == ("cagrad", 0.5)
    assert compose_typed(["loss_weighting=cagrad", "loss_weighting.c=0.25"]).loss_weighting.c == 0.25


# Gradient-conflict statistics


def stats_of(*steps: list[tuple[float, float]], tasks: tuple[str, ...] = ("t0", "t1")) -> ConflictStats:
    """ConflictStats after one step per entry: each entry the task gradients of that step."""
    stats = ConflictStats(list(tasks))
    for grads in steps:
        stats.add(list(tasks[: len(grads)]), gram(t(*grads)))
    return stats


def test_two_conflicting_gradients_give_share_one_and_their_cosine():
    stats = stats_of([(1.0, 0.0), (-1.0, 1.0)])
    assert (stats.steps, stats.conflicting, stats.share()) == (1, 1, 1.0)
    assert stats.cosines() == pytest.approx({"t0~t1": -1 / math.sqrt(2)})
    assert stats.cosines_of("t1") == pytest.approx({"t0": -1 / math.sqrt(2)})
    assert np.allclose(stats.matrix(), [[1.0, -1 / math.sqrt(2)], [-1 / math.sqrt(2), 1.0]])


@pytest.mark.parametrize(
    ("grads", "cosine"),
    [([(1.0, 0.0), (1.0, 1.0)], 1 / math.sqrt(2)), ([(2.0, 0.0), (3.0, 0.0)], 1.0), ([(1.0, 0.0), (0.0, 5.0)], 0.0)],
    ids=["aligned", "parallel", "orthogonal"],
)
def test_gradients_that_do_not_conflict_give_share_zero(grads, cosine):
    stats = stats_of(grads)
    assert (stats.steps, stats.share()) == (1, 0.0)  # orthogonal (cosine 0) is no conflict
    assert stats.cosines() == pytest.approx({"t0~t1": cosine})


def test_share_and_mean_cosine_over_several_steps_and_three_tasks():
    steps = [
        [(1.0, 0.0), (0.0, 1.0), (-1.0, -1.0)],  # t2 conflicts with both: a conflicting step
        [(1.0, 0.0), (1.0, 0.0), (1.0, 1.0)],  # every pair aligned
        [(1.0, 0.0), (-1.0, 0.0), (0.0, 1.0)],  # t0 and t1 opposite
        [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)],  # aligned or orthogonal
    ]
    stats = stats_of(*steps, tasks=("t0", "t1", "t2"))
    assert (stats.steps, stats.conflicting, stats.share()) == (4, 2, 0.5)
    r = 1 / math.sqrt(2)
    assert stats.cosines() == pytest.approx(
        {"t0~t1": (0 + 1 - 1 + 0) / 4, "t0~t2": (-r + r + 0 + r) / 4, "t1~t2": (-r + r + 0 + r) / 4}
    )
    assert list(stats.cosines_of("t2")) == ["t0", "t1"]


def test_a_zero_or_missing_gradient_measures_no_pair():
    stats = ConflictStats(["t0", "t1", "t2"])
    stats.add(["t0", "t1"], gram(t((1.0, 0.0), (0.0, 0.0))))  # t1's gradient is zero: no direction
    assert (stats.steps, stats.share(), stats.cosines()) == (0, None, {})
    stats.add(["t0", "t2"], gram(t((1.0, 0.0), (-1.0, 0.0))))  # t1 stopped early: only t0~t2
    stats.add(["t0"], gram(t((1.0, 0.0))))  # one task: nothing to compare
    stats.add(["t0", "t2"], gram(t((math.nan, 0.0), (-1.0, 0.0))))  # a NaN gradient: left out
    assert (stats.steps, stats.share(), stats.cosines()) == (1, 1.0, {"t0~t2": -1.0})
    matrix = stats.matrix()
    assert matrix[0][2] == matrix[2][0] == -1.0 and math.isnan(matrix[0][1]) and matrix[1][1] == 1.0


@pytest.mark.parametrize("name", ["pcgrad", "cagrad"])
def test_the_weighting_exposes_the_conflicts_and_hands_them_over(name):
    theta = nn.Parameter(torch.zeros(2))
    method = get(name).build(LossWeightingConfig(name=name), ["t0", "t1"], 10)
    method.backward(linear_losses(theta, (1.0, 0.0), (-1.0, 1.0)), [theta])
    method.backward(linear_losses(theta, (1.0, 0.0), (1.0, 1.0)), [theta])
    peek = method.conflicts()  # a tracker's read: the window stays
    assert (peek.since, peek.steps, peek.share()) == (0, 2, 0.5)
    assert peek.cosines() == pytest.approx({"t0~t1": 0.0})  # -1/sqrt 2 and +1/sqrt 2
    window = method.conflicts(reset_at=2)  # the evaluation's read: a new window starts at step 2
    assert window.summary() == peek.summary() == {
        "since": 0, "steps": 2, "conflicting": 1, "share": 0.5, "cosine": pytest.approx({"t0~t1": 0.0}),
    }  # fmt: skip
    after = method.conflicts()
    assert (after.since, after.steps, after.share(), after.cosines()) == (2, 0, None, {})
    peek.add(["t0", "t1"], gram(t((1.0, 0.0), (-1.0, 0.0))))  # a copy: the weighting's window is its own
    assert method.conflicts().steps == 0


@pytest.mark.parametrize("name", ["pcgrad", "cagrad"])
def test_the_conflict_window_survives_a_checkpoint(name):
    """optimizer.pt keeps the weighting's state with torch.save, read back with weights_only=True."""
    theta = nn.Parameter(torch.zeros(2))
    directions = [((1.0, 0.0), (-1.0, 1.0)), ((1.0, 2.0), (1.0, 1.0)), ((0.0, 1.0), (1.0, -3.0))]
    method = get(name).build(LossWeightingConfig(name=name), ["t0", "t1"], 10)
    method.conflicts(reset_at=5)
    method.backward(linear_losses(theta, *directions[0]), [theta])
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    resumed = get(name).build(LossWeightingConfig(name=name), ["t0", "t1"], 10)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for g in directions[1:]:
        method.backward(linear_losses(theta, *g), [theta])
        resumed.backward(linear_losses(theta, *g), [theta])
    assert resumed.conflicts().summary() == method.conflicts().summary()
    assert method.conflicts().since == 5 and method.conflicts().steps == 3
    # A checkpoint written before the statistics existed: an empty window, no error.
    old = get(name).build(LossWeightingConfig(name=name), ["t0", "t1"], 10)
    old.load_state_dict({k: v for k, v in method.state_dict().items() if k != "conflicts"})
    assert old.conflicts().steps == 0


def test_tiny_pcgrad_run_logs_the_conflicts_beside_the_affinities(tmp_path):
    out = tiny_run(tmp_path / "runs", "loss_weighting=pcgrad", "trainer.affinity_every=2")
    run = Path(out["run_dir"])
    lines = [json.loads(line) for line in (run / "affinity.jsonl").read_text().splitlines()]
    conflicts = [rec for rec in lines if rec["kind"] == "conflict"]
    assert [(r["step"], r["since"], r["steps"]) for r in conflicts] == [(4, 0, 4), (8, 4, 4)]  # every evaluation
    assert {r["kind"] for r in lines} == {"cosine", "conflict"}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    log = (run / "train.log").read_text()
    for rec in conflicts:
        (a, b), matrix = rec["tasks"], rec["matrix"]
        assert rec["tasks"] == ["restaurants", "electronics"] and matrix[0][0] == matrix[1][1] == 1.0
        assert matrix[0][1] == matrix[1][0] and -1 <= matrix[0][1] <= 1 and rec["share"] in (0, 0.25, 0.5, 0.75, 1)
        trained = {r["task"]: r for r in records if r["step"] == rec["step"] and "examples_seen" in r}
        assert set(trained) == {a, b}
        assert all(r["conflict_share"] == rec["share"] for r in trained.values())
        assert trained[a]["conflict_cosine"] == {b: matrix[0][1]} and trained[b]["conflict_cosine"] == {a: matrix[0][1]}
        share = f"{100 * rec['share']:.0f}% of 4 steps, mean cosine {a}~{b} {matrix[0][1]:+.2f}"
        assert f"gradient conflicts since step {rec['since']}: {share}" in log
