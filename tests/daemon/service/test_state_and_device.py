from pathlib import Path

import pytest
import torch

from dreamd.daemon.service.state_dir import StateLayout, resolve_state_dir
from dreamd.trainers.atomic import publish_dir, staging_dir
from dreamd.trainers.device import resolve_device
from dreamd.trainers.errors import ModelLoadError


def test_state_dir_order(monkeypatch, tmp_path):
    monkeypatch.delenv("DREAMD_STATE_DIR")
    assert resolve_state_dir() == Path("state").absolute()
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/dreamd:/var/lib/other")
    assert resolve_state_dir() == Path("/var/lib/dreamd")
    monkeypatch.setenv("DREAMD_STATE_DIR", str(tmp_path / "s"))
    assert resolve_state_dir() == tmp_path / "s"
    assert resolve_state_dir(tmp_path / "cli") == tmp_path / "cli"


def test_layout_creates_private_folders(tmp_path):
    layout = StateLayout(tmp_path / "state").ensure()
    assert layout.models.is_dir() and layout.checkpoints.is_dir()
    assert (layout.root.stat().st_mode & 0o777) == 0o750


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only path")
def test_cpu_machine_gets_fp32_and_cuda_request_is_refused():
    assert resolve_device("auto", "auto") == (torch.device("cpu"), torch.float32)
    assert resolve_device("cpu", "bfloat16") == (torch.device("cpu"), torch.bfloat16)
    with pytest.raises(ModelLoadError) as caught:
        resolve_device("cuda", "auto")
    assert caught.value.key == "model.device"


def test_publish_replaces_a_leftover_staging_dir(tmp_path):
    final = tmp_path / "thing"
    leftover = tmp_path / "thing.tmp"
    leftover.mkdir()
    (leftover / "half-written").write_text("x")
    tmp = staging_dir(final)
    assert not (tmp / "half-written").exists()
    (tmp / "whole").write_text("y")
    publish_dir(tmp, final)
    assert (final / "whole").read_text() == "y" and not tmp.exists()
