"""The README.md model card of an `mtl export` folder: what the model is, how it was trained, how it
scored, how to load it without mtl, and what it does differently from mtl (caveats)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mtl_cli.export import Export

# How a sequence task's logits become predictions, as mtl computes them.
READ_LOGITS = {
    "classification": (
        "probs = np.exp(logits - logits.max(-1, keepdims=True))\n"
        "probs /= probs.sum(-1, keepdims=True)  # softmax\n"
        "labels = [config.id2label[i] for i in probs.argmax(-1)]"
    ),
    "multilabel": (
        "probs = 1 / (1 + np.exp(-logits))  # sigmoid, one per label\n"
        "labels = [[config.id2label[i] for i in np.flatnonzero(p > 0.5)] for p in probs]"
    ),
    "regression": "values = logits[:, 0]  # the predicted value itself",
    "token_classification": (
        "# One tag per word: the logits of its first word piece (what mtl scores)\n"
        "for i in range(len(texts)):\n"
        "    seen, tags = set(), []\n"
        "    for position, word in enumerate(enc.word_ids(i)):\n"
        "        if word is not None and word not in seen:\n"
        "            seen.add(word)\n"
        "            tags.append(config.id2label[int(logits[i, position].argmax())])\n"
        "    print(tags)"
    ),
}

ORT_CLASSES = {"token_classification": "ORTModelForTokenClassification"}
SEQ2SEQ = "seq2seq"
# A source text (a sentence, a few words): what a seq2seq card's snippet generates from.
SNIPPET_SOURCES = '["a first source sentence", "another one"]'


def model_card(job: Export, results: dict | None) -> str:
    sections = [_header(job), _training(job), _metrics(job, results), _usage(job), _caveats(job)]
    return "\n\n".join(s for s in sections if s) + "\n"


def _header(job: Export) -> str:
    cfg = job.task_cfg
    labels = ", ".join(f"`{label}`" for label in job.labels) if job.labels else "none (one real-valued output)"
    outputs = f"- labels ({len(job.labels or [])}): {labels}"
    files = ["`config.json` (transformers config: labels, problem type)", "`tokenizer.json`, `tokenizer_config.json`"]
    if job.task_type == SEQ2SEQ and _pretrained(job):
        search = "greedy" if cfg.num_beams == 1 else f"beam search, {cfg.num_beams} beams"
        outputs = f"- output: a generated text, at most {cfg.max_new_tokens} tokens ({search})"
        kind = type(job.trained.model.heads[job.task].decoder).__name__
        files = [
            f"`config.json` (the pretrained encoder-decoder's config, {kind})",
            "`generation_config.json` (the model's start, end and pad ids; max_new_tokens, num_beams as mtl generates)",
            "`tokenizer.json`, `tokenizer_config.json`",
            f"`model.safetensors` (transformers {kind}: the shared encoder mtl trained and the task's decoder)",
        ]
    elif job.task_type == SEQ2SEQ:
        search = "greedy" if cfg.num_beams == 1 else f"beam search, {cfg.num_beams} beams"
        outputs = f"- output: a generated text, at most {cfg.max_new_tokens} tokens ({search})"
        files = [
            "`config.json` (transformers EncoderDecoderConfig: the encoder's and the decoder's configs)",
            "`generation_config.json` (start [CLS], end [SEP], pad; max_new_tokens, num_beams as mtl generates)",
            "`tokenizer.json`, `tokenizer_config.json`",
            "`model.safetensors` (transformers EncoderDecoderModel: the task's encoder and its decoder)",
        ]
    elif "hf" in job.formats:
        files.append("`model.safetensors` (transformers AutoModelForTokenClassification)")
    if "onnx" in job.formats:
        files.append(f"`model.onnx` (the whole task path; inputs {', '.join(job.onnx_inputs)}; output `logits`)")
    lines = [
        f"# {job.task}",
        "",
        f"Task `{job.task}` of an `mtl` multi-task run, exported with `mtl export` to run "
        "without mtl (no `trust_remote_code`).",
        "",
        f"- type: {job.task_type}",
        outputs,
        f"- input: {_input_kind(job)}, at most {cfg.max_length} tokens",
        f"- formats: {' + '.join(job.formats)}",
        "- files: " + "; ".join(files),
    ]
    return "\n".join(lines)


def _input_kind(job: Export) -> str:
    if job.task_type == "token_classification":
        return "a sentence (one tag per word)"
    if job.task_type == SEQ2SEQ:
        return "a source text"
    return "a pair of texts" if job.task_cfg.text_pair_column else "a text"


def _training(job: Export) -> str:
    run = job.trained.cfg
    t, s, e = run.trainer, run.sharing, run.encoder
    sharing = {
        "hard": f"hard (one shared encoder), {s.pooling} pooling",
        "partial": f"partial (bottom {s.shared_layers} layers shared, the layers above the task's own), {s.pooling} pooling",
        "adapters": f"adapters (one LoRA per task, r={s.lora_r}, alpha={s.lora_alpha}, merged into this model; "
        f"{'trained' if s.train_encoder else 'frozen'} base), {s.pooling} pooling",
        "mmoe": f"mmoe ({s.num_experts} experts of {s.expert_hidden} units, a gate per task), {s.pooling} pooling",
    }[s.name]
    if job.task_type in ("token_classification", SEQ2SEQ):
        sharing = sharing.rsplit(",", 1)[0]  # no pooling in a token task; the decoder reads every token
    length = f"{t.max_steps} steps" if t.max_steps else f"{t.epochs:g} epochs"
    marker = job.task_cfg.task_marker or "none"
    tasks = ", ".join(f"`{name}` ({c.type})" for name, c in run.task.items())
    step = job.trained.state.get("step")
    lines = [
        "## Training",
        "",
        f"- encoder: `{e.name_or_path}`" + (" (random init)" if e.random_init else ""),
        f"- sharing: {sharing}",
        f"- the run's tasks: {tasks}",
        f"- task marker: {marker}; truncation: {job.task_cfg.truncation}",
        f"- trainer: {length}, batch size {t.batch_size}, lr {t.lr:g}, weight decay {t.weight_decay:g}, "
        f"warmup {t.warmup_ratio:g}, precision {t.precision}, seed {run.seed}; mixing {run.mixing.name}, "
        f"loss weighting {run.loss_weighting.name}",
        f"- checkpoint: `{job.trained.name}` (step {step}), run `{job.trained.run.path}`",
    ]
    return "\n".join(lines)


def _metrics(job: Export, results: dict | None) -> str:
    scores = (results or {}).get(job.task)
    if not isinstance(scores, dict) or not scores:
        return "## Test metrics\n\nThe run has no test results for this task (no results.json: an unfinished run?)."
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in scores.items() if isinstance(value, (int, float)))
    whose = "checkpoints/best"
    if job.trained.name != "best":
        whose += f" (this export is of `{job.trained.name}`: its own scores may differ)"
    table = f"## Test metrics\n\nOn the task's test split, of {whose} (the run's results.json):\n\n| metric | value |\n|---|---|\n{rows}"
    if job.task_type == SEQ2SEQ:
        table += (
            "\n\nchrf and bleu: sacrebleu's corpus chrF and BLEU on a 0-1 scale; copy_chrf: the chrF of the "
            "source copied as it is, the baseline of a model that learned nothing."
        )
    return table


def _usage(job: Export) -> str:
    path = str(job.out)
    parts = ["## Use"]
    if job.task_type == SEQ2SEQ:
        parts.append("With transformers:\n\n```python\n" + _seq2seq_snippet(job, path) + "\n```")
    elif "hf" in job.formats:
        parts.append(
            "With transformers:\n\n```python\n"
            "from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline\n\n"
            f'tokenizer = AutoTokenizer.from_pretrained("{path}")\n'
            f'model = AutoModelForTokenClassification.from_pretrained("{path}")\n'
            '# "first": a word takes the tag of its first word piece, as mtl scores it\n'
            'tagger = pipeline("token-classification", model=model, tokenizer=tokenizer, aggregation_strategy="first")\n'
            'print(tagger("John lives in New York"))\n```'
        )
    if "onnx" in job.formats:
        parts.append(
            "With onnxruntime (the tokenizer from transformers):\n\n```python\n" + _onnx_snippet(job, path) + "\n```"
        )
        ort_class = ORT_CLASSES.get(job.task_type, "ORTModelForSequenceClassification")
        parts.append(f"The folder also fits optimum's `{ort_class}` (model.onnx and config.json side by side).")
    return "\n\n".join(parts)


def _pretrained(job: Export) -> bool:
    """A pretrained encoder-decoder's own decoder (T5, BART: saved as its class), not BERT2BERT."""
    return bool(getattr(job.trained.model.heads[job.task], "pretrained", False))


def _seq2seq_snippet(job: Export, path: str) -> str:
    loader = "AutoModelForSeq2SeqLM" if _pretrained(job) else "EncoderDecoderModel"
    return "\n".join(
        [
            f"from transformers import AutoTokenizer, {loader}",
            "",
            f'tok = AutoTokenizer.from_pretrained("{path}")',
            f'model = {loader}.from_pretrained("{path}")',
            f'enc = tok({SNIPPET_SOURCES}, padding=True, truncation=True, return_tensors="pt")',
            f"ids = model.generate(**enc, max_new_tokens={job.task_cfg.max_new_tokens})  # num_beams: generation_config.json",
            "print(tok.batch_decode(ids, skip_special_tokens=True))",
        ]
    )


def _onnx_snippet(job: Export, path: str) -> str:
    token = job.task_type == "token_classification"
    lines = [
        "import numpy as np",
        "import onnxruntime as ort",
        "from transformers import AutoConfig, AutoTokenizer",
        "",
        f'config = AutoConfig.from_pretrained("{path}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{path}")',
        f'session = ort.InferenceSession("{path}/model.onnx")',
        "names = {i.name for i in session.get_inputs()}  # what the graph reads",
        'texts = ["John lives in New York"]' if token else 'texts = ["a first text", "another"]',
    ]
    args = "texts"
    if job.task_cfg.text_pair_column:
        lines.append('pairs = ["its second text", "and this one"]')
        args = "texts, pairs"
    lines += [
        f'enc = tokenizer({args}, padding=True, truncation=True, return_tensors="np")',
        'logits = session.run(["logits"], {k: v.astype(np.int64) for k, v in enc.items() if k in names})[0]',
        READ_LOGITS[job.task_type],
    ]
    return "\n".join(lines)


def _caveats(job: Export) -> str:
    notes = [
        *job.notes,
        "the model computes in float32 (a bf16-trained run's exported weights are its float32 weights)",
    ]
    if job.task_cfg.task_marker == "prefix":
        notes.append(
            f"the tokenizer puts the task marker `[TASK={job.task}]` after the first special token; "
            "encode texts with this tokenizer, not the base encoder's"
        )
    if job.task_type == SEQ2SEQ:
        notes += _seq2seq_caveats(job)
    return "## Caveats\n\n" + "\n".join(f"- {n}" for n in notes)


def _seq2seq_caveats(job: Export) -> list[str]:
    """What the encoder's vocabulary does to a source and a generated text (the tokenizer is asked, not assumed)."""
    tokenizer = job.trained.tokenizer
    name = job.trained.cfg.encoder.name_or_path
    notes = [
        f"source and target share the vocabulary of `{name}` (MiniLM's is English word pieces): a source "
        "in another language is read through those pieces, split into many short ones, and characters "
        "outside the vocabulary become [UNK]"
    ]
    plain = lambda text: tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True)  # noqa: E731
    if plain("Word") == "word":
        stripped = plain("é") == "e"
        notes.append(
            "the tokenizer is uncased: the source is lower-cased"
            + (" and its accents stripped (é -> e, ä -> a)" if stripped else "")
            + " before the model reads it, and the output is lower-cased"
        )
    return notes
