"""One file, one odd entry or one race in the inbox never stops or subverts the ingest.

What an attacker in the inbox's group, or an unlucky operator, can put in front of the real
Ingester on a real state dir: a poison file with a name near the file system's limit, names that
are not UTF-8, FIFOs, symlinks and directories (placed before the scan or swapped in between the
scan and the claim), and failures of the moves themselves.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import dreamd.memory_graph.inbox as inbox_module
import dreamd.memory_graph.inbox_placement as inbox_placement
from tests.memory_graph.test_ingest import conversation_jsonl

POISON = b'{"messages": [ this is not json \x00\xff'
LONG_NAME = "x" * 240 + ".jsonl"  # 246 bytes: fine in new/, no room left for ~2 or .error.json


def put(layout, name: str | bytes, data: bytes) -> Path:
    """Write straight into new/ (as a careless writer would), under a name given as text or bytes."""
    folder = os.fsencode(layout.inbox_folder("new"))
    path = os.path.join(folder, name if isinstance(name, bytes) else name.encode())
    with open(path, "wb") as handle:
        handle.write(data)
    return Path(os.fsdecode(path))


def names(layout, folder: str) -> list[str]:
    return sorted(os.listdir(layout.inbox_folder(folder)))


def reports(layout) -> list[dict]:
    folder = layout.inbox_folder("quarantine")
    return [json.loads((folder / n).read_text()) for n in sorted(os.listdir(folder)) if n.endswith(".error.json")]


def stored_texts(db) -> str:
    return " ".join(row[0] for row in db.execute("SELECT text FROM messages").fetchall())


def good_files(layout, count: int = 3) -> None:
    for i in range(count):
        put(layout, f"good-{i}.jsonl", conversation_jsonl(f"good{i}", 2).encode())


def test_a_poison_file_with_a_long_name_is_quarantined_and_the_rest_ingested(layout, make_ingester):
    ingester = make_ingester()
    put(layout, LONG_NAME, POISON)
    put(layout, b"bad-\xff\xfe-name.jsonl", POISON)  # not UTF-8
    good_files(layout)
    report = ingester.drain()
    assert (report.ingested, report.quarantined) == (3, 2), report.to_dict()
    assert names(layout, "new") == names(layout, "processing") == []
    assert names(layout, "done") == ["good-0.jsonl", "good-1.jsonl", "good-2.jsonl"]
    found = {r["original_name"]: r for r in reports(layout)}
    assert set(found) == {LONG_NAME, "bad-\\xff\\xfe-name.jsonl"}
    for report_ in found.values():
        assert report_["reason"]  # a readable reason, e.g. where the JSON broke
        assert report_["file"] in names(layout, "quarantine") and len(report_["file"].encode()) <= 220
    assert found[LONG_NAME]["file"].endswith(".jsonl") and found[LONG_NAME]["file"].startswith("xxxx")
    # A second run finds nothing more to do.
    again = ingester.drain()
    assert (again.files, again.ingested, again.quarantined, again.stuck) == (0, 0, 0, 0)


def test_a_file_that_cannot_be_quarantined_is_skipped_not_retried_first(layout, make_ingester, monkeypatch):
    real = inbox_placement._write_new_file

    def refuse(path, data):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(inbox_placement, "_write_new_file", refuse)
    ingester = make_ingester()
    put(layout, "aaa-poison.jsonl", POISON)  # sorted first
    good_files(layout)
    with capture_logs() as logs:
        report = ingester.drain()
    assert (report.ingested, report.stuck) == (3, 1)
    assert names(layout, "processing") == ["aaa-poison.jsonl"] and names(layout, "quarantine") == []
    assert [e["stage"] for e in logs if e["event"] == "ingest.file_stuck"] == ["quarantine"]
    # The next runs do not touch it (and log nothing) until its retry time; new files go ahead.
    put(layout, "good-late.jsonl", conversation_jsonl("late", 2).encode())
    with capture_logs() as logs:
        report = ingester.drain()
    assert (report.ingested, report.stuck, report.files, report.held_back) == (1, 0, 1, 1)
    assert not [e for e in logs if e["event"] == "ingest.file_stuck"]
    # Once its time comes and the folder can be written again, it goes to quarantine.
    monkeypatch.setattr(inbox_placement, "_write_new_file", real)
    ingester._deferred = {k: (0.0, n) for k, (_, n) in ingester._deferred.items()}
    report = ingester.drain()
    assert report.quarantined == 1 and names(layout, "processing") == []
    assert [r["original_name"] for r in reports(layout)] == ["aaa-poison.jsonl"]


def test_a_file_that_cannot_be_finished_does_not_stop_the_others(layout, make_ingester, monkeypatch):
    real = inbox_module.move_no_replace

    def fail_one(path, folder, name=None):
        if path.name == "good-1.jsonl":
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real(path, folder, name)

    monkeypatch.setattr(inbox_module, "move_no_replace", fail_one)
    ingester = make_ingester()
    good_files(layout)
    report = ingester.drain()
    assert (report.ingested, report.stuck) == (2, 1)
    assert names(layout, "processing") == ["good-1.jsonl"]
    # It is committed; once it can move, the re-run sees it as already stored and only moves it.
    monkeypatch.setattr(inbox_module, "move_no_replace", real)
    ingester._deferred = {k: (0.0, n) for k, (_, n) in ingester._deferred.items()}
    report = ingester.drain()
    assert report.duplicates == 1 and names(layout, "processing") == []
    assert ingester.db.execute("SELECT count(*) FROM sources").fetchone()[0] == 3


def test_entries_that_are_not_regular_files_are_set_aside_once(layout, make_ingester, tmp_path):
    secret = tmp_path / "outside.jsonl"
    secret.write_text(conversation_jsonl("OUTSIDE-SECRET", 1))
    new = layout.inbox_folder("new")
    os.mkfifo(new / "pipe.jsonl")
    os.symlink(secret, new / "link.jsonl")
    (new / "folder.jsonl").mkdir()
    os.symlink(secret, layout.inbox_folder("processing") / "planted.jsonl")  # as if left by a crash
    good_files(layout, 1)
    ingester = make_ingester()
    with capture_logs() as logs:
        report = ingester.drain()
    assert report.set_aside == 4 and report.ingested == 1
    assert names(layout, "new") == names(layout, "processing") == []
    whats = sorted(r["reason"].split(",")[0] for r in reports(layout))
    assert whats == ["a FIFO (named pipe)", "a directory", "a symbolic link", "a symbolic link"]
    assert len([e for e in logs if e["event"] == "ingest.not_a_regular_file"]) == 4
    assert "OUTSIDE-SECRET" not in stored_texts(ingester.db)
    assert secret.exists() and (layout.inbox_folder("quarantine") / "link.jsonl").is_symlink()
    with capture_logs() as logs:
        assert ingester.drain().files == 0
    assert not [e for e in logs if e["event"] == "ingest.not_a_regular_file"]


@pytest.mark.parametrize("swap", ["fifo", "symlink"])
def test_a_swap_between_scan_and_claim_neither_hangs_nor_leaks(layout, make_ingester, monkeypatch, tmp_path, swap):
    """The scan sees a regular file; just before the claim, it is replaced by a FIFO (no writer:
    a blocking open would wait for ever) or by a symlink to a file outside the inbox."""
    secret = tmp_path / "outside.jsonl"
    secret.write_text(conversation_jsonl("OUTSIDE-SECRET", 1))
    ingester = make_ingester()
    put(layout, "victim.jsonl", conversation_jsonl("victim", 1).encode())
    good_files(layout, 1)
    real_claim = ingester.inbox.claim

    def claim_after_swap(path):
        if path.name == "victim.jsonl":
            os.unlink(path)
            os.mkfifo(path) if swap == "fifo" else os.symlink(secret, path)
        return real_claim(path)

    monkeypatch.setattr(ingester.inbox, "claim", claim_after_swap)
    result = {}
    worker = threading.Thread(target=lambda: result.update(report=ingester.drain()), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "the ingester hung on the swapped-in entry"
    report = result["report"]
    assert report.set_aside == 1 and report.ingested == 1
    assert "OUTSIDE-SECRET" not in stored_texts(ingester.db)
    assert names(layout, "processing") == [] and "victim.jsonl" in names(layout, "quarantine")


def test_done_names_of_one_file_name_never_collide_and_a_rerun_finds_its_own_link(layout, make_ingester):
    ingester = make_ingester()
    for i in range(5):  # five different files, all named conversations.json
        put(layout, "conversations.json", conversation_jsonl(f"same-name-{i}", 1).encode())
        assert ingester.drain().ingested == 1
    done = names(layout, "done")
    assert len(done) == 5 and len(set(done)) == 5
    # A crash between link and unlink leaves the file in both places: the re-run only unlinks it.
    processing = layout.inbox_folder("processing") / "conversations.json"
    os.link(layout.inbox_folder("done") / done[-1], processing)
    report = ingester.drain()
    assert report.duplicates == 1 and len(names(layout, "done")) == 5 and names(layout, "processing") == []


def test_done_is_pruned_by_retention(layout, make_ingester):
    ingester = make_ingester(done_keep_days=1)
    good_files(layout, 2)
    ingester.drain()
    assert len(names(layout, "done")) == 2
    assert ingester.inbox.prune_done(86400) == 0  # just ingested: kept
    assert ingester.inbox.prune_done(86400, now=os.stat(layout.inbox_folder("done")).st_ctime + 2 * 86400) == 2
    assert names(layout, "done") == []


def test_a_crash_between_link_and_unlink_into_quarantine_leaves_one_copy(layout, make_ingester):
    ingester = make_ingester()
    put(layout, "poison.jsonl", POISON)
    assert ingester.drain().quarantined == 1
    os.link(layout.inbox_folder("quarantine") / "poison.jsonl", layout.inbox_folder("processing") / "poison.jsonl")
    assert ingester.drain().quarantined == 1  # run again: found linked already, only unlinked
    assert names(layout, "quarantine") == ["poison.jsonl", "poison.jsonl.error.json"]
    assert names(layout, "processing") == []
