"""Partial sharing (bottom layers shared, top layers per task) and MMoE (experts + a gate per task)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from mtl_cli import sharing
from mtl_cli.compose import compose_typed
from mtl_cli.config import SharingConfig
from mtl_cli.errors import MtlError
from tests.conftest import tiny_encoder

TEXTS = ["the plot was thin but the acting kept me watching", "cheap plastic", "a wonderful read"]


@pytest.fixture
def encoder() -> nn.Module:
    """A fresh copy per test: `partial` cuts the encoder it is given."""
    return tiny_encoder()[0]


@pytest.fixture(scope="module")
def batch() -> dict:
    """Padded (rows of different lengths), with token_type_ids."""
    out = tiny_encoder()[1](TEXTS, padding=True, return_tensors="pt")
    assert (out["attention_mask"] == 0).any()
    return dict(out)


def scheme(name: str, *overrides: str) -> SharingConfig:
    return compose_typed([f"sharing={name}", *overrides]).sharing


def partial(encoder: nn.Module, k: int, tasks=("a", "b")):
    return sharing.get("partial").build(encoder, list(tasks), scheme("partial", f"sharing.shared_layers={k}"))


def ids(params) -> set[int]:
    return {id(p) for p in params}


def numel(params) -> int:
    return sum(p.numel() for p in params)


# --- configs -------------------------------------------------------------------------------------


def test_both_yamls_compose():
    p = scheme("partial")
    assert (p.name, p.pooling, p.head_dropout, p.shared_layers) == ("partial", "mean", 0.1, 4)
    m = scheme("mmoe", "sharing.num_experts=3", "sharing.expert_hidden=16")
    assert (m.name, m.pooling, m.head_dropout, m.num_experts, m.expert_hidden) == ("mmoe", "mean", 0.1, 3, 16)
    assert scheme("mmoe").num_experts == 4 and scheme("mmoe").expert_hidden == 256


# --- partial -------------------------------------------------------------------------------------


def test_partial_shares_embeddings_and_bottom_layers_exactly(encoder):
    layers = encoder.encoder.layer
    assert len(layers) == 2
    embeddings, layer0, layer1 = (ids(m.parameters()) for m in (encoder.embeddings, layers[0], layers[1]))
    layer1_size = numel(layers[1].parameters())

    trunk = partial(encoder, 1)
    shared = trunk.shared_parameters()
    a, b = trunk.task_parameters("a"), trunk.task_parameters("b")

    assert ids(shared) == embeddings | layer0
    assert len(shared) == len(embeddings | layer0)
    assert numel(shared) == numel(encoder.embeddings.parameters()) + numel(layers[0].parameters())
    # One copy of layer 1 per task: same size, its own tensors, none of them the original's.
    assert numel(a) == numel(b) == layer1_size
    assert len(a) == len(b) == len(layer1)
    assert not ids(a) & ids(b) and not (ids(a) | ids(b)) & (ids(shared) | layer1)
    assert not {p.data_ptr() for p in a} & {p.data_ptr() for p in b}
    # Nothing else: the original layer 1 left the encoder (no dead weights in a checkpoint).
    assert ids(trunk.parameters()) == ids(shared) | ids(a) | ids(b)
    assert len(trunk.encoder.encoder.layer) == 1
    assert trunk.encoder is encoder
    # The copies start from the pretrained (here: initial) weights.
    assert torch.equal(trunk.private["a"][0].output.dense.weight, trunk.private["b"][0].output.dense.weight)


def test_partial_gradient_reaches_shared_layers_and_own_copy_only(encoder, batch):
    trunk = partial(encoder, 1)
    trunk("a", **batch).pow(2).mean().backward()
    for p in [*trunk.encoder.encoder.layer[0].parameters(), *trunk.encoder.embeddings.word_embeddings.parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trunk.task_parameters("a"))
    assert all(p.grad is None for p in trunk.task_parameters("b"))


def test_partial_all_layers_shared_is_hard_sharing(encoder, batch):
    reference = copy.deepcopy(encoder).eval()
    all_params = ids(encoder.parameters())
    trunk = partial(encoder, 2).eval()
    assert ids(trunk.shared_parameters()) == all_params
    assert trunk.task_parameters("a") == [] and trunk.task_parameters("b") == []
    with torch.no_grad():
        expected = reference(**batch).last_hidden_state
        for task in ("a", "b"):
            torch.testing.assert_close(trunk(task, **batch), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("k", [0, 1])
def test_partial_equals_plain_encoder_at_init(encoder, batch, k):
    reference = copy.deepcopy(encoder).eval()
    trunk = partial(encoder, k).eval()
    with torch.no_grad():
        expected = reference(**batch).last_hidden_state
        without_types = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        for task in ("a", "b"):
            torch.testing.assert_close(trunk(task, **batch), expected, atol=1e-5, rtol=0)
            got = trunk(task, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            torch.testing.assert_close(got, without_types.last_hidden_state, atol=1e-5, rtol=0)


def test_partial_only_embeddings_shared(encoder):
    embeddings = ids(encoder.embeddings.parameters())
    trunk = partial(encoder, 0)
    assert ids(trunk.shared_parameters()) == embeddings
    assert len(trunk.private["a"]) == len(trunk.private["b"]) == 2


def test_partial_accepts_inputs_embeds(encoder, batch):
    trunk = partial(encoder, 1).eval()
    embeds = trunk.encoder.get_input_embeddings()(batch["input_ids"])
    with torch.no_grad():
        from_ids = trunk("a", **batch)
        from_embeds = trunk(
            "a", inputs_embeds=embeds, attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"]
        )
    torch.testing.assert_close(from_embeds, from_ids, atol=1e-5, rtol=0)


def test_partial_weights_reload_into_a_rebuilt_encoder(encoder, batch):
    """As `mtl eval` does: the full-depth architecture from the config, cut again by `build`."""
    from transformers import AutoModel

    from mtl_cli.encoders import drop_pooler

    trunk = partial(encoder, 1).eval()
    with torch.no_grad():
        trunk.private["b"][0].output.dense.bias.add_(0.5)  # make the tasks' copies differ
    rebuilt = partial(drop_pooler(AutoModel.from_config(encoder.config)), 1).eval()
    rebuilt.load_state_dict(trunk.state_dict(), strict=True)
    with torch.no_grad():
        for task in ("a", "b"):
            torch.testing.assert_close(rebuilt(task, **batch), trunk(task, **batch), atol=1e-6, rtol=0)
        assert not torch.allclose(trunk("a", **batch), trunk("b", **batch))


def test_partial_bad_shared_layers(encoder):
    with pytest.raises(MtlError, match=r"sharing\.shared_layers=3.*has 2 layers"):
        partial(encoder, 3)
    with pytest.raises(MtlError, match=r"sharing\.shared_layers"):
        sharing.get("partial").build(encoder, ["a"], SharingConfig(name="partial", shared_layers=-1))
    with pytest.raises(MtlError, match=r"sharing\.shared_layers"):
        compose_typed(["sharing=partial", "sharing.shared_layers=-1"])


def test_partial_unknown_architecture(encoder):
    class NoLayers(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = encoder.config
            self.embeddings = encoder.embeddings

    with pytest.raises(MtlError, match="cannot find the layer list of NoLayers"):
        partial(NoLayers(), 1)


def test_partial_refuses_a_model_whose_layers_it_cannot_run():
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=100,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        is_decoder=True,
    )
    with pytest.raises(MtlError, match="partial supports BERT-like encoders.*decoder"):
        partial(BertModel(config, add_pooling_layer=False), 1)


# --- mmoe ----------------------------------------------------------------------------------------


def mmoe(encoder: nn.Module, tasks=("a", "b"), experts: int = 3):
    cfg = scheme("mmoe", f"sharing.num_experts={experts}", "sharing.expert_hidden=16")
    return sharing.get("mmoe").build(encoder, list(tasks), cfg)


def test_mmoe_shapes_and_gates(encoder, batch):
    trunk = mmoe(encoder)
    out = trunk("a", **batch)
    assert out.shape == (*batch["input_ids"].shape, encoder.config.hidden_size)
    gates = trunk.last_gates
    assert list(gates) == ["a"] and len(gates["a"]) == 3
    assert math.isclose(sum(gates["a"]), 1.0, abs_tol=1e-5) and all(0 < g < 1 for g in gates["a"])
    assert len(trunk.experts) == 3
    expert = trunk.experts[0]
    assert (expert[0].in_features, expert[0].out_features, expert[2].out_features) == (32, 16, 32)
    assert isinstance(expert[1], nn.GELU)


def test_mmoe_is_residual_mixture_of_experts(encoder, batch):
    trunk = mmoe(encoder).eval()
    with torch.no_grad():
        hidden = trunk.encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        gates = torch.softmax(trunk.gates["b"]((hidden * mask).sum(1) / mask.sum(1)), -1)
        expected = hidden + sum(gates[:, k, None, None] * e(hidden) for k, e in enumerate(trunk.experts))
        torch.testing.assert_close(trunk("b", **batch), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.tensor(trunk.last_gates["b"]), gates.mean(0), atol=1e-6, rtol=0)


def test_mmoe_parameters_and_gradient_flow(encoder, batch):
    encoder_params = ids(encoder.parameters())
    trunk = mmoe(encoder)
    experts = ids(trunk.experts.parameters())
    assert ids(trunk.shared_parameters()) == encoder_params | experts
    assert ids(trunk.task_parameters("a")) == ids(trunk.gates["a"].parameters())
    assert ids(trunk.parameters()) == encoder_params | experts | ids(trunk.gates.parameters())

    trunk("a", **batch).pow(2).mean().backward()
    for p in [*trunk.experts.parameters(), *trunk.gates["a"].parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert encoder.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in trunk.gates["b"].parameters())


def test_mmoe_gate_summary_accumulates_then_resets(encoder, batch):
    trunk = mmoe(encoder).eval()
    seen = []
    with torch.no_grad():
        for rows in (slice(0, 3), slice(0, 1)):
            trunk("a", **{k: v[rows] for k, v in batch.items()})
            seen.append((torch.tensor(trunk.last_gates["a"]), rows.stop - rows.start))
        trunk("b", **batch)
    summary = trunk.gate_summary()
    assert set(summary) == {"a", "b"}
    expected_a = sum(g * n for g, n in seen) / sum(n for _, n in seen)
    torch.testing.assert_close(torch.tensor(summary["a"]), expected_a, atol=1e-6, rtol=0)
    assert summary["b"] == pytest.approx(trunk.last_gates["b"], abs=1e-6)
    assert all(math.isclose(sum(v), 1.0, abs_tol=1e-5) for v in summary.values())
    assert trunk.gate_summary() == {}
    assert set(trunk.last_gates) == {"a", "b"}  # the last batch's gates stay for logging


def test_mmoe_accepts_inputs_embeds(encoder, batch):
    trunk = mmoe(encoder).eval()
    embeds = encoder.get_input_embeddings()(batch["input_ids"])
    with torch.no_grad():
        from_ids = trunk("a", **batch)
        from_embeds = trunk(
            "a", inputs_embeds=embeds, attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"]
        )
    torch.testing.assert_close(from_embeds, from_ids, atol=1e-5, rtol=0)
