"""sharing=adapters: one peft LoRA adapter per task on a shared (frozen) base encoder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from mtl_cli import sharing
from mtl_cli.compose import compose_typed
from mtl_cli.errors import MtlError
from mtl_cli.sharing.adapters import adapter_names, base_reference
from tests.conftest import tiny_encoder

TASKS = ["a", "b"]


@pytest.fixture(scope="module")
def encoder_cfg():
    return compose_typed(["encoder=tiny"]).encoder


@pytest.fixture(scope="module")
def sharing_cfg():
    return compose_typed(["sharing=adapters"]).sharing


def fresh_encoder(encoder_cfg, seed: int = 0):
    """The tiny random-init encoder (`encoder_cfg`'s); the same seed gives the same base weights."""
    return tiny_encoder(seed)[0]


def build(encoder_cfg, sharing_cfg, seed: int = 0, tasks=TASKS, **changes):
    cfg = dataclasses.replace(sharing_cfg, **changes)
    return sharing.get("adapters").build(fresh_encoder(encoder_cfg, seed), list(tasks), cfg)


def batch(seed: int = 7) -> dict:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 5000, (3, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def perturb(params, seed: int = 3) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(0.5 * torch.randn(p.shape, generator=gen))


def test_yaml_composes(sharing_cfg) -> None:
    assert sharing_cfg.name == "adapters" and sharing_cfg.adapter == "lora"
    assert (sharing_cfg.lora_r, sharing_cfg.lora_alpha, sharing_cfg.lora_dropout) == (8, 16, 0.1)
    assert sharing_cfg.target_modules is None and sharing_cfg.train_encoder is False
    assert compose_typed(["sharing=adapters", "sharing.lora_r=4"]).sharing.lora_r == 4


def test_adapter_names_are_valid_and_distinct() -> None:
    names = adapter_names(["fdu/books", "fdu_books", "a.b", "a"])
    assert len(set(names.values())) == 4
    assert all("." not in n and "/" not in n for n in names.values())
    assert names["a"] == "task_a"


def test_each_task_has_its_own_adapter_and_the_base_is_frozen(encoder_cfg, sharing_cfg) -> None:
    trunk = build(encoder_cfg, sharing_cfg)
    a, b = trunk.task_parameters("a"), trunk.task_parameters("b")
    assert a and len(a) == len(b)
    assert {id(p) for p in a}.isdisjoint({id(p) for p in b})
    assert all(p.requires_grad for p in [*a, *b])
    assert trunk.shared_parameters() == []
    adapter_ids = {id(p) for p in [*a, *b]}
    base = [p for p in trunk.parameters() if id(p) not in adapter_ids]
    assert base and not any(p.requires_grad for p in base)
    # LoRA A is (r, in), B is (out, r); r from the config.
    assert {min(p.shape) for p in a} == {sharing_cfg.lora_r}
    # The base model is still reachable as trunk.encoder.
    assert trunk.encoder.config.hidden_size == 32
    assert trunk.encoder.get_input_embeddings().weight.shape[1] == 32


def test_train_encoder_makes_the_base_shared_and_trainable(encoder_cfg, sharing_cfg) -> None:
    trunk = build(encoder_cfg, sharing_cfg, train_encoder=True)
    shared = trunk.shared_parameters()
    assert shared and all(p.requires_grad for p in shared)
    adapter_ids = {id(p) for t in TASKS for p in trunk.task_parameters(t)}
    assert {id(p) for p in shared} == {id(p) for p in trunk.parameters()} - adapter_ids


def test_outputs_equal_the_base_at_init_and_differ_once_adapters_move(encoder_cfg, sharing_cfg) -> None:
    base = fresh_encoder(encoder_cfg).eval()
    inputs = batch()
    with torch.no_grad():
        reference = base(**inputs).last_hidden_state
    trunk = build(encoder_cfg, sharing_cfg).eval()
    with torch.no_grad():
        for task in TASKS:  # LoRA B starts at zero: every adapter is the identity
            assert torch.allclose(trunk(task, **inputs), reference, atol=1e-6)
        perturb([*trunk.task_parameters("a"), *trunk.task_parameters("b")])
        out_a, out_b = trunk("a", **inputs), trunk("b", **inputs)
        assert out_a.shape == reference.shape
        assert not torch.allclose(out_a, out_b, atol=1e-3)
        assert not torch.allclose(out_a, reference, atol=1e-3)
        # switching back and forth gives the same outputs again
        assert torch.allclose(trunk("a", **inputs), out_a, atol=1e-6)


def test_a_loss_on_one_task_trains_only_its_adapter(encoder_cfg, sharing_cfg) -> None:
    trunk = build(encoder_cfg, sharing_cfg)
    perturb([*trunk.task_parameters("a"), *trunk.task_parameters("b")])
    trunk("b", **batch())  # b's adapter was active last; a's forward must switch
    trunk("a", **batch()).pow(2).mean().backward()
    assert all(p.grad is not None for p in trunk.task_parameters("a"))
    assert any(p.grad.abs().sum() > 0 for p in trunk.task_parameters("a"))
    assert all(p.grad is None or not p.grad.any() for p in trunk.task_parameters("b"))
    adapter_ids = {id(p) for t in TASKS for p in trunk.task_parameters(t)}
    assert all(p.grad is None for p in trunk.parameters() if id(p) not in adapter_ids)


def test_several_tasks_forward_before_one_backward(encoder_cfg, sharing_cfg) -> None:
    """peft's set_adapter freezes inactive adapters; a's gradients must survive the switch to b."""
    trunk = build(encoder_cfg, sharing_cfg)
    perturb([*trunk.task_parameters("a"), *trunk.task_parameters("b")])
    loss_a = trunk("a", **batch(1)).pow(2).mean()
    trunk("a", **batch(1)).pow(2).mean().backward()
    alone = [p.grad.clone() for p in trunk.task_parameters("a")]
    trunk.zero_grad(set_to_none=True)
    loss_b = trunk("b", **batch(2)).pow(2).mean()
    (loss_a + loss_b).backward()
    assert all(p.grad is not None for t in TASKS for p in trunk.task_parameters(t))
    for g, p in zip(alone, trunk.task_parameters("a"), strict=True):
        assert torch.allclose(g, p.grad, atol=1e-6)
    # torch.autograd.grad on a task's adapter (as gradient-surgery schemes do) also works after a switch.
    grads = torch.autograd.grad(trunk("a", **batch(1)).pow(2).mean(), trunk.task_parameters("a"))
    trunk("b", **batch(2))
    assert len(grads) == len(alone)


def test_inputs_embeds_give_the_same_hidden_states(encoder_cfg, sharing_cfg) -> None:
    trunk = build(encoder_cfg, sharing_cfg).eval()
    perturb(trunk.task_parameters("a"))
    inputs = batch()
    with torch.no_grad():
        embeds = trunk.encoder.get_input_embeddings()(inputs["input_ids"])
        by_ids = trunk("a", **inputs)
        by_embeds = trunk("a", inputs_embeds=embeds, attention_mask=inputs["attention_mask"])
    assert torch.allclose(by_ids, by_embeds, atol=1e-6)


def test_resizing_the_base_embeddings_still_runs(encoder_cfg, sharing_cfg) -> None:
    trunk = build(encoder_cfg, sharing_cfg)
    rows = trunk.encoder.get_input_embeddings().weight.shape[0]
    trunk.encoder.resize_token_embeddings(rows + 2)
    assert trunk.shared_parameters() == []  # the new embedding matrix stays frozen
    ids = torch.full((1, 4), rows + 1)
    assert trunk("b", input_ids=ids, attention_mask=torch.ones_like(ids)).shape == (1, 4, 32)


def test_trained_state_dict_holds_only_the_adapters(encoder_cfg, sharing_cfg) -> None:
    trunk = build(encoder_cfg, sharing_cfg)
    state = trunk.trained_state_dict()
    per_adapter = trunk.task_parameters("a")
    assert len(state) == len(TASKS) * len(per_adapter)
    assert sum(v.numel() for v in state.values()) == len(TASKS) * sum(p.numel() for p in per_adapter)
    assert all(k.startswith("adapters.task_") and ".lora_" in k for k in state)
    full = build(encoder_cfg, sharing_cfg, train_encoder=True).trained_state_dict()
    base_keys = [k for k in full if k.startswith("base.")]
    assert len(full) == len(state) + len(base_keys)
    # The base's own (transformers) keys, without peft's wrapping.
    assert "base.embeddings.word_embeddings.weight" in full
    assert not any("lora" in k or "base_layer" in k for k in base_keys)


@pytest.mark.parametrize("train_encoder", [False, True])
def test_round_trip_into_a_fresh_trunk(encoder_cfg, sharing_cfg, train_encoder: bool, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    trunk_a = build(encoder_cfg, sharing_cfg, train_encoder=train_encoder).eval()
    perturb([*trunk_a.task_parameters("a"), *trunk_a.task_parameters("b")])
    if train_encoder:
        perturb(trunk_a.shared_parameters()[:3], seed=9)
    save_file({k: v.contiguous() for k, v in trunk_a.trained_state_dict().items()}, tmp_path / "trunk.safetensors")
    reference = base_reference(encoder_cfg, trunk_a.base_fingerprint)
    (tmp_path / "base.json").write_text(json.dumps(reference))

    trunk_b = build(encoder_cfg, sharing_cfg, train_encoder=train_encoder).eval()  # same seed: identical base
    trunk_b.check_base(json.loads((tmp_path / "base.json").read_text()))
    trunk_b.load_trained_state_dict(load_file(tmp_path / "trunk.safetensors"))
    inputs = batch()
    with torch.no_grad():
        for task in TASKS:
            assert torch.allclose(trunk_a(task, **inputs), trunk_b(task, **inputs), atol=1e-6)
        fresh = build(encoder_cfg, sharing_cfg, train_encoder=train_encoder).eval()
        assert not torch.allclose(trunk_a("a", **inputs), fresh("a", **inputs), atol=1e-3)


def test_load_errors(encoder_cfg, sharing_cfg) -> None:
    trunk = build(encoder_cfg, sharing_cfg)
    state = trunk.trained_state_dict()
    other_r = build(encoder_cfg, sharing_cfg, lora_r=4)
    with pytest.raises(MtlError, match="lora_r"):
        other_r.load_trained_state_dict(state)
    first = next(iter(state))
    with pytest.raises(MtlError, match="1 weight\\(s\\) missing"):
        trunk.load_trained_state_dict({k: v for k, v in state.items() if k != first})
    with pytest.raises(MtlError, match="1 unexpected"):
        trunk.load_trained_state_dict({**state, "adapters.task_a.base_model.model.extra.lora_A.weight": state[first]})
    with pytest.raises(MtlError, match="no adapter for \\['task_c'\\]"):
        build(encoder_cfg, sharing_cfg, tasks=["a", "b", "c"]).load_trained_state_dict(state)
    with pytest.raises(MtlError, match="train_encoder=true"):
        trunk.load_trained_state_dict(build(encoder_cfg, sharing_cfg, train_encoder=True).trained_state_dict())
    with pytest.raises(MtlError, match="train_encoder=false"):
        build(encoder_cfg, sharing_cfg, train_encoder=True).load_trained_state_dict(state)
    with pytest.raises(MtlError, match="target_modules"):
        build(encoder_cfg, sharing_cfg, target_modules=["query", "key"]).load_trained_state_dict(state)
    for message in ("lora_r", "missing"):  # each message is one line
        try:
            other_r.load_trained_state_dict(state) if message == "lora_r" else trunk.load_trained_state_dict({})
        except MtlError as err:
            assert "\n" not in str(err)


def test_check_base_catches_a_different_base(encoder_cfg, sharing_cfg) -> None:
    trunk = build(encoder_cfg, sharing_cfg, seed=0)
    reference = base_reference(encoder_cfg, trunk.base_fingerprint)
    build(encoder_cfg, sharing_cfg, seed=0).check_base(reference)
    with pytest.raises(MtlError, match="manual_seed"):
        build(encoder_cfg, sharing_cfg, seed=1).check_base(reference)


def test_base_reference(encoder_cfg) -> None:
    ref = base_reference(encoder_cfg)
    assert ref["name_or_path"] == encoder_cfg.name_or_path
    assert ref["random_init"] is True and ref["reloadable"] is False and "seed" in ref["note"]
    assert Path(ref["source"]).is_dir()  # the offline package's model folder
    assert "fingerprint" not in ref and json.loads(json.dumps(ref)) == ref


def test_bad_target_modules_is_a_one_line_error(encoder_cfg, sharing_cfg) -> None:
    with pytest.raises(MtlError, match="sharing.target_modules") as err:
        build(encoder_cfg, sharing_cfg, target_modules=["no_such_layer"])
    assert "\n" not in str(err.value)


def test_unknown_task(encoder_cfg, sharing_cfg) -> None:
    with pytest.raises(MtlError, match="no adapter for task 'c'"):
        build(encoder_cfg, sharing_cfg)("c", **batch())
