"""Gradient surgery on a [num_tasks, P] matrix of per-task gradients of the shared parameters.

Both methods work on the n x n Gram matrix G = grads @ grads.T (n = number of tasks): every
dot product they need is an entry of G or a combination of them, so the result is one
weighted sum of the task gradients, `coef @ grads`, and nothing bigger than n x n is built
besides the gradients themselves.

`ConflictStats` reads the same Gram matrix: per step, the cosine of every pair of task gradients
and whether any pair conflicts (a negative cosine), accumulated between two evaluations.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize


def task_gradients(
    losses: dict[str, torch.Tensor], shared: list[torch.nn.Parameter]
) -> tuple[torch.Tensor, list[torch.Size]]:
    """Backpropagate each task's loss on its own; return its shared-parameter gradients as rows.

    Each task's loss has its own graph (its own forward pass), so `loss.backward()` once per
    task. After each, the shared parameters' .grad (None counts as zeros) is copied into that
    task's row and cleared; the task heads, which only one loss reaches, keep accumulating
    their .grad as in a plain backward. A shared .grad present on entry is set aside and put
    back at the end, so that `write_gradient` adds to it as a plain backward would.

    Returns (grads [n_tasks, P] in the order of `losses`, the shapes of `shared`).
    """
    shapes = [p.shape for p in shared]
    sizes = [p.numel() for p in shared]
    first = shared[0]
    grads = torch.empty(len(losses), sum(sizes), dtype=first.dtype, device=first.device)
    prior = [p.grad for p in shared]
    for p in shared:
        p.grad = None
    for row, loss in enumerate(losses.values()):
        loss.backward()
        for p, piece in zip(shared, grads[row].split(sizes), strict=True):
            if p.grad is None:
                piece.zero_()
            else:
                piece.copy_(p.grad.reshape(-1))
                p.grad = None
    for p, g in zip(shared, prior, strict=True):
        p.grad = g
    return grads, shapes


def write_gradient(shared: list[torch.nn.Parameter], flat: torch.Tensor) -> None:
    """Add one flat vector (the layout of `task_gradients`) to the shared parameters' .grad.

    A .grad that was None becomes a view into `flat` (no copy: the caller hands `flat` over).
    """
    pieces = flat.split([p.numel() for p in shared])
    for p, piece in zip(shared, pieces, strict=True):
        piece = piece.view(p.shape).to(p.dtype)
        if p.grad is None:
            p.grad = piece
        else:
            p.grad.add_(piece)


def gram(grads: torch.Tensor) -> np.ndarray:
    return (grads @ grads.T).double().cpu().numpy()


def pcgrad(grads: torch.Tensor, generator: torch.Generator, G: np.ndarray | None = None) -> torch.Tensor:
    """PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning", Algorithm 1).

    For each task i, g_i^PC starts as g_i; for each other task j in a random order, when
    g_i^PC . g_j < 0 (a conflict) g_i^PC is projected onto the normal plane of g_j:

        g_i^PC <- g_i^PC - (g_i^PC . g_j) / ||g_j||^2  g_j

    (always against the original g_j). The update is the sum  sum_i g_i^PC.

    g_i^PC is kept as coefficients over the task gradients, g_i^PC = coef[i] @ grads, so
    g_i^PC . g_j = coef[i] @ G[:, j]. `generator` draws each task's order of the others; `G` is
    `gram(grads)` when the caller has it already.
    """
    n = grads.shape[0]
    G = gram(grads) if G is None else G
    coef = np.eye(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for k in torch.randperm(len(others), generator=generator).tolist():
            j = others[k]
            dot = coef[i] @ G[:, j]
            if dot < 0:
                coef[i, j] -= dot / G[j, j]
    return torch.from_numpy(coef.sum(0)).to(grads) @ grads


def cagrad_weights(G: np.ndarray, c: float) -> np.ndarray:
    """The w on the simplex minimising F(w) = g_w . g0 + sqrt(phi) ||g_w||, from the Gram matrix G.

    With b = (1/n, ..., 1/n): g_w . g0 = w^T G b, ||g_w|| = sqrt(w^T G w), phi = c^2 b^T G b.
    F is convex; it is solved with scipy's SLSQP under the simplex constraints (0 <= w_i <= 1,
    sum w = 1), starting from b, as in the authors' implementation, with the analytic gradient.
    G is first divided by its mean diagonal (w* is unchanged) so that F is of order 1 and the
    stopping tolerance ftol=1e-12 is on a known scale.
    """
    n = G.shape[0]
    if n == 1:
        return np.ones(1)
    G = G / max(np.trace(G) / n, np.finfo(float).tiny)
    b = np.full(n, 1.0 / n)
    Gb = G @ b
    root_phi = c * math.sqrt(max(b @ Gb, 0.0))

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        norm = math.sqrt(max(w @ G @ w, 1e-20))
        return w @ Gb + root_phi * norm, Gb + root_phi * (G @ w) / norm

    res = minimize(
        objective,
        b,
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * n,
        constraints={"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones((1, n))},
        options={"ftol": 1e-12, "maxiter": 500},
    )
    w = np.clip(res.x, 0.0, None)
    return w / w.sum()


def cagrad(grads: torch.Tensor, c: float) -> torch.Tensor:
    """CAGrad (Liu et al. 2021, "Conflict-Averse Gradient Descent for Multi-task Learning").

    The update d maximises the worst task improvement min_i g_i . d within a ball around the
    average gradient g0 = mean_i g_i, ||d - g0|| <= c ||g0||. Its dual: with g_w = sum_i w_i g_i
    and phi = c^2 ||g0||^2,

        w* = argmin_{w in simplex}  g_w . g0 + sqrt(phi) ||g_w||,
        d  = g0 + sqrt(phi) / ||g_w*||  g_w*,

    returned divided by (1 + c^2), the rescaling of the authors' implementation (rescale=1).
    c = 0 gives g0 exactly. When g_w* = 0 (the origin lies in the tasks' convex hull, possible
    for c >= 1) the direction is undefined and g0 / (1 + c^2) is returned.
    """
    return cagrad_with_weights(grads, c)[0]


def cagrad_with_weights(grads: torch.Tensor, c: float, G: np.ndarray | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """`cagrad`'s update and the solved w* (uniform where no problem was solved); `G`: `gram(grads)`
    when the caller has it already."""
    n = grads.shape[0]
    G = gram(grads) if G is None else G
    if c == 0 or not np.isfinite(G).all() or G.mean() <= 0:
        return grads.mean(0), np.full(n, 1.0 / n)
    w = cagrad_weights(G, c)
    root_phi = c * math.sqrt(G.mean())
    gw_norm = math.sqrt(max(w @ G @ w, 0.0))
    scale = root_phi / gw_norm if gw_norm > 1e-10 * root_phi else 0.0
    coef = (np.full(n, 1.0 / n) + scale * w) / (1 + c**2)
    return torch.from_numpy(coef).to(grads) @ grads, w


class ConflictStats:
    """Gradient conflicts of the steps since `reset(step)`, from each step's Gram matrix.

    A step counts when at least one pair of its tasks both have a non-zero gradient; it conflicts
    when some pair's cosine is negative (the case PCGrad projects and CAGrad guards against). The
    mean cosine of a pair is over the steps that measured it (a task that stopped early measures
    nothing). A step whose Gram matrix is not finite (a NaN gradient) is left out. The cost is
    O(n^2) scalars per step: the Gram matrix is the one the surgery computes anyway.
    """

    def __init__(self, tasks: list[str]) -> None:
        self.tasks = list(tasks)
        self.reset(0)

    def reset(self, step: int) -> None:
        self.since = int(step)
        self.steps = 0
        self.conflicting = 0
        self._sums: dict[tuple[str, str], float] = {}
        self._counts: dict[tuple[str, str], int] = {}

    def add(self, tasks: list[str], G: np.ndarray) -> None:
        """One step: `G` is the Gram matrix of the gradients of `tasks` (in that order)."""
        if len(tasks) < 2 or not np.isfinite(G).all():
            return
        norms = np.sqrt(np.clip(np.diag(G), 0.0, None))
        order = {t: k for k, t in enumerate(self.tasks)}
        measured = conflict = False
        for i, j in itertools.combinations(range(len(tasks)), 2):
            if norms[i] > 0 and norms[j] > 0:
                cosine = float(np.clip(G[i, j] / (norms[i] * norms[j]), -1.0, 1.0))
                a, b = sorted((tasks[i], tasks[j]), key=lambda t: order.get(t, len(order)))
                self._sums[a, b] = self._sums.get((a, b), 0.0) + cosine
                self._counts[a, b] = self._counts.get((a, b), 0) + 1
                measured, conflict = True, conflict or cosine < 0
        self.steps += measured
        self.conflicting += conflict

    def share(self) -> float | None:
        """The share of the counted steps on which some pair of task gradients conflicted."""
        return self.conflicting / self.steps if self.steps else None

    def cosines(self) -> dict[str, float]:
        """`a~b` -> the pair's mean cosine, in task order."""
        return {f"{a}~{b}": self._sums[a, b] / n for (a, b), n in self._counts.items()}

    def cosines_of(self, task: str) -> dict[str, float]:
        """The other task -> the mean cosine of its gradient with `task`'s."""
        return {b if a == task else a: self._sums[a, b] / n for (a, b), n in self._counts.items() if task in (a, b)}

    def matrix(self) -> list[list[float]]:
        """The mean cosines as a matrix over `tasks` (1 on the diagonal, NaN for a pair never measured)."""
        out = [[1.0 if i == j else math.nan for j in range(len(self.tasks))] for i in range(len(self.tasks))]
        index = {t: k for k, t in enumerate(self.tasks)}
        for (a, b), n in self._counts.items():
            if a in index and b in index:
                out[index[a]][index[b]] = out[index[b]][index[a]] = self._sums[a, b] / n
        return out

    def summary(self) -> dict[str, Any]:
        """{"since": step, "steps", "conflicting", "share", "cosine": {"a~b": mean}}: plain JSON values."""
        return {"since": self.since, "steps": self.steps, "conflicting": self.conflicting,
                "share": self.share(), "cosine": self.cosines()}  # fmt: skip

    def snapshot(self, reset_at: int | None = None) -> ConflictStats:
        """A copy of this window; with `reset_at` (a step), this one then starts again from that step."""
        copy = ConflictStats(self.tasks)
        copy.load_state_dict(self.state_dict())
        if reset_at is not None:
            self.reset(reset_at)
        return copy

    def state_dict(self) -> dict[str, Any]:
        pairs = [[a, b, self._sums[a, b], n] for (a, b), n in self._counts.items()]
        return {"since": self.since, "steps": self.steps, "conflicting": self.conflicting, "pairs": pairs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset(int(state["since"]))
        self.steps, self.conflicting = int(state["steps"]), int(state["conflicting"])
        for a, b, total, n in state["pairs"]:
            self._sums[str(a), str(b)], self._counts[str(a), str(b)] = float(total), int(n)
