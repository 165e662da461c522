"""Inference speed on the same texts: `mtl predict`, the exported transformers model under
`pipeline()`, and the exported ONNX graph under onnxruntime, measured side by side in one run.

    .venv/bin/python benchmarks/predict_speed.py RUN_DIR --task wnut17 \\
        --texts ../shared/data/sentiment-sentences/amazon_cells_labelled.txt --n 1000 --out predict_bench.json

The texts are the first N lines of the file (a UCI sentiment file: its first column). Each method
labels all of them with the same thread count (one per physical core), in `--repeats` interleaved
rounds (each method warmed up first); the figure is the median examples/s of the rounds:

  mtl_predict   mtl_cli.predict.predict_run in this process (length-sorted batches, inference_mode,
                the run's precision); seconds of the prediction phase, as its log line reports them
  hf_pipeline   transformers.pipeline(<task kind>, model=<export dir>, batch_size=B), as its users run it
                (token-classification with aggregation_strategy="first"; only where the task exports as hf)
  onnxruntime   onnxruntime.InferenceSession(<export dir>/model.onnx) on length-sorted batches of B,
                tokenized with the exported tokenizer, intra-op threads = torch's thread count

The exported models run in subprocesses that do not import mtl (as a user runs them), one per method. The
1-minute load average before and after is recorded: about the thread count on an idle machine.
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

# Runs in a fresh interpreter without mtl: the exported folder and plain transformers / onnxruntime.
WORKER = r"""
import json, sys, time
import numpy as np
import torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
texts = [line.rstrip("\n") for line in open(args["texts"], encoding="utf-8")]
out = {}
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(args["dir"])
if args["method"] == "hf_pipeline":
    from transformers import pipeline
    kind = args["pipeline"]
    extra = {"aggregation_strategy": "first"} if kind == "token-classification" else {}
    pipe = pipeline(kind, model=args["dir"], tokenizer=tokenizer, device="cpu", batch_size=args["batch_size"], **extra)
    pipe(texts[: args["batch_size"]])  # warm-up
    rates = []
    for _ in range(args["repeats"]):
        began = time.perf_counter()
        pipe(texts)
        rates.append(len(texts) / (time.perf_counter() - began))
    out["hf_pipeline"] = rates
    print(json.dumps(out))
    sys.exit(0)
import onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = args["threads"]
session = ort.InferenceSession(args["dir"] + "/model.onnx", options, providers=["CPUExecutionProvider"])
names = {i.name for i in session.get_inputs()}
order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
def run_all():
    for start in range(0, len(order), args["batch_size"]):
        chunk = [texts[i] for i in order[start : start + args["batch_size"]]]
        enc = tokenizer(chunk, padding=True, truncation=True, return_tensors="np")
        session.run(None, {k: v.astype(np.int64) for k, v in enc.items() if k in names})
run_all()  # warm-up
rates = []
for _ in range(args["repeats"]):
    began = time.perf_counter()
    run_all()
    rates.append(len(texts) / (time.perf_counter() - began))
out["onnxruntime"] = rates
assert "mtl_cli" not in sys.modules
print(json.dumps(out))
"""

PIPELINES = {
    "token_classification": "token-classification",
}


def load_average() -> float:
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a finished run directory (or `latest`)")
    parser.add_argument("--task", required=True)
    parser.add_argument("--texts", required=True, help="a text file; its first tab-separated column is used")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="predict_bench.json")
    args = parser.parse_args()

    import torch

    from mtl_cli.device import physical_cores
    from mtl_cli.export import export_task
    from mtl_cli.predict import predict_run
    from mtl_cli.trained import locate, run_path

    threads = physical_cores()
    located = locate(run_path(args.run))
    task_type = located.cfg.task[args.task].type
    lines = Path(args.texts).read_text(encoding="utf-8").splitlines()
    texts = [line.split("\t")[0] for line in lines if line.strip()][: args.n]
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        text_file = Path(tmp) / "texts.txt"
        text_file.write_text("\n".join(texts) + "\n", encoding="utf-8")
        export_dir = Path(tmp) / "export"
        summary = export_task(str(located.run.path), task=args.task, out=str(export_dir))
        pipeline_kind = PIPELINES.get(task_type) if (export_dir / "model.safetensors").is_file() else None
        common = {"tasks": [args.task], "batch_size": args.batch_size, "overwrite": True}
        predict_run(str(located.run.path), str(text_file), out=str(Path(tmp) / "warm.jsonl"), **common)
        worker_args = {
            "dir": str(export_dir), "texts": str(text_file), "threads": threads, "batch_size": args.batch_size,
            "repeats": 1,
        }  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        methods = (["hf_pipeline"] if pipeline_kind else []) + ["onnxruntime"]
        rates: dict[str, list[float]] = {"mtl_predict": [], **{m: [] for m in methods}}
        for r in range(args.repeats):  # interleaved rounds: a slower spell of the machine hits every method
            torch.set_num_threads(threads)
            result = predict_run(str(located.run.path), str(text_file), out=str(Path(tmp) / f"p{r}.jsonl"), **common)
            rates["mtl_predict"].append(result["examples_per_s"])
            # One process per method (each warms up first): torch's idle threads would spin beside onnxruntime's.
            for method in methods:
                done = subprocess.run(
                    [sys.executable, "-c", WORKER, json.dumps({**worker_args, "method": method, "pipeline": pipeline_kind})],
                    capture_output=True, text=True, env=env, cwd=tmp,
                )  # fmt: skip
                if done.returncode != 0:
                    sys.exit(f"the {method} worker failed:\n{done.stderr[-3000:]}")
                rates[method].extend(json.loads(done.stdout.strip().splitlines()[-1])[method])
    medians = {name: statistics.median(r) for name, r in rates.items()}
    report = {
        "run": str(located.run.path),
        "task": args.task,
        "task_type": task_type,
        "texts": args.texts,
        "examples": len(texts),
        "batch_size": args.batch_size,
        "threads": threads,
        "repeats": args.repeats,
        "formats_exported": summary.get("formats"),
        "examples_per_second": medians,
        "rounds": rates,
        "ratios": {f"mtl_over_{k}": medians["mtl_predict"] / v for k, v in medians.items() if k != "mtl_predict"},
        "load_average_1min": {"before": load_before, "after": load_average()},
        "torch": torch.__version__,
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"{args.task} ({task_type}), {len(texts)} texts, batch {args.batch_size}, {threads} threads:")
    for name, value in medians.items():
        print(f"  {name:12s} {value:8.1f} examples/s")
    for name, value in report["ratios"].items():
        print(f"  {name}: {value:.2f}")
    print(f"load average {load_before:.2f} -> {report['load_average_1min']['after']:.2f}; wrote {args.out}")


if __name__ == "__main__":
    main()
