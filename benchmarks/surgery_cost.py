"""Cost of one optimizer step with PCGrad and CAGrad relative to equal weighting.

    .venv/bin/python benchmarks/surgery_cost.py                    # tiny encoder, 2 and 4 tasks
    .venv/bin/python benchmarks/surgery_cost.py --encoder minilm --tasks 2

Every step holds one random batch per task (batch 16, length 64), each with its own forward
pass; the methods differ only in the backward: (a) equal, the sum of the losses, one backward
through every task's graph; (b) PCGrad and (c) CAGrad, one backward per task then the surgery.
All three then clip and step AdamW. The methods are timed interleaved (order rotating every
step) on the same model, after warm-up steps; the table gives the median ms/step and the
median of the per-step ratios to equal.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from torch import nn

from mtl_cli.compose import compose_typed
from mtl_cli.config import LossWeightingConfig
from mtl_cli.encoders import load_encoder
from mtl_cli.loss_weighting import get


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="tiny", choices=["tiny", "minilm"])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    encoder, tokenizer = load_encoder(compose_typed([f"encoder={args.encoder}"]).encoder)
    encoder.to(device).train()
    print(
        f"encoder={args.encoder} device={device} threads={torch.get_num_threads()} batch={args.batch} length={args.length}"
    )
    print(f"{'tasks':>5} {'equal ms':>9} {'pcgrad ms':>10} {'cagrad ms':>10} {'pcgrad/equal':>13} {'cagrad/equal':>13}")
    for n in args.tasks:
        times = bench(args, n, encoder, tokenizer.vocab_size, device)
        ms = {name: statistics.median(v) * 1000 for name, v in times.items()}
        ratio = {
            name: statistics.median(a / b for a, b in zip(times[name], times["equal"], strict=True))
            for name in ("pcgrad", "cagrad")
        }
        print(
            f"{n:>5} {ms['equal']:>9.1f} {ms['pcgrad']:>10.1f} {ms['cagrad']:>10.1f} "
            f"{ratio['pcgrad']:>13.2f} {ratio['cagrad']:>13.2f}"
        )


def bench(args: argparse.Namespace, n: int, encoder: Any, vocab: int, device: torch.device) -> dict[str, list[float]]:
    tasks = [f"task{i}" for i in range(n)]
    heads = nn.ModuleDict({t: nn.Linear(encoder.config.hidden_size, 2) for t in tasks}).to(device)
    params = [*encoder.parameters(), *heads.parameters()]
    shared = [p for p in encoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    batches = {
        t: (
            torch.randint(1000, vocab, (args.batch, args.length), device=device),
            torch.randint(0, 2, (args.batch,), device=device),
        )
        for t in tasks
    }
    methods = {
        "equal": None,
        "pcgrad": get("pcgrad").build(LossWeightingConfig(name="pcgrad"), tasks, 100),
        "cagrad": get("cagrad").build(LossWeightingConfig(name="cagrad", c=0.5), tasks, 100),
    }

    def step(method) -> None:
        losses = {}
        for t, (ids, labels) in batches.items():
            hidden = encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
            losses[t] = nn.functional.cross_entropy(heads[t](hidden.mean(1)), labels)
        if method is None:
            torch.stack(list(losses.values())).sum().backward()
        else:
            method.backward(losses, shared)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {name: [] for name in methods}
    names = list(methods)
    for i in range(args.warmup + args.steps):
        for name in names[i % 3 :] + names[: i % 3]:
            sync(device)
            start = time.perf_counter()
            step(methods[name])
            sync(device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    return times


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
