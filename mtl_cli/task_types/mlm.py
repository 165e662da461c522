"""Masked language modelling on unlabelled text: an auxiliary task (BERT-style 80/10/10 masking).

The targets are made per batch in `collate`, with the caller's seeded numpy generator: training
batches get fresh masks every epoch, evaluation batches the same masks at every evaluation.
`collate` has only (rows, pad_id, rng), so `encode` stores what it needs in each row: the special
tokens mask, and as scalar columns the mask token id, the vocabulary size to draw random
replacements from, and `mlm_probability`.

The head is BERT's prediction head (dense -> GELU -> LayerNorm -> decoder) whose decoder weight
IS the encoder's input embedding matrix (tied, not copied), with its own output bias. Logits are
computed only at the masked positions: a full (batch, length, vocabulary) tensor is never built.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtl_cli.batches import pad_inputs, pad_sequences
from mtl_cli.config import TaskConfig
from mtl_cli.errors import MtlError
from mtl_cli.fingerprints import fingerprint
from mtl_cli.tokenization import encode_texts

MAIN_METRIC = "accuracy"
AUXILIARY = True
METRICS = ("accuracy", "mlm_loss", "perplexity")  # what metrics() returns, main first

IGNORE = -100  # label of positions that are not predicted (F.cross_entropy's ignore_index)
MASK_FRACTION, RANDOM_FRACTION = 0.8, 0.1  # of the chosen positions; the remaining 10% stay unchanged
MAX_LOG_PERPLEXITY = 100.0  # exp(100) ~ 2.7e43: a finite perplexity (JSON) however bad the loss


def columns(cfg: TaskConfig) -> dict[str, str]:
    return {"text": cfg.text_column}


def prepare(name: str, cfg: TaskConfig, raw: Any) -> tuple[Any, None]:
    """Drop empty (or whitespace-only) texts; MLM has no labels."""
    import datasets

    # The tokenized cache key (tokenization.tokenize_task) does not include mlm_probability, which
    # `encode` writes into every row; it enters the key here, through this step's fingerprint.
    out = {
        split: ds.filter(
            lambda batch: [bool(t.strip()) for t in batch["text"]],
            batched=True,
            new_fingerprint=fingerprint(ds, "mlm-nonempty", cfg.mlm_probability),
        )
        for split, ds in raw.items()
    }
    return datasets.DatasetDict(out), None


def special_ids(tokenizer: Any) -> set[int]:
    """[CLS], [SEP], [PAD], [UNK], [MASK]... and added special tokens such as [TASK=name] markers."""
    ids = set(tokenizer.all_special_ids)
    ids |= {i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if tok.special}
    return ids


def encode(batch: dict[str, list], tokenizer: Any, cfg: TaskConfig, labels: list[str] | None, marker_id=None) -> dict:
    if tokenizer.mask_token_id is None:
        raise MtlError(
            f"the encoder's tokenizer ({type(tokenizer).__name__}) has no mask token, which `type: mlm` tasks need; "
            "use a BERT-style encoder (e.g. encoder=minilm) or drop the MLM task"
        )
    enc = encode_texts(tokenizer, batch["text"], None, cfg, marker_id)
    specials = special_ids(tokenizer)
    if marker_id is not None:
        specials.add(marker_id)
    n = len(enc["input_ids"])
    enc["special_tokens_mask"] = [[int(i in specials) for i in ids] for ids in enc["input_ids"]]
    enc["mask_token_id"] = [tokenizer.mask_token_id] * n
    # Random replacements come from the base vocabulary (no added task markers).
    enc["vocab_size"] = [tokenizer.vocab_size] * n
    enc["mlm_probability"] = [cfg.mlm_probability] * n
    return enc


def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    probability: float,
    mask_token_id: int,
    vocab_size: int,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking -> (inputs, labels). Each maskable position is chosen with `probability` (at least
    one per batch when any is maskable); of those 80% become [MASK], 10% a random token, 10% stay.
    Labels hold the original ids at chosen positions and IGNORE elsewhere.

    Every draw has the batch's shape, so the result depends only on the generator's state and the batch.
    """
    shape = tuple(input_ids.shape)
    allowed = maskable.numpy().astype(bool)
    chosen = (rng.random(shape) < probability) & allowed
    if not chosen.any() and allowed.any():
        flat = np.flatnonzero(allowed)
        chosen.flat[flat[rng.integers(len(flat))]] = True
    action = rng.random(shape)
    random_ids = rng.integers(0, vocab_size, size=shape)
    chosen_t = torch.from_numpy(chosen)
    to_mask = torch.from_numpy(chosen & (action < MASK_FRACTION))
    to_random = torch.from_numpy(chosen & (action >= MASK_FRACTION) & (action < MASK_FRACTION + RANDOM_FRACTION))
    labels = torch.where(chosen_t, input_ids, torch.full_like(input_ids, IGNORE))
    inputs = input_ids.clone()
    inputs[to_mask] = mask_token_id
    inputs[to_random] = torch.from_numpy(random_ids).to(inputs.dtype)[to_random]
    return inputs, labels


def collate(rows: list[dict], pad_id: int, rng: Any) -> dict[str, torch.Tensor]:
    batch = pad_inputs(rows, pad_id)
    # Padding counts as special: never masked.
    special = pad_sequences([r["special_tokens_mask"] for r in rows], 1, torch.long)
    first = rows[0]
    batch["input_ids"], batch["labels"] = mask_tokens(
        batch["input_ids"],
        special == 0,
        float(first["mlm_probability"]),
        int(first["mask_token_id"]),
        int(first["vocab_size"]),
        rng,
    )
    return batch


class MaskedLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> decoder tied to the input embeddings (+ own bias), at masked positions."""

    def __init__(self, hidden_size: int, embeddings: nn.Embedding, layer_norm_eps: float = 1e-12):
        super().__init__()
        vocab, dim = embeddings.weight.shape
        # dim == hidden_size for BERT-like encoders; ALBERT-like ones project down to the embedding size.
        self.dense = nn.Linear(hidden_size, dim)
        self.activation = nn.GELU()
        self.layer_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.decoder = nn.Linear(dim, vocab, bias=False)
        self.decoder.weight = embeddings.weight  # tied: the same Parameter object
        self.bias = nn.Parameter(torch.zeros(vocab))

    def transform(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(self.activation(self.dense(hidden)))

    def forward(self, hidden: torch.Tensor, batch: dict) -> torch.Tensor:
        """(number of masked positions in the batch, vocabulary) logits, in row-major order."""
        selected = hidden[batch["labels"] != IGNORE]
        return self.decoder(self.transform(selected)) + self.bias


def build_head(hidden_size: int, labels: Any, encoder: Any, sharing: Any) -> nn.Module:
    eps = getattr(encoder.config, "layer_norm_eps", 1e-12)
    return MaskedLMHead(hidden_size, encoder.get_input_embeddings(), eps)


def targets(batch: dict) -> torch.Tensor:
    labels = batch["labels"]
    return labels[labels != IGNORE]


def loss(output: torch.Tensor, batch: dict) -> torch.Tensor:
    """Mean cross-entropy over the batch's masked positions."""
    gold = targets(batch)
    if gold.numel() == 0:  # only when no row has a maskable token (texts that tokenize to nothing)
        return output.sum() * 0.0
    return F.cross_entropy(output, gold)


def predict(output: torch.Tensor, batch: dict) -> tuple[list, list]:
    """One (predicted, gold) token id per masked position, flattened over the batch."""
    return output.argmax(-1).tolist(), targets(batch).tolist()


def metrics(preds: list, golds: list, labels: Any, loss: float) -> dict[str, float]:
    correct = sum(p == g for p, g in zip(preds, golds, strict=True))
    return {
        "accuracy": correct / len(golds) if golds else 0.0,
        "mlm_loss": float(loss),
        "perplexity": math.exp(min(float(loss), MAX_LOG_PERPLEXITY)),
    }
