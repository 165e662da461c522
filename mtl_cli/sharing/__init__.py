"""Sharing schemes: which encoder parameters the tasks share.

Each scheme is one module with a `build(encoder, tasks, cfg) -> Trunk` function and a flag

    FREEZES_ENCODER: bool      True: the shared encoder is frozen unless sharing.train_encoder
                               (validation then refuses loss weightings that act on its gradients)

A trunk is an nn.Module that turns a task's batch into hidden states for that task's head:

    trunk(task, **encoder_inputs) -> last hidden states [batch, tokens, hidden]
        encoder_inputs: input_ids or inputs_embeds, attention_mask, [token_type_ids]
    trunk.encoder                  the (base) transformers encoder: its config, input embeddings
    trunk.shared_parameters()      parameters every task uses (what gradient surgery operates on)
    trunk.task_parameters(task)    parameters only `task` uses

Checkpoints hold every trainable tensor (checkpoints.model_state): a frozen base is left out and
named in base_encoder.json instead. A trunk with `base_fingerprint` / `check_base(reference)`
(adapters) lets `mtl eval` verify that the base it rebuilt is the one the run trained on.

Adding a scheme: a module here, its name in SCHEMES, and conf/sharing/<name>.yaml. SCHEMES is
the one list of names: validation (mtl_cli.validation) reads it through `get`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from mtl_cli.errors import MtlError

SCHEMES = ("hard", "partial", "adapters", "mmoe")


def get(name: str) -> ModuleType:
    if name not in SCHEMES:
        raise MtlError(f"unknown sharing scheme {name!r} (`sharing=`); use one of {list(SCHEMES)}")
    return importlib.import_module(f"mtl_cli.sharing.{name}")
