"""`mtl eval`: rebuild a run's model from its own config and checkpoint, evaluate, write the table.

RUN may be a run directory, `latest`, or a checkpoint folder copied out of its run (each
checkpoint holds the run's config.yaml); the table goes to the run's `eval/` (a checkpoint's own
`eval/` when it stands alone).
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from mtl_cli.checkpoints import rebuild_model
from mtl_cli.config import is_extra_test
from mtl_cli.device import setup_torch, use_bf16
from mtl_cli.errors import MtlError
from mtl_cli.evaluate import Evaluator, main_metrics
from mtl_cli.fingerprints import changed_splits
from mtl_cli.rundir import RunDir
from mtl_cli.tables import average_note, print_table, table_rows, write_table
from mtl_cli.tasks import load_tasks
from mtl_cli.tokenization import tokenize_tasks
from mtl_cli.trained import check_tasks, locate, run_path
from mtl_cli.writers import WriteError, json_text, writing


def evaluate_run(
    run: str,
    split: str = "test",
    checkpoint: str = "best",
    tasks: list[str] | None = None,
    data_root: str | None = None,
    batch_size: int | None = None,
    runs_root: str = "runs",
    trust_remote_code: bool = False,
    allow_changed_data: bool = False,
) -> dict:
    """Returns {task: {metric: value}, "average": {...}} and writes eval/<checkpoint>_<split>.{md,csv,json}.

    Holds the run directory's lock (one writer per run): a run that another process trains,
    resumes or evaluates is refused before anything is read.
    """
    from mtl_cli.locks import run_lock
    from mtl_cli.rundir import enclosing_run

    path = run_path(run, runs_root)
    with run_lock(enclosing_run(path) or path, "evaluate"):  # a checkpoint inside a run locks the run
        return _evaluate(
            RunDir(path), split, checkpoint, tasks, data_root, batch_size, trust_remote_code, allow_changed_data
        )


def _evaluate(
    run_dir: RunDir,
    split: str,
    checkpoint: str,
    tasks: list[str] | None,
    data_root: str | None,
    batch_size: int | None,
    trust_remote_code: bool,
    allow_changed_data: bool,
) -> dict:
    if split not in ("test", "validation") and not is_extra_test(split):
        raise MtlError(f"split must be test, validation or an extra test split test_<name>; got split={split}")
    found = locate(run_dir.path, checkpoint, trust_remote_code)
    cfg, ckpt, out, labels, state = found.cfg, found.ckpt, found.out, found.labels, found.state
    check_tasks(cfg, tasks)
    if data_root:
        if not Path(data_root).is_dir():
            raise MtlError(f"data_root={data_root} is not a folder; point it at the folder that holds the run's data")
        cfg.data_root = str(Path(data_root).resolve())
    device = setup_torch(cfg.trainer.device, cfg.trainer.threads)

    # Same task configs and split_seed as in training, so carved splits hold the same examples.
    chosen = {name: cfg.task[name] for name in tasks or cfg.task}
    if is_extra_test(split):  # the tasks that have this extra test split
        chosen = {name: tc for name, tc in chosen.items() if split in tc.files}
        if not chosen:
            having = sorted({s for tc in cfg.task.values() for s in tc.files if is_extra_test(s)})
            raise MtlError(
                f"no task of this run has a {split} split; its extra test splits: {', '.join(having) or 'none'}"
            )
    loaded = load_tasks(cfg, chosen)
    for name, task in loaded.items():
        if task.labels != labels.get(name):
            raise MtlError(f"task '{name}' now has labels {task.labels}, the checkpoint has {labels.get(name)}")
    changed = check_splits(state, loaded, split, ckpt, allow_changed_data)
    model, tokenizer = rebuild_model(ckpt, cfg, labels)  # every head, to match the weights
    model.to(device)
    data = tokenize_tasks(loaded, tokenizer)
    evaluator = Evaluator(
        model, data, {n: tc.type for n, tc in chosen.items()}, labels,
        batch_size or cfg.trainer.eval_batch_size, tokenizer.pad_token_id, device,
        use_bf16(cfg.trainer.precision, device),
    )  # fmt: skip
    results = evaluator(split)
    mains = main_metrics(evaluator.type_names)
    rows = table_rows({split: results}, {n: {"examples": len(data[split][n]["input_ids"])} for n in loaded}, mains)
    clean = {task: {m: v for m, v in metrics.items() if m != "loss"} for task, metrics in results.items()}
    name = found.name
    print_table(rows, f"{ckpt} on {split}", [split])
    made = not out.eval_dir.exists()
    md = out.eval_table(name, split)
    header = f"`mtl eval` of {name} (step {state.get('step')}) on {split}, {datetime.now():%Y-%m-%d %H:%M:%S}.\n\n"
    if changed:
        header += (
            f"**Not the run's {split} data**: that of {changed} changed since training (allow_changed_data=true).\n\n"
        )
    try:
        # The three files all or nothing; a folder this evaluation made goes again with them.
        with writing(out.eval_dir, *([out.eval_dir.rmdir] if made else [])):
            out.eval_dir.mkdir(exist_ok=True)
            write_table(md, rows, header, also={md.with_suffix(".json"): json_text(clean)},
                        note=average_note({split: results}, mains))  # fmt: skip
    except WriteError as err:
        raise MtlError(f"evaluated (table above) but could not write {err.path} ({err.reason}); {err.fix}") from None
    print(f"wrote {md}")
    return clean


def check_splits(state: dict, loaded: dict, split: str, ckpt: Path, allow: bool) -> list[str]:
    """Refuse (or, with `allow`, warn) when a task's `split` is not the one the checkpoint recorded:
    a grown train file re-carves validation/test, and a changed file holds other examples. A
    checkpoint written before mtl recorded its splits is evaluated as it is. Returns the changed tasks."""
    changed = changed_splits(state.get("split_fingerprints") if isinstance(state, dict) else None, loaded, split)
    if not changed:
        return []
    what = f"the {split} split of task(s) {changed} is not the one {ckpt} was trained and scored with"
    if not allow:
        raise MtlError(
            f"{what} (its data files changed since); restore the original files or point data_root=<folder> at "
            f"them, or pass allow_changed_data=true to evaluate on the changed data anyway"
        )
    print(f"mtl: warning: {what}; allow_changed_data=true: these numbers are on the changed data", file=sys.stderr)
    return changed
