"""Task affinity: how the tasks of a run interact through the shared parameters.

Measured every N steps on one batch per task, taken by the caller from a source of its own
(each task's validation set), so the training data stream is not touched:

- `gradient_cosines`: the cosine similarity of every pair of task gradients on the shared
  parameters (1: the tasks pull the same way, -1: opposite ways, 0: unrelated).
- `lookahead_affinity` (TAG, Fifty et al. 2021, "Efficiently Identifying Task Groupings"): a
  virtual SGD step of lr η on the shared parameters with task i's gradient; the affinity of i
  on j is 1 - L_j(after) / L_j(before), on the same batch of j (> 0: i's step helps j).
- `measure_affinity`: both from one set of gradients.
- `AffinityRecorder`: `<run>/affinity.jsonl` (one line per measurement) and `affinity.png`.

A measurement leaves the training state as it found it: the gradients come from
`torch.autograd.grad`, so no parameter's .grad is written (a .grad present on entry stays
the same tensor, unchanged); the model runs in train mode as in training (dropout on) and each
module's mode is put back after; the torch random state is forked, so training draws the
same dropout masks with or without measurements; the lookahead copies the shared parameters
and copies them back (exactly); MMoE's gate statistics do not see the measurement batches;
no optimizer is involved.

Every forward of a measurement starts from the random generator seeded with `seed`, so a task's
dropout masks are the same in its gradient forward, its "before" and its "after" forward (the
lookahead compares the same function at two points of the parameters), and from one
measurement to the next.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mtl_cli.writers import append_jsonl, write_with

Matrix = list[list[float]]
LossFn = Callable[[Any, dict], torch.Tensor]

# Forward-side bookkeeping of a trunk (MMoE's gate statistics): kept out of measurements.
_BOOKKEEPING = ("_last", "_sums", "_counts")


def _unique(shared: list[nn.Parameter]) -> list[nn.Parameter]:
    """Trainable shared parameters, each once (a tied parameter may be listed twice)."""
    seen: set[int] = set()
    out = []
    for p in shared:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    if not out:
        raise ValueError("no trainable shared parameters to measure task affinity on")
    return out


def _rng_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _seed(device: torch.device, seed: int) -> None:
    """Seed only the generators the forward uses (CPU, and the parameters' GPU), inside a fork."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


@contextmanager
def _preserved(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Train mode inside; module modes, the torch random state and trunk bookkeeping restored after."""
    modes = [(m, m.training) for m in model.modules()]
    books = [
        (m, name, dict(getattr(m, name)))
        for m in model.modules()
        for name in _BOOKKEEPING
        if isinstance(getattr(m, name, None), dict)
    ]
    grads = [(p, p.grad) for p in model.parameters()]
    try:
        with torch.random.fork_rng(devices=_rng_devices(device)):
            model.train()
            yield
    finally:
        for m, mode in modes:
            m.training = mode
        for m, name, saved in books:
            setattr(m, name, saved)
        for p, g in grads:  # autograd.grad writes no .grad; this only guards against a loss that does
            p.grad = g


def _batches_on(batches: dict[str, dict], device: torch.device) -> dict[str, dict]:
    return {
        task: {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        for task, batch in batches.items()
    }


def _loss(model: nn.Module, task: str, batch: dict, loss_fn: LossFn, device: torch.device, seed: int) -> torch.Tensor:
    _seed(device, seed)
    return loss_fn(model(task, batch), batch)


def _gradients(
    model: nn.Module, batches: dict[str, dict], loss_fns: dict[str, LossFn], shared: list[nn.Parameter], seed: int
) -> tuple[list[float], torch.Tensor]:
    """(each task's loss, its gradients on `shared` as rows of [n, P] (float32, float64 for a float64 model)).

    Call inside `_preserved`.
    """
    device = shared[0].device
    sizes = [p.numel() for p in shared]
    dtype = torch.float64 if shared[0].dtype == torch.float64 else torch.float32
    grads = torch.zeros(len(batches), sum(sizes), dtype=dtype, device=device)
    losses = []
    for row, (task, batch) in enumerate(batches.items()):
        loss = _loss(model, task, batch, loss_fns[task], device, seed)
        parts = torch.autograd.grad(loss, shared, allow_unused=True)
        for piece, g in zip(grads[row].split(sizes), parts, strict=True):
            if g is not None:  # a parameter this task's graph does not reach: zeros
                piece.copy_(g.reshape(-1))
        losses.append(loss.item())
    return losses, grads


def cosine_matrix(grads: torch.Tensor) -> Matrix:
    """Cosine similarity of the rows of `grads` [n, P], from their Gram matrix.

    The Gram matrix is one matrix product in the gradients' dtype (float32 accumulates
    well enough for cosines, and no [n, P] copy is made), then float64. A zero gradient has
    no direction: its row and column are 0 (its diagonal too; every other diagonal entry is
    exactly 1). A gradient with a non-finite entry (or a float32 norm that overflows) gives a
    NaN row and column.
    """
    gram = (grads @ grads.T).double()
    sq = gram.diagonal().clone()
    finite = torch.isfinite(sq)
    norms = torch.where(finite, sq, 0.0).clamp(min=0).sqrt()
    denom = norms[:, None] * norms[None, :]
    cos = torch.where(denom > 0, gram / torch.where(denom > 0, denom, 1.0), 0.0).clamp(-1.0, 1.0)
    cos.diagonal().copy_((norms > 0).double())
    cos[~finite, :] = math.nan
    cos[:, ~finite] = math.nan
    return cos.tolist()


def gradient_cosines(
    model: nn.Module,
    batches: dict[str, dict],
    loss_fns: dict[str, LossFn],
    shared: list[nn.Parameter],
    seed: int = 0,
) -> tuple[list[str], Matrix]:
    """(tasks, [n, n] cosine similarities of the tasks' gradients on the shared parameters).

    `batches`: task -> one batch (a dict of tensors, moved to the parameters' device here);
    `loss_fns`: task -> loss(model_output, batch); `shared`: `model.shared_parameters()`.
    One forward and one backward per task; nothing of the training state changes (see the module).
    """
    return measure_affinity(model, batches, loss_fns, shared, seed=seed)["cosine"]


def lookahead_affinity(
    model: nn.Module,
    batches: dict[str, dict],
    loss_fns: dict[str, LossFn],
    shared: list[nn.Parameter],
    lr: float,
    seed: int = 0,
) -> tuple[list[str], Matrix]:
    """(tasks, A) with A[i][j] = 1 - L_j(θ - lr g_i) / L_j(θ): TAG's lookahead affinity of i on j.

    θ: the shared parameters, g_i: task i's gradient on them (task heads stay where they are).
    Each L_j is measured on the same batch with the same dropout masks before and after. The
    shared parameters are copied first and copied back after each virtual step (bit-exact).
    Cost: n forwards + n backwards + n*n forwards without a graph. NaN where L_j(θ) = 0.
    """
    return measure_affinity(model, batches, loss_fns, shared, lookahead_lr=lr, seed=seed)["lookahead"]


def measure_affinity(
    model: nn.Module,
    batches: dict[str, dict],
    loss_fns: dict[str, LossFn],
    shared: list[nn.Parameter],
    lookahead_lr: float | None = None,
    seed: int = 0,
) -> dict[str, tuple[list[str], Matrix]]:
    """{"cosine": (tasks, matrix)} and, with `lookahead_lr`, {"lookahead": (tasks, matrix)}, from
    one gradient per task (the lookahead reuses the gradients and losses of the cosines)."""
    shared = _unique(shared)
    device = shared[0].device
    tasks = list(batches)
    missing = [t for t in tasks if t not in loss_fns]
    if missing:
        raise ValueError(f"no loss function for task(s) {missing}")
    batches = _batches_on(batches, device)
    with _preserved(model, device):
        before, grads = _gradients(model, batches, loss_fns, shared, seed)
        out = {"cosine": (tasks, cosine_matrix(grads))}
        if lookahead_lr is not None:
            out["lookahead"] = (tasks, _lookahead(model, batches, loss_fns, shared, grads, before, lookahead_lr, seed))
    return out


@torch.no_grad()
def _lookahead(
    model: nn.Module,
    batches: dict[str, dict],
    loss_fns: dict[str, LossFn],
    shared: list[nn.Parameter],
    grads: torch.Tensor,
    before: list[float],
    lr: float,
    seed: int,
) -> Matrix:
    device = shared[0].device
    sizes = [p.numel() for p in shared]
    saved = [p.detach().clone() for p in shared]
    matrix: Matrix = []
    try:
        for i in range(len(batches)):
            for p, g in zip(shared, grads[i].split(sizes), strict=True):
                p.sub_(g.view(p.shape).to(p.dtype), alpha=lr)
            row = []
            for j, (task, batch) in enumerate(batches.items()):
                after = _loss(model, task, batch, loss_fns[task], device, seed).item()
                row.append(1.0 - after / before[j] if before[j] != 0 else math.nan)
            matrix.append(row)
            for p, s in zip(shared, saved, strict=True):
                p.copy_(s)
    finally:
        for p, s in zip(shared, saved, strict=True):
            p.copy_(s)
    return matrix


def _json_matrix(matrix: Matrix) -> list[list[float | None]]:
    return [[float(v) if math.isfinite(v) else None for v in row] for row in matrix]


class AffinityRecorder:
    """`path` (a run's affinity.jsonl): one line {step, kind, tasks, matrix} per measurement; heatmaps beside it.

    `every`: measure when `due(step)` (step % every == 0); 0 turns it off. `summary` and `plot`
    read the file, so a resumed run's earlier measurements count (a step measured twice, before
    and after a resume, counts once: the later line).
    """

    def __init__(self, path: str | Path, every: int):
        if every < 0:
            raise ValueError(f"every must be >= 0, got {every}")
        self.path = Path(path)
        self.every = every

    def due(self, step: int) -> bool:
        return self.every > 0 and step > 0 and step % self.every == 0

    def record(
        self, step: int, tasks: list[str], matrix: Matrix, kind: str = "cosine", extra: dict | None = None
    ) -> None:
        """One line; `extra`: further JSON fields of the line (a "conflict" record's share and window)."""
        n = len(tasks)
        if len(matrix) != n or any(len(row) != n for row in matrix):
            raise ValueError(f"matrix must be {n}x{n} for tasks {tasks}")
        line = {"step": int(step), "kind": kind, "tasks": list(tasks), "matrix": _json_matrix(matrix), **(extra or {})}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        append_jsonl(self.path, [line])  # a failed write is cut back off, and is one line

    def records(self, kind: str = "cosine") -> list[dict]:
        """This kind's records in step order, one per step, all with the task list of the latest one."""
        if not self.path.exists():
            return []
        by_step: dict[int, dict] = {}
        with open(self.path, encoding="utf-8") as f:
            for text in f:
                if text.strip():
                    rec = json.loads(text)
                    if rec.get("kind") == kind:
                        by_step[rec["step"]] = rec
        recs = [by_step[s] for s in sorted(by_step)]
        if not recs:
            return []
        tasks = recs[-1]["tasks"]
        return [r for r in recs if r["tasks"] == tasks]

    def kinds(self) -> list[str]:
        if not self.path.exists():
            return []
        with open(self.path, encoding="utf-8") as f:
            found = [json.loads(t)["kind"] for t in f if t.strip()]
        return sorted(set(found), key=lambda k: (k != "cosine", k))

    def summary(self, kind: str = "cosine") -> tuple[list[str], Matrix] | None:
        """(tasks, the mean matrix over the run's measurements of `kind`), NaN/null entries skipped; None if none."""
        recs = self.records(kind)
        if not recs:
            return None
        stack = torch.tensor(
            [[[math.nan if v is None else v for v in row] for row in r["matrix"]] for r in recs], dtype=torch.float64
        )
        return recs[-1]["tasks"], stack.nanmean(0).tolist()

    def plot(self, path: str | Path | None = None) -> Path | None:
        """Heatmaps (mean over the run, and the last measurement) of each kind recorded; None if nothing was."""
        fig = self.figure()
        if fig is None:
            return None
        path = Path(path) if path is not None else self.path.with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_with(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))  # whole, or one line
        return path

    def figure(self) -> Any:
        """The matplotlib Figure `plot` saves: a row of two heatmaps per kind; None if nothing was recorded."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        kinds = self.kinds()
        if not kinds:
            return None
        n = len(self.records(kinds[0])[-1]["tasks"])
        side = max(3.2, 0.9 * n + 1.8)
        fig = Figure(figsize=(2.3 * side, 1.1 * side * len(kinds)), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(kinds), 2, squeeze=False)
        for row, kind in zip(axes, kinds, strict=True):
            recs = self.records(kind)
            summary = self.summary(kind)
            assert summary is not None  # the kind has records
            tasks, mean = summary
            last = [[math.nan if v is None else v for v in r] for r in recs[-1]["matrix"]]
            span = f"steps {recs[0]['step']}-{recs[-1]['step']}" if len(recs) > 1 else f"step {recs[0]['step']}"
            _heatmap(fig, row[0], tasks, mean, kind, f"{kind}: mean\n{len(recs)} measurement(s), {span}")
            _heatmap(fig, row[1], tasks, last, kind, f"{kind}: last\nstep {recs[-1]['step']}")
        return fig


def _heatmap(fig: Any, ax: Any, tasks: list[str], matrix: Matrix, kind: str, title: str) -> Any:
    """One heatmap; returns its image. The diagonal (a task on itself: cosine 1, a lookahead that is
    the task's own loss drop, far larger than any cross-task effect) is written but not coloured,
    and the colour scale is symmetric around 0 over the off-diagonal values only, so that what the
    tasks do to each other is visible."""
    values = torch.tensor(matrix, dtype=torch.float64).numpy()
    diagonal = np.eye(len(values), dtype=bool)
    off = values[~diagonal & np.isfinite(values)]
    limit = float(np.abs(off).max()) if off.size and np.abs(off).max() > 0 else 1.0
    if kind == "cosine":
        limit = min(limit, 1.0)
    cmap = _cmap("RdBu_r", bad="#e6e6e6")  # grey: the masked diagonal and n/a cells
    image = ax.imshow(np.ma.masked_where(diagonal | ~np.isfinite(values), values), cmap=cmap, vmin=-limit, vmax=limit)
    ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right")
    ax.set_yticks(range(len(tasks)), tasks)
    if kind == "lookahead":
        ax.set_xlabel("task j (whose loss changes)")
        ax.set_ylabel("task i (whose gradient steps)")
    ax.set_title(title, fontsize=9)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            text = "n/a" if v != v else (f"{v:.2f}" if kind == "cosine" else f"{v:.2g}")
            color = "white" if v == v and i != j and abs(v) > 0.6 * limit else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
    fig.colorbar(image, ax=ax, shrink=0.8, label="off-diagonal scale")
    return image


def _cmap(name: str, bad: str) -> Any:
    """A registered colour map with `bad` for masked cells (a copy: the registry's stays as it is)."""
    from matplotlib import colormaps  # matplotlib loads only when a plot is drawn

    return colormaps[name].with_extremes(bad=bad)
