"""`dreamctl ingest` on what users hand it: long names, FIFOs, a full disk. A clear error, the
other files still dropped, and nothing left behind in inbox/tmp/."""

import errno
import os

from click.testing import CliRunner

import dreamd.memory_graph.inbox as inbox_module
from dreamd.daemon.cli.dreamctl import main as dreamctl
from tests.memory_graph.test_ingest import conversation_jsonl


def run(*args):
    return CliRunner().invoke(dreamctl, list(args))


def test_a_long_name_is_dropped_under_a_shortened_one(tmp_path):
    long = tmp_path / ("talk-" + "y" * 238 + ".jsonl")  # 249 bytes
    long.write_text(conversation_jsonl("long", 1))
    result = run("ingest", str(long))
    assert result.exit_code == 0, result.output
    new = os.listdir(tmp_path / "state" / "inbox" / "new")
    assert len(new) == 1 and new[0].startswith("talk-yyy") and new[0].endswith(".jsonl") and len(new[0]) <= 200
    assert os.listdir(tmp_path / "state" / "inbox" / "tmp") == []


def test_a_fifo_is_refused_and_the_other_files_still_dropped(tmp_path):
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    good = tmp_path / "good.jsonl"
    good.write_text(conversation_jsonl("good", 1))
    result = run("ingest", str(fifo), str(good))
    assert result.exit_code == 1 and not isinstance(result.exception, OSError), result.output
    assert "a FIFO (named pipe), not a regular file" in result.output
    assert "Traceback" not in result.output
    assert os.listdir(tmp_path / "state" / "inbox" / "new") == ["good.jsonl"]
    assert os.listdir(tmp_path / "state" / "inbox" / "tmp") == []


def test_a_full_disk_gives_a_clear_error_and_no_orphan_in_tmp(tmp_path, monkeypatch):
    real = inbox_module.copy_into

    def half_then_full(fd, target):  # the copy starts, then the device is full
        real(fd, target)
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(inbox_module, "copy_into", half_then_full)
    source = tmp_path / "log.jsonl"
    source.write_text(conversation_jsonl("full", 3))
    result = run("ingest", str(source))
    assert result.exit_code == 1 and "no space left on the device" in result.output, result.output
    assert "Traceback" not in result.output
    assert os.listdir(tmp_path / "state" / "inbox" / "tmp") == []
    assert os.listdir(tmp_path / "state" / "inbox" / "new") == []
    # Space is back: the same command works.
    monkeypatch.setattr(inbox_module, "copy_into", real)
    assert run("ingest", str(source)).exit_code == 0
    assert os.listdir(tmp_path / "state" / "inbox" / "new") == ["log.jsonl"]
