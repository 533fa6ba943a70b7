"""The real `dreamd serve` as a subprocess on a throwaway state dir, for the tests and the benchmark.

Started through production's `DreamdProcess` on port 0; the address it really listens on is read
from the status file it writes (`<state>/serve/status.json`) once its pid is the one started.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from dreamd.daemon.serve.status_file import read_server_status
from dreamd.daemon.service.process import DreamdProcess
from dreamd.trainers.checkpoints.manifest import Manifest, new_checkpoint_id, write_checkpoint

SERVE_CONFIG = """
[model]
path = "{model}"
device = "cpu"
[inbox]
stable_seconds = 0.0
[serve]
port = 0
poll_seconds = 0.2
batch_wait_ms = 20
"""


def save_long_tiny_model(folder: Path, seed: int = 0, positions: int = 4096) -> Path:
    """tests/helpers/tiny.py's model with room for long replies (RoPE needs no table of positions)."""
    from tests.helpers.tiny import tiny_llama, tiny_tokenizer

    model = tiny_llama(seed=seed)
    model.config.max_position_embeddings = positions
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def full_checkpoint(checkpoints: Path, model_dir: Path, parent: str | None = None) -> str:
    """A real, verifying full-weight checkpoint holding the model in `model_dir`."""
    import shutil

    checkpoint_id = new_checkpoint_id()
    manifest = Manifest(id=checkpoint_id, parent=parent, step=1, created_at=time.time(), mode="full",
                        config={}, files={}, examples=[])

    def files(tmp: Path) -> None:
        shutil.copytree(model_dir, tmp / "model")

    write_checkpoint(checkpoints, manifest, files)
    return checkpoint_id


class ServeProcess:
    def __init__(self, root: Path, model_dir: Path, extra_config: str = "", threads: int | None = 1):
        """`threads`: torch's CPU threads in the server (1 suits the tiny model on a shared machine;
        None: torch's default)."""
        self.root = root
        self.state = root / "state"
        self.config = root / "dreamd.toml"
        self.config.write_text(SERVE_CONFIG.format(model=model_dir) + extra_config)
        environment = {k: v for k, v in os.environ.items() if k != "DREAMD_STATE_DIR"}
        if threads is not None:
            environment["OMP_NUM_THREADS"] = str(threads)
        self.process = DreamdProcess(["serve", "--config", str(self.config), "--state-dir", str(self.state)],
                                     root / "serve.log", env=environment, cwd=root)
        self.address: str | None = None

    def start(self, timeout: float = 120.0) -> ServeProcess:
        self.process.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = read_server_status(self.state)
            if status and status.get("pid") == self.process.pid and status.get("state") == "serving":
                self.address = status["address"]
                return self
            if self.process.popen.poll() is not None:
                raise RuntimeError(f"dreamd serve exited: {self.log()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"dreamd serve did not start: {self.log()[-3000:]}")

    def status(self) -> dict:
        return read_server_status(self.state) or {}

    def wait_status(self, condition, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if condition(status):
                return status
            time.sleep(0.05)
        raise TimeoutError(f"status never matched: {json.dumps(self.status())}\n{self.log()[-2000:]}")

    def client(self, api_key: str = "none", **options):
        import openai

        return openai.OpenAI(base_url=self.address + "/v1", api_key=api_key, max_retries=0, **options)

    def log(self) -> str:
        path = self.root / "serve.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int | None:
        popen = self.process.popen
        if popen is None or popen.poll() is not None:
            return popen.returncode if popen else None
        popen.send_signal(signal.SIGTERM)
        try:
            return popen.wait(timeout)
        except Exception:
            popen.kill()
            return popen.wait(10)
