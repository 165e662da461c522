"""trainer.precision=fp16: float16 autocast with a gradient scaler, for CUDA GPUs; refused on a CPU.

The scaler's path is run here on the CPU (torch's GradScaler and float16 autocast work there too)
by lifting the CUDA-only check: the loss is scaled, the gradients unscaled before clipping, the
scale is saved with the checkpoint and restored on resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_RUN, tiny_run


def test_fp16_is_refused_on_a_cpu_in_one_line(tmp_path: Path, capsys) -> None:
    from mtl_cli.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", *TINY_RUN, "trainer.precision=fp16", f"runs_root={tmp_path}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("mtl: error: trainer.precision=fp16 needs a CUDA GPU") and "trainer.precision=bf16" in err
    assert len(err.strip().splitlines()) == 1
    assert not any(tmp_path.rglob("config.yaml"))


def test_fp16_refuses_weightings_that_read_scaled_losses() -> None:
    from mtl_cli.device import check_fp16
    from mtl_cli.errors import MtlError

    cuda = torch.device("cuda")
    check_fp16("fp16", cuda, "equal")
    check_fp16("bf16", torch.device("cpu"), "uncertainty")
    with pytest.raises(MtlError, match="works with loss_weighting=equal or static, not uncertainty"):
        check_fp16("fp16", cuda, "uncertainty")


def test_the_scaler_path_trains_saves_its_scale_and_resumes(tmp_path: Path, monkeypatch) -> None:
    from mtl_cli import train as train_module
    from mtl_cli.train import resume

    monkeypatch.setattr(train_module, "check_fp16", lambda *args: None)  # the CPU stands in for a GPU
    run = tiny_run(tmp_path, "trainer.precision=fp16")
    out = Path(run["run_dir"])
    assert "fp16 autocast, gradient scaler" in (out / "train.log").read_text()
    saved = torch.load(out / "checkpoints" / "last" / "optimizer.pt", weights_only=True)
    assert saved["grad_scaler"]["scale"] > 0 and saved["grad_scaler"]["_growth_tracker"] >= 0
    first = torch.load(sorted((out / "checkpoints").glob("step-*"))[0] / "optimizer.pt", weights_only=True)
    assert first["grad_scaler"]["_growth_tracker"] == 4  # 4 finite steps since the start, none skipped
    assert all(0 <= v["accuracy"] <= 1 for k, v in run["results"].items())
    # Resume from the step-4 checkpoint as `last`: the scaler's state comes back with it.
    (out / "results.json").unlink()
    import shutil

    shutil.rmtree(out / "checkpoints" / "last")
    shutil.copytree(sorted((out / "checkpoints").glob("step-*"))[0], out / "checkpoints" / "last")
    again = resume(out)
    assert again["results"] == run["results"]
