"""Checkpoints: what one holds, how it is written, verified, found and restored.

    checkpoints/<name>/            name: last, best, best-<task>, step-<n> (older `last`s kept)
        model.safetensors          every trainable tensor of the model (frozen base weights left out)
        encoder/                   the encoder's transformers config: the architecture, no Hub needed
        tokenizer/                 the tokenizer, task markers included
        labels.json                {task: label names in id order}
        trainer_state.json         where training stood (mtl_cli/state.py: TrainState)
        config.yaml                the run's resolved config, so a checkpoint copied out still evaluates
        base_encoder.json          when frozen weights are left out: the base encoder to rebuild them from
        optimizer.pt               last and step-<n>: optimizer, scheduler, RNG, loss-weighting state
        manifest.json              size and SHA-256 of every file above, written last

A checkpoint is written to a temporary folder, every file fsynced, the manifest last, then renamed
into place, so a kill or a full disk never leaves a half-written one; the reader checks it
against its manifest and falls back to the previous intact version.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mtl_cli.encoders import encoder_from_checkpoint, load_encoder, resolve_source
from mtl_cli.errors import MtlError, first_line
from mtl_cli.model import build_model
from mtl_cli.rundir import RunDir, write_json

REQUIRED = ("model.safetensors", "labels.json", "trainer_state.json")
MANIFEST = "manifest.json"
TRAINING_STATE = "optimizer.pt"
BASE = "base_encoder.json"


def checkpoint_name(which: str) -> str:
    """`best`, `last`, `best-<task>` or `step-<n>` (written zero-padded: `step-20` is `step-000020`)."""
    step = re.fullmatch(r"step-(\d+)", which)
    if step:
        return f"step-{int(step.group(1)):06d}"
    if not re.fullmatch(r"best|last|best-.+", which):
        raise MtlError(f"checkpoint must be best, last, best-<task> or step-<n>; got checkpoint={which}")
    return which


def model_state(model: Any) -> dict:
    """What model.safetensors holds: every tensor of the model except frozen parameters (a frozen
    adapter base is reloaded from its reference, not copied into every checkpoint), each tied
    tensor once (an MLM decoder tied to the input embeddings)."""
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    out, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if name in frozen or (tensor.numel() and tensor.data_ptr() in seen):
            continue
        seen.add(tensor.data_ptr())
        out[name] = tensor.detach().contiguous()
    return out


def base_reference(cfg: Any, model: Any) -> dict | None:
    """base_encoder.json: how to rebuild the frozen parameters a checkpoint leaves out (None: nothing is frozen)."""
    if all(p.requires_grad for p in model.parameters()):
        return None
    e = cfg.encoder
    # A random-init base is rebuilt by seeding torch with `seed` before building it, as training does.
    ref = {"name_or_path": e.name_or_path, "source": resolve_source(e), "revision": e.revision,
           "random_init": e.random_init, "seed": cfg.seed}  # fmt: skip
    if hasattr(model.trunk, "base_fingerprint"):
        ref["fingerprint"] = model.trunk.base_fingerprint  # `mtl eval` verifies the rebuilt base
    return ref


def training_state(opt: Any, sched: Any, weighting: Any) -> dict:
    """optimizer.pt: everything besides the weights and trainer_state.json that a resume restores."""
    import torch

    out = {
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "loss_weighting": weighting.state_dict(),
    }
    if torch.cuda.is_available():
        out["cuda_rng"] = torch.cuda.get_rng_state_all()
    return out


def save_checkpoint(
    ckpt: Path,
    model: Any,
    tokenizer: Any,
    labels: dict,
    state: dict,
    config: Path,
    training: dict | None = None,
    base: dict | None = None,
    keep: int = 1,
) -> None:
    """Write `ckpt` atomically (see the module docstring).

    `keep` > 1 keeps the previous versions as `step-<n>` beside it (the newest `keep - 1`).
    """
    import torch
    from safetensors.torch import save_file

    tmp = ckpt.with_name(f".{ckpt.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_file(model_state(model), str(tmp / "model.safetensors"))
        if base is not None:
            write_json(tmp / BASE, base)
        model.encoder.config.save_pretrained(tmp / "encoder")
        tokenizer.save_pretrained(tmp / "tokenizer")
        write_json(tmp / "labels.json", labels)
        write_json(tmp / "trainer_state.json", state)
        shutil.copyfile(config, tmp / "config.yaml")
        if training is not None:
            torch.save(training, tmp / TRAINING_STATE)
        write_manifest(tmp)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MtlError(
            f"could not save checkpoint {ckpt} ({first_line(err)}); the previous checkpoint is intact: "
            f"free disk space, then continue with: mtl train resume={ckpt.parent.parent}"
        ) from None
    if ckpt.exists():
        previous = checkpoint_step(ckpt) if keep > 1 else None
        old = ckpt.with_name(f"step-{previous:06d}" if previous is not None else f".{ckpt.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(ckpt, old)
    os.replace(tmp, ckpt)
    _fsync_dir(ckpt.parent)
    shutil.rmtree(ckpt.with_name(f".{ckpt.name}.old"), ignore_errors=True)
    if keep > 1:
        for stale in step_checkpoints(ckpt.parent)[: -(keep - 1)]:
            shutil.rmtree(stale, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path) -> None:
    """Fsync every file, then record its size and SHA-256 in manifest.json (written last, fsynced)."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        files[path.relative_to(folder).as_posix()] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    with open(folder / MANIFEST, "w", encoding="utf-8") as f:
        json.dump({"files": files}, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    for sub in {folder, *(p for p in folder.rglob("*") if p.is_dir())}:
        _fsync_dir(sub)


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why `ckpt` cannot be used (missing files, truncated or altered against its manifest), or None."""
    if not ckpt.is_dir():
        return "it does not exist"
    missing = [f for f in REQUIRED if not (ckpt / f).is_file()]
    if missing:
        return f"it is missing {', '.join(missing)}"
    if not (ckpt / MANIFEST).is_file():
        return None  # written before checkpoints had manifests; the files load-check themselves
    try:
        files = json.loads((ckpt / MANIFEST).read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError) as err:
        return f"its {MANIFEST} is unreadable ({first_line(err)})"
    for name, expected in files.items():
        path = ckpt / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["bytes"]:
            return f"{name} is {size} bytes, its manifest says {expected['bytes']} (truncated or overwritten)"
        if _sha256(path) != expected["sha256"]:
            return f"{name} does not match its SHA-256 in {MANIFEST} (corrupted or edited)"
    return None


def checkpoint_step(ckpt: Path) -> int | None:
    try:
        return int(json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def step_checkpoints(folder: Path) -> list[Path]:
    """The `step-<n>` checkpoints in `folder`, oldest first."""
    found = [p for p in folder.glob("step-*") if p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def checkpoint_candidates(run: RunDir, which: str) -> list[Path]:
    """Where `which` may be, newest first: a kill between the two renames of a save leaves the
    previous version as `.<name>.old`; `last` falls back to the older `step-<n>` it keeps."""
    which = checkpoint_name(which)
    if which.startswith("step-"):
        return [run.checkpoint(which)]
    out = [run.checkpoint(which), run.checkpoints / f".{which}.old"]
    if which == "last":
        out += step_checkpoints(run.checkpoints)[::-1]
    return out


def is_checkpoint(folder: Path) -> bool:
    """A checkpoint folder (copied out of its run or not), as opposed to a run directory."""
    return (folder / "model.safetensors").is_file()


def has_checkpoint(run: RunDir, which: str) -> bool:
    return any(c.exists() for c in checkpoint_candidates(run, which))


def find_checkpoint(run: RunDir, which: str) -> Path:
    """The newest intact checkpoint called `which` (best, last, best-<task>, step-<n>).

    A damaged one is reported on stderr and passed over for the previous good one when there is one.
    """
    if not run.is_run():
        raise MtlError(f"{run} is not an mtl run directory (no config.yaml); pass the folder `mtl train` printed")
    first = None
    for ckpt in checkpoint_candidates(run, which):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            if first is not None and first[1] != "it does not exist":
                print(f"mtl: warning: checkpoints/{which} is unusable ({first[1]}); using {ckpt.name}", file=sys.stderr)
            return ckpt
        first = first or (ckpt, problem)
    assert first is not None
    if first[1] == "it does not exist":
        names = sorted(p.name for p in run.checkpoints.glob("*") if not p.name.startswith("."))
        if names:
            raise MtlError(f"{run} has no '{checkpoint_name(which)}' checkpoint; it has: {', '.join(names)}")
        raise MtlError(
            f"{run} has no checkpoint yet; the run may have stopped before its first evaluation: "
            f"continue it with mtl train resume={run}, or train again"
        )
    raise MtlError(f"{first[0]} is damaged: {first[1]}; no earlier intact '{which}' checkpoint to fall back to")


def read_checkpoint_state(ckpt: Path) -> tuple[dict, dict]:
    """(labels.json, trainer_state.json) of a checkpoint."""
    try:
        labels = json.loads((ckpt / "labels.json").read_text(encoding="utf-8"))
        state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise MtlError(f"{ckpt} is damaged: {first_line(err)}") from None
    return labels, state


def config_digest(config: Path) -> str:
    """Identifies the run a checkpoint was written by (its config.yaml, written once when the run starts)."""
    return hashlib.sha256(config.read_bytes()).hexdigest()[:16]


def check_checkpoint_origin(config: Path, ckpt: Path, cfg: Any) -> tuple[dict, dict]:
    """A checkpoint copied in from another run (other tasks, another encoder, another config) is refused.

    `config` is the config.yaml the checkpoint is used under. Returns (labels, trainer state).
    """
    labels, state = read_checkpoint_state(ckpt)
    where = f"{ckpt} comes from another run"
    fix = "use the checkpoints of this run, or evaluate the run it came from"
    if set(labels) != set(cfg.task):
        raise MtlError(f"{where}: it holds tasks {sorted(labels)}, this run trains {sorted(cfg.task)}; {fix}")
    encoder = {k: v for k, v in asdict(cfg.encoder).items() if k != "trust_remote_code"}  # a permission, not a model
    theirs = state.get("encoder", encoder)
    key = next((k for k in encoder if theirs.get(k) != encoder[k]), None)
    if key is not None:
        raise MtlError(f"{where}: its encoder has {key}={theirs.get(key)!r}, this run's has {encoder[key]!r}; {fix}")
    if state.get("config_sha256", config_digest(config)) != config_digest(config):
        raise MtlError(f"{where}: it was written under a different config.yaml; {fix}")
    return labels, state


def load_weights(model: Any, ckpt: Path) -> None:
    from safetensors.torch import load_file

    try:
        weights = load_file(str(ckpt / "model.safetensors"))
    except Exception as err:
        raise MtlError(f"cannot read {ckpt / 'model.safetensors'} ({first_line(err)}); it may be truncated") from None
    expected = model_state(model)
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise MtlError(f"{ckpt} does not match the model its run config builds (e.g. {(missing or unexpected)[0]})")
    bad = next((k for k, v in weights.items() if v.shape != expected[k].shape), None)
    if bad:
        raise MtlError(
            f"{ckpt}: weight {bad} has shape {tuple(weights[bad].shape)}, the model expects {tuple(expected[bad].shape)}"
        )
    model.load_state_dict(weights, strict=False)


def load_training_state(ckpt: Path, opt: Any, sched: Any, weighting: Any) -> None:
    """Restore optimizer.pt: optimizer, scheduler, loss-weighting state and the torch RNG."""
    import torch

    try:
        # weights_only: a checkpoint can hold tensors and plain containers, never code to run.
        saved = torch.load(ckpt / TRAINING_STATE, map_location="cpu", weights_only=True)
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        weighting.load_state_dict(saved["loss_weighting"])
    except Exception as err:
        raise MtlError(f"cannot restore the training state from {ckpt / TRAINING_STATE}: {first_line(err)}") from None
    torch.set_rng_state(saved["torch_rng"])
    if "cuda_rng" in saved and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])


def rebuild_model(ckpt: Path, cfg: Any, labels: dict) -> tuple[Any, Any]:
    """The model a checkpoint was trained as, from the checkpoint alone (no Hub, no original weights),
    except a frozen base left out of it, which is rebuilt the way training built it."""
    import torch

    encoder, tokenizer = encoder_from_checkpoint(ckpt)
    base = None
    if (ckpt / BASE).is_file():
        try:
            base = json.loads((ckpt / BASE).read_text(encoding="utf-8"))
        except ValueError as err:
            raise MtlError(f"{ckpt / BASE} is damaged ({first_line(err)})") from None
        # Same weights, or the same seed for a random-init base.
        torch.manual_seed(base["seed"])
        encoder, _ = load_encoder(cfg.encoder)
        if encoder.get_input_embeddings().weight.shape[0] != len(tokenizer):
            encoder.resize_token_embeddings(len(tokenizer))
    model = build_model(encoder, cfg.task, labels, cfg.sharing)
    if base is not None and hasattr(model.trunk, "check_base"):
        model.trunk.check_base(base)
    load_weights(model, ckpt)
    return model, tokenizer


def dump_nonfinite(folder: Path, model: Any, batches: dict, info: dict) -> None:
    """debug/step-<n>/: the weights the failing forward pass used, its batches and what went wrong."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(model_state(model), str(folder / "model.safetensors"))
    for task, batch in batches.items():
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in batch.items()}, str(folder / f"batch-{task}.safetensors")
        )
    write_json(folder / "info.json", info)
