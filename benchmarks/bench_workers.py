"""The measured side of `bench.py`: one function per method, each run in its own process.

`bench.py --worker NAME` calls `run_worker(NAME, ...)` and prints its dict as one JSON line, so
that the peak RSS it reports (ru_maxrss) belongs to that method alone. Every training method takes
the same composed mtl config (tasks, encoder, batch size, lr, weight decay, warmup, clipping, seed),
the same examples (mtl's own loaders) and the same torch thread count.
"""

from __future__ import annotations

import dataclasses
import os
import random
import resource
import tempfile
import time
from typing import Any

from mtl_cli.compose import compose_config
from mtl_cli.config import MtlConfig
from mtl_cli.encoders import resolve_source
from mtl_cli.tasks import load_tasks
from mtl_cli.validation import to_typed

NUM_LABELS = 2  # FDU-MTL is binary sentiment


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def run_worker(method: str, overrides: list[str], threads: int, gemm_size: int = 2048, peer_bf16: bool = False) -> dict:
    import torch

    torch.set_num_threads(threads)
    if method == "gemm":
        return measure_gemm_peak(gemm_size, bf16=peer_bf16)
    cfg = to_typed(compose_config(overrides))
    if method.startswith("mtl"):
        result = train_mtl(cfg)
    else:
        peer = train_loop if method.startswith("loop") else train_trainer
        result = peer(cfg, Peer(best=True, bf16=peer_bf16) if method.endswith("_best") else Peer())
    result["peak_rss_mb"] = peak_rss_mb()
    result["threads"] = torch.get_num_threads()
    # About `threads` when this run had the machine to itself; more means the figures are skewed.
    result["load_average_1min"] = os.getloadavg()[0]
    return result


def train_mtl(cfg: MtlConfig) -> dict:
    """mtl itself, in-process: its own timing.json figures, plus the encoder's shape for the FLOP count."""
    from mtl_cli.train import train

    # Its trainer settings as this version of mtl defaults them (length grouping, precision, ...).
    return {**train(cfg)["timing"], **encoder_shape(cfg), "trainer_config": dataclasses.asdict(cfg.trainer)}


@dataclasses.dataclass(frozen=True)
class Peer:
    """How a baseline is set up. As users write it (the default): fp32, random batches, the
    pretrained config as is. Best configured (`best`): the settings a competent user turns on, each
    a flag of the peer: bf16 autocast where the CPU has bf16 units (`bf16`; elsewhere bf16 is
    emulated and far slower, so that user keeps fp32), batches grouped by length, and mtl's encoder
    config overrides (MiniLM: no attention dropout, which lets torch use its fused attention)."""

    best: bool = False
    bf16: bool = False


def hf_model(auto_class: Any, cfg: MtlConfig, overrides: bool, **kwargs: Any) -> Any:
    """The encoder mtl would load (pretrained, or the tiny random one), as `auto_class`; with
    `overrides`, mtl's encoder.config_overrides applied (a random-init encoder always has them: its
    size is set there)."""
    from transformers import AutoConfig

    enc = cfg.encoder
    source = resolve_source(enc)
    config = AutoConfig.from_pretrained(source, **kwargs)
    if overrides or enc.random_init:
        for key, value in enc.config_overrides.items():
            setattr(config, key, value)
    if not enc.random_init:
        return auto_class.from_pretrained(source, config=config)
    return auto_class.from_config(config)


def encoder_shape(cfg: MtlConfig) -> dict:
    """Non-embedding parameters, layers and hidden size, from a weightless (meta) copy of the encoder."""
    import torch
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(resolve_source(cfg.encoder))
    for key, value in (cfg.encoder.config_overrides if cfg.encoder.random_init else {}).items():
        setattr(config, key, value)
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    # Embedding lookups do no multiply-adds; mtl drops the pooler.
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("embeddings.", "pooler.")))
    return {"non_embedding_parameters": params, "layers": config.num_hidden_layers, "hidden_size": config.hidden_size}


def train_texts(cfg: MtlConfig) -> dict[str, tuple[list[str], list[int]]]:
    """task -> (texts, labels) of the training split, exactly as mtl loads them."""
    return {
        name: (task.splits["train"]["text"], task.splits["train"]["label"]) for name, task in load_tasks(cfg).items()
    }


def length_grouped(lengths: list[int], batch_size: int, rng: random.Random, group: int = 50) -> list[list[int]]:
    """The usual recipe (Trainer's LengthGroupedSampler, fairseq, mtl): shuffle, cut into groups of
    `group` batches, sort each group by length, cut into batches, shuffle the batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    for start in range(0, len(order), batch_size * group):
        chunk = sorted(order[start : start + batch_size * group], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return [b for b in batches if len(b) == batch_size]


def train_loop(cfg: MtlConfig, peer: Peer) -> dict:
    """A plain PyTorch loop: a random task, a batch of it, padded to its longest row. As users write
    it: a random batch, tokenized there and then. Best configured: every task tokenized once before
    training (not timed, as mtl's and Trainer's tokenization is not), length-grouped batches, bf16
    autocast where the CPU has bf16 units, mtl's encoder config overrides."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from transformers import AutoModel, AutoTokenizer, get_linear_schedule_with_warmup

    t = cfg.trainer
    assert t.max_steps is not None  # the benchmark always sets a fixed step budget
    max_length = next(iter(cfg.task.values())).max_length
    data = train_texts(cfg)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(resolve_source(cfg.encoder))
    encoder = hf_model(AutoModel, cfg, overrides=peer.best)
    heads = nn.ModuleDict({name: nn.Linear(encoder.config.hidden_size, NUM_LABELS) for name in data})
    model = nn.ModuleDict({"encoder": encoder, "heads": heads}).train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=t.lr, fused=True)  # as mtl and Trainer's default use
    sched = get_linear_schedule_with_warmup(opt, int(t.warmup_ratio * t.max_steps), t.max_steps)
    names = list(data)
    sizes = [len(data[n][1]) for n in names]

    tokens, plans = {}, {}
    if peer.best:
        for name, (texts, _) in data.items():
            tokens[name] = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
            plans[name] = length_grouped([len(ids) for ids in tokens[name]], t.batch_size, rng)

    seconds, examples, real, processed = 0.0, 0, 0, 0
    for _ in range(t.max_steps):
        began = time.perf_counter()
        name = rng.choices(names, weights=sizes)[0]
        texts, labels = data[name]
        if peer.best:
            idx = plans[name].pop() if plans[name] else rng.sample(range(len(labels)), t.batch_size)
            enc = tokenizer.pad({"input_ids": [tokens[name][i] for i in idx]}, return_tensors="pt")
        else:
            idx = rng.sample(range(len(labels)), t.batch_size)
            enc = tokenizer([texts[i] for i in idx], padding="longest", truncation=True, max_length=max_length,
                            return_tensors="pt")  # fmt: skip
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=peer.bf16):
            hidden = encoder(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=peer.bf16):
            logits = heads[name](pooled)
        loss = F.cross_entropy(logits.float(), torch.tensor([labels[i] for i in idx]))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        seconds += time.perf_counter() - began
        examples += len(idx)
        real += int(enc["attention_mask"].sum())
        processed += enc["input_ids"].numel()
    return {"train_seconds": seconds, "train_steps": t.max_steps, "train_examples": examples,
            "real_tokens": real, "processed_tokens": processed}  # fmt: skip


class CountingCollator:
    """DataCollatorWithPadding that also counts the real and padded tokens of each batch it builds."""

    def __init__(self, collator: Any):
        self.collator = collator
        self.batches: list[tuple[int, int, int]] = []

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collator(features)
        mask = batch["attention_mask"]
        self.batches.append((mask.shape[0], int(mask.sum()), mask.numel()))
        return batch


def train_trainer(cfg: MtlConfig, peer: Peer) -> dict:
    """transformers' Trainer with dynamic padding, every domain's examples as one task. Best
    configured: bf16=True where the CPU has bf16 units, train_sampling_strategy="group_by_length"
    (lengths precomputed in a `length` column), mtl's encoder config overrides."""
    import datasets
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    t = cfg.trainer
    assert t.max_steps is not None  # the benchmark always sets a fixed step budget
    max_length = next(iter(cfg.task.values())).max_length
    texts, labels = [], []
    for task_texts, task_labels in train_texts(cfg).values():
        texts += task_texts
        labels += task_labels
    tokenizer = AutoTokenizer.from_pretrained(resolve_source(cfg.encoder))
    dataset = datasets.Dataset.from_dict({"text": texts, "label": labels}).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=max_length), batched=True, remove_columns=["text"]
    )
    if peer.best:
        dataset = dataset.map(lambda b: {"length": [len(ids) for ids in b["input_ids"]]}, batched=True)
    model = hf_model(AutoModelForSequenceClassification, cfg, overrides=peer.best, num_labels=NUM_LABELS)
    collator = CountingCollator(DataCollatorWithPadding(tokenizer))
    with tempfile.TemporaryDirectory() as out_dir:
        args = TrainingArguments(
            output_dir=out_dir, max_steps=t.max_steps, per_device_train_batch_size=t.batch_size,
            learning_rate=t.lr, weight_decay=t.weight_decay, warmup_steps=int(t.warmup_ratio * t.max_steps),
            lr_scheduler_type="linear", max_grad_norm=t.max_grad_norm,
            optim="adamw_torch_fused",  # Trainer's default: the same fused torch.optim.AdamW as mtl
            save_strategy="no", eval_strategy="no", logging_strategy="no", report_to=[], use_cpu=True,
            dataloader_num_workers=0, disable_tqdm=True, seed=cfg.seed, bf16=peer.bf16,
            train_sampling_strategy="group_by_length" if peer.best else "random",
        )  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
        metrics = trainer.train().metrics
    batches = collator.batches[: t.max_steps]
    return {
        "train_seconds": metrics["train_runtime"], "train_steps": t.max_steps,
        "train_examples": sum(b[0] for b in batches), "real_tokens": sum(b[1] for b in batches),
        "processed_tokens": sum(b[2] for b in batches),
    }  # fmt: skip


def measure_gemm_peak(size: int = 2048, repeats: int = 5, bf16: bool = True) -> dict:
    """The fastest of `repeats` square matrix multiplies (after one warm-up), fp32 and (with `bf16`,
    on CPUs with bf16 units: elsewhere one emulated 2048 multiply takes about a minute) bf16, in FLOP/s."""
    import torch

    out: dict[str, float | None] = {"gemm_size": size, "gemm_repeats": repeats, "bf16_flops_per_second": None}
    dtypes = [(torch.float32, "fp32_flops_per_second")] + ([(torch.bfloat16, "bf16_flops_per_second")] if bf16 else [])
    for dtype, key in dtypes:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b
        best = min(timed(lambda: a @ b) for _ in range(repeats))  # noqa: B023 (a, b used at once)
        out[key] = 2 * size**3 / best
    return out


def timed(fn: Any) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began
