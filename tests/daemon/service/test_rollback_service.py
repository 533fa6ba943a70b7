"""`dreamctl rollback` through the running daemon (which abandons a running cycle first) and, with
the daemon down, directly on the state dir under the instance lock.

The daemon here is a Service object serving its real control socket and running its real child
process (the scripted fake cycle of tests/helpers/service_fakes.py), without the scheduler: what is tested
is the command's path, not the timing of jobs.
"""

import json
import os
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from dreamd.daemon.cli.dreamctl import main as dreamctl
from dreamd.daemon.config import Config
from dreamd.daemon.service import scheduler as jobs
from dreamd.daemon.service.control import ControlError, ControlServer, request
from dreamd.daemon.service.instance_lock import InstanceLock
from dreamd.daemon.service.runtime import Service
from dreamd.daemon.service.state import control_socket
from dreamd.daemon.service.state_dir import StateLayout
from dreamd.memory_graph.database.store import open_store
from dreamd.trainers.checkpoints.manifest import Manifest, new_checkpoint_id, write_checkpoint
from dreamd.trainers.checkpoints.pointers import BASE, read_pointer, set_pointer
from tests.helpers.service_fakes import build as fake_stages


def fake_checkpoint(layout: StateLayout, parent: str | None = None) -> str:
    """A published, verifying checkpoint without a model in it: rollback only reads manifests."""
    checkpoint_id = new_checkpoint_id()
    manifest = Manifest(id=checkpoint_id, parent=parent, step=1, created_at=time.time(), mode="lora",
                        config={}, files={}, examples=[])
    write_checkpoint(layout.checkpoints, manifest, lambda tmp: (tmp / "note.txt").write_text(checkpoint_id))
    return checkpoint_id


@pytest.fixture
def lineage(tmp_path):
    layout = StateLayout(tmp_path / "state").ensure()
    open_store(layout.database).conn.close()  # the schema, pointer history included
    good = fake_checkpoint(layout)
    newer = fake_checkpoint(layout, parent=good)
    set_pointer(layout, "last_good", good)
    set_pointer(layout, "current", newer)
    return layout, good, newer


@pytest.fixture
def daemon(lineage, monkeypatch):
    """A Service answering on <state>/ctl.sock; `allowed` decides mutating commands."""
    layout = lineage[0]
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.delenv("DREAMD_CONTROL_SOCKET", raising=False)
    service = Service(Config(), layout, fake_stages())
    verdict = {"allowed": True}
    server = ControlServer(control_socket(layout), service.handle,
                           lambda cred: verdict["allowed"] and service._allowed(cred)).start()
    service.verdict = verdict
    yield service
    server.stop()


def pointer_moves(layout: StateLayout) -> list[tuple]:
    db = open_store(layout.database)
    try:
        return db.execute(
            "SELECT pointer, from_checkpoint, to_checkpoint, why, by FROM pointer_moves ORDER BY id").fetchall()
    finally:
        db.conn.close()


def dreamctl_rollback(layout: StateLayout, *args: str):
    return CliRunner().invoke(dreamctl, ["--state-dir", str(layout.root), "rollback", *args, "--json"])


def test_rollback_through_the_daemon_abandons_a_running_cycle_first(daemon, lineage, monkeypatch):
    layout, good, newer = lineage
    monkeypatch.setenv("DREAMD_FAKE_CYCLE_SECONDS", "60")  # the spawned child reads it
    cycle = threading.Thread(target=daemon._in_child, args=(jobs.DREAM_CYCLE, daemon.stages.cycle))
    cycle.start()
    marker = layout.root / "fake-cycles.log"
    deadline = time.monotonic() + 30
    while not (marker.exists() and daemon.children.child_pid):
        assert time.monotonic() < deadline, "the fake cycle never started"
        time.sleep(0.05)
    child = daemon.children.child_pid

    result = dreamctl_rollback(layout)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["via"] == "daemon" and (answer["current"], answer["previous"]) == (good, newer)
    assert answer["changed"] is True and answer["jobs_stopped"] == {jobs.DREAM_CYCLE: "abandoned"}
    assert answer["by"].startswith("dreamctl ") and answer["by"].endswith(f"(uid {os.getuid()}) via dreamd")
    assert answer["recorded"] == 1
    assert pointer_moves(layout) == [("current", newer, good, "manual_rollback", answer["by"])]
    cycle.join(timeout=10)
    assert not cycle.is_alive()
    assert read_pointer(layout, "current") == good and read_pointer(layout, "last_good") == good
    assert "done" not in marker.read_text()  # the cycle never reached its end...
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
    assert daemon.last_cycle["status"] == "abandoned" and daemon.last_cycle["error"] == "abandoned for a rollback"
    assert daemon.last_error is None  # ...and that is not an error
    saved = json.loads((layout.root / "service.json").read_text())
    assert saved["last_cycle"]["status"] == "abandoned"

    again = json.loads(dreamctl_rollback(layout, "--to-base").stdout)
    assert (again["current"], again["jobs_stopped"]) == (BASE, {})  # nothing ran this time
    assert json.loads(dreamctl_rollback(layout, newer).stdout)["current"] == newer
    assert json.loads(dreamctl_rollback(layout, newer).stdout)["changed"] is False  # idempotent


def test_a_bad_target_is_refused_before_anything_is_abandoned(daemon, lineage):
    layout, good, newer = lineage
    daemon.children._aborts[jobs.DREAM_CYCLE] = abort = threading.Event()  # a cycle "runs"
    for args in (["nosuch"], ["../etc"], [good, "--to-base"]):
        result = dreamctl_rollback(layout, *args)
        assert result.exit_code in (1, 2) and read_pointer(layout, "current") == newer, result.output
    assert not abort.is_set()
    with pytest.raises(ControlError) as caught:
        request(control_socket(layout), "rollback", {"checkpoint": good, "to_base": True})
    assert caught.value.code == "invalid"


def test_rollback_needs_an_allowed_peer(daemon, lineage):
    layout, _good, newer = lineage
    daemon.verdict["allowed"] = False
    result = dreamctl_rollback(layout)
    assert result.exit_code == 4 and "may not rollback" in result.output
    assert read_pointer(layout, "current") == newer


def test_no_cycle_starts_while_a_rollback_runs(daemon, lineage):
    with daemon.children.held() as stopped:
        daemon._in_child(jobs.DREAM_CYCLE, daemon.stages.cycle)  # returns at once, no child
    assert stopped == {} and daemon.last_cycle is None and not (lineage[0].root / "fake-cycles.log").exists()
    assert daemon._busy == {}


def test_rollback_with_the_daemon_down_uses_the_instance_lock(lineage):
    layout, good, newer = lineage
    assert not control_socket(layout).exists()
    result = dreamctl_rollback(layout)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["via"].startswith("state dir") and (answer["current"], answer["previous"]) == (good, newer)
    assert answer["by"].startswith("dreamctl ") and f"(uid {os.getuid()})" in answer["by"]
    assert pointer_moves(layout) == [("current", newer, good, "manual_rollback", answer["by"])]

    # A dreamd that holds the lock but does not answer: dreamctl must not move pointers under it.
    with InstanceLock(layout.lock_file):
        refused = dreamctl_rollback(layout, "--to-base")
    assert refused.exit_code == 1 and "control socket does not answer" in refused.output
    assert read_pointer(layout, "current") == good
    assert json.loads(dreamctl_rollback(layout, "--to-base").stdout)["current"] == BASE


def test_a_child_that_will_not_stop_fails_the_rollback_and_lifts_the_hold(daemon, lineage, monkeypatch):
    from dreamd.daemon.service import jobs as child_jobs

    layout, _good, newer = lineage
    monkeypatch.setattr(child_jobs, "ABANDON_WAIT", 0.3)
    daemon.children._aborts[jobs.DREAM_CYCLE] = abort = threading.Event()  # a cycle that never ends
    with pytest.raises(ControlError) as caught:
        request(control_socket(layout), "rollback", {})
    assert caught.value.code == "busy" and "did not stop" in str(caught.value)
    assert abort.is_set() and read_pointer(layout, "current") == newer  # asked to stop; nothing moved
    del daemon.children._aborts[jobs.DREAM_CYCLE]
    daemon._in_child(jobs.DREAM_CYCLE, daemon.stages.cycle)  # the hold was lifted: cycles run again
    assert daemon.last_cycle["status"] == "ok" and "done" in (layout.root / "fake-cycles.log").read_text()
