"""Adapters: one LoRA adapter per task (peft) on one shared base encoder, frozen unless `train_encoder`.

The base encoder is wrapped once with `peft.get_peft_model`, then every further task gets its own
adapter with `add_adapter`; `trunk(task, ...)` activates that task's adapter and runs the encoder.
Adapter names are `task_<task name with non-word characters as _>` (peft keys them into module
names, which may not contain dots).

Checkpoints hold only what is trained (`trained_state_dict()`): every adapter, plus the base
encoder's weights when `train_encoder` is true. A frozen base is not saved; `base_reference()`
says where to reload it from, and `trunk.base_fingerprint` (taken when the trunk is built, before
any training) lets the loader check that the base it rebuilt is the one the adapters were trained
on (`check_base`).
"""

from __future__ import annotations

import hashlib
import re
import warnings
from typing import Any

import torch
from torch import nn

from mtl_cli.config import EncoderConfig, SharingConfig
from mtl_cli.encoders import resolve_source
from mtl_cli.errors import MtlError, first_line

# True: the shared encoder is frozen unless sharing.train_encoder (gradient surgery then has
# nothing to act on; read by mtl_cli.validation).
FREEZES_ENCODER = True

ADAPTER_PREFIX = "adapters."  # trained_state_dict keys: adapters.<adapter name>.<peft adapter key>
BASE_PREFIX = "base."  # and, with train_encoder, base.<the base model's own state_dict key>


def adapter_names(tasks: list[str]) -> dict[str, str]:
    """Task -> peft adapter name: a valid module name, distinct per task, stable for a given task list."""
    names: dict[str, str] = {}
    for task in tasks:
        base = "task_" + re.sub(r"\W", "_", task)
        name, n = base, 2
        while name in names.values():
            name, n = f"{base}_{n}", n + 1
        names[task] = name
    return names


def base_fingerprint(encoder: nn.Module) -> str:
    """sha256 of a (not yet adapted) encoder's weights: equal bases give equal fingerprints."""
    digest = hashlib.sha256()
    for key, value in sorted(encoder.state_dict().items()):
        digest.update(key.encode())
        digest.update(str((tuple(value.shape), str(value.dtype))).encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def base_reference(encoder_cfg: EncoderConfig, fingerprint: str | None = None) -> dict:
    """What a checkpoint needs to rebuild the frozen base encoder (JSON-serialisable).

    A pretrained base is reloaded with `load_encoder` from `source` (the local folder or offline
    package it was read from) or else `name_or_path` at `revision`. A random-init base
    (`random_init: true`, e.g. encoder=tiny) has no weights to reload: the caller must re-create it
    exactly as training did, `torch.manual_seed(seed)` right before `load_encoder(encoder_cfg)`
    (and the same `add_task_markers` call), or store the base's weights in the checkpoint. Pass the
    trunk's `base_fingerprint` so that `trunk.check_base(reference)` can verify the rebuilt base.
    """
    reference = {
        "name_or_path": encoder_cfg.name_or_path,
        "source": resolve_source(encoder_cfg),
        "revision": encoder_cfg.revision,
        "random_init": encoder_cfg.random_init,
        "config_overrides": dict(encoder_cfg.config_overrides),
        "reloadable": not encoder_cfg.random_init,
    }
    if encoder_cfg.random_init:
        reference["note"] = (
            "random-init base: re-create it with the training seed (torch.manual_seed(seed) before load_encoder) "
            "or store its weights; check it with trunk.check_base(reference)"
        )
    if fingerprint is not None:
        reference["fingerprint"] = fingerprint
    return reference


def _lora_config(cfg: SharingConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules) if cfg.target_modules else None,
        bias="none",
    )


class AdapterTrunk(nn.Module):
    def __init__(self, encoder: Any, tasks: list[str], cfg: SharingConfig):
        super().__init__()
        from peft import get_peft_model
        from peft.tuners.tuners_utils import BaseTunerLayer

        if not tasks:
            raise MtlError("sharing=adapters needs at least one task")
        if any(isinstance(m, BaseTunerLayer) for m in encoder.modules()):
            raise ValueError("this encoder already carries peft adapters; build each adapters trunk on a fresh encoder")
        self.train_encoder = cfg.train_encoder
        self.adapter_names = adapter_names(tasks)
        self.base_fingerprint = base_fingerprint(encoder)
        names = list(self.adapter_names.values())
        try:
            with warnings.catch_warnings():
                # peft asks transformers 5 for a deprecated attribute; nothing a user can change.
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
                # Wraps `encoder` in place: the targeted Linear layers become lora.Linear (base_layer + adapters).
                self.peft = get_peft_model(encoder, _lora_config(cfg), adapter_name=names[0])
                for name in names[1:]:
                    self.peft.add_adapter(name, _lora_config(cfg))
        except ValueError as err:
            first = first_line(err)
            raise MtlError(
                f"cannot put LoRA adapters on {type(encoder).__name__} ({first}); "
                "set sharing.target_modules to its attention projection names, e.g. [query,value]"
            ) from None
        self._tuner_layers = [m for m in self.peft.modules() if isinstance(m, BaseTunerLayer)]
        self._params = {name: self._adapter_params(name) for name in names}
        # peft leaves only the active adapter trainable and freezes the base; here every adapter trains, and the
        # base trains too with train_encoder.
        for params in self._params.values():
            for p in params:
                p.requires_grad_(True)
        self._adapter_ids = {id(p) for params in self._params.values() for p in params}
        for p in self._base_parameters():
            p.requires_grad_(cfg.train_encoder)
        self._active: str | None = None
        self._activate(names[0])

    @property
    def encoder(self) -> Any:
        """The base transformers model (config, input embeddings); its adapted layers run the active adapter."""
        return self.peft.get_base_model()

    def _adapter_params(self, name: str) -> list[nn.Parameter]:
        params: list[nn.Parameter] = []
        for layer in self._tuner_layers:
            for attr in layer.adapter_layer_names:
                container = getattr(layer, attr)
                if name in container:
                    item = container[name]
                    params.extend(item.parameters() if isinstance(item, nn.Module) else [item])
        if not params:
            raise RuntimeError(f"peft created no parameters for adapter {name!r}")
        return params

    def _activate(self, name: str) -> None:
        """Make `name` the adapter the forward pass uses; a no-op when it already is.

        This is what `PeftModel.set_adapter` does, minus its walk over every module of the encoder (the adapted
        layers are listed once, at build time). peft also sets requires_grad=False on every other adapter, which
        would silently drop the gradients of a task whose forward pass ran before the switch but whose backward runs
        after it (a step that sums or projects several tasks' losses), so every adapter is made trainable again.
        """
        if name == self._active:
            return
        for layer in self._tuner_layers:
            layer.set_adapter(name)
        self.peft.base_model.active_adapter = name
        for params in self._params.values():
            for p in params:
                p.requires_grad_(True)
        self._active = name

    def forward(self, task: str, **inputs: torch.Tensor) -> torch.Tensor:
        try:
            name = self.adapter_names[task]
        except KeyError:
            raise MtlError(f"no adapter for task {task!r}; the trunk has {list(self.adapter_names)}") from None
        self._activate(name)
        return self.peft(**inputs).last_hidden_state

    def _base_parameters(self) -> list[nn.Parameter]:
        # Looked up each time: resize_token_embeddings replaces the embedding's parameter.
        return [p for p in self.peft.parameters() if id(p) not in self._adapter_ids]

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self._base_parameters() if p.requires_grad]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return list(self._params[self.adapter_names[task]])

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """Every adapter's weights (peft's per-adapter state dicts), plus the base's weights with train_encoder.

        Like `state_dict()`, the values are the live tensors (detached): clone them to keep a snapshot in memory.
        """
        from peft import get_peft_model_state_dict
        from peft.utils.save_and_load import get_base_model_state_dict

        state: dict[str, torch.Tensor] = {}
        for name in self.adapter_names.values():
            # save_embedding_layers=False: the default "auto" may look the base up on the Hub to compare vocab sizes.
            adapter = get_peft_model_state_dict(self.peft, adapter_name=name, save_embedding_layers=False)
            state.update({f"{ADAPTER_PREFIX}{name}.{k}": v.detach() for k, v in adapter.items()})
        if self.train_encoder:
            base = get_base_model_state_dict(self.peft)
            state.update({f"{BASE_PREFIX}{k}": v.detach() for k, v in base.items()})
        return state

    def load_trained_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore `trained_state_dict()` output into a trunk built on the same base, tasks and settings."""
        from peft import set_peft_model_state_dict
        from peft.utils.save_and_load import set_base_model_state_dict

        expected = {k: tuple(v.shape) for k, v in self.trained_state_dict().items()}
        self._check_keys(expected, state)
        for name in self.adapter_names.values():
            prefix = f"{ADAPTER_PREFIX}{name}."
            adapter = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            result = set_peft_model_state_dict(self.peft, adapter, adapter_name=name)
            unexpected = list(getattr(result, "unexpected_keys", []))
            if unexpected:
                raise MtlError(f"checkpoint adapter {name!r} has weights peft could not place, e.g. {unexpected[0]}")
        if self.train_encoder:
            base = {k[len(BASE_PREFIX) :]: v for k, v in state.items() if k.startswith(BASE_PREFIX)}
            set_base_model_state_dict(self.peft, base, strict=True)

    def _check_keys(self, expected: dict[str, tuple], state: dict[str, torch.Tensor]) -> None:
        has_base = any(k.startswith(BASE_PREFIX) for k in state)
        if has_base and not self.train_encoder:
            raise MtlError(
                "the checkpoint holds the base encoder's weights (trained with sharing.train_encoder=true) "
                "but this trunk has a frozen base: build it with sharing.train_encoder=true"
            )
        if self.train_encoder and not has_base and state:
            raise MtlError(
                "the checkpoint holds no base encoder weights (trained with sharing.train_encoder=false) "
                "but this trunk trains its base: build it with sharing.train_encoder=false"
            )
        saved = {k.split(".")[1] for k in state if k.startswith(ADAPTER_PREFIX)}
        missing_adapters = sorted(set(self.adapter_names.values()) - saved)
        if missing_adapters:
            raise MtlError(
                f"the checkpoint has no adapter for {missing_adapters} (it has {sorted(saved)}): "
                "load it into a trunk built for the tasks it was trained on"
            )
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        if missing or unexpected:
            what = f"{len(missing)} weight(s) missing, e.g. {missing[0]}" if missing else ""
            if unexpected:
                what += ("; " if what else "") + f"{len(unexpected)} unexpected, e.g. {unexpected[0]}"
            raise MtlError(
                f"the checkpoint's adapters do not fit this trunk ({what}): "
                "check sharing.target_modules, the encoder and the tasks it was trained with"
            )
        for key, shape in expected.items():
            got = tuple(state[key].shape)
            if got != shape:
                raise MtlError(
                    f"checkpoint weight {key} has shape {list(got)} but the trunk expects {list(shape)}: "
                    "it was made with another sharing.lora_r or encoder; build the trunk with the checkpoint's settings"
                )

    def check_base(self, reference: dict) -> None:
        """Raise MtlError when `reference` (from base_reference) has a fingerprint and this trunk's base differs."""
        expected = reference.get("fingerprint")
        if expected is not None and expected != self.base_fingerprint:
            how = (
                "re-create it with the training seed (torch.manual_seed(seed) right before load_encoder)"
                if reference.get("random_init")
                else f"load {reference.get('source') or reference.get('name_or_path')} at revision {reference.get('revision')}"
            )
            raise MtlError(f"the base encoder differs from the one the adapters were trained on: {how}")


def build(encoder: Any, tasks: list[str], cfg: SharingConfig) -> AdapterTrunk:
    return AdapterTrunk(encoder, tasks, cfg)
