"""One dreamd per state dir: the flock refuses a second holder and dies with its holder."""

import signal
import subprocess
import sys

import pytest

from dreamd.daemon.service.instance_lock import AlreadyRunning, InstanceLock, lock_holder

HOLDER = """
import sys, time
from dreamd.daemon.service.instance_lock import InstanceLock
InstanceLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_second_instance_is_refused_in_process(tmp_path):
    path = tmp_path / "dreamd.lock"
    with InstanceLock(path):
        assert lock_holder(path) is not None
        with pytest.raises(AlreadyRunning) as caught:
            InstanceLock(path).acquire()
        assert "already running" in str(caught.value)
    assert lock_holder(path) is None
    InstanceLock(path).acquire().release()


def test_lock_of_a_killed_process_is_free_at_once(tmp_path):
    path = tmp_path / "dreamd.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lock_holder(path) == holder.pid
        with pytest.raises(AlreadyRunning) as caught:
            InstanceLock(path).acquire()
        assert caught.value.pid == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_holder(path) is None  # the stale pid in the file does not matter
    with InstanceLock(path) as lock:
        assert lock.held
        assert path.read_text().strip() == str(__import__("os").getpid())


def test_no_lock_file_means_nobody(tmp_path):
    assert lock_holder(tmp_path / "absent.lock") is None
