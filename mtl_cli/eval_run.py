"""`mtl eval`: rebuild a run's model from its own config and checkpoint, evaluate, write the table."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

from mtl_cli.errors import MtlError


def find_latest_run(runs_root: str) -> Path:
    runs = [p.parent for p in Path(runs_root).glob("**/config.yaml") if (p.parent / "checkpoints").is_dir()]
    if not runs:
        raise MtlError(f"no run with checkpoints under {Path(runs_root).resolve()}; train one first (mtl train)")
    return max(runs, key=lambda p: (p / "config.yaml").stat().st_mtime)


def evaluate_run(
    run: str,
    split: str = "test",
    checkpoint: str = "best",
    tasks: list[str] | None = None,
    data_root: str | None = None,
    batch_size: int | None = None,
    runs_root: str = "runs",
    trust_remote_code: bool = False,
) -> dict:
    """Returns {task: {metric: value}, "average": {...}} and writes eval/<checkpoint>_<split>.{md,csv,json}."""
    import torch

    from mtl_cli.encoders import encoder_from_checkpoint
    from mtl_cli.evaluate import evaluate
    from mtl_cli.model import build_model
    from mtl_cli.rundir import (
        check_checkpoint_origin,
        find_checkpoint,
        load_run_config,
        load_weights,
        print_table,
        rows_to_csv,
        rows_to_markdown,
        table_rows,
        unique_path,
        write_json,
    )
    from mtl_cli.train import load_tasks, setup_torch, tokenize_tasks, use_bf16

    if split not in ("test", "validation"):
        raise MtlError(f"split must be test or validation; got split={split}")
    if not re.fullmatch(r"best|last|best-.+|step-\d+", checkpoint):
        raise MtlError(f"checkpoint must be best, last, best-<task> or step-<n>; got checkpoint={checkpoint}")
    run_dir = find_latest_run(runs_root) if run == "latest" else Path(run)
    cfg = load_run_config(run_dir, trust_remote_code)
    ckpt = find_checkpoint(run_dir, checkpoint)
    labels, state = check_checkpoint_origin(run_dir, ckpt, cfg)
    trained_tasks = dict(cfg.task)
    if tasks:
        unknown = [t for t in tasks if t not in cfg.task]
        if unknown:
            raise MtlError(f"this run never trained task(s) {unknown}; its tasks are {list(cfg.task)} (tasks=...)")
        cfg.task = {name: cfg.task[name] for name in tasks}
    if data_root:
        cfg.data_root = str(Path(data_root).resolve())
    device = setup_torch(cfg)

    # Same task configs and split_seed as in training, so carved splits hold the same examples.
    loaded = load_tasks(cfg)
    for name, task in loaded.items():
        if task.labels != labels.get(name):
            raise MtlError(f"task '{name}' now has labels {task.labels}, the checkpoint has {labels.get(name)}")
    encoder, tokenizer = encoder_from_checkpoint(ckpt)
    base = json.loads((ckpt / "base_encoder.json").read_text()) if (ckpt / "base_encoder.json").is_file() else None
    if base is not None:
        # The checkpoint holds only what was trained (adapters, heads): rebuild the frozen base the
        # way training built it (same weights, or the same seed for a random-init base).
        from mtl_cli.encoders import load_encoder

        torch.manual_seed(base["seed"])
        encoder, _ = load_encoder(cfg.encoder)
        if encoder.get_input_embeddings().weight.shape[0] != len(tokenizer):
            encoder.resize_token_embeddings(len(tokenizer))
    model = build_model(encoder, trained_tasks, labels, cfg.sharing)  # every head, to match the weights
    if base is not None and hasattr(model.trunk, "check_base"):
        model.trunk.check_base(base)
    load_weights(model, ckpt)
    model.to(device)
    data = tokenize_tasks(loaded, tokenizer)
    types = {n: tc.type for n, tc in cfg.task.items()}
    batch = batch_size or cfg.trainer.eval_batch_size
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(cfg.trainer.precision, device)):
        results = evaluate(model, data[split], types, labels, batch, tokenizer.pad_token_id)
    rows = table_rows({split: results}, {n: {"examples": len(data[split][n]["input_ids"])} for n in loaded})
    out_dir = run_dir / "eval"
    out_dir.mkdir(exist_ok=True)
    stem = out_dir / f"{checkpoint}_{split}"
    md = unique_path(stem.with_suffix(".md"))
    header = f"`mtl eval` of checkpoints/{checkpoint} (step {state.get('step')}) on {split}, {datetime.now():%Y-%m-%d %H:%M:%S}.\n\n"
    md.write_text(header + rows_to_markdown(rows), encoding="utf-8")
    md.with_suffix(".csv").write_text(rows_to_csv(rows), encoding="utf-8")
    clean = {task: {m: v for m, v in metrics.items() if m != "loss"} for task, metrics in results.items()}
    write_json(md.with_suffix(".json"), clean)
    print_table(rows, f"{run_dir} checkpoints/{checkpoint} on {split}")
    print(f"wrote {md}")
    return clean
