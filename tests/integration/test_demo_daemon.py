"""`dreamctl demo` runs the real dreamd and never leaves one behind, nor stops one it did not start.

On the tiny model (the whole demo on the real default model is tests/integration/test_default_model.py).
"""

import json
import os
import re
import signal
import subprocess

import pytest

from dreamd.daemon.cli.demo import QUESTION
from dreamd.daemon.service.state_dir import StateLayout
from dreamd.daemon.service.status import collect_status
from dreamd.trainers.checkpoints.pointers import BASE
from tests.helpers.daemon_harness import BIN, Daemon, alive, real_stages_config, save_tiny_model


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def test_an_interrupted_demo_stops_the_daemon_it_started(tmp_path, tiny_model_dir):
    config = tmp_path / "dreamd.toml"
    config.write_text(real_stages_config(tiny_model_dir, dreams=4))
    state = tmp_path / "state"
    # SIGINT back to its default in the child: a test run started in the background by a shell
    # without job control inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
    demo = subprocess.Popen([str(BIN / "dreamctl"), "--config", str(config), "--state-dir", str(state), "demo"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    output = []
    try:
        for line in demo.stdout:
            output.append(line)
            started = re.search(r"dreamd: started on .* \(pid (\d+)\)", line)
            if started:
                break
        assert started, "".join(output)
        pid = int(started.group(1))
        assert alive(pid)
        demo.send_signal(signal.SIGINT)  # to the demo alone: it must stop its daemon itself
        output += demo.stdout.readlines()
        assert demo.wait(timeout=60) != 0
    finally:
        if demo.poll() is None:
            demo.kill()
    text = "".join(output)
    assert "dreamd: stopping it (SIGTERM)" in text and "dreamd: stopped (exit code 0)" in text, text
    assert not alive(pid)
    assert collect_status(StateLayout(state))["daemon"] == "stopped" and not (state / "ctl.sock").exists()


def test_the_demo_uses_a_running_daemon_and_leaves_it_running(tmp_path, tiny_model_dir):
    d = Daemon(tmp_path, config=real_stages_config(tiny_model_dir, dreams=2), stages=None)
    try:
        d.start()
        d.wait_for("READY=1", timeout=60)
        done = d.ctl("demo", "--json")
        summary = json.loads(done.stdout)
        assert summary["daemon"] == {"pid": d.proc.pid, "started_by_demo": False}
        assert (summary["files"], summary["ingested"], summary["duplicates"], summary["messages"]) == (6, 6, 0, 43)
        assert summary["memories"] == 20 and summary["collisions"]
        cycle = summary["cycle"]  # the daemon's own settings: 2 dreams, not the demo's 8
        assert cycle["status"] == "ok" and cycle["steps"]["dreams"]["dreams"] == 2
        assert summary["status"]["last_cycle"]["status"] == "ok"
        assert d.proc.poll() is None and d.status()["source"] == "daemon"
        # Did it learn? The question from the weights alone, before (the base) and after the cycle.
        promoted = cycle["current"] or BASE
        check_learning(summary, done.stderr, BASE, promoted)

        again = d.ctl("demo", "--dreams", "0", "--json")  # a second run: every log is known already
        second = json.loads(again.stdout)
        assert (second["ingested"], second["duplicates"], second["cycle"]) == (0, 6, None)
        check_learning(second, again.stderr, promoted, promoted)
        assert second["answer_after"] == second["answer_before"]  # no cycle: the same weights, greedy
        assert second["learned"] or "did not learn it in this demo: no dream cycle ran" in again.stderr
        assert d.proc.poll() is None
        assert d.stop() == 0
    finally:
        d.close()
    assert json.loads((d.state / "service.json").read_text())["phase"] == "stopped"


def check_learning(summary, printed, before, after):
    """The demo's answer on whether the loop learned: in its JSON and in the lines it printed."""
    assert summary["question"] == QUESTION
    assert isinstance(summary["answer_before"], str) and isinstance(summary["answer_after"], str)
    assert (summary["answer_before_checkpoint"], summary["answer_after_checkpoint"]) == (before, after)
    assert summary["learned"] is ("lighthouse" in summary["answer_after"].lower())
    assert f"Before the cycle (weights alone, {before}): {summary['answer_before']}" in printed
    assert f"After the cycle (weights alone, {after}): {summary['answer_after']}" in printed
    verdict = "The model learned it from its logs" if summary["learned"] else "did not learn it in this demo"
    assert verdict in printed
