"""Loss-weighting diagnostics at each evaluation: every task's effective weight (and MMoE gate use)
in metrics.jsonl, and warnings when a weight collapses or the tasks' loss scales diverge.

With gradient surgery (PCGrad, CAGrad: `weighting.conflicts`), also how often the task gradients
conflicted since the previous evaluation and each pair's mean cosine: in the log, in metrics.jsonl
(`conflict_share`, `conflict_cosine` {other task: mean cosine}) and in affinity.jsonl (kind
"conflict", the mean cosine matrix beside the affinity probe's); then a new window starts."""

from __future__ import annotations

import logging
from typing import Any

from mtl_cli.affinity import AffinityRecorder
from mtl_cli.callbacks import Callback

log = logging.getLogger("mtl")


class WeightingDiagnostics(Callback):
    def on_evaluate(self, parts: Any, state: Any, ev: Any) -> None:
        weights = {t: float(w) for t, w in parts.weighting.weights().items()}
        mean = sum(weights.values()) / max(len(weights), 1)
        threshold = parts.cfg.loss_weighting.collapse_threshold
        for task, w in weights.items():
            if mean > 0 and w < threshold * mean and getattr(parts.weighting, "weights_can_collapse", True):
                log.warning(
                    "loss weighting: task %s's weight %.2g fell below %g of the mean (%.2g): it has stopped training",
                    task, w, threshold, mean,
                )  # fmt: skip
        losses = {t: v for t, v in state.running_loss.items() if v > 0}
        if len(losses) > 1:
            hi, lo = max(losses, key=lambda t: losses[t]), min(losses, key=lambda t: losses[t])
            if losses[hi] > 100 * losses[lo]:
                log.warning(
                    "loss scales differ: %s's loss (%.3g) is %.0fx %s's (%.3g); consider loss_weighting=uncertainty",
                    hi, losses[hi], losses[hi] / losses[lo], lo, losses[lo],
                )  # fmt: skip
        summary = getattr(parts.model.trunk, "gate_summary", None)
        gates = summary() if summary is not None else None
        for task, rec in ev.records.items():
            if task in state.examples_seen:
                rec["weight"] = weights.get(task)
                if gates is not None:
                    rec["gates"] = gates.get(task)
        log.info("task weights: %s", {t: round(w, 4) for t, w in weights.items()})
        if gates is not None:
            log.info("mmoe gates (mean per expert): %s", {t: [round(g, 3) for g in v] for t, v in gates.items()})
        if hasattr(parts.weighting, "conflicts"):
            report_conflicts(parts, state, ev)


def report_conflicts(parts: Any, state: Any, ev: Any) -> None:
    stats = parts.weighting.conflicts(reset_at=state.step)
    share = stats.share()
    if share is None:  # no step since the last evaluation measured two task gradients
        return
    cosines = ", ".join(f"{pair} {c:+.2f}" for pair, c in stats.cosines().items())
    log.info("gradient conflicts since step %d: %.0f%% of %d steps, mean cosine %s",
             stats.since, 100 * share, stats.steps, cosines)  # fmt: skip
    for task, rec in ev.records.items():
        if task in state.examples_seen:
            rec["conflict_share"] = share
            rec["conflict_cosine"] = stats.cosines_of(task)
    extra = {"since": stats.since, "steps": stats.steps, "share": share}
    AffinityRecorder(parts.run.affinity, 0).record(state.step, stats.tasks, stats.matrix(), "conflict", extra)
