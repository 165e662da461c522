"""Partial sharing: the embeddings and the bottom `sharing.shared_layers` layers are shared, each task
gets its own copy of the layers above (initialised from the pretrained weights).

The encoder keeps only its shared layers (the original top layers are dropped after being copied),
so `trunk.encoder.parameters()` are exactly the shared ones and no dead weights reach a checkpoint.
Its config still says the full depth: a model rebuilt from a checkpoint's config is cut the same
way by `build`, so the saved weights load unchanged.

The forward repeats what a BERT-like model does itself (transformers 5): embeddings, the attention
mask from `masking_utils.create_bidirectional_mask` (the call `BertModel` makes for an encoder), then
each layer as `layer(hidden_states, attention_mask)`. `build` checks that this reproduces the
encoder's own output before cutting it, so an architecture whose layers need more (DeBERTa's
relative positions, ELECTRA's embedding projection, a causal decoder) fails there with a clear
message instead of training on wrong hidden states.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from mtl_cli.config import SharingConfig
from mtl_cli.errors import MtlError

# The shared encoder is trained (read by mtl_cli.validation; see __init__).
FREEZES_ENCODER = False

# Where transformers models keep their list of layers: BERT, RoBERTa, XLM-R, MiniLM, ELECTRA,
# DeBERTa (encoder.layer); DistilBERT (transformer.layer); others (layers, h).
LAYER_PATHS = ("encoder.layer", "transformer.layer", "encoder.layers", "layers", "h", "transformer.h")


def get_path(module: Any, path: str) -> Any:
    for part in path.split("."):
        module = getattr(module, part, None)
    return module


def find_layer_path(encoder: Any) -> str:
    for path in LAYER_PATHS:
        layers = get_path(encoder, path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return path
    raise MtlError(
        f"sharing=partial cannot find the layer list of {type(encoder).__name__} (looked for {', '.join(LAYER_PATHS)}); "
        "use sharing=hard or sharing=adapters with this encoder"
    )


def bidirectional_mask(encoder: Any, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> Any:
    """The mask in the form the model's attention implementation expects (None when nothing is masked)."""
    try:
        from transformers.masking_utils import create_bidirectional_mask
    except ImportError:
        raise MtlError("sharing=partial needs transformers>=5 (masking_utils); upgrade transformers") from None
    return create_bidirectional_mask(config=encoder.config, inputs_embeds=hidden, attention_mask=attention_mask)


def run_layers(layers: Any, hidden: torch.Tensor, mask: Any) -> torch.Tensor:
    for layer in layers:
        hidden = layer(hidden, mask)  # transformers 5: BertLayer.forward(hidden_states, attention_mask) -> Tensor
    return hidden


class PartialTrunk(nn.Module):
    def __init__(self, encoder: Any, tasks: list[str], shared_layers: int):
        super().__init__()
        self.layer_path = find_layer_path(encoder)
        layers = get_path(encoder, self.layer_path)
        total = len(layers)
        if not 0 <= shared_layers <= total:
            raise MtlError(
                f"`sharing.shared_layers={shared_layers}` but {type(encoder).__name__} has {total} layers; "
                f"use 0 (only the embeddings shared) to {total} (everything shared, as sharing=hard)"
            )
        if getattr(encoder, "embeddings", None) is None:
            raise MtlError(
                f"sharing=partial needs an encoder with an `embeddings` module; {type(encoder).__name__} has none "
                "(use sharing=hard or sharing=adapters)"
            )
        self.encoder = encoder
        self.num_layers = total
        self.shared_layers = shared_layers
        self.private = nn.ModuleDict(
            {task: nn.ModuleList(copy.deepcopy(layer) for layer in layers[shared_layers:]) for task in tasks}
        )
        check_same_output(self, layers)
        del layers[shared_layers:]  # the originals above K are now only in the tasks' copies

    def forward(
        self,
        task: str,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.run(self.private[task], input_ids, attention_mask, token_type_ids, inputs_embeds)

    def run(
        self,
        private: Any,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        shared: Any = None,
    ) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        kwargs = {"input_ids": input_ids, "inputs_embeds": inputs_embeds}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.encoder.embeddings(**kwargs)
        mask = bidirectional_mask(self.encoder, hidden, attention_mask)
        if shared is None:
            shared = get_path(self.encoder, self.layer_path)  # holds only the shared layers once built
        hidden = run_layers(shared, hidden, mask)
        return run_layers(private, hidden, mask)

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return [p for p in self.private[task].parameters() if p.requires_grad]


@torch.no_grad()
def check_same_output(trunk: PartialTrunk, layers: nn.ModuleList) -> None:
    """Before the encoder is cut: its own forward and ours must agree on a padded dummy batch."""
    encoder = trunk.encoder
    was_training = encoder.training
    encoder.eval()
    try:
        device = next(encoder.parameters()).device
        vocab = int(getattr(encoder.config, "vocab_size", 100) or 100)
        ids = (torch.arange(2 * 6, device=device) % max(vocab - 1, 1) + 1).view(2, 6)
        mask = torch.ones_like(ids)
        mask[1, 4:] = 0
        expected = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        try:
            got = trunk.run(layers[trunk.shared_layers :], ids, mask, None, None, shared=layers[: trunk.shared_layers])
            same = got.shape == expected.shape and torch.allclose(got, expected, atol=1e-4, rtol=1e-3)
        except (TypeError, ValueError, RuntimeError, AttributeError, IndexError):
            same = False
    finally:
        encoder.train(was_training)
    if not same:
        what = (
            "is a decoder (causal attention)"
            if getattr(encoder.config, "is_decoder", False)
            else "computes its layers differently"
        )
        raise MtlError(
            f"sharing=partial supports BERT-like encoders (embeddings, then layers called as layer(hidden, mask)); "
            f"{type(encoder).__name__} {what}. Use sharing=hard or sharing=adapters"
        )


def build(encoder: Any, tasks: list[str], cfg: SharingConfig) -> PartialTrunk:
    return PartialTrunk(encoder, list(tasks), cfg.shared_layers)
