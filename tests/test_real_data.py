"""Real data from ../shared/data (skipped when absent): the pretrained encoder must really learn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, needs_shared_data, run_dirs, run_mtl


@pytest.mark.slow
@needs_shared_data
def test_minilm_learns_yelp_and_imdb_sentences(tmp_path: Path) -> None:
    proc = run_mtl(
        "train",
        "task=sentences/yelp+sentences/imdb",
        f"data_root={SHARED_DATA}",
        "trainer.epochs=2",
        "trainer.progress=false",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    (run,) = run_dirs(tmp_path / "runs")
    results = json.loads((run / "results.json").read_text())
    # Held-out test split: 200 sentences per task, carved with the fixed split_seed.
    assert results["yelp"]["accuracy"] >= 0.85, results
    assert results["imdb"]["accuracy"] >= 0.85, results
    assert "| yelp |" in (run / "metrics.md").read_text()
