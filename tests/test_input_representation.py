"""Input representation: truncation side, sentence pairs, task markers (prefix token, learned embedding)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mtl_cli.compose import compose_typed
from mtl_cli.config import TaskConfig, TaskMarker, Truncation
from mtl_cli.tokenization import add_task_markers, encode_texts, marker_token, truncate
from tests.conftest import tiny_encoder, tiny_run


@pytest.mark.parametrize(
    ("side", "head_tokens", "expected"),
    [
        ("head", None, [0, 1, 2, 3, 4, 5]),
        ("tail", None, [14, 15, 16, 17, 18, 19]),
        ("head+tail", 2, [0, 1, 16, 17, 18, 19]),
        ("head+tail", None, [0, 15, 16, 17, 18, 19]),  # a quarter of the room from the start
    ],
)
def test_truncate_keeps_the_configured_part(side: str, head_tokens: int | None, expected: list[int]) -> None:
    cfg = TaskConfig(truncation=Truncation(side), head_tokens=head_tokens)
    assert truncate(list(range(20)), 6, cfg) == expected
    assert truncate([1, 2, 3], 6, cfg) == [1, 2, 3]


def test_encode_texts_truncates_inside_the_special_tokens() -> None:
    _, tok = tiny_encoder()
    words = [f"w{i}" for i in range(60)]
    text = " ".join(words)
    pieces = tok(text, add_special_tokens=False)["input_ids"]
    for side, keep in (("head", pieces[:14]), ("tail", pieces[-14:]), ("head+tail", pieces[:4] + pieces[-10:])):
        cfg = TaskConfig(max_length=16, truncation=Truncation(side), head_tokens=4 if side == "head+tail" else None)
        (ids,) = encode_texts(tok, [text], None, cfg)["input_ids"]
        assert ids == [tok.cls_token_id, *keep, tok.sep_token_id]


def test_pairs_get_segment_ids_and_fit_max_length() -> None:
    _, tok = tiny_encoder()
    cfg = TaskConfig(max_length=12)
    out = encode_texts(tok, ["the first sentence is here", "short"], ["and a second one", "pair " * 30], cfg)
    assert set(out) == {"input_ids", "token_type_ids"}
    for ids, types in zip(out["input_ids"], out["token_type_ids"], strict=True):
        assert len(ids) == len(types) <= 12
        assert types[0] == 0 and types[-1] == 1 and ids.count(tok.sep_token_id) == 2


def test_prefix_marker_is_a_new_token_right_after_cls() -> None:
    encoder, tok = tiny_encoder()
    before = encoder.get_input_embeddings().weight.shape[0]
    add_task_markers(tok, encoder, ["yelp", "imdb"])
    assert encoder.get_input_embeddings().weight.shape[0] == before + 2 == len(tok)
    marker = tok.convert_tokens_to_ids(marker_token("yelp"))
    (ids,) = encode_texts(tok, ["great food " * 20], None, TaskConfig(max_length=10), marker)["input_ids"]
    assert len(ids) == 10 and ids[0] == tok.cls_token_id and ids[1] == marker and ids[-1] == tok.sep_token_id
    assert tok.tokenize(marker_token("yelp")) == [marker_token("yelp")]  # one token, never split


def write_pair_task(root: Path) -> Path:
    """A sentence-pair task (do two sentences say the same thing?) in a user config dir."""
    data = root / "data"
    data.mkdir(parents=True)
    rows = ["premise\thypothesis\tlabel"]
    for i in range(40):
        rows.append(f"the cat sat on mat {i}\tthe cat sat on mat {i}\tsame")
        rows.append(f"the cat sat on mat {i}\ta dog ran in park {i}\tdifferent")
    (data / "pairs.tsv").write_text("\n".join(rows) + "\n")
    conf = root / "conf" / "task"
    conf.mkdir(parents=True)
    (conf / "pairs.yaml").write_text(
        "# @package task.pairs\n"
        f"files: {{train: {data / 'pairs.tsv'}}}\n"
        "format: tsv\ntext_column: premise\ntext_pair_column: hypothesis\n"
        "task_marker: embedding\nvalidation_size: 0.2\ntest_size: 0.2\n"
    )
    return root / "conf"


def test_pair_task_with_markers_trains_saves_and_evaluates(tmp_path: Path) -> None:
    from mtl_cli.eval_run import evaluate_run

    conf = write_pair_task(tmp_path)
    overrides = [
        "task=[pairs,demo/restaurants]", "++task.restaurants.task_marker=prefix", "trainer.max_steps=6",
        "trainer.eval_every=3",
    ]  # fmt: skip
    out = tiny_run(tmp_path / "runs", *overrides, config_dir=conf)
    run = Path(out["run_dir"])
    results = json.loads((run / "results.json").read_text())
    assert set(results) == {"pairs", "restaurants", "average"}
    from safetensors.torch import load_file

    weights = load_file(run / "checkpoints" / "best" / "model.safetensors")
    assert weights["task_embeddings.weight"].shape == (1, 32)  # one task asked for an embedding
    assert marker_token("restaurants") in (run / "checkpoints" / "best" / "tokenizer" / "tokenizer.json").read_text()
    again = evaluate_run(str(run), split="test")
    for task in ("pairs", "restaurants"):
        assert again[task] == pytest.approx(results[task], abs=1e-9)


def test_task_embedding_changes_only_its_task() -> None:
    from mtl_cli.model import build_model

    encoder, tok = tiny_encoder()
    cfgs = {"a": TaskConfig(task_marker=TaskMarker.embedding), "b": TaskConfig()}
    model = build_model(encoder, cfgs, {"a": ["x", "y"], "b": ["x", "y"]}, compose_typed().sharing).eval()
    batch = {"input_ids": torch.tensor([[101, 2000, 102]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    a0, b0 = model("a", batch), model("b", batch)
    with torch.no_grad():
        # Not a constant: LayerNorm in the embeddings would remove a uniform shift.
        model.task_embeddings.weight.copy_(torch.randn_like(model.task_embeddings.weight))
    assert not torch.allclose(model("a", batch), a0)
    assert torch.allclose(model("b", batch), b0)
