"""Inbox → database → graph, on the cheap test embedder (what is tested is the logic around it)."""

import json
import os
import re
import sqlite3
import threading
import time
from pathlib import Path

from structlog.testing import capture_logs

from dreamd.memory_graph.database.store import connect, integrity_ok
from dreamd.memory_graph.graph import MemoryGraph

SAMPLES = Path(__file__).resolve().parents[2] / "memory_graph" / "samples"
ALL_SAMPLES = sorted(p for p in SAMPLES.iterdir() if p.name != "README.md")


def counts(db):
    return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("sources", "messages", "memory_nodes", "edges", "embeddings")}


def folder(layout, name):
    return sorted(p.name for p in layout.inbox_folder(name).iterdir())


def conversation_jsonl(tag: str, n: int) -> str:
    return "\n".join(json.dumps({"messages": [
        {"role": "user", "content": f"{tag} question {i} about deploys and queues"},
        {"role": "assistant", "content": f"{tag} answer {i}: check the queue and the deploy window"}]})
        for i in range(n)) + "\n"


def test_every_sample_format_is_ingested_end_to_end(layout, make_ingester):
    ingester = make_ingester()
    for path in ALL_SAMPLES:
        ingester.inbox.drop(path)
    report = ingester.drain()
    assert (report.files, report.ingested, report.quarantined) == (6, 6, 0)
    formats = {o["format"] for o in report.outcomes}
    assert formats == {"openai", "sharegpt", "chatgpt", "claude", "transcript"}
    assert folder(layout, "done") == sorted(p.name for p in ALL_SAMPLES)
    assert folder(layout, "new") == folder(layout, "processing") == folder(layout, "tmp") == []
    c = counts(ingester.db)
    assert c["messages"] == 43 and c["memory_nodes"] == c["embeddings"] == 20
    kinds = dict(ingester.db.execute("SELECT kind, count(*) FROM edges GROUP BY kind").fetchall())
    assert kinds["temporal"] > 0 and kinds["semantic"] > 0 and kinds["same_conversation"] > 0
    # Every message knows its file and place; roles normalised.
    row = ingester.db.execute("SELECT s.name, m.position, m.role FROM messages m JOIN sources s ON s.id = m.source_id "
                              "WHERE m.text LIKE 'My sourdough%'").fetchone()
    assert row == ("chatgpt_conversations.json", "record 2, node m1", "user")
    # The view loaded fresh from the database equals the one kept up to date during ingest.
    fresh = MemoryGraph.load(ingester.db)
    assert fresh.ids.tolist() == ingester.graph.ids.tolist()
    assert fresh.conversations.tolist() == ingester.graph.conversations.tolist()
    for part in ("indptr", "indices", "cumulative"):
        assert getattr(fresh.snapshot(), part).tolist() == getattr(ingester.graph.snapshot(), part).tolist()
    assert fresh.snapshot().slots == 2 * len(fresh.to_networkx().edges) > 0
    assert integrity_ok(ingester.db)


def test_same_content_under_two_names_is_ingested_once_and_logged(layout, make_ingester, tmp_path):
    ingester = make_ingester()
    a, b = tmp_path / "monday.jsonl", tmp_path / "copy of monday.jsonl"
    a.write_text(conversation_jsonl("dup", 3))
    b.write_bytes(a.read_bytes())
    ingester.inbox.drop(a)
    ingester.drain()
    ingester.inbox.drop(b)
    with capture_logs() as logs:
        report = ingester.drain()
    assert report.duplicates == 1 and report.ingested == 0
    assert [e for e in logs if e["event"] == "ingest.duplicate"][0]["same_as"] == "monday.jsonl"
    assert counts(ingester.db)["messages"] == 6 and counts(ingester.db)["sources"] == 1
    assert folder(layout, "done") == ["copy of monday.jsonl", "monday.jsonl"]


def test_overlapping_export_adds_only_new_messages_and_links_them(layout, make_ingester, tmp_path):
    ingester = make_ingester()
    export = json.loads((SAMPLES / "claude_conversations.json").read_text())
    first = tmp_path / "conversations.json"
    first.write_text(json.dumps(export[:1]))
    ingester.inbox.drop(first)
    ingester.drain()
    export[0]["chat_messages"].append({"sender": "human", "text": "And for the error rate alert?"})
    export[0]["chat_messages"].append({"sender": "assistant", "text": "Same idea: a rate over 10 minutes."})
    first.write_text(json.dumps(export))  # re-exported later: one conversation grew, one is new
    ingester.inbox.drop(first)
    report = ingester.drain()
    assert report.outcomes[0]["duplicate_messages"] == 2 and report.messages == 4
    done = folder(layout, "done")  # the second of the same name: tagged with its inode, no scan for a free ~N
    assert done[0] == "conversations.json" and re.fullmatch(r"conversations~i\d+\.json", done[1]), done
    chain = ingester.db.execute(
        "SELECT e.kind FROM edges e JOIN memory_nodes a ON a.id = e.src JOIN memory_nodes b ON b.id = e.dst "
        "WHERE a.conversation_id = b.conversation_id AND a.conversation_id = 1").fetchall()
    assert ("temporal",) in chain  # the new exchange joined the stored conversation's chain


def test_bad_files_are_quarantined_with_a_reason_and_the_rest_goes_on(layout, make_ingester):
    ingester = make_ingester(max_file_bytes=10_000)
    new = layout.inbox_folder("new")
    (new / "empty.jsonl").write_bytes(b"")
    (new / "latin1.txt").write_bytes(b"User: hello\nAssistant: caf\xe9\n")
    (new / "huge.jsonl").write_text(conversation_jsonl("big", 200))
    (new / "broken.json").write_text('[{"mapping": ')
    (new / "fine.jsonl").write_text(conversation_jsonl("ok", 2))
    report = ingester.drain()
    assert (report.ingested, report.quarantined) == (1, 4)
    quarantine = layout.inbox_folder("quarantine")
    reasons = {name: json.loads((quarantine / f"{name}.error.json").read_text())
               for name in ("empty.jsonl", "latin1.txt", "huge.jsonl", "broken.json")}
    assert "empty" in reasons["empty.jsonl"]["reason"]
    assert "not UTF-8" in reasons["latin1.txt"]["reason"] and reasons["latin1.txt"]["where"] == "line 2"
    assert "max_file_bytes" in reasons["huge.jsonl"]["reason"]
    assert "invalid JSON" in reasons["broken.json"]["reason"] and reasons["broken.json"]["where"] == "line 1"
    assert counts(ingester.db)["messages"] == 4  # only fine.jsonl; nothing half-ingested


def test_malformed_records_are_counted_in_the_sources_row(make_ingester, layout):
    ingester = make_ingester()
    text = conversation_jsonl("x", 2) + "{oops\n" + json.dumps({"messages": "nope"}) + "\n"
    (layout.inbox_folder("new") / "partly.jsonl").write_text(text)
    ingester.drain()
    skipped, reasons = ingester.db.execute("SELECT skipped, skip_reasons FROM sources").fetchone()
    assert skipped == 2 and "line 3" in reasons and "line 4" in reasons


def test_dotfiles_and_tmp_are_never_read(make_ingester, layout):
    ingester = make_ingester()
    (layout.inbox_folder("new") / ".partial.jsonl").write_text(conversation_jsonl("hidden", 1))
    (layout.inbox_folder("tmp") / "staged.jsonl").write_text(conversation_jsonl("staged", 1))
    report = ingester.drain()
    assert report.files == 0 and counts(ingester.db)["messages"] == 0
    assert folder(layout, "new") == [".partial.jsonl"] and folder(layout, "tmp") == ["staged.jsonl"]


def test_a_slow_writer_is_not_ingested_until_the_file_is_stable(make_ingester, layout):
    ingester = make_ingester(stable_seconds=0.6)
    target = layout.inbox_folder("new") / "live.jsonl"
    lines = conversation_jsonl("slow", 6).splitlines(keepends=True)
    with open(target, "w") as handle:
        for line in lines:
            handle.write(line)
            handle.flush()
            assert ingester.drain().files == 0, "taken while still being written"
            time.sleep(0.25)
    assert counts(ingester.db)["messages"] == 0
    time.sleep(0.7)
    report = ingester.drain()
    assert report.ingested == 1 and counts(ingester.db)["messages"] == 12  # every line, none cut off


def test_leftovers_in_processing_are_run_again(make_ingester, layout):
    (layout.inbox_folder("processing") / "crashed.jsonl").write_text(conversation_jsonl("crash", 2))
    report = make_ingester().drain()
    assert report.ingested == 1 and folder(layout, "done") == ["crashed.jsonl"]
    assert folder(layout, "processing") == []


def test_committed_but_not_moved_is_finished_without_a_second_ingest(make_ingester, layout, tmp_path):
    ingester = make_ingester()
    source = tmp_path / "a.jsonl"
    source.write_text(conversation_jsonl("once", 2))
    ingester.inbox.drop(source)
    ingester.drain()
    # The crash window between COMMIT and the move: the file is back in processing/.
    os.rename(layout.inbox_folder("done") / "a.jsonl", layout.inbox_folder("processing") / "a.jsonl")
    report = make_ingester().drain()
    assert report.duplicates == 1 and counts(ingester.db)["messages"] == 4
    assert folder(layout, "processing") == [] and folder(layout, "done") == ["a.jsonl"]


def test_a_reader_holding_a_transaction_does_not_break_ingest(make_ingester, layout, tmp_path):
    ingester = make_ingester()
    reader = sqlite3.connect(layout.database)  # as `dreamctl status` will
    reader.execute("BEGIN")
    before = reader.execute("SELECT count(*) FROM messages").fetchone()[0]
    for i in range(3):
        (layout.inbox_folder("new") / f"f{i}.jsonl").write_text(conversation_jsonl(f"r{i}", 3))
    report = ingester.drain()
    assert report.ingested == 3
    assert reader.execute("SELECT count(*) FROM messages").fetchone()[0] == before  # its snapshot
    reader.execute("COMMIT")
    assert reader.execute("SELECT count(*) FROM messages").fetchone()[0] == 18
    reader.close()


def test_a_writer_holding_the_lock_briefly_only_delays_ingest(make_ingester, layout):
    ingester = make_ingester()
    other = connect(layout.database)
    other.conn.execute("BEGIN IMMEDIATE")
    (layout.inbox_folder("new") / "w.jsonl").write_text(conversation_jsonl("w", 2))
    release = threading.Timer(0.5, lambda: other.conn.execute("COMMIT"))
    release.start()
    report = ingester.drain()
    release.join()
    assert report.ingested == 1


def test_two_ingesters_on_one_inbox_store_everything_once(make_ingester, layout):
    for i in range(12):
        (layout.inbox_folder("new") / f"c{i}.jsonl").write_text(conversation_jsonl(f"c{i}", 4))
        (layout.inbox_folder("new") / f"c{i}-copy.jsonl").write_text(conversation_jsonl(f"c{i}", 4))
    first, second = make_ingester(), make_ingester()
    errors = []

    def run(ingester):
        try:
            ingester.drain()
        except BaseException as exc:  # a thread's exception would otherwise only be a warning
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(ing,)) for ing in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    db = first.db
    assert counts(db)["messages"] == 12 * 8
    assert db.execute("SELECT count(DISTINCT sha256) FROM messages").fetchone()[0] == 96
    assert len(folder(layout, "done")) == 24 and folder(layout, "new") == folder(layout, "processing") == []
    assert integrity_ok(db)


def test_progress_lines_while_a_backlog_is_ingested(make_ingester, layout):
    ingester = make_ingester(progress_seconds=1e-9)
    for i in range(5):
        (layout.inbox_folder("new") / f"p{i}.jsonl").write_text(conversation_jsonl(f"p{i}", 2))
    with capture_logs() as logs:
        ingester.drain()
    progress = [e for e in logs if e["event"] == "ingest.progress"]
    assert progress and progress[-1]["files_done"] == 5 and progress[-1]["files_total"] == 5
