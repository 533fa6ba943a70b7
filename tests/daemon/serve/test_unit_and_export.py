"""The dreamd-serve unit (checked by systemd's own tools) and `dreamctl export`'s checks for vLLM."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from dreamd.daemon.cli.dreamctl import main as dreamctl
from dreamd.daemon.serve.vllm import adapter_problems
from dreamd.daemon.service.state_dir import StateLayout
from dreamd.trainers.checkpoints.manifest import Manifest, new_checkpoint_id, write_checkpoint
from dreamd.trainers.checkpoints.pointers import set_pointer

UNIT = Path(__file__).resolve().parents[3] / "systemd" / "dreamd-serve.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


@pytest.fixture
def unit_copy(tmp_path):
    dreamd = Path(sys.executable).parent / "dreamd"
    path = tmp_path / "dreamd-serve.service"
    path.write_text(UNIT.read_text().replace("ExecStart=/usr/local/bin/dreamd", f"ExecStart={dreamd}"))
    return path


def test_the_unit_listens_on_loopback_only_and_runs_serve():
    lines = [line for line in UNIT.read_text().splitlines() if "=" in line and not line.startswith("#")]
    settings = {k: v for k, _, v in (line.partition("=") for line in lines)}
    assert settings["ExecStart"].endswith("dreamd serve") and settings["User"] == "dreamd"
    assert settings["IPAddressDeny"] == "any" and settings["IPAddressAllow"] == "localhost"
    assert settings["RestrictAddressFamilies"] == "AF_UNIX AF_INET AF_INET6"
    assert settings["SocketBindAllow"] == "tcp:8077" and "RuntimeDirectory" not in settings


@needs_analyze
def test_systemd_analyze_verify_and_security(unit_copy):
    done = subprocess.run([ANALYZE, "verify", str(unit_copy)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "dreamd-serve.service" not in done.stdout + done.stderr, done.stderr
    done = subprocess.run([ANALYZE, "security", "--offline=true", "--no-pager", str(unit_copy)],
                          capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for dreamd-serve\.service: ([0-9.]+)", done.stdout)
    assert match and float(match.group(1)) <= 3.0, done.stdout + done.stderr


def test_what_vllm_would_reject_is_named():
    plain = {"r": 16, "use_dora": False, "modules_to_save": None, "bias": "none"}
    assert adapter_problems(plain) == []
    assert "over --max-lora-rank 16" in adapter_problems({**plain, "r": 32})[0]
    assert adapter_problems({**plain, "r": 32}, max_lora_rank=64) == []
    assert len(adapter_problems({**plain, "use_dora": True, "modules_to_save": ["lm_head"], "bias": "all"})) == 3


def lora_checkpoint(layout: StateLayout, adapter_config: dict) -> str:
    checkpoint_id = new_checkpoint_id()

    def files(tmp: Path) -> None:
        (tmp / "adapter").mkdir()
        (tmp / "adapter" / "adapter_config.json").write_text(json.dumps(adapter_config))
        (tmp / "adapter" / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")

    write_checkpoint(layout.checkpoints, Manifest(id=checkpoint_id, parent=None, step=1, created_at=time.time(),
                                                  mode="lora", config={}, files={}, examples=[]), files)
    set_pointer(layout, "current", checkpoint_id)
    return checkpoint_id


def test_export_warns_or_refuses_where_vllm_would_reject(tmp_path):
    layout = StateLayout(tmp_path / "state").ensure()
    lora_checkpoint(layout, {"r": 32, "use_dora": True, "peft_type": "LORA"})
    runner = CliRunner()
    warned = runner.invoke(dreamctl, ["--state-dir", str(layout.root), "export", "--to", str(tmp_path / "a")])
    assert warned.exit_code == 0 and "warning: vLLM would reject" in warned.output and "DoRA" in warned.output
    refused = runner.invoke(dreamctl, ["--state-dir", str(layout.root), "export", "--vllm", "--max-lora-rank", "64",
                                       "--to", str(tmp_path / "b")])
    assert refused.exit_code == 1 and "DoRA" in refused.output and "rank" not in refused.output.split("DoRA")[0]
    assert not (tmp_path / "b").exists()
