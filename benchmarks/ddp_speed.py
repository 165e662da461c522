"""Data parallel on this machine: 1 process vs N processes (trainer.devices=N), and the all-reduce's
share of a DDP step.

    python benchmarks/ddp_speed.py [--steps 30] [--rounds 2] [--processes 2] [--out ddp_speed.json]

1. End to end: `mtl train` on MiniLM and the packaged demo reviews, the same global batch (32)
   and steps, in 1 process (all cores) and in N (the cores shared out); rounds interleaved, medians
   of train examples/s from each run's timing.json (the first step, which compiles nothing but
   warms caches, is left out there).
2. The all-reduce: under torchrun, the same DDP model trains one task's batches with the gradient
   all-reduce (a normal step) and inside `no_sync()` (no communication); the difference of the
   median step times is the all-reduce's cost that computation does not hide, and its share of
   the step. A plain all_reduce of a buffer as large as the model's gradients is timed beside it.

It prints the figures and the load average, and writes them to --out. On a 2-core machine the
processes only share the same cores: expect no speed-up, the point is what the engine costs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BATCH = 32  # the global batch of a step, for every configuration


def end_to_end(processes: int, steps: int, root: Path) -> dict:
    per_process = BATCH // processes
    cmd = [
        sys.executable, "-m", "mtl_cli", "train", "trainer.progress=false", f"trainer.max_steps={steps}",
        f"trainer.eval_every={steps}", f"trainer.batch_size={per_process}",
        f"trainer.devices={processes}", f"runs_root={root}",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"mtl train failed:\n{done.stderr[-2000:]}")
    timing = json.loads(max(root.glob("*/*/timing.json"), key=lambda p: p.stat().st_mtime).read_text())
    return {
        "examples_per_second": timing["train_examples_per_second"],
        "tokens_per_second": timing["real_tokens_per_second"],
    }


def inner(steps: int) -> None:
    """One rank of the all-reduce measurement (run under torchrun)."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from mtl_cli.compose import compose_config
    from mtl_cli.device import autocast, use_bf16
    from mtl_cli.train import prepare
    from mtl_cli.validation import to_typed

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = to_typed(compose_config([f"trainer.batch_size={BATCH // world}"]))
    cfg.trainer.threads = max(1, (os.cpu_count() or 1) // world)
    setup = prepare(cfg)
    bf16 = use_bf16(cfg.trainer.precision, setup.device)
    model = setup.model
    ddp = DistributedDataParallel(model, find_unused_parameters=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    task = next(iter(setup.data["train"]))
    from mtl_cli import task_types
    from mtl_cli.batches import TaskBatches

    ttype = task_types.get(cfg.task[task].type)
    stream = TaskBatches(setup.data["train"][task], ttype.collate, BATCH, setup.tokenizer.pad_token_id, 0, group=50)
    batches = [stream.draw(1, rank, world).pieces[0] for _ in range(steps)]

    def step(batch: dict, sync: bool) -> float:
        began = time.perf_counter()
        context = ddp.no_sync() if not sync else torch.enable_grad()
        with context:
            with autocast(setup.device, bf16):  # as mtl trains by default (trainer.precision=auto)
                loss = ttype.loss(ddp(task, batch), batch)
            loss.backward()
        opt.zero_grad(set_to_none=True)
        dist.barrier()  # both ranks' step ends here: the slower one sets the time
        return time.perf_counter() - began

    for batch in batches[:3]:  # warm-up
        step(batch, True)
    synced, local = [], []
    for batch in batches:  # interleaved: the machine's load falls on both alike
        synced.append(step(batch, True))
        local.append(step(batch, False))
    numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
    buffer = torch.zeros(numel)
    reduce_times = []
    for _ in range(10):
        began = time.perf_counter()
        dist.all_reduce(buffer)
        reduce_times.append(time.perf_counter() - began)
    if rank == 0:
        s, n = statistics.median(synced), statistics.median(local)
        print(json.dumps({
            "step_seconds_with_allreduce": s, "step_seconds_without": n, "allreduce_share": (s - n) / s,
            "plain_allreduce_seconds": statistics.median(reduce_times), "gradient_values": numel,
            "threads_per_process": torch.get_num_threads(), "bf16": bf16,
        }))  # fmt: skip
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", default="ddp_speed.json")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        return inner(args.steps)
    load_before = os.getloadavg()
    rates: dict[int, list[dict]] = {1: [], args.processes: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for n in rates:
                rates[n].append(end_to_end(n, args.steps, Path(tmp) / f"{n}-{r}"))
                print(
                    f"round {r + 1}: {n} process(es): {rates[n][-1]['examples_per_second']:.1f} examples/s", flush=True
                )
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.processes}",
        __file__, "--inner", "--steps", str(args.steps),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"the all-reduce measurement failed:\n{done.stderr[-2000:]}")
    allreduce = json.loads(done.stdout.strip().splitlines()[-1])
    medians = {n: statistics.median(r["examples_per_second"] for r in runs) for n, runs in rates.items()}
    result = {
        "examples_per_second": {str(n): v for n, v in medians.items()},
        "ratio": medians[args.processes] / medians[1],
        "allreduce": allreduce,
        "rounds": args.rounds, "steps": args.steps, "global_batch": BATCH, "cpus": os.cpu_count(),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
