"""A sweep's progress (`mtl train -m`: Hydra's basic launcher runs the jobs in turn, in this
process), so that a failure on job k says which jobs ran, which failed and which were not run."""

from __future__ import annotations

from pathlib import Path

from mtl_cli.rundir import remove_empty_dirs


class Sweep:
    """What the sweep of this process has done so far."""

    def __init__(self) -> None:
        self.start(None)

    def start(self, overrides: list[str] | None) -> None:
        self.jobs: list[list[str]] | None = sweep_jobs(overrides) if overrides is not None else None
        self.done: list[tuple[int, str]] = []

    def ran(self, num: int, run_dir: Path | str, overrides: list[str]) -> None:
        self.done.append((num, f"job {num} ({self.swept(overrides)}): {run_dir}"))

    def swept(self, overrides: list[str]) -> str:
        """The overrides that tell this job from the others (all of them without a plan)."""
        common = set.intersection(*map(set, self.jobs)) if self.jobs else set()
        return " ".join(o for o in overrides if o not in common) or " ".join(overrides) or "no overrides"

    def failed(self, num: int, reason: str, out: Path, sweep_dir: Path, overrides: list[str]) -> str:
        kept = f" (its folder {out})" if out.is_dir() and any(out.iterdir()) else ""
        total = len(self.jobs) if self.jobs else None
        ran = "; ".join(text for _, text in self.done) if self.done else "none"
        if total is None:
            rest = "the rest of the sweep"
        else:
            later = [f"job {n} ({self.swept(self.jobs[n])})" for n in range(num + 1, total)]  # type: ignore[index]
            rest = ", ".join(later) or "none"
        if not self.done and not kept:  # nothing of the sweep exists: no folder left behind either
            (sweep_dir / "multirun.yaml").unlink(missing_ok=True)
            remove_empty_dirs(sweep_dir, levels=3)
        of = f" of {total}" if total else ""
        return (
            f"sweep stopped: job {num}{of} ({self.swept(overrides)}) failed{kept}: {reason} | ran: {ran} | "
            f"not run: {rest}"
        )


def sweep_jobs(overrides: list[str]) -> list[list[str]] | None:
    """Each job's overrides, in the order Hydra's basic sweeper runs them (None when it cannot be told)."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        own = [o for o in overrides if not o.lstrip("+~").startswith("hydra.")]
        batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(own), None)
        return [list(job) for batch in batches for job in batch]
    except Exception:  # a sweep Hydra's basic sweeper expands otherwise (globs): no plan, still a summary
        return None


SWEEP = Sweep()
