"""A full disk at each write site: a clear error, nothing half-written, and recovery by itself
once space is back.

No tmpfs can be mounted without privileges here, so the disk fills in two real ways: SQLite's own
`max_page_count` (the database answers SQLITE_FULL exactly as on a full disk) and OSError(ENOSPC)
raised at the inbox's and the checkpoints' write calls, after part of the data is written.
"""

from __future__ import annotations

import errno
import os

import pytest

import dreamd.memory_graph.inbox as inbox_module
import dreamd.memory_graph.inbox_placement as inbox_placement
import dreamd.trainers.atomic as atomic
from dreamd.memory_graph.ingest import DiskFull
from dreamd.trainers.checkpoints import space
from dreamd.trainers.checkpoints.manifest import Manifest, checkpoint_ids, new_checkpoint_id, write_checkpoint
from dreamd.trainers.checkpoints.pointers import read_pointer, set_pointer, verify_loadable
from dreamd.trainers.round import train_round
from dreamd.trainers.settings import TrainingSettings
from tests.helpers.train import chats, tiny_loaded
from tests.memory_graph.test_ingest import conversation_jsonl
from tests.reliability.test_inbox_hostile import POISON, good_files, names, put, reports


def enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def sources(ingester) -> int:
    return ingester.db.execute("SELECT count(*) FROM sources").fetchone()[0]


def no_half_written(layout) -> None:
    for folder in ("tmp", "quarantine", "done"):
        assert not [n for n in names(layout, folder) if n.startswith(".")], folder  # no staged leftovers
    quarantined = names(layout, "quarantine")
    for name in quarantined:  # no report without its file, no file without its report
        partner = name[: -len(".error.json")] if name.endswith(".error.json") else name + ".error.json"
        assert partner in quarantined, name


def test_the_database_full_stops_the_drain_and_it_resumes(layout, make_ingester):
    ingester = make_ingester()
    for i in range(3):  # big enough to need new pages
        put(layout, f"big-{i}.jsonl", conversation_jsonl(f"big{i}", 100).encode())
    pages = ingester.db.execute("PRAGMA page_count").fetchone()[0]
    ingester.db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite now answers SQLITE_FULL
    with pytest.raises(DiskFull, match="no space left on the device while storing"):
        ingester.drain()
    assert sources(ingester) == 0 and names(layout, "done") == []  # the transaction rolled back whole
    assert len(names(layout, "processing")) + len(names(layout, "new")) == 3
    no_half_written(layout)
    ingester.db.execute("PRAGMA max_page_count = 1073741823")  # space is back
    report = ingester.drain()
    assert report.ingested == 3 and sources(ingester) == 3
    assert names(layout, "processing") == names(layout, "new") == []


@pytest.mark.parametrize("site", ["quarantine report", "finish", "claim"])
def test_enospc_at_each_inbox_write_site(layout, make_ingester, monkeypatch, site):
    ingester = make_ingester()
    put(layout, "aaa-poison.jsonl", POISON)
    good_files(layout, 2)
    if site == "quarantine report":
        real = inbox_placement._copy_bytes

        def half(data, target):  # half the report reaches the disk, then it is full
            real(data[: len(data) // 2], target)
            enospc()

        monkeypatch.setattr(inbox_placement, "_copy_bytes", half)
    elif site == "finish":
        monkeypatch.setattr(inbox_module, "move_no_replace", enospc)
    else:
        monkeypatch.setattr(inbox_module.Inbox, "claim", enospc)
    with pytest.raises(DiskFull, match="no space left on the device"):
        ingester.drain()
    no_half_written(layout)
    # Nothing reached done/; each file is still in the inbox, or (the poison one, if its move came
    # before the disk filled) in quarantine with its report.
    waiting = len(names(layout, "processing")) + len(names(layout, "new"))
    assert names(layout, "done") == [] and waiting + len(reports(layout)) == 3
    monkeypatch.undo()  # space is back
    report = ingester.drain()
    assert report.quarantined + len(reports(layout)) >= 1 and report.ingested + report.duplicates == 2
    assert sources(ingester) == 2 and len(names(layout, "done")) == 2
    assert [r["original_name"] for r in reports(layout)] == ["aaa-poison.jsonl"]
    no_half_written(layout)


def note_checkpoint(layout, parent=None) -> str:
    manifest = Manifest(id=new_checkpoint_id(), parent=parent, step=1, created_at=0.0, mode="lora", config={},
                        files={}, examples=[])
    write_checkpoint(layout.checkpoints, manifest, lambda tmp: (tmp / "note.txt").write_text("x" * 1000))
    return manifest.id


@pytest.mark.parametrize("phase", ["writing", "files_synced"])
def test_enospc_during_a_checkpoint_write_keeps_the_old_one_and_both_pointers(layout, phase):
    first = note_checkpoint(layout)
    set_pointer(layout, "current", first)
    set_pointer(layout, "last_good", first)
    manifest = Manifest(id=new_checkpoint_id(), parent=first, step=2, created_at=0.0, mode="lora", config={},
                        files={}, examples=[])

    def write_files(tmp):
        (tmp / "adapter.safetensors").write_bytes(b"\0" * 4096)
        if phase == "writing":
            enospc()

    with pytest.raises(OSError, match="no space left on the device while writing checkpoint") as caught:
        write_checkpoint(layout.checkpoints, manifest, write_files,
                         on_phase=lambda name: enospc() if name == phase else None)
    assert caught.value.errno == errno.ENOSPC
    assert os.listdir(layout.checkpoints) == [first]  # neither the new folder nor its .tmp
    assert read_pointer(layout, "current") == read_pointer(layout, "last_good") == first
    verify_loadable(layout, first)
    assert note_checkpoint(layout, parent=first) in checkpoint_ids(layout.checkpoints)  # space back: works


def test_enospc_while_moving_a_pointer_leaves_the_old_pointer(layout, monkeypatch):
    first, second = note_checkpoint(layout), note_checkpoint(layout)
    set_pointer(layout, "current", first)
    monkeypatch.setattr(atomic.os, "fsync", enospc)
    with pytest.raises(OSError):
        set_pointer(layout, "current", second)
    monkeypatch.undo()
    assert read_pointer(layout, "current") == first
    assert [p.name for p in layout.root.iterdir() if p.name.endswith(".tmp")] == []


def test_a_round_that_could_not_write_its_checkpoint_is_refused_before_training(layout, monkeypatch):
    settings = TrainingSettings(mode="lora", batch_size=2, epochs=1)
    steps = []
    monkeypatch.setattr(space, "free_bytes", lambda folder: 1024 * 1024)  # 1 MiB free
    with pytest.raises(OSError, match="training round not started") as caught:
        train_round(tiny_loaded(), chats(2), settings, layout, on_step=lambda *a: steps.append(a))
    assert caught.value.errno == errno.ENOSPC
    assert steps == [] and checkpoint_ids(layout.checkpoints) == []
    monkeypatch.undo()
    assert train_round(tiny_loaded(), chats(2), settings, layout) in checkpoint_ids(layout.checkpoints)


def test_the_space_needed_follows_the_newest_checkpoint_of_the_mode(layout):
    first = note_checkpoint(layout)
    bigger = layout.checkpoints / first / "note.txt"
    bigger.write_bytes(b"\0" * (8 * 2**20))  # the newest lora checkpoint: 8 MiB
    needed = space.checkpoint_bytes_needed(layout.checkpoints, "lora", trainable_bytes=1000, model_bytes=10**9)
    assert 8 * 2**20 * space.MARGIN <= needed - space.SLACK_BYTES < 9 * 2**20 * space.MARGIN
    full = space.checkpoint_bytes_needed(layout.checkpoints, "full", trainable_bytes=1000, model_bytes=10**9)
    assert full > 10**9  # no full checkpoint yet: the whole model is counted
