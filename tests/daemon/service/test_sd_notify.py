"""sd_notify against a real datagram socket, as systemd would listen."""

import os
import socket

import pytest

from dreamd.daemon.service.sd_notify import Notifier, one_line, socket_address, watchdog_interval


@pytest.fixture
def listener(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(2)
    yield sock, str(path)
    sock.close()


def test_messages_arrive_as_datagrams(listener):
    sock, path = listener
    notifier = Notifier(path)
    assert notifier.ready("idle; graph 3 memories; current base")
    assert sock.recv(4096) == b"READY=1\nSTATUS=idle; graph 3 memories; current base"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"


def test_abstract_address(tmp_path):
    name = f"dreamd-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    try:
        assert socket_address("@" + name) == b"\0" + name.encode()
        assert Notifier("@" + name).status("dreaming")
        assert sock.recv(4096) == b"STATUS=dreaming"
    finally:
        sock.close()


def test_without_socket_it_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert notifier.address is None
    assert notifier.ready() is False and notifier.watchdog() is False


def test_env_socket_is_taken_and_hidden_from_children(monkeypatch, listener):
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = Notifier()
    assert "NOTIFY_SOCKET" not in os.environ
    notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"


def test_a_vanished_listener_is_logged_not_raised(tmp_path):
    assert Notifier(str(tmp_path / "nobody.sock")).ready() is False


def test_watchdog_interval_is_half_of_watchdog_usec():
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, pid=2) is None
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "2"}, pid=2) == 1.0


def test_status_is_one_bounded_line():
    assert one_line("a\nREADY=1  b") == "a READY=1 b"
    assert len(one_line("x" * 500)) == 200
