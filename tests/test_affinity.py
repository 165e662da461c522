"""Task affinity: gradient cosines and TAG lookahead on a toy model with known answers, the
training state left untouched, the recorder's files; the tiny encoder as a real model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mtl_cli.affinity import (
    AffinityRecorder,
    cosine_matrix,
    gradient_cosines,
    lookahead_affinity,
    measure_affinity,
)
from tests.conftest import tiny_encoder, tiny_run


class Toy(nn.Module):
    """x -> shared linear (no bias) -> dropout -> per-task linear head -> one output; float64.

    Every head starts from the same weights, so two tasks on the same batch with the same
    targets have the same gradient on the shared layer.
    """

    def __init__(self, tasks: list[str], d_in: int = 4, hidden: int = 3, dropout: float = 0.0):
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Linear(d_in, hidden, bias=False)
        self.dropout = nn.Dropout(dropout)
        head = torch.randn(1, hidden)
        self.heads = nn.ModuleDict({t: nn.Linear(hidden, 1, bias=False) for t in tasks})
        with torch.no_grad():
            for h in self.heads.values():
                h.weight.copy_(head)  # type: ignore[operator]  # torch stubs: Module.__getattr__ is Tensor | Module
        self.double()
        self.modes: list[bool] = []
        self._counts: dict[str, int] = {}  # forward-side statistics, as MMoE's gate counts

    def forward(self, task: str, batch: dict) -> torch.Tensor:
        self.modes.append(self.training)
        self._counts[task] = self._counts.get(task, 0) + 1
        return self.heads[task](self.dropout(self.shared(batch["x"]))).squeeze(-1)

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.shared.parameters())


def mse(output: torch.Tensor, batch: dict) -> torch.Tensor:
    return F.mse_loss(output, batch["y"])


def toy_tasks(zero_shared: bool = True, dropout: float = 0.0) -> tuple[Toy, dict, dict]:
    """a: y; same: y on the same batch (aligned); neg: -y on the same batch (opposed, exactly when the
    shared layer is zero: the outputs are 0, so the residuals are -y and +y); other: inputs on
    the other half of the features (orthogonal: its gradient lives in the shared weight's other columns)."""
    tasks = ["a", "same", "neg", "other"]
    model = Toy(tasks, dropout=dropout)
    if zero_shared:
        with torch.no_grad():
            model.shared.weight.zero_()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 4, generator=gen, dtype=torch.float64)
    x[:, 2:] = 0
    x_other = torch.randn(8, 4, generator=gen, dtype=torch.float64)
    x_other[:, :2] = 0
    y = torch.randn(8, generator=gen, dtype=torch.float64)
    batches = {
        "a": {"x": x, "y": y},
        "same": {"x": x.clone(), "y": y.clone()},
        "neg": {"x": x.clone(), "y": -y},
        "other": {"x": x_other, "y": torch.randn(8, generator=gen, dtype=torch.float64)},
    }
    return model, batches, dict.fromkeys(tasks, mse)


def grads_by_hand(model: Toy, batches: dict) -> torch.Tensor:
    rows = []
    for task, batch in batches.items():
        model.zero_grad(set_to_none=True)
        mse(model(task, batch), batch).backward()
        grad = model.shared.weight.grad
        assert grad is not None
        rows.append(grad.reshape(-1).clone())
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


# gradient cosines


def test_cosines_aligned_opposed_orthogonal():
    model, batches, losses = toy_tasks()
    tasks, m = gradient_cosines(model, batches, losses, model.shared_parameters())
    assert tasks == ["a", "same", "neg", "other"]
    c = {(i, j): m[tasks.index(i)][tasks.index(j)] for i in tasks for j in tasks}
    assert c["a", "same"] == pytest.approx(1.0, abs=1e-12)
    assert c["a", "neg"] == pytest.approx(-1.0, abs=1e-12)
    assert c["same", "neg"] == pytest.approx(-1.0, abs=1e-12)
    for t in ("a", "same", "neg"):
        assert c[t, "other"] == 0.0 and c["other", t] == 0.0
    assert [m[i][i] for i in range(4)] == [1.0] * 4
    assert all(m[i][j] == m[j][i] for i in range(4) for j in range(4))


def test_cosines_match_gradients_by_hand_on_a_generic_model():
    model, batches, losses = toy_tasks(zero_shared=False)
    _, m = gradient_cosines(model, batches, losses, model.shared_parameters())
    g = grads_by_hand(model, batches)
    expected = F.cosine_similarity(g[:, None], g[None, :], dim=-1)
    assert torch.allclose(torch.tensor(m, dtype=torch.float64), expected, atol=1e-12)
    assert -1 < m[0][2] < 1  # not trivially aligned or opposed away from zero


def test_cosine_matrix_zero_and_nonfinite_gradients():
    grads = torch.tensor([[1.0, 0.0], [0.0, 0.0], [3.0, 3.0]])
    m = cosine_matrix(grads)
    assert m[1] == [0.0, 0.0, 0.0] and [r[1] for r in m] == [0.0, 0.0, 0.0]
    assert m[0][0] == 1.0 and m[2][2] == 1.0
    assert m[0][2] == pytest.approx(math.sqrt(0.5))
    m = cosine_matrix(torch.tensor([[1.0, 0.0], [math.nan, 1.0]]))
    assert m[0][0] == 1.0 and all(math.isnan(v) for v in (m[0][1], m[1][0], m[1][1]))


def test_training_state_is_untouched():
    model, batches, losses = toy_tasks(zero_shared=False, dropout=0.5)
    model.eval()  # put back as found; the measurement itself runs in train mode
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.shared.weight.grad = torch.randn_like(model.shared.weight)
    # torch's stubs type Module.__getattr__ as Tensor | Module; this head's weight is a Tensor.
    model.heads["a"].weight.grad = torch.randn_like(model.heads["a"].weight)  # type: ignore[arg-type]
    grads = {n: p.grad for n, p in model.named_parameters()}
    values = {n: None if g is None else g.clone() for n, g in grads.items()}
    rng = torch.get_rng_state()
    measure_affinity(model, batches, losses, model.shared_parameters(), lookahead_lr=0.1)
    assert model.modes and all(model.modes)  # every forward ran in train mode (dropout on)
    assert model._counts == {}  # the measurement batches stay out of forward-side statistics
    assert not model.training and not model.dropout.training
    assert torch.equal(torch.get_rng_state(), rng)
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]), n
        assert p.grad is grads[n], n  # same object (None stays None)
        value = values[n]
        if value is not None:
            assert p.grad is not None and torch.equal(p.grad, value), n


def test_dropout_masks_are_fixed_by_the_seed():
    model, batches, losses = toy_tasks(zero_shared=False, dropout=0.5)
    shared = model.shared_parameters()
    first = gradient_cosines(model, batches, losses, shared, seed=3)
    torch.rand(10)  # the global stream moved on: the measurement does not depend on it
    assert gradient_cosines(model, batches, losses, shared, seed=3) == first
    _, m = gradient_cosines(model, batches, losses, shared, seed=3)
    assert m[0][1] == pytest.approx(1.0, abs=1e-12)  # same batch, same targets, same masks


# TAG lookahead


def test_lookahead_signs_and_exact_restore():
    model, batches, losses = toy_tasks()
    before = [p.detach().clone() for p in model.parameters()]
    tasks, a = lookahead_affinity(model, batches, losses, model.shared_parameters(), lr=0.05)
    A = {(i, j): a[tasks.index(i)][tasks.index(j)] for i in tasks for j in tasks}
    assert A["a", "a"] > 0 and A["a", "same"] > 0 and A["a", "same"] == A["a", "a"]
    assert A["a", "neg"] < 0 and A["neg", "a"] < 0
    assert A["a", "other"] == 0.0 and A["other", "a"] == 0.0  # disjoint columns: its loss does not move
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_lookahead_is_one_minus_the_loss_ratio_after_an_sgd_step():
    model, batches, losses = toy_tasks(zero_shared=False)
    tasks, a = lookahead_affinity(model, batches, losses, model.shared_parameters(), lr=0.1)
    g = grads_by_hand(model, batches)
    for i in range(len(tasks)):
        stepped = Toy(tasks)
        stepped.load_state_dict(model.state_dict())
        with torch.no_grad():
            stepped.shared.weight -= 0.1 * g[i].view_as(stepped.shared.weight)
        for j, tj in enumerate(tasks):
            b = batches[tj]
            expected = 1 - mse(stepped(tj, b), b).item() / mse(model(tj, b), b).item()
            assert a[i][j] == pytest.approx(expected, abs=1e-12)


def test_lookahead_first_order_is_the_gradient_dot_product():
    # 1 - L_j(θ - η g_i) / L_j(θ) = η g_i·g_j / L_j + O(η²)
    model, batches, losses = toy_tasks(zero_shared=False)
    eta = 1e-6
    _, a = lookahead_affinity(model, batches, losses, model.shared_parameters(), lr=eta)
    g = grads_by_hand(model, batches)
    L = torch.tensor([mse(model(t, b), b).item() for t, b in batches.items()], dtype=torch.float64)
    expected = eta * (g @ g.T) / L[None, :]
    assert torch.allclose(torch.tensor(a, dtype=torch.float64), expected, rtol=1e-4, atol=1e-14)


def test_lookahead_zero_lr_is_zero_with_dropout():
    model, batches, losses = toy_tasks(zero_shared=False, dropout=0.5)
    _, a = lookahead_affinity(model, batches, losses, model.shared_parameters(), lr=0.0)
    assert a == [[0.0] * 4] * 4  # before and after see the same dropout masks


def test_inputs_are_checked():
    model, batches, losses = toy_tasks()
    with pytest.raises(ValueError, match="no loss function"):
        gradient_cosines(model, batches, {"a": mse}, model.shared_parameters())
    model.shared.weight.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable shared"):
        gradient_cosines(model, batches, losses, model.shared_parameters())


# the tiny encoder (a real MultiTaskModel, dropout on)


def test_tiny_encoder_model():
    from mtl_cli import task_types
    from mtl_cli.compose import compose_typed
    from mtl_cli.config import TaskConfig
    from mtl_cli.model import build_model

    encoder, _ = tiny_encoder()
    cfgs = {"cls": TaskConfig(), "reg": TaskConfig(type="regression")}
    model = build_model(encoder, cfgs, {"cls": ["x", "y"], "reg": None}, compose_typed().sharing).train()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (4, 12), generator=gen)
    base = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    batches = {
        "cls": {**base, "labels": torch.tensor([0, 1, 1, 0])},
        "reg": {**base, "labels": torch.tensor([0.5, -1.0, 2.0, 0.0])},
    }
    losses = {t: task_types.get(c.type).loss for t, c in cfgs.items()}
    shared = model.shared_parameters()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    out = measure_affinity(model, batches, losses, shared, lookahead_lr=0.0)
    tasks, m = out["cosine"]
    assert tasks == ["cls", "reg"] and m[0][0] == m[1][1] == 1.0 and -1 <= m[0][1] <= 1
    assert out["lookahead"][1] == [[0.0, 0.0], [0.0, 0.0]]  # same dropout masks before and after
    _, a = lookahead_affinity(model, batches, losses, shared, lr=1e-3)
    assert a[0][0] > 0 and a[1][1] > 0  # a small step on a task's own gradient lowers its own loss
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng) and model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


# the recorder


def test_recorder_jsonl_summary_and_plot(tmp_path):
    rec = AffinityRecorder(tmp_path / "run" / "affinity.jsonl", every=50)
    assert [s for s in range(0, 201) if rec.due(s)] == [50, 100, 150, 200]
    assert not AffinityRecorder(tmp_path / "affinity.jsonl", every=0).due(50)
    assert rec.summary() is None and rec.plot() is None
    tasks = ["a", "b"]
    rec.record(50, tasks, [[1.0, 0.2], [0.2, 1.0]])
    rec.record(100, tasks, [[1.0, -0.4], [-0.4, 0.0]])
    rec.record(100, tasks, [[1.0, 0.6], [0.6, 1.0]])  # a resumed run measured step 100 again: the later counts
    rec.record(50, tasks, [[0.01, math.nan], [-0.02, 0.03]], kind="lookahead")
    lines = [json.loads(t) for t in (tmp_path / "run" / "affinity.jsonl").read_text().splitlines()]
    assert len(lines) == 4
    assert lines[0] == {"step": 50, "kind": "cosine", "tasks": tasks, "matrix": [[1.0, 0.2], [0.2, 1.0]]}
    assert lines[3]["matrix"] == [[0.01, None], [-0.02, 0.03]]
    summary = rec.summary()
    assert summary is not None
    names, mean = summary
    assert names == tasks and sum(mean, []) == pytest.approx([1.0, 0.4, 0.4, 1.0])
    lookahead = rec.summary("lookahead")
    assert lookahead is not None
    _, la = lookahead
    assert math.isnan(la[0][1]) and la[1][0] == -0.02
    path = rec.plot()
    assert path == tmp_path / "run" / "affinity.png"
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"
    other = rec.plot(tmp_path / "elsewhere" / "x.png")
    assert other is not None and other.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="2x2"):
        rec.record(150, tasks, [[1.0]])


def test_recorder_takes_measure_affinity_output(tmp_path):
    model, batches, losses = toy_tasks()
    rec = AffinityRecorder(tmp_path / "affinity.jsonl", every=1)
    for step in (1, 2):
        for kind, (tasks, matrix) in measure_affinity(
            model, batches, losses, model.shared_parameters(), lookahead_lr=0.05
        ).items():
            rec.record(step, tasks, matrix, kind)
    summary = rec.summary()
    assert summary is not None
    tasks, mean = summary
    assert tasks == ["a", "same", "neg", "other"] and mean[0][2] == pytest.approx(-1.0)
    lookahead = rec.summary("lookahead")
    assert lookahead is not None and lookahead[1][0][2] < 0
    plot = rec.plot()
    assert plot is not None and plot.read_bytes()[:4] == b"\x89PNG"


def test_affinity_is_recorded_during_a_real_run_without_changing_training(tmp_path) -> None:
    """Measuring affinity draws from validation batches: the trained weights are identical without it."""
    from safetensors.torch import load_file

    base = ["trainer.max_steps=6", "trainer.eval_every=6", "trainer.batch_size=4"]  # the two demo tasks
    with_affinity = Path(tiny_run(tmp_path, *base, "trainer.affinity_every=2")["run_dir"])
    without = Path(tiny_run(tmp_path, *base, "trainer.affinity_every=0")["run_dir"])
    lines = [json.loads(line) for line in (with_affinity / "affinity.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4, 6] and lines[0]["tasks"] == ["restaurants", "electronics"]
    assert all(r["matrix"][0][0] == pytest.approx(1.0) for r in lines)
    assert (with_affinity / "affinity.png").read_bytes()[:4] == b"\x89PNG"
    assert not (without / "affinity.jsonl").exists()
    a = load_file(with_affinity / "checkpoints" / "last" / "model.safetensors")
    b = load_file(without / "checkpoints" / "last" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
