"""Task affinity during training: gradient cosines (and TAG lookahead) every `trainer.affinity_every` steps."""

from __future__ import annotations

import logging
from typing import Any

from mtl_cli.affinity import AffinityRecorder, measure_affinity
from mtl_cli.batches import TaskBatches
from mtl_cli.callbacks import Callback

log = logging.getLogger("mtl")


class AffinityProbe(Callback):
    """Measurements draw from seeded streams over each task's validation set, so the training
    stream (and so training itself) is the same with or without them."""

    name = "affinity"

    def __init__(self, parts: Any) -> None:
        cfg = parts.cfg
        every = cfg.trainer.affinity_every
        if len(parts.batches) < 2 or not any(p.requires_grad for p in parts.shared):
            every = 0  # one task, or nothing shared is trained (adapters on a frozen encoder)
        self.recorder = AffinityRecorder(parts.run.affinity, every)
        self.plot_path = parts.run.affinity_plot
        self.lookahead = cfg.trainer.affinity_lookahead_lr
        self.batches = {
            name: TaskBatches(
                parts.data["validation"][name], parts.types[name].collate,
                cfg.trainer.batch_size, parts.tokenizer.pad_token_id, cfg.seed * 1000 + 500 + i,
            )
            for i, name in enumerate(parts.batches)
        }  # fmt: skip
        self.losses = {n: parts.types[n].loss for n in self.batches}
        # The last measurement, kind -> (tasks, matrix), at step `latest_step`: what the trackers log.
        self.latest: dict[str, tuple[list[str], list[list[float]]]] = {}
        self.latest_step = 0

    def on_step(self, parts: Any, state: Any, step: Any) -> None:
        if not self.recorder.due(state.step):
            return
        batches = {n: b.next_batch() for n, b in self.batches.items()}
        results = measure_affinity(parts.model, batches, self.losses, parts.shared, lookahead_lr=self.lookahead)
        for kind, (tasks, matrix) in results.items():
            self.recorder.record(state.step, tasks, matrix, kind)
        self.latest, self.latest_step = results, state.step

    def on_finish(self, parts: Any, state: Any) -> None:
        summary = self.recorder.summary()
        if summary is not None:
            self.recorder.plot(self.plot_path)
            names, matrix = summary
            log.info("task gradient cosines on the shared encoder, mean over the run: %s %s",
                     names, [[round(v, 3) for v in row] for row in matrix])  # fmt: skip

    def state_dict(self) -> dict:
        return {"batches": {n: b.state_dict() for n, b in self.batches.items()}}

    def load_state_dict(self, state: dict) -> None:
        for name, b in self.batches.items():
            if name in state.get("batches", {}):
                b.load_state_dict(state["batches"][name])
