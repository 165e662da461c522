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

A checkpoint may come from someone else: the manifest must be there, of its shape, with paths
confined to the folder and every file mtl reads listed (checkpoint_problem), and each file read
from it is type-checked (read_checkpoint_state, read_base_reference, check_architecture).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import stat
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mtl_cli.distributed import writes
from mtl_cli.encoders import checkpoint_tokenizer, encoder_from_checkpoint, load_encoder, resolve_source
from mtl_cli.errors import MtlError, first_line
from mtl_cli.interrupts import deferred
from mtl_cli.model import build_model
from mtl_cli.readers import UnusableFile, read_json
from mtl_cli.rundir import RunDir
from mtl_cli.writers import write_json, writing

REQUIRED = ("model.safetensors", "labels.json", "trainer_state.json")
MANIFEST = "manifest.json"
TRAINING_STATE = "optimizer.pt"
BASE = "base_encoder.json"


def checkpoint_name(which: str) -> str:
    """`best`, `last`, `best-<task>` or `step-<n>` (written zero-padded: `step-20` is `step-000020`)."""
    step = re.fullmatch(r"step-(\d{1,18})", which)
    if step:
        return f"step-{int(step.group(1)):06d}"
    # A name is one folder inside checkpoints/: no separators, no `..`, nothing hidden.
    if re.search(r"[/\\\x00]|\.\.", which) or which.startswith("best-."):
        raise MtlError(
            "checkpoint names one folder in the run's checkpoints/ (best, last, best-<task> or step-<n>), "
            f"so it cannot hold a path separator or `..`; got checkpoint={which}"
        )
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


def training_state(opt: Any, sched: Any, weighting: Any, scaler: Any = None) -> dict:
    """optimizer.pt: everything besides the weights and trainer_state.json that a resume restores."""
    import torch

    out = {
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "loss_weighting": weighting.state_dict(),
    }
    if scaler is not None:  # precision=fp16: the loss scale it has found
        out["grad_scaler"] = scaler.state_dict()
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
    if not writes():  # a distributed run's other ranks: rank 0 writes
        return
    import torch
    from safetensors.torch import save_file

    tmp = ckpt.with_name(f".{ckpt.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a kill -9 during an earlier save
    # A full disk surfaces as a SafetensorError or torch's RuntimeError as often as an OSError:
    # `writing` turns any of them into one line and removes the temporary folder.
    with writing(ckpt, tmp, what="save checkpoint", note="the previous checkpoint is intact: "):
        tmp.mkdir(parents=True)
        save_file(model_state(model), str(tmp / "model.safetensors"))
        if base is not None:
            write_json(tmp / BASE, base)
        # an encoder-decoder's whole config: the checkpoint rebuilds the model its decoder comes from
        getattr(model.encoder, "mtl_seq2seq", model.encoder).config.save_pretrained(tmp / "encoder")
        tokenizer.save_pretrained(tmp / "tokenizer")
        write_json(tmp / "labels.json", labels)
        write_json(tmp / "trainer_state.json", state)
        shutil.copyfile(config, tmp / "config.yaml")
        if training is not None:
            torch.save(training, tmp / TRAINING_STATE)
        write_manifest(tmp)
    with deferred():  # a signal between the two renames waits: the checkpoint goes into place whole
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


# Files mtl reads from a checkpoint (REQUIRED, and the others when present) and folders it reads
# whole (transformers opens any file in them): each must be listed in the manifest.
READ_FILES = (*REQUIRED, "config.yaml", BASE, TRAINING_STATE)
READ_DIRS = ("encoder", "tokenizer")
MAX_MANIFEST_BYTES = 1 << 20  # a manifest lists a dozen files
MAX_STATE_BYTES = 16 << 20  # labels.json, trainer_state.json, base_encoder.json: kB


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why `ckpt` cannot be used, or None: files missing, a manifest missing, malformed, pointing
    outside the folder or leaving out a file mtl reads, or files truncated or altered against it.

    A checkpoint without a manifest (or with one that lists nothing) is refused, not loaded as
    "unverified": every checkpoint mtl writes has one (written last in the temporary folder, before
    the rename), so one without was put together by hand or by someone else, and checking the
    weights against the model's shapes would still accept foreign weights of the same architecture,
    the very case the manifest is there to catch. `find_checkpoint` passes over it, as over any
    damaged one, for an older intact version.
    """
    if not ckpt.is_dir():
        return "it does not exist"
    missing = [f for f in REQUIRED if not (ckpt / f).is_file()]
    if missing:
        return f"it is missing {', '.join(missing)}"
    if not os.path.lexists(ckpt / MANIFEST):
        return (
            f"it has no {MANIFEST}, so nothing vouches for its files (every checkpoint mtl writes has one); "
            "use a checkpoint written by mtl train"
        )
    files = _manifest_files(ckpt)
    if isinstance(files, str):
        return files
    unlisted = [f for f in REQUIRED if f not in files]
    if unlisted:
        return f"its {MANIFEST} does not list {', '.join(unlisted)} (every checkpoint mtl writes lists them)"
    sizes = {}
    for name in files:
        problem = _listed_path_problem(ckpt, name)
        if isinstance(problem, str):
            return problem
        sizes[name] = problem
    extra = next((f for f in _read_by_mtl(ckpt) if f not in files), None)
    if extra is not None and os.path.islink(ckpt / extra):
        return f"{extra} is a symbolic link; a checkpoint holds plain files only"
    if extra is not None:
        return f"{extra} is not in its {MANIFEST} (added after the checkpoint was written)"
    for name, expected in files.items():
        if sizes[name] != expected["bytes"]:
            return f"{name} is {sizes[name]} bytes, its manifest says {expected['bytes']} (truncated or overwritten)"
    for name, expected in files.items():
        if _sha256(ckpt / name) != expected["sha256"]:
            return f"{name} does not match its SHA-256 in {MANIFEST} (corrupted or edited)"
    return None


def _manifest_files(ckpt: Path) -> dict[str, dict] | str:
    """The manifest's {path: {"bytes": n, "sha256": hex}}, or why it is unusable."""
    try:
        data = read_json(ckpt / MANIFEST, MAX_MANIFEST_BYTES, follow_symlinks=False)
    except UnusableFile as err:
        return f"its {MANIFEST} {err.reason}"
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return f'its {MANIFEST} is not a manifest (a {{"files": {{path: {{"bytes": n, "sha256": hex}}}}}} object)'
    for name, entry in files.items():
        size = entry.get("bytes") if isinstance(entry, dict) else None
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if type(size) is not int or size < 0 or not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            return f'its {MANIFEST} has a malformed entry for {name!r} (each is {{"bytes": n, "sha256": hex}})'
    return files


def _listed_path_problem(ckpt: Path, name: str) -> str | int:
    """Why the manifest entry `name` is not a plain file inside `ckpt` (a path confined to the folder,
    no symbolic link on the way), or its size."""
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or "\x00" in name or any(p in ("", ".", "..") for p in parts):
        return f"its {MANIFEST} lists {name!r}, a path outside the checkpoint folder (only relative paths inside it)"
    path = ckpt
    for part in parts:
        path = path / part
        try:
            st = path.lstat()
        except FileNotFoundError:
            return f"{name} is missing"
        except OSError as err:
            return f"{name} cannot be read ({err.strerror or first_line(err)})"
        if stat.S_ISLNK(st.st_mode):
            return f"{path.relative_to(ckpt).as_posix()} is a symbolic link; a checkpoint holds plain files only"
    if not stat.S_ISREG(st.st_mode):
        return f"{name} is not a plain file"
    return st.st_size


def _read_by_mtl(ckpt: Path) -> list[str]:
    """The files (and symbolic links) present in `ckpt` that mtl or transformers would read."""
    found = [f for f in READ_FILES if os.path.lexists(ckpt / f)]
    for folder in READ_DIRS:
        top = ckpt / folder
        if top.is_symlink() or (os.path.lexists(top) and not top.is_dir()):
            found.append(folder)
            continue
        for root, dirs, names in os.walk(top):  # symbolic links to folders are listed, never followed
            for n in [*names, *(d for d in dirs if os.path.islink(os.path.join(root, d)))]:
                found.append((Path(root) / n).relative_to(ckpt).as_posix())
    return found


def checkpoint_step(ckpt: Path) -> int | None:
    try:
        step = read_json(ckpt / "trainer_state.json", MAX_STATE_BYTES)["step"]
    except (MtlError, KeyError, TypeError):
        return None
    return step if type(step) is int and step >= 0 else None


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
    """(labels.json, trainer_state.json) of a checkpoint, each checked: labels {task: [label, ...]
    or null}, the state's fields of their types (TrainState.from_json)."""
    from mtl_cli.state import TrainState

    path = ckpt / "labels.json"
    labels = read_json(path, MAX_STATE_BYTES)
    damaged = "the checkpoint is damaged or was not written by mtl: use another checkpoint, or train again"
    if not isinstance(labels, dict) or not labels:
        raise MtlError(f"{path} is not a {{task: [label, ...]}} object, {_kind(labels)}; {damaged}")
    bad = next((t for t, v in labels.items() if not (v is None or _strings(v))), None)
    if bad is not None:
        raise MtlError(f"{path}: task {bad!r} has {_kind(labels[bad])}, not a list of label names (or null); {damaged}")
    state = read_json(ckpt / "trainer_state.json", MAX_STATE_BYTES)
    TrainState.from_json(state, str(ckpt / "trainer_state.json"))  # the types, before anything uses them
    return labels, state


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _kind(value: Any) -> str:
    """`a list`, `an empty object`, `a str`: what a JSON value is, for a message."""
    name = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")
    empty = "empty " if isinstance(value, (dict, list, str)) and not value else ""
    return f"{'an' if (empty or name)[0] in 'aeiou' else 'a'} {empty}{name}"


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
    bad = next((k for k, v in weights.items() if v.dtype != expected[k].dtype), None)
    if bad:  # load_state_dict would convert it silently
        raise MtlError(f"{ckpt}: weight {bad} is {weights[bad].dtype}, the model's is {expected[bad].dtype}")
    model.load_state_dict(weights, strict=False)


def load_training_state(ckpt: Path, opt: Any, sched: Any, weighting: Any, scaler: Any = None) -> None:
    """Restore optimizer.pt: optimizer, scheduler, loss-weighting state and the torch RNG."""
    import torch

    try:
        # weights_only: a checkpoint can hold tensors and plain containers, never code to run.
        saved = torch.load(ckpt / TRAINING_STATE, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or not {"optimizer", "scheduler", "loss_weighting", "torch_rng"} <= set(saved):
            raise ValueError("it is not a dict of optimizer, scheduler, loss_weighting and torch_rng")
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        weighting.load_state_dict(saved["loss_weighting"])
        torch.set_rng_state(saved["torch_rng"])
        if scaler is not None and "grad_scaler" in saved:
            scaler.load_state_dict(saved["grad_scaler"])
        if "cuda_rng" in saved and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
    except Exception as err:
        raise MtlError(f"cannot restore the training state from {ckpt / TRAINING_STATE}: {first_line(err)}") from None


def rebuild_model(ckpt: Path, cfg: Any, labels: dict) -> tuple[Any, Any]:
    """The model a checkpoint was trained as, from the checkpoint alone (no Hub, no original weights),
    except a frozen base left out of it, which is rebuilt the way training built it."""
    import torch

    base = read_base_reference(ckpt / BASE) if os.path.lexists(ckpt / BASE) else None
    base_encoder = None
    if base is not None:
        # Same weights, or the same seed for a random-init base. (Before the checkpoint's encoder is
        # built: its random init draws from the RNG; every tensor it draws is then overwritten.)
        torch.manual_seed(base["seed"])
        base_encoder, _ = load_encoder(cfg.encoder)
        # Task-marker rows next, as training adds them (add_task_markers): their random init draws
        # from the same RNG state only if nothing else has drawn since the seed.
        vocab = len(checkpoint_tokenizer(ckpt))
        if base_encoder.get_input_embeddings().weight.shape[0] != vocab:
            base_encoder.resize_token_embeddings(vocab)
    check_architecture(ckpt, sum(p.numel() for p in base_encoder.parameters()) if base_encoder is not None else 0)
    encoder, tokenizer = encoder_from_checkpoint(ckpt)
    if base_encoder is not None:
        encoder = base_encoder
    model = build_model(encoder, cfg.task, labels, cfg.sharing)
    if base is not None and hasattr(model.trunk, "check_base"):
        model.trunk.check_base(base)
    load_weights(model, ckpt)
    model.use_tokenizer(tokenizer)
    return model, tokenizer


def check_architecture(ckpt: Path, frozen: int = 0) -> None:
    """encoder/config.json is a transformers config whose model is no larger than the weights the
    checkpoint holds (plus `frozen`, the parameters of a base left out of it): a forged config
    asking for a model of billions of parameters is refused before any memory is allocated for it,
    its size counted on the meta device."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModel

    path = ckpt / "encoder" / "config.json"
    architecture = read_json(path, MAX_STATE_BYTES)
    damaged = "the checkpoint is damaged or was not written by mtl"
    if not (isinstance(architecture, dict) and isinstance(architecture.get("model_type"), str)):
        raise MtlError(f"{path} is not a transformers config (an object with a model_type); {damaged}")
    try:
        with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
            stored = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (not a dict)
        with torch.device("meta"):
            needed = sum(p.numel() for p in AutoModel.from_config(AutoConfig.from_pretrained(path.parent)).parameters())
    except Exception as err:
        raise MtlError(f"cannot rebuild the encoder of {ckpt} ({first_line(err)}); {damaged}") from None
    if needed > 2 * stored + frozen:
        raise MtlError(
            f"{path} describes an encoder of {needed:,} parameters, more than model.safetensors holds "
            f"({stored:,}); {damaged}"
        )


# base_encoder.json: each key and the check of its value (see base_reference).
BASE_KEYS = {
    "name_or_path": lambda v: isinstance(v, str),
    "source": lambda v: isinstance(v, str),
    "revision": lambda v: v is None or isinstance(v, str),
    "random_init": lambda v: isinstance(v, bool),
    "seed": lambda v: type(v) is int and -(2**63) <= v < 2**64,  # what torch.manual_seed takes
}


def read_base_reference(path: Path) -> dict:
    """base_encoder.json, checked: the keys `base_reference` writes, each of its type."""
    base = read_json(path, MAX_STATE_BYTES)
    bad = "" if not isinstance(base, dict) else next((k for k, ok in BASE_KEYS.items() if not ok(base.get(k))), None)
    if bad is not None:
        what = f"`{bad}` is {_kind(base.get(bad))}" if bad else f"it is {_kind(base)}, not an object"
        raise MtlError(
            f"{path}: {what}, not what mtl writes ({', '.join(BASE_KEYS)}); the checkpoint is damaged "
            "or was not written by mtl"
        )
    return base


def dump_nonfinite(folder: Path, model: Any, batches: dict, info: dict) -> None:
    """debug/step-<n>/: the weights the failing forward pass used, its batches and what went wrong."""
    if not writes():  # a distributed run's other ranks: rank 0 writes
        return
    from safetensors.torch import save_file

    made = [p for p in (folder.parent, folder) if not p.exists()]
    # Evidence is all or nothing: a full disk leaves no half of it (and says so in one line).
    with writing(folder, *made[::-1]):
        folder.mkdir(parents=True, exist_ok=True)
        save_file(model_state(model), str(folder / "model.safetensors"))
        for task, batch in batches.items():
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in batch.items()}, str(folder / f"batch-{task}.safetensors")
            )
        write_json(folder / "info.json", info)
