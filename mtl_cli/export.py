"""`mtl export`: one task of a trained run as a model that runs without mtl (and without trust_remote_code).

    mtl export RUN task=NAME out=DIR [format=auto|hf|onnx|both] [checkpoint=best] [overwrite=true]

DIR holds

    config.json        the encoder's transformers config with the task's num_labels, id2label/label2id
                       and problem_type, and `mtl_export` (task, type, sharing, marker, checkpoint, step)
    tokenizer.json     the run's tokenizer as the task used it: its [TASK=name] marker right after
    tokenizer_config.json   [CLS] (task_marker: prefix), max_length, truncation side
    model.safetensors  hf: an AutoModelForTokenClassification, the task's encoder and head; seq2seq: an
                       EncoderDecoderModel (the task's encoder, its decoder)
    generation_config.json  seq2seq: start [CLS], end [SEP], pad, max_new_tokens and num_beams of the task
    model.onnx         onnx: the whole task path (encoder, sharing scheme, pooling, head) as one graph;
                       inputs input_ids, attention_mask[, token_type_ids] with dynamic batch and length,
                       output `logits` ([batch, num_labels]; token tasks [batch, tokens, num_labels];
                       regression [batch, 1])
    README.md          the model card (mtl_cli/model_card.py)

Which formats fit (format=auto writes every one that fits; hf or both where hf does not fit is refused):

    task type \\ sharing                     hard, partial, adapters    mmoe
    token_classification                    hf + onnx                  onnx
    classification, multilabel, regression  onnx                       onnx
    seq2seq                                 hf: EncoderDecoderModel    (trains with hard only)
    mlm                                     refused: an auxiliary task, nothing to deploy

hf needs the task's path to be exactly a transformers class. A per-token linear on the hidden states
is AutoModelForTokenClassification (the base model without pooler, dropout, a Linear `classifier`):
partial sharing's shared bottom layers and the task's own top layers are one full-depth encoder, and
adapters merge that task's LoRA into the base. The sequence types pool the tokens (mean, or [CLS]
without BERT's tanh pooler) before their head, which no *ForSequenceClassification class does, and
MMoE adds experts and a gate on top of the encoder: those are ONNX only.

A seq2seq task (BERT2BERT: mtl's encoder reads the source, the head's decoder, a causal LM with
cross-attention, writes the target) is exactly transformers' EncoderDecoderModel: the task's encoder
(seq2seq trains only with sharing=hard: the whole shared encoder) and the head's decoder, generating
from [CLS] to [SEP] as mtl does. No ONNX: generation is a loop over the decoder with its cache,
not one graph of the task path.

Task markers survive: `prefix` as a post-processor template that puts the marker after [CLS] (the
tokenizer is saved as a plain PreTrainedTokenizerFast: transformers' BertTokenizer would rebuild its
post-processor when loaded and lose the marker); `embedding` folded into the word embeddings in hf
(BERT adds word + position + token type before its LayerNorm, so adding the task vector to every
word row is adding it to every input embedding; seq2seq: the encoder's word embeddings, as mtl adds
it to the encoder's input only), and inside the graph in onnx.

Nothing is trusted unchecked: the folder is built under a temporary sibling name, then the exported
tokenizer (reloaded from it) must encode probe texts as mtl does, and the exported model (reloaded
with transformers / run in onnxruntime, on a probe batch of another size and length than the ONNX
trace, padded) must give the mtl model's logits (hf within 1e-4, onnx within 1e-3); a seq2seq export
must reload with no weight left to initialise, give mtl's teacher-forced logits (within 1e-4) and
generate (greedily) the same tokens and texts as mtl's head. Only then is the folder renamed into
place; any failure leaves no folder and the old one (overwrite=true) unchanged.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtl_cli.errors import MtlError, first_line
from mtl_cli.interrupts import deferred
from mtl_cli.readers import UnusableFile, read_json
from mtl_cli.rundir import enclosing_run, looks_like_run
from mtl_cli.tokenization import marker_token
from mtl_cli.writers import write_text, writing

FORMATS = ("auto", "hf", "onnx", "both")
TOKEN = "token_classification"
SEQ2SEQ = "seq2seq"
PROBLEM_TYPES = {
    "classification": "single_label_classification",
    "multilabel": "multi_label_classification",
    "regression": "regression",
    TOKEN: "single_label_classification",  # one tag per token, softmax over the tags
}
HF_TOLERANCE, ONNX_TOLERANCE = 1e-4, 1e-3
# Opset 17 has LayerNormalization as one op and runs on every onnxruntime since 1.14.
ONNX_OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")  # in the graph's order
EXPORT_KEY = "mtl_export"  # config.json key marking a folder as an mtl export (overwrite=true replaces only those)
OUTPUT_FILES = ("config.json", "generation_config.json", "model.onnx", "model.safetensors", "README.md")


@dataclass
class Export:
    """What one export is about, gathered once and handed to each step (and to the model card)."""

    trained: Any  # mtl_cli.trained.Trained
    task: str
    task_type: str
    labels: list[str] | None
    formats: list[str]
    out: Path
    notes: list[str] = field(default_factory=list)  # caveats: logged and in the model card
    onnx_inputs: list[str] = field(default_factory=list)
    max_diff: dict[str, float] = field(default_factory=dict)

    def caveat(self, message: str) -> None:
        """Something the export does differently from mtl: logged now, and in the model card."""
        self.notes.append(message)
        note(f"task '{self.task}': {message}")

    @property
    def task_cfg(self) -> Any:
        return self.trained.cfg.task[self.task]

    @property
    def single_text(self) -> bool:
        """A sequence task on one text: the only kind whose `truncation` setting mtl applies (pairs and token
        tasks are cut by the tokenizer's own longest_first, from the end)."""
        return self.task_type != TOKEN and not self.task_cfg.text_pair_column

    @property
    def sharing(self) -> Any:
        return self.trained.cfg.sharing


def export_task(
    run: str,
    task: str,
    out: str,
    export_format: str = "auto",
    checkpoint: str = "best",
    overwrite: bool = False,
    runs_root: str = "runs",
    trust_remote_code: bool = False,
) -> dict:
    """Write `task` of the run's checkpoint to `out`; returns {"out", "task", "formats", "files", ...}."""
    from mtl_cli.trained import check_tasks, load_trained, locate, run_path

    if export_format not in FORMATS:
        raise MtlError(f"format must be one of {', '.join(FORMATS)}; got format={export_format}")
    path = run_path(run, runs_root)
    # Everything that can be refused from the config alone is, before the model is loaded.
    found = locate(path, checkpoint, trust_remote_code)
    check_tasks(found.cfg, [task], key="task")
    task_type = found.cfg.task[task].type
    formats = choose_formats(task, task_type, found.cfg, export_format)
    target = Path(out)
    check_out(target, found.run.path, overwrite)
    unfit = hf_unfit(task_type, found.cfg.sharing)
    if export_format == "auto" and unfit:  # said once nothing else can refuse: an error stays one line
        note(f"task '{task}': writing ONNX only, no transformers model: {unfit}")
    trained = load_trained(str(path), checkpoint, runs_root, trust_remote_code, device="cpu")
    job = Export(trained, task, task_type, trained.labels.get(task), formats, target)
    write_folder(target, lambda folder: build(job, folder))
    files = sorted(p.name for p in target.iterdir())
    print(f"wrote {target} ({' + '.join(formats)}): {', '.join(files)}")
    return {
        "out": str(target),
        "task": task,
        "formats": formats,
        "files": files,
        "checkpoint": trained.name,
        "notes": job.notes,
        "onnx_inputs": job.onnx_inputs,
        "max_diff": job.max_diff,
    }


def note(message: str) -> None:
    print(f"mtl: {message}", file=sys.stderr)


# --- what can be exported ---------------------------------------------------------------------


def hf_unfit(task_type: str, sharing: Any) -> str | None:
    """Why no transformers class computes this task's path exactly; None when one does."""
    if task_type == SEQ2SEQ:
        return None  # EncoderDecoderModel (seq2seq trains only with sharing=hard)
    if task_type != TOKEN:
        return (
            f"a {task_type} task pools its tokens ({sharing.pooling} pooling, no tanh pooler) before its head, "
            "which no transformers *ForSequenceClassification class does"
        )
    if sharing.name == "mmoe":
        return "sharing=mmoe puts experts and a gate on top of the encoder, which no transformers class has"
    return None


def choose_formats(task: str, task_type: str, cfg: Any, export_format: str) -> list[str]:
    if task_type == "mlm":
        others = [t for t, c in cfg.task.items() if c.type != "mlm"]
        raise MtlError(
            f"task '{task}' is a masked-LM task, an auxiliary task of the run with nothing to deploy; "
            f"export one of its other tasks ({', '.join(others) or 'none'})"
        )
    if task_type == SEQ2SEQ:
        if export_format in ("onnx", "both"):
            raise MtlError(
                f"format={export_format} cannot export task '{task}': a seq2seq task generates in a loop over its "
                "decoder, not one ONNX graph; use format=hf (or auto): a transformers EncoderDecoderModel in "
                "model.safetensors"
            )
        return ["hf"]
    unfit = hf_unfit(task_type, cfg.sharing)
    if unfit and export_format in ("hf", "both"):
        raise MtlError(
            f"format={export_format} cannot export task '{task}' as a transformers model: {unfit}; "
            "use format=onnx (one ONNX graph of the whole task path)"
        )
    if export_format == "auto":
        return ["onnx"] if unfit else ["hf", "onnx"]
    return {"hf": ["hf"], "onnx": ["onnx"], "both": ["hf", "onnx"]}[export_format]


# --- the output folder ------------------------------------------------------------------------


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def is_export(folder: Path) -> bool:
    """An earlier `mtl export` folder (config.json with the export key): what overwrite=true may replace."""
    try:  # the checked reader: a FIFO or a huge file named config.json is no export, not a hang
        config = read_json(folder / "config.json", 1 << 20)
    except UnusableFile:
        return False
    return isinstance(config, dict) and EXPORT_KEY in config


def check_out(out: Path, run: Path, overwrite: bool) -> None:
    resolved, run_resolved = out.resolve(), run.resolve()
    inside = run_resolved if _inside(resolved, run_resolved) else enclosing_run(resolved)
    if inside is None and looks_like_run(resolved):
        inside = resolved
    if inside is not None:
        raise MtlError(
            f"out={out} is inside the run directory {inside}; an export goes into a folder of its own: "
            "point out= outside the run"
        )
    if _inside(run_resolved, resolved):
        raise MtlError(f"out={out} holds the run {run}; point out= at a folder of its own, outside the run")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise MtlError(f"out={out} exists and is not a folder; point out= at a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise MtlError(
                f"out={out} exists and is not empty; pass overwrite=true to replace it, or choose another folder"
            )
        if not is_export(out):
            raise MtlError(
                f"out={out} holds files that are not an mtl export; overwrite=true replaces only an earlier "
                "export: choose another folder"
            )


def _missing_parents(folder: Path) -> list[Path]:
    """The folders above `folder` that do not exist yet, deepest first (removed again on a failure)."""
    missing = []
    for parent in folder.parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


def write_folder(out: Path, fill: Callable[[Path], None]) -> None:
    """`fill(tmp)` writes the folder under a temporary sibling name, which is then renamed to `out`:
    nothing half-written is ever at `out`, and an existing `out` is replaced only by a complete one."""
    out = Path(os.path.abspath(out))
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    made = _missing_parents(out)

    def put_back() -> None:  # the old folder, when the second rename failed
        if old.exists() and not out.exists():
            os.replace(old, out)

    with writing(out, tmp, put_back, *(p.rmdir for p in made)):
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a killed export that had this process id
        tmp.mkdir()
        fill(tmp)
        _shareable(tmp)
        with deferred():  # a signal waits for the renames: `out` is the old folder or the new one
            if out.exists():
                os.replace(out, old)
            os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _shareable(folder: Path) -> None:
    """transformers writes model.safetensors readable by its owner only (0600): every file of the export
    gets the mode a new file gets here (0644 under the usual umask), so the folder can be shared or
    served as a whole."""
    mask = os.umask(0)
    os.umask(mask)
    for path in folder.iterdir():
        if path.is_file():
            os.chmod(path, 0o666 & ~mask)


def build(job: Export, folder: Path) -> None:
    import torch

    with torch.no_grad(), _no_progress_bars():
        tokenizer = export_tokenizer(job, folder)
        probes = Probes(job, tokenizer)
        if job.task_type == SEQ2SEQ:
            export_seq2seq(job, folder, tokenizer, probes)
        else:
            config = export_config(job)
            if "hf" in job.formats:
                export_hf(job, config, folder, probes)
            else:
                config.save_pretrained(folder)
            if "onnx" in job.formats:
                export_onnx(job, folder, probes)
    from mtl_cli.model_card import model_card
    from mtl_cli.trained import test_results

    write_text(folder / "README.md", model_card(job, test_results(job.trained)))


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers draws a bar for saving and loading even a tiny model: noise in a command's output."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


# --- tokenizer --------------------------------------------------------------------------------


def export_tokenizer(job: Export, folder: Path) -> Any:
    """The run's tokenizer as this task used it, saved to `folder` and loaded back from it."""
    from transformers import AutoTokenizer

    cfg = job.task_cfg
    tokenizer = AutoTokenizer.from_pretrained(job.trained.ckpt / "tokenizer")  # a fresh copy of the run's
    if cfg.task_marker == "prefix":
        add_marker_template(tokenizer, marker_token(job.task))
    tokenizer.model_max_length = cfg.max_length
    tokenizer.truncation_side = "left" if cfg.truncation == "tail" and job.single_text else "right"
    if cfg.truncation == "head+tail" and job.single_text:
        job.caveat(
            f"the task truncates texts over {cfg.max_length} tokens head+tail, which a standard tokenizer cannot: "
            f"the exported tokenizer keeps the head, so such texts get other outputs than in mtl"
        )
    names = list(tokenizer.model_input_names)
    tokenizer.save_pretrained(folder)
    if cfg.task_marker == "prefix":
        # BertTokenizer (and other model-specific classes) rebuild their post-processor when loaded:
        # the plain fast class loads tokenizer.json as it is, marker template included.
        path = folder / "tokenizer_config.json"
        settings = json.loads(path.read_text(encoding="utf-8"))
        settings.update(tokenizer_class="PreTrainedTokenizerFast", model_input_names=names)
        write_text(path, json.dumps(settings, indent=2, ensure_ascii=False) + "\n")
    return AutoTokenizer.from_pretrained(folder)


def add_marker_template(tokenizer: Any, marker: str) -> None:
    """Put `marker` right after the first special token of the single and pair templates ([CLS]), with
    token type 0: where mtl's insert_marker puts it."""
    from tokenizers import Tokenizer

    backend = tokenizer.backend_tokenizer
    spec = json.loads(backend.to_str())
    processor = spec.get("post_processor") or {}
    if processor.get("type") == "BertProcessing":  # [CLS] A [SEP] (B [SEP]): the same as a template
        (cls, cls_id), (sep, sep_id) = processor["cls"], processor["sep"]
        processor = _template([cls, "$A", sep], [cls, "$A", sep, "$B:1", f"{sep}:1"], {cls: cls_id, sep: sep_id})
    if processor.get("type") != "TemplateProcessing" or not all(
        processor[key] and "SpecialToken" in processor[key][0] for key in ("single", "pair")
    ):
        raise MtlError(
            f"cannot put the task marker {marker} into this tokenizer: its post-processor "
            f"({processor.get('type') or 'none'}) is not a template starting with a special token"
        )
    piece = {"SpecialToken": {"id": marker, "type_id": 0}}
    for key in ("single", "pair"):
        processor[key].insert(1, piece)
    marker_id = tokenizer.convert_tokens_to_ids(marker)
    processor["special_tokens"][marker] = {"id": marker, "ids": [marker_id], "tokens": [marker]}
    spec["post_processor"] = processor
    # tokenizers builds a post-processor only from JSON through a whole Tokenizer.
    backend.post_processor = Tokenizer.from_str(json.dumps(spec)).post_processor


def _template(single: list[str], pair: list[str], special: dict[str, int]) -> dict:
    def piece(item: str) -> dict:
        name, _, type_id = item.partition(":")
        kind = "Sequence" if name.startswith("$") else "SpecialToken"
        return {kind: {"id": name.lstrip("$"), "type_id": int(type_id or 0)}}

    return {
        "type": "TemplateProcessing",
        "single": [piece(i) for i in single],
        "pair": [piece(i) for i in pair],
        "special_tokens": {t: {"id": t, "ids": [i], "tokens": [t]} for t, i in special.items()},
    }


# --- probes: what every exported piece is checked on ------------------------------------------

PROBE_WORDS = (
    "the service was quick and friendly , but John said the soup in New York was cold again".split(),
    ["ok"],
    "Mary flew from Paris to Berlin on Monday".split(),
)


class Probes:
    """Examples encoded by mtl (the task type's encode and collate) and the mtl model's logits on them.

    `trace` (two examples) is what the ONNX graph is traced on; `probe` (three, one over max_length,
    padded) is what every exported model must reproduce: another batch size and length than the trace.
    """

    def __init__(self, job: Export, tokenizer: Any):
        self.job = job
        long = list(itertools.islice(itertools.cycle(PROBE_WORDS[0]), job.task_cfg.max_length + 8))
        examples = [PROBE_WORDS[1], PROBE_WORDS[2], long]
        self.trace = self.encode([PROBE_WORDS[2], PROBE_WORDS[0][:5]])
        self.probe = self.encode(examples)
        # seq2seq: no logits of a whole task path; check_seq2seq compares decoder logits and generated ids.
        self.reference = None if job.task_type == SEQ2SEQ else logits(job.trained.model, job.task, self.probe)
        check_tokenizer(job, tokenizer, examples, self.encode_rows(examples))

    def encode_rows(self, examples: list[list[str]]) -> list[dict]:
        from mtl_cli import task_types

        job = self.job
        marker = marker_token(job.task) if job.task_cfg.task_marker == "prefix" else None
        marker_id = job.trained.tokenizer.convert_tokens_to_ids(marker) if marker else None
        n = len(examples)
        if job.task_type == TOKEN:
            batch: dict[str, list] = {"tokens": examples, "tags": [[0] * len(e) for e in examples]}
        else:
            texts = [" ".join(e) for e in examples]
            batch = {"text": texts}
            if job.task_type == SEQ2SEQ:
                # Targets of other lengths than their sources: the teacher-forced decoder batch is padded too.
                batch["target"] = [" ".join(reversed(e)) for e in examples]
            else:
                batch["label"] = [_dummy_label(job)] * n
            if job.task_cfg.text_pair_column:
                batch["text_pair"] = [" ".join(reversed(e)) for e in examples]
        encoded = task_types.get(job.task_type).encode(
            batch, job.trained.tokenizer, job.task_cfg, job.labels, marker_id
        )
        return [{key: values[i] for key, values in encoded.items()} for i in range(n)]

    def encode(self, examples: list[list[str]]) -> dict:
        import numpy as np

        from mtl_cli import task_types

        collate = task_types.get(self.job.task_type).collate
        return collate(self.encode_rows(examples), self.job.trained.tokenizer.pad_token_id, np.random.default_rng(0))

    def inputs(self, batch: dict, names: list[str]) -> dict:
        """The batch as a standard model takes it: token_type_ids all 0 where mtl leaves them out."""
        import torch

        out = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        out["token_type_ids"] = batch.get("token_type_ids", torch.zeros_like(batch["input_ids"]))
        return {name: out[name] for name in names}


def _dummy_label(job: Export) -> Any:
    return {"multilabel": [0.0] * len(job.labels or []), "regression": 0.0}.get(job.task_type, 0)


def logits(model: Any, task: str, batch: dict) -> Any:
    """The mtl model's logits (fp32, numpy); regression as [batch, 1], as transformers has num_labels=1."""
    import torch

    with torch.inference_mode():
        out = model(task, batch).float()
    return (out.unsqueeze(-1) if out.dim() == 1 else out).numpy()


def check_tokenizer(job: Export, tokenizer: Any, examples: list[list[str]], rows: list[dict]) -> None:
    """The exported tokenizer must encode every probe as mtl did (head+tail: only those that fit)."""
    cfg = job.task_cfg
    for words, row in zip(examples, rows, strict=True):
        if job.task_type == TOKEN:
            got = tokenizer(words, is_split_into_words=True, truncation=True)
        else:
            text = " ".join(words)
            pair = " ".join(reversed(words)) if cfg.text_pair_column else None
            got = tokenizer(text, pair, truncation=True)
            cut = job.single_text and cfg.truncation == "head+tail"
            if cut and len(tokenizer(text, pair)["input_ids"]) > cfg.max_length:
                continue  # expected to differ: a note in the card says so
        for key in ("input_ids", "token_type_ids"):
            if key in row and list(got[key]) != list(row[key]):
                raise MtlError(
                    f"the exported tokenizer's {key} for a probe text differ from mtl's ({list(got[key])[:8]}... vs "
                    f"{list(row[key])[:8]}...); this tokenizer cannot be exported faithfully, please report it"
                )


def check_close(got: Any, want: Any, mask: Any, tolerance: float, what: str, job: Export, key: str) -> None:
    """`got` must equal the mtl model's logits `want` within `tolerance` (token tasks: on real tokens)."""
    import numpy as np

    if got.shape != want.shape:
        raise MtlError(
            f"{what} gives logits of shape {list(got.shape)}, the mtl model {list(want.shape)}; please report it"
        )
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    if got.ndim == 3:  # token logits: padding positions are nobody's output
        diff = diff[mask.astype(bool)]
    worst = float(diff.max()) if diff.size else 0.0
    job.max_diff[key] = worst
    if not worst <= tolerance:  # also NaN
        raise MtlError(
            f"{what} gives other logits than the mtl model on a probe batch (max difference {worst:.2e} > "
            f"{tolerance:.0e}); nothing was written, please report it"
        )


# --- config -----------------------------------------------------------------------------------


def export_config(job: Export) -> Any:
    """The encoder's config as the exported model's: the task's labels, problem type and marker of origin."""
    config = copy.deepcopy(job.trained.model.encoder.config)
    names = job.labels or [job.task]  # regression: one output, named after the task
    config.num_labels = len(names)
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}
    config.problem_type = PROBLEM_TYPES[job.task_type]
    config.classifier_dropout = job.sharing.head_dropout
    config.architectures = None  # set by save_pretrained for hf; an ONNX graph is no transformers class
    setattr(config, EXPORT_KEY, export_record(job))
    return config


def export_record(job: Export) -> dict:
    """config.json's `mtl_export`: where the model comes from, and what marks the folder as an export."""
    cfg = job.trained.cfg
    return {
        "task": job.task,
        "task_type": job.task_type,
        "formats": job.formats,
        "sharing": cfg.sharing.name,
        "pooling": cfg.sharing.pooling if job.task_type not in (TOKEN, SEQ2SEQ) else None,
        "task_marker": job.task_cfg.task_marker,
        "max_length": job.task_cfg.max_length,
        "truncation": job.task_cfg.truncation,
        "checkpoint": job.trained.name,
        "step": job.trained.state.get("step"),
    }


# --- hf: a transformers token-classification folder --------------------------------------------


def export_hf(job: Export, config: Any, folder: Path, probes: Probes) -> None:
    """AutoModelForTokenClassification holding the task's encoder and head; saved, reloaded, checked."""
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_config(config)
    head = job.trained.model.heads[job.task].out
    classifier: Any = getattr(model, "classifier", None)
    own = {n for n, _ in model.named_parameters()} - {
        f"{model.base_model_prefix}.{n}" for n, _ in model.base_model.named_parameters()
    }
    if not hasattr(classifier, "weight") or own != {"classifier.weight", "classifier.bias"}:
        raise MtlError(
            f"{type(model).__name__} has more than a linear layer on the encoder ({sorted(own)}), unlike mtl's token head; "
            "use format=onnx"
        )
    try:
        model.base_model.load_state_dict(encoder_state(job), strict=True)
    except RuntimeError as err:
        raise MtlError(
            f"the task's encoder does not fit {type(model).__name__} ({first_line(err)}); use format=onnx"
        ) from None
    classifier.load_state_dict(head.state_dict())
    vector = task_vector(job)
    if vector is not None:
        model.get_input_embeddings().weight += vector  # see the module docstring
    model.save_pretrained(folder)
    reloaded = AutoModelForTokenClassification.from_pretrained(folder).eval()
    got = reloaded(**probes.inputs(probes.probe, input_names(job))).logits.float().numpy()
    mask = probes.probe["attention_mask"].numpy()
    check_close(got, probes.reference, mask, HF_TOLERANCE, f"the exported {type(model).__name__}", job, "hf")


def encoder_state(job: Export) -> dict:
    """The task's encoder as one plain transformers model's state dict (keys of the base model)."""
    trunk = job.trained.model.trunk
    scheme = job.sharing.name
    if scheme == "adapters":
        # Merge only this task's LoRA, in a copy: the trunk wraps the encoder in place, and the mtl
        # model must stay as it is for the ONNX export and the checks.
        peft = copy.deepcopy(trunk.peft)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            merged = peft.merge_and_unload(adapter_names=[trunk.adapter_names[job.task]])
        return merged.state_dict()
    state = dict(trunk.encoder.state_dict())
    if scheme == "partial":
        # The encoder holds only the shared layers; the task's own copies of the top layers follow them.
        for i, layer in enumerate(trunk.private[job.task]):
            for key, value in layer.state_dict().items():
                state[f"{trunk.layer_path}.{trunk.shared_layers + i}.{key}"] = value
    return state


def task_vector(job: Export) -> Any:
    """The task's learned embedding vector (task_marker: embedding), or None."""
    model = job.trained.model
    if job.task not in model.task_index:
        return None
    return model.task_embeddings.weight[model.task_index[job.task]].detach().clone()


# --- seq2seq: a transformers EncoderDecoderModel ----------------------------------------------


def export_seq2seq(job: Export, folder: Path, tokenizer: Any, probes: Probes) -> None:
    """EncoderDecoderModel of the task's encoder and decoder (BERT2BERT); saved, reloaded, checked."""
    from transformers import EncoderDecoderModel, GenerationConfig

    head = job.trained.model.heads[job.task]
    if getattr(head, "pretrained", False):
        export_pretrained_seq2seq(job, folder, tokenizer, probes)
        return
    # Copies: EncoderDecoderModel takes its parts' configs over, and the mtl model is the reference of the checks.
    model = EncoderDecoderModel(encoder=seq2seq_encoder(job), decoder=copy.deepcopy(head.decoder))
    ids = generation_ids(job.trained.tokenizer)
    for key, value in ids.items():
        setattr(model.config, key, value)
    # A generation config of its own: one derived from the model config would drop max_new_tokens and num_beams.
    model.generation_config = GenerationConfig(**ids, max_new_tokens=head.max_new_tokens, num_beams=head.num_beams)
    setattr(model.config, EXPORT_KEY, export_record(job))
    # The decoder's output layer is tied to its word embeddings: saved once, tied again on loading.
    model.save_pretrained(folder)
    check_seq2seq(job, folder, tokenizer, probes)


def export_pretrained_seq2seq(job: Export, folder: Path, tokenizer: Any, probes: Probes) -> None:
    """A pretrained encoder-decoder's task (T5, BART, Marian: encoder=hf): the head's model with the
    trunk's encoder put back where it was cut out, saved as that model's own class."""
    from mtl_cli.task_types.seq2seq import TrunkRunsIt

    head = job.trained.model.heads[job.task]
    if task_vector(job) is not None:
        raise MtlError(
            f"task '{job.task}' has task_marker: embedding, which export cannot fold into {type(head.decoder).__name__}: "
            "its encoder and decoder share one embedding matrix; train it with task_marker: prefix or none"
        )
    # Copied together, so the tensors the encoder shares with the decoder (T5's embeddings) stay one.
    model, encoder = copy.deepcopy((head.decoder, job.trained.model.encoder))
    encoder.__dict__.pop("mtl_seq2seq", None)  # mtl's link to the model it came from, not part of it
    name = next(n for n, m in model.named_modules() if isinstance(m, TrunkRunsIt))
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, encoder)
    model.generation_config.max_new_tokens, model.generation_config.num_beams = head.max_new_tokens, head.num_beams
    setattr(model.config, EXPORT_KEY, export_record(job))
    model.save_pretrained(folder)
    if "token_type_ids" in tokenizer.model_input_names and not job.trained.model.takes_token_types:
        # A BERT-style tokenizer beside a T5: generate(**tokenizer(...)) would pass ids the model does not take.
        names = [n for n in tokenizer.model_input_names if n != "token_type_ids"]
        tokenizer.model_input_names = tokenizer.init_kwargs["model_input_names"] = names
        tokenizer.save_pretrained(folder)
    check_seq2seq(job, folder, tokenizer, probes, pretrained=True)


def generation_ids(tokenizer: Any) -> dict[str, int]:
    """Where mtl's generation starts, ends and pads (Seq2SeqHead.generate), under transformers' names."""
    return {
        "decoder_start_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def seq2seq_encoder(job: Export) -> Any:
    """The task's encoder as the plain model transformers rebuilds it from its config, pooler included.

    mtl drops BERT's pooler; EncoderDecoderModel never reads it, but its reload builds one and would
    initialise it at random, unsaved: so it is saved, zeroed (deterministic, and plainly unused).
    """
    from transformers import AutoModel

    trained = job.trained.model.encoder
    encoder = AutoModel.from_config(copy.deepcopy(trained.config))
    missing, unexpected = encoder.load_state_dict(trained.state_dict(), strict=False)
    pooler = getattr(encoder, "pooler", None)
    pooled = {f"pooler.{name}" for name, _ in pooler.named_parameters()} if pooler is not None else set()
    unfit = sorted({*unexpected, *(set(missing) - pooled)})
    if unfit:
        raise MtlError(f"the task's encoder does not fit {type(encoder).__name__} ({unfit[:4]}); please report it")
    if pooler is not None:
        for param in pooler.parameters():
            param.zero_()
    vector = task_vector(job)
    if vector is not None:
        # mtl adds the task vector to the encoder's input embeddings only: see the module docstring.
        encoder.get_input_embeddings().weight += vector
    return encoder


def mtl_seq2seq(job: Export, batch: dict) -> tuple[Any, Any]:
    """mtl's teacher-forced logits (numpy) and greedy generation (ids after the start) on `batch`.

    The head's generate runs on the hidden states the mtl model hands the head, caught on their way
    in: the task marker and sharing scheme are applied by mtl itself, not rebuilt here.
    """
    import torch

    model = job.trained.model
    head = model.heads[job.task]
    seen: list = []
    hook = head.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    # Greedy on both sides: what is checked is the model; the task's num_beams is only a saved default.
    beams, head.num_beams = head.num_beams, 1
    try:
        with torch.inference_mode():
            logits = model(job.task, batch)["logits"].float().numpy()
            generated = head.generate(seen[0], batch["attention_mask"])
    finally:
        hook.remove()
        head.num_beams = beams
    return logits, generated


def check_seq2seq(job: Export, folder: Path, tokenizer: Any, probes: Probes, pretrained: bool = False) -> None:
    """The saved folder, reloaded as a user loads it, must hold every weight and compute as mtl does."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, EncoderDecoderModel

    loader = AutoModelForSeq2SeqLM if pretrained else EncoderDecoderModel
    loaded: Any = loader.from_pretrained(folder, output_loading_info=True)  # (model, loading info)
    reloaded, info = loaded
    kind = type(reloaded).__name__
    fresh = sorted({*info["missing_keys"], *info["unexpected_keys"], *map(str, info["mismatched_keys"])})
    if fresh:
        raise MtlError(
            f"the exported {kind} reloads with weights that were not saved or not used "
            f"({', '.join(fresh[:4])}); nothing was written, please report it"
        )
    reloaded.eval()
    batch = probes.probe  # padded, one source over max_length (truncated)
    source = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    want, want_ids = mtl_seq2seq(job, batch)
    got = reloaded(
        **source, decoder_input_ids=batch["decoder_input_ids"], decoder_attention_mask=batch["decoder_attention_mask"]
    ).logits.float()
    mask = batch["decoder_attention_mask"].numpy()
    check_close(got.numpy(), want, mask, HF_TOLERANCE, f"the exported {kind}", job, "hf")
    # Greedy, the rest (start, end, pad, max_new_tokens) from the saved generation config.
    generated = reloaded.generate(**source, num_beams=1, do_sample=False)
    texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
    want_texts = job.trained.tokenizer.batch_decode(want_ids, skip_special_tokens=True)  # as the head decodes
    first = reloaded.generation_config.decoder_start_token_id if pretrained else job.trained.tokenizer.cls_token_id
    start = generated[:, :1] == first
    if not (start.all() and generated[:, 1:].shape == want_ids.shape and torch.equal(generated[:, 1:], want_ids)):
        raise MtlError(
            f"the exported {kind} generates other tokens than the mtl model on a probe batch "
            f"({generated[0, 1:9].tolist()}... vs {want_ids[0, :8].tolist()}...); nothing was written, please report it"
        )
    if texts != want_texts:
        raise MtlError(
            f"the exported tokenizer decodes the generated tokens otherwise than mtl ({texts[0]!r} vs "
            f"{want_texts[0]!r}); nothing was written, please report it"
        )


# --- onnx: the whole task path as one graph ----------------------------------------------------


def input_names(job: Export) -> list[str]:
    """input_ids, attention_mask, and token_type_ids when the run's tokenizer makes them (BERT, not RoBERTa)."""
    made = job.trained.tokenizer.model_input_names
    return [name for name in INPUT_NAMES if name != "token_type_ids" or name in made]


def _task_graph(model: Any, task: str, names: list[str]) -> Any:
    from torch import nn

    class TaskGraph(nn.Module):
        """model(task, batch) with the inputs as positional tensors, as torch.onnx traces a module."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: Any) -> Any:
            out = self.model(task, dict(zip(names, inputs, strict=True)))
            return out.unsqueeze(-1) if out.dim() == 1 else out

    return TaskGraph().eval()


def export_onnx(job: Export, folder: Path, probes: Probes) -> None:
    """model.onnx, traced on one batch and checked in onnxruntime on another."""
    import torch

    names = input_names(job)
    trace = probes.inputs(probes.trace, names)
    dims = {0: "batch", 1: "sequence"}
    axes = {name: dims for name in names}
    axes["logits"] = dims if job.task_type == TOKEN else {0: "batch"}
    path = folder / "model.onnx"
    # The TorchScript exporter (dynamo=False): ~0.3 s for a tiny model against ~5-12 s for torch.export
    # here, in every torch this project supports (>=2.2), and needing no onnxscript. What a trace can
    # get wrong (a Python branch on a tensor frozen at trace time) the onnxruntime check below catches.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings: nothing a user can act on
        try:
            torch.onnx.export(
                _task_graph(job.trained.model, job.task, names),
                tuple(trace.values()),
                str(path),
                input_names=names,
                output_names=["logits"],
                dynamic_axes=axes,
                opset_version=ONNX_OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        except torch.onnx.errors.OnnxExporterError as err:
            raise MtlError(f"torch.onnx cannot export task '{job.task}' ({first_line(err)})") from None
    check_onnx(job, path, probes)


def check_onnx(job: Export, path: Path, probes: Probes) -> None:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # The exporter drops an input the graph never reads (token_type_ids of some encoders).
    job.onnx_inputs = [i.name for i in session.get_inputs()]
    feed = {name: tensor.numpy() for name, tensor in probes.inputs(probes.probe, job.onnx_inputs).items()}
    got = session.run(["logits"], feed)[0]
    mask = probes.probe["attention_mask"].numpy()
    check_close(got, probes.reference, mask, ONNX_TOLERANCE, "the ONNX graph (onnxruntime)", job, "onnx")
