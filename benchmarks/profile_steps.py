"""Where mtl's training time goes: torch.profiler over a short `mtl train` run, top operators by self CPU time.

    .venv/bin/python benchmarks/profile_steps.py                       # MiniLM, FDU books+dvd, 256 tokens, 12 steps
    .venv/bin/python benchmarks/profile_steps.py trainer.precision=bf16 # any mtl override

Evaluation is kept to a few examples so the table is about training steps; the first steps
(warm-up of the allocator and kernels) are profiled too, so compare runs of equal length.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(overrides: list[str]) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from mtl_cli.compose import compose_config
    from mtl_cli.train import train

    data_root = os.environ.get("MTL_SHARED_DATA") or str(REPO.parent / "shared" / "data")
    with tempfile.TemporaryDirectory() as runs:
        cfg = compose_config(
            [
                "task=[fdu/books,fdu/dvd]", f"data_root={data_root}", f"runs_root={runs}", "trainer.max_steps=12",
                "trainer.eval_every=12", "trainer.progress=false", "trainer.affinity_every=0",
                "task.books.max_eval_examples=8", "task.dvd.max_eval_examples=8", *overrides,
            ]
        )  # fmt: skip
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            timing = train(cfg)["timing"]
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    print(
        f"train steps {timing['train_seconds']:.1f} s of the profiled run; "
        f"{timing['train_examples_per_second']:.1f} examples/s under the profiler; torch {torch.__version__}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
