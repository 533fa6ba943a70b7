"""The control protocol: schema, size bound, who may change things, and the socket's files."""

import json
import os
import socket
import stat
from types import SimpleNamespace

import pytest

from dreamd.daemon.service import control
from dreamd.daemon.service.control import (
    MAX_REQUEST_BYTES,
    ControlError,
    ControlServer,
    DaemonUnavailable,
    PeerCred,
    exchange,
    parse_request,
    peer_allowed,
    request,
    user_label,
    user_name,
)
from dreamd.trainers.checkpoints.manifest import new_checkpoint_id


@pytest.mark.parametrize(
    "raw, where",
    [
        (b"not json", "not a JSON object"),
        (b"[1, 2]", "request"),
        (b'{"cmd": "status"}', "'v' is a required property"),
        (b'{"v": 2, "cmd": "status"}', "v:"),
        (b'{"v": 1, "cmd": "rm -rf"}', "cmd:"),
        (b'{"v": 1, "cmd": "status", "path": "/etc/shadow"}', "Additional properties"),
        (b'{"v": 1, "cmd": "pause", "args": {"file": "/etc/shadow"}}', "args:"),
        (b'{"v": 1, "cmd": "pause", "args": {"reason": 5}}', "args/reason"),
        ('{"v": 1, "cmd": "pause", "args": {"reason": "%s"}}' % ("x" * 201), "args/reason"),
        # rollback names a checkpoint id, never a path
        (b'{"v": 1, "cmd": "rollback", "args": {"checkpoint": "../../etc"}}', "args/checkpoint"),
        (b'{"v": 1, "cmd": "rollback", "args": {"checkpoint": "/var/lib/x"}}', "args/checkpoint"),
        (b'{"v": 1, "cmd": "rollback", "args": {"checkpoint": "20250101T1200Z-1a2b3c.tmp"}}', "args/checkpoint"),
        (b'{"v": 1, "cmd": "rollback", "args": {"checkpoint": ""}}', "args/checkpoint"),
        (b'{"v": 1, "cmd": "rollback", "args": {"checkpoint": 7}}', "args/checkpoint"),
        (b'{"v": 1, "cmd": "rollback", "args": {"to_base": "yes"}}', "args/to_base"),
        (b'{"v": 1, "cmd": "rollback", "args": {"path": "/tmp/x"}}', "args:"),
    ],
)
def test_schema_rejects(raw, where):
    with pytest.raises(ControlError) as caught:
        parse_request(raw if isinstance(raw, bytes) else raw.encode())
    assert caught.value.code == "invalid"
    assert where in caught.value.message


def test_schema_accepts_and_fills_args():
    assert parse_request(b'{"v": 1, "cmd": "status"}') == {"v": 1, "cmd": "status", "args": {}}
    assert parse_request(b'{"v": 1, "cmd": "pause", "args": {"reason": "disk"}}')["args"] == {"reason": "disk"}
    real_id = new_checkpoint_id()
    rollback = json.dumps({"v": 1, "cmd": "rollback", "args": {"checkpoint": real_id}}).encode()
    assert parse_request(rollback)["args"] == {"checkpoint": real_id}
    assert parse_request(b'{"v": 1, "cmd": "rollback", "args": {"to_base": true}}')["args"] == {"to_base": True}
    assert parse_request(b'{"v": 1, "cmd": "rollback"}')["args"] == {}  # to last_good
    assert "rollback" in control.MUTATING


def test_size_bound_in_the_parser():
    with pytest.raises(ControlError) as caught:
        parse_request(b" " * (MAX_REQUEST_BYTES + 1))
    assert caught.value.code == "too_large"


GROUPS = {"dreamops": SimpleNamespace(gr_gid=4242, gr_mem=["alice"])}
USERS = {1001: SimpleNamespace(pw_name="alice"), 1002: SimpleNamespace(pw_name="mallory")}


def _allowed(uid, gid=100, group="dreamops"):
    return peer_allowed(PeerCred(pid=1, uid=uid, gid=gid), daemon_uid=998, control_group=group,
                        getgrnam=GROUPS.__getitem__, getpwuid=USERS.__getitem__)


def test_peer_allowlist():
    assert _allowed(0)                      # root
    assert _allowed(998)                    # the daemon's own user
    assert _allowed(1001)                   # alice is a member of the control group
    assert _allowed(1002, gid=4242)         # primary group is the control group
    assert not _allowed(1002)               # mallory is neither
    assert not _allowed(1001, group="")     # no group configured: nobody extra
    assert not _allowed(1001, group="typo") # an unknown group fails closed
    assert not _allowed(5555)               # a uid without a passwd entry


def test_one_user_lookup_for_permissions_and_audit_rows():
    assert user_name(1001, USERS.__getitem__) == "alice" and user_name(5555, USERS.__getitem__) is None
    # What pointer-move rows record as who asked, whether dreamd or dreamctl did the rollback.
    assert user_label(1001, USERS.__getitem__) == "alice (uid 1001)"
    assert user_label(5555, USERS.__getitem__) == "uid 5555"  # no passwd entry: the uid still counts


@pytest.fixture
def server(tmp_path):
    calls = []
    verdict = {"allowed": True}

    def handler(cmd, args, peer):
        calls.append((cmd, args))
        if cmd == "dream_now":
            raise ControlError("paused", "dream cycles are paused")
        return {"cmd": cmd}

    folder = tmp_path / "run"
    srv = ControlServer(folder / "ctl.sock", handler, lambda cred: verdict["allowed"]).start()
    yield SimpleNamespace(srv=srv, path=folder / "ctl.sock", calls=calls, verdict=verdict)
    srv.stop()


def test_socket_and_directory_modes(server):
    assert stat.S_ISSOCK(server.path.lstat().st_mode)
    assert stat.S_IMODE(server.path.stat().st_mode) == 0o660
    assert stat.S_IMODE(server.path.parent.stat().st_mode) == 0o750


def test_round_trip_and_refusals(server):
    assert request(server.path, "ping") == {"cmd": "ping"}
    assert request(server.path, "pause", {"reason": "maintenance"}) == {"cmd": "pause"}
    assert server.calls[-1] == ("pause", {"reason": "maintenance"})
    with pytest.raises(ControlError) as caught:
        request(server.path, "dream_now")
    assert caught.value.code == "paused"


def test_mutating_commands_need_an_allowed_peer(server):
    server.verdict["allowed"] = False
    assert request(server.path, "status") == {"cmd": "status"}  # read-only: anyone who can connect
    for cmd, args in (("pause", None), ("rollback", {"to_base": True})):
        with pytest.raises(ControlError) as caught:
            request(server.path, cmd, args)
        assert caught.value.code == "denied"
    assert server.calls == [("status", {})]


def test_bad_requests_never_reach_the_handler(server):
    for payload in (b"{nope\n", b'{"v": 1, "cmd": "shutdown"}\n', b"x" * (MAX_REQUEST_BYTES + 100)):
        with pytest.raises(ControlError) as caught:
            exchange(server.path, payload)
        assert caught.value.code in ("invalid", "too_large")
    with pytest.raises(ControlError) as caught:
        exchange(server.path, b"y" * 100_000)
    assert caught.value.code == "too_large"
    assert server.calls == []
    assert request(server.path, "ping") == {"cmd": "ping"}  # and the server still answers


def test_peer_cred_is_the_callers():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        cred = control.peer_cred(ours)
    assert (cred.pid, cred.uid, cred.gid) == (os.getpid(), os.getuid(), os.getgid())


def test_stale_socket_is_replaced_and_other_files_are_not(tmp_path):
    path = tmp_path / "ctl.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a dead daemon's socket: the file stays, nobody listens
    with pytest.raises(DaemonUnavailable):
        request(path, "ping")
    srv = ControlServer(path, lambda cmd, args, peer: {"ok": 1}, lambda cred: True).start()
    try:
        assert request(path, "ping") == {"ok": 1}
    finally:
        srv.stop()
    assert not path.exists()
    path.write_text("not a socket")
    with pytest.raises(OSError, match="not a socket"):
        ControlServer(path, lambda cmd, args, peer: {}, lambda cred: True).start()
    assert path.read_text() == "not a socket"


def test_no_daemon_is_daemon_unavailable(tmp_path):
    with pytest.raises(DaemonUnavailable):
        request(tmp_path / "absent.sock", "status")


def test_handler_bug_is_an_error_reply_not_a_dead_server(tmp_path):
    def handler(cmd, args, peer):
        raise RuntimeError("boom")

    srv = ControlServer(tmp_path / "ctl.sock", handler, lambda cred: True).start()
    try:
        for _ in range(2):
            with pytest.raises(ControlError) as caught:
                request(tmp_path / "ctl.sock", "status")
            assert caught.value.code == "failed" and "boom" in caught.value.message
    finally:
        srv.stop()
