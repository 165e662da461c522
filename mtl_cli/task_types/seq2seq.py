"""Text to text (translation): the shared encoder reads the source, a decoder with cross-attention
writes the target; teacher-forced token cross-entropy; generated text scored with chrF and BLEU.

The decoder is warm-started from the encoder's own weights (BERT2BERT, Rothe et al. 2020): the
same architecture with `is_decoder` and cross-attention layers (new, randomly initialised), its
output layer tied to its word embeddings. The encoder is mtl's shared trunk, so translation
gradients reach it like any task's. Tasks that name the same `decoder` share one (model.py).

Scores are sacrebleu's corpus chrF and BLEU on a 0-1 scale (like every other metric here, so the
average over tasks stays meaningful); `copy_chrf` is the chrF of the source copied as it is, the
baseline a model that learned nothing reaches. Hypotheses and references are both decoded from
the tokenizer's ids, so they are normalised alike (an uncased tokenizer lower-cases both).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mtl_cli.batches import pad_inputs, pad_sequences
from mtl_cli.config import TaskConfig
from mtl_cli.tokenization import encode_texts

MAIN_METRIC = "chrf"
AUXILIARY = False
METRICS = ("chrf", "bleu", "copy_chrf")
IGNORE = -100
# Validation and test are carved by source sentence: a source with several references in one split only.
SPLIT_BY_TEXT = True


def columns(cfg: TaskConfig) -> dict[str, str]:
    return {"text": cfg.text_column, "target": cfg.target_column}


def prepare(name: str, cfg: TaskConfig, raw: Any) -> tuple[Any, None]:
    return raw, None


def encode(batch: dict[str, list], tokenizer: Any, cfg: TaskConfig, labels: Any, marker_id=None) -> dict:
    enc = encode_texts(tokenizer, batch["text"], None, cfg, marker_id)
    start = getattr(tokenizer, "mtl_decoder_start", None)  # set for a pretrained encoder-decoder (encoders.py)
    if start is None:
        # [CLS] target [SEP]: [CLS] starts the decoder, [SEP] ends the text it generates.
        enc["target_ids"] = tokenizer(batch["target"], truncation=True, max_length=cfg.max_target_length)["input_ids"]
    else:  # the decoder's start id, then the target as its own tokenizer writes it (T5: text </s>)
        targets = tokenizer(text_target=batch["target"], truncation=True, max_length=cfg.max_target_length - 1)
        enc["target_ids"] = [[start, *ids] for ids in targets["input_ids"]]
    return enc


def collate(rows: list[dict], pad_id: int, rng: Any) -> dict[str, torch.Tensor]:
    batch = pad_inputs(rows, pad_id)
    targets = [r["target_ids"] for r in rows]
    batch["decoder_input_ids"] = pad_sequences([t[:-1] for t in targets], pad_id, torch.long)
    batch["decoder_attention_mask"] = pad_sequences([[1] * (len(t) - 1) for t in targets], 0, torch.long)
    batch["labels"] = pad_sequences([t[1:] for t in targets], IGNORE, torch.long)
    return batch


def warm_started_decoder(encoder: Any) -> nn.Module:
    """A causal LM of the encoder's architecture with cross-attention, holding the encoder's weights."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(encoder.config)
    config.is_decoder, config.add_cross_attention = True, True
    decoder = AutoModelForCausalLM.from_config(config)
    decoder.base_model.load_state_dict(encoder.state_dict(), strict=False)  # cross-attention stays new
    decoder.tie_weights()
    return decoder


def pretrained_decoder(encoder: Any) -> nn.Module:
    """The decoder side of the pretrained encoder-decoder whose encoder is the trunk: the whole
    seq2seq LM (decoder, LM head, generation) with its encoder cut out, since the trunk runs it.
    The first seq2seq task takes the model itself; another with its own decoder gets a copy that
    still shares the trunk's tensors (T5's embeddings are the encoder's)."""
    model = encoder.mtl_seq2seq
    inner = model.get_encoder()
    if inner is not encoder:  # cut out for an earlier task already
        shared = {id(t): t for t in [*encoder.parameters(), *encoder.buffers()]}
        return copy.deepcopy(model, memo={**shared, id(encoder): encoder})
    name = next(n for n, m in model.named_modules() if m is inner)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, TrunkRunsIt(inner.main_input_name))
    return model


class TrunkRunsIt(nn.Module):
    """Where a pretrained encoder-decoder's encoder was: generation asks for its input name only."""

    def __init__(self, main_input_name: str) -> None:
        super().__init__()
        self.main_input_name = main_input_name

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("this encoder is mtl's trunk: pass encoder_outputs (the trunk's hidden states)")


class Seq2SeqHead(nn.Module):
    """head(hidden, batch): teacher-forced logits; in evaluation (no gradient) also the generated text.

    `decoder` is a causal LM with cross-attention (BERT2BERT) or a pretrained encoder-decoder
    without its encoder (`pretrained`: T5, BART, Marian), fed the trunk's hidden states."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder: Any = decoder
        self.pretrained = bool(getattr(decoder.config, "is_encoder_decoder", False))
        self.num_beams, self.max_new_tokens, self.label_smoothing = 1, 64, 0.0
        self.tokenizer: Any = None  # MultiTaskModel.use_tokenizer: generation's start/end ids, decoding

    def configure(self, cfg: TaskConfig) -> None:
        """The task's generation and loss settings (model.build_model calls it with the task's config)."""
        self.num_beams, self.max_new_tokens, self.label_smoothing = (
            cfg.num_beams,
            cfg.max_new_tokens,
            cfg.label_smoothing,
        )

    def forward(self, hidden: torch.Tensor, batch: dict) -> dict:
        mask = batch["attention_mask"]
        if self.pretrained:
            logits = self.decoder(
                encoder_outputs=(hidden,), attention_mask=mask, decoder_input_ids=batch["decoder_input_ids"],
                decoder_attention_mask=batch["decoder_attention_mask"],
            ).logits  # fmt: skip
        else:
            logits = self.decoder(
                input_ids=batch["decoder_input_ids"], attention_mask=batch["decoder_attention_mask"],
                encoder_hidden_states=hidden, encoder_attention_mask=mask,
            ).logits  # fmt: skip
        out: dict[str, Any] = {"logits": logits, "label_smoothing": self.label_smoothing}
        if not self.training and not torch.is_grad_enabled():
            out.update(self.texts(self.generate(hidden, mask), batch))
        return out

    @torch.inference_mode()
    def generate(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Greedy or beam search with the key/value cache, batched; the generated ids without the start."""
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        tok = self.require_tokenizer()
        if self.pretrained:  # the model's own start, end and pad ids (its generation config)
            from transformers.modeling_outputs import BaseModelOutput

            ids = self.decoder.generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=hidden), attention_mask=mask,
                max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, do_sample=False, use_cache=True,
            )  # fmt: skip
            return ids[:, 1:]
        start = torch.full((hidden.shape[0], 1), tok.cls_token_id, dtype=torch.long, device=hidden.device)
        ids = self.decoder.generate(
            input_ids=start, encoder_hidden_states=hidden, encoder_attention_mask=mask,
            max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, do_sample=False, use_cache=True,
            eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id,
            cache=EncoderDecoderCache(DynamicCache(), DynamicCache()),
        )  # fmt: skip
        return ids[:, 1:]

    def texts(self, generated: torch.Tensor, batch: dict) -> dict[str, list[str]]:
        tok = self.require_tokenizer()
        references = batch["labels"].masked_fill(batch["labels"] == IGNORE, tok.pad_token_id)
        decode = lambda ids: tok.batch_decode(ids, skip_special_tokens=True)  # noqa: E731
        return {
            "hypotheses": decode(generated),
            "references": decode(references),
            "sources": decode(batch["input_ids"]),
        }

    def require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise RuntimeError("a seq2seq head generates only after MultiTaskModel.use_tokenizer(tokenizer)")
        return self.tokenizer


def build_head(hidden_size: int, labels: Any, encoder: Any, sharing: Any) -> nn.Module:
    if getattr(encoder, "mtl_seq2seq", None) is None:
        return Seq2SeqHead(warm_started_decoder(encoder))
    return Seq2SeqHead(pretrained_decoder(encoder))


def loss(output: dict, batch: dict) -> torch.Tensor:
    """Mean token cross-entropy of the teacher-forced target (label smoothing as configured)."""
    logits = output["logits"]
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), batch["labels"].reshape(-1), ignore_index=IGNORE,
        label_smoothing=output["label_smoothing"],
    )  # fmt: skip


def predict(output: dict, batch: dict) -> tuple[list, list]:
    return list(zip(output["hypotheses"], output["sources"], strict=True)), list(output["references"])


def metrics(preds: list, golds: list, labels: Any, loss: float) -> dict[str, float]:
    import sacrebleu

    hypotheses, sources = [h for h, _ in preds], [s for _, s in preds]
    return {
        "chrf": sacrebleu.corpus_chrf(hypotheses, [golds]).score / 100,
        "bleu": sacrebleu.corpus_bleu(hypotheses, [golds]).score / 100,
        "copy_chrf": sacrebleu.corpus_chrf(sources, [golds]).score / 100,
    }


def examples(preds: list, golds: list, n: int = 3) -> list[dict[str, str]]:
    """A few source / reference / hypothesis triples, for the log and metrics.jsonl."""
    return [{"source": s, "reference": r, "hypothesis": h} for (h, s), r in list(zip(preds, golds, strict=True))[:n]]
