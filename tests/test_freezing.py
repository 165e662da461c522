"""encoder.freeze_embeddings / encoder.freeze_layers: frozen weights do not move, their backward is
skipped, checkpoints leave them out and `mtl eval` rebuilds them; bad combinations are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mtl_cli.compose import compose_typed
from mtl_cli.encoders import load_encoder
from mtl_cli.errors import MtlError
from mtl_cli.sharing.partial import find_layer_path, get_path
from mtl_cli.validation import validate
from tests.conftest import tiny_encoder, tiny_run


def trained_and_frozen(encoder) -> tuple[set[str], set[str]]:
    names = {n for n, _ in encoder.named_parameters()}
    frozen = {n for n, p in encoder.named_parameters() if not p.requires_grad}
    return names - frozen, frozen


def test_freeze_layers_freezes_the_embeddings_and_the_bottom_layers() -> None:
    cfg = compose_typed(["encoder=tiny", "encoder.freeze_layers=1"]).encoder
    torch.manual_seed(0)
    encoder, _ = load_encoder(cfg)
    trained, frozen = trained_and_frozen(encoder)
    assert frozen and all(n.startswith(("embeddings.", "encoder.layer.0.")) for n in frozen)
    assert any(n.startswith("embeddings.word_embeddings") for n in frozen)
    assert trained and all(n.startswith("encoder.layer.") and not n.startswith("encoder.layer.0.") for n in trained)


def test_freeze_embeddings_alone_keeps_every_layer_trained() -> None:
    encoder, _ = load_encoder(compose_typed(["encoder=tiny", "encoder.freeze_embeddings=true"]).encoder)
    trained, frozen = trained_and_frozen(encoder)
    assert frozen and all(n.startswith("embeddings.") for n in frozen)
    assert any(n.startswith("encoder.layer.0.") for n in trained)


def test_nothing_is_frozen_by_default() -> None:
    encoder, _ = tiny_encoder()
    assert all(p.requires_grad for p in encoder.parameters())


def test_autograd_skips_the_frozen_layers() -> None:
    """The point of freeze_layers: no gradient reaches the frozen layers' outputs, so their backward
    (two thirds of their cost) is never run."""
    cfg = compose_typed(["encoder=tiny", "encoder.freeze_layers=1"]).encoder
    encoder, _ = load_encoder(cfg)
    layers = get_path(encoder, find_layer_path(encoder))
    outputs: list[torch.Tensor] = []
    layers[0].register_forward_hook(lambda _m, _i, out: outputs.append(out[0] if isinstance(out, tuple) else out))
    hidden = encoder(input_ids=torch.randint(1000, 5000, (2, 7))).last_hidden_state
    assert not outputs[0].requires_grad  # nothing below layer 1 needs a gradient
    hidden.sum().backward()
    assert all(p.grad is None for p in layers[0].parameters())
    assert all(p.grad is not None for p in layers[1].parameters())


def test_a_frozen_run_trains_only_the_rest_and_eval_rebuilds_it(tmp_path: Path, mtl) -> None:
    before, _ = tiny_encoder(42)  # experiment=smoke seeds 42: the weights the run starts from
    out = tiny_run(tmp_path / "runs", "encoder.freeze_layers=1", "seed=42")
    run = Path(out["run_dir"])
    ckpt = run / "checkpoints" / "best"
    stored = load_file(str(ckpt / "model.safetensors"))
    assert not any(k.startswith(("trunk.encoder.embeddings.", "trunk.encoder.encoder.layer.0.")) for k in stored)
    assert any(k.startswith("trunk.encoder.encoder.layer.1.") for k in stored)
    assert json.loads((ckpt / "base_encoder.json").read_text())["random_init"] is True
    layer1 = {k.removeprefix("trunk.encoder."): v for k, v in stored.items() if ".layer.1." in k}
    moved = [k for k, v in layer1.items() if not torch.equal(v, before.state_dict()[k])]
    assert moved  # the trained layer changed
    parameters = json.loads((run / "parameters.json").read_text())
    assert 0 < parameters["trainable"] < parameters["total"]

    proc = mtl("eval", str(run), cwd=tmp_path)  # the frozen weights come back from the encoder's source
    assert proc.returncode == 0, proc.stderr
    evaluated = json.loads((run / "eval" / "best_test.json").read_text())
    trained = json.loads((run / "results.json").read_text())
    for task in trained:
        assert evaluated[task] == pytest.approx(trained[task], abs=1e-9), task
    (tmp_path / "new.txt").write_text("great food\nawful service\n", encoding="utf-8")
    proc = mtl("predict", str(run), "input=new.txt", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["text"] for line in proc.stdout.splitlines()] == ["great food", "awful service"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["encoder.freeze_layers=-1"], "`encoder.freeze_layers` must be 0"),
        (["encoder.freeze_layers=1", "sharing=adapters"], "`encoder.freeze_layers` with sharing=adapters"),
        (["encoder.freeze_embeddings=true", "task.restaurants.task_marker=prefix"], "task-marker"),
    ],
)
def test_bad_combinations_are_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(MtlError, match=message):
        validate(compose_typed(["experiment=smoke", *overrides]))


def test_more_frozen_layers_than_the_encoder_has_is_one_line() -> None:
    with pytest.raises(MtlError, match=r"`encoder.freeze_layers=9` but BertModel has 2 layers; use 0 to 2"):
        load_encoder(compose_typed(["encoder=tiny", "encoder.freeze_layers=9"]).encoder)
