"""Generation speed of a trained seq2seq task: greedy and beam search, with and without the key/value
cache, on the same sources, measured side by side in one run.

    .venv/bin/python benchmarks/generate_speed.py RUN_DIR --task de_en --n 256 --out generate_bench.json

The sources are the first N of the task's validation split (as the run carved it), in the length-sorted
batches of the run's evaluation (trainer.eval_batch_size). Each mode generates for all of them, the
encoder pass included, in `--repeats` interleaved rounds after a warm-up; the figures are medians:

  greedy          num_beams=1 with the cache (what mtl's evaluation runs by default)
  greedy_nocache  num_beams=1, use_cache=False: every step re-reads the whole prefix
  beam4           num_beams=4 with the cache

Reported per mode: source examples/s, generated tokens/s (tokens up to and including the end token,
per returned row), and the chrF of the generated text on these N sources (sacrebleu, 0-1), so the
price of beam search is set against what it buys. The 1-minute load average before and after is
recorded (about the thread count on an otherwise idle machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

MODES = {"greedy": (1, True), "greedy_nocache": (1, False), "beam4": (4, True)}


def generated(head: Any, hidden: Any, mask: Any, beams: int, cache: bool) -> Any:
    """The generated ids after the start token, as Seq2SeqHead.generate returns them."""
    head.num_beams = beams
    if cache:
        return head.generate(hidden, mask)
    tok = head.tokenizer
    import torch

    start = torch.full((hidden.shape[0], 1), tok.cls_token_id, dtype=torch.long)
    ids = head.decoder.generate(
        input_ids=start, encoder_hidden_states=hidden, encoder_attention_mask=mask,
        max_new_tokens=head.max_new_tokens, num_beams=beams, do_sample=False, use_cache=False,
        eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    return ids[:, 1:]


def token_count(ids: Any, eos: int, pad: int) -> int:
    """Tokens each row generated: up to and including its end token (the rest is padding)."""
    total = 0
    for row in ids.tolist():
        total += row.index(eos) + 1 if eos in row else sum(1 for t in row if t != pad)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a finished run directory with a seq2seq task")
    parser.add_argument("--task", required=True)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="generate_bench.json")
    args = parser.parse_args()

    import sacrebleu
    import torch

    from mtl_cli.batches import eval_batches
    from mtl_cli.tasks import load_tasks
    from mtl_cli.tokenization import tokenize_tasks
    from mtl_cli.trained import load_trained

    trained = load_trained(args.run, device="cpu")
    if trained.cfg.task[args.task].type != "seq2seq" or trained.model.heads[args.task].pretrained:
        raise SystemExit(f"task {args.task} is not a BERT2BERT seq2seq task (what this benchmark times)")
    cfg = trained.cfg
    tasks = load_tasks(cfg, {args.task: cfg.task[args.task]})
    columns = tokenize_tasks(tasks, trained.tokenizer)["validation"][args.task]
    columns = {k: v[: args.n] for k, v in columns.items()}
    seq2seq, model = tasks[args.task].ttype, trained.model
    head, tok = model.heads[args.task], trained.tokenizer
    batches = list(eval_batches(columns, seq2seq.collate, cfg.trainer.eval_batch_size, tok.pad_token_id))
    references = [r for b in batches for r in head.texts(b["input_ids"][:, :1], b)["references"]]

    def run_mode(beams: int, cache: bool) -> tuple[float, int, list[str]]:
        began, tokens, texts = time.perf_counter(), 0, []
        with torch.inference_mode():
            for b in batches:
                inputs = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
                hidden = model.trunk(args.task, **inputs)
                ids = generated(head, hidden, b["attention_mask"], beams, cache)
                tokens += token_count(ids, tok.sep_token_id, tok.pad_token_id)
                texts += tok.batch_decode(ids, skip_special_tokens=True)
        return time.perf_counter() - began, tokens, texts

    load_before = os.getloadavg()[0]
    run_mode(1, True)  # warm-up
    seconds: dict[str, list[float]] = {m: [] for m in MODES}
    tokens: dict[str, int] = {}
    chrf: dict[str, float] = {}
    for _ in range(args.repeats):  # interleaved: a slower spell of the machine hits every mode
        for mode, (beams, cache) in MODES.items():
            s, n_tokens, texts = run_mode(beams, cache)
            seconds[mode].append(s)
            tokens[mode] = n_tokens
            chrf[mode] = sacrebleu.corpus_chrf(texts, [references]).score / 100
    n = len(references)
    result = {
        "run": str(trained.run.path),
        "task": args.task,
        "sources": n,
        "batch_size": cfg.trainer.eval_batch_size,
        "max_new_tokens": head.max_new_tokens,
        "threads": torch.get_num_threads(),
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "modes": {
            m: {
                "examples_per_s": round(n / statistics.median(seconds[m]), 2),
                "generated_tokens_per_s": round(tokens[m] / statistics.median(seconds[m]), 1),
                "generated_tokens": tokens[m],
                "chrf": round(chrf[m], 4),
                "seconds": [round(s, 2) for s in seconds[m]],
            }
            for m in MODES
        },
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    for m, r in result["modes"].items():
        print(f"{m:15s} {r['examples_per_s']:7.2f} examples/s {r['generated_tokens_per_s']:8.1f} tokens/s "
              f"chrF {r['chrf']:.4f}")  # fmt: skip
    print(f"load average before/after: {result['load_average_before_after']}; wrote {args.out}")


if __name__ == "__main__":
    main()
