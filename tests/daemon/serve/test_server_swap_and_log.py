"""A real `dreamd serve` following `current` (promotion mid-stream, rollback, a corrupt checkpoint)
and writing its chats into the inbox, which the ingester then takes in once per new exchange."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from dreamd.daemon.cli.dreamctl import main as dreamctl
from dreamd.daemon.service.state_dir import StateLayout
from dreamd.memory_graph.ingest import Ingester
from dreamd.memory_graph.settings import GraphSettings, InboxSettings
from dreamd.trainers.checkpoints.manifest import checkpoint_dir
from dreamd.trainers.checkpoints.pointers import rollback, set_pointer
from tests.helpers.fakes import HashEmbedder
from tests.helpers.serve_process import ServeProcess, full_checkpoint, save_long_tiny_model

NO_END = {"0": -100, "1": -100, "2": -100}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-swap")
    layout = StateLayout(root / "state").ensure()
    model = save_long_tiny_model(root / "model")
    process = ServeProcess(root, model, "log_batch_conversations = 3\nlog_batch_seconds = 1.0\nmax_tokens = 3000\n")
    process.layout = layout
    process.checkpoints = {name: full_checkpoint(layout.checkpoints, save_long_tiny_model(root / name, seed=seed))
                           for name, seed in (("A", 1), ("B", 2))}
    yield process.start()
    process.stop()


def answered_by(client, model: str = "dreamd") -> str:
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=2, store=False).system_fingerprint


def test_promotion_mid_stream_rollback_and_a_corrupt_checkpoint(server):
    client, layout, ids = server.client(), server.layout, server.checkpoints
    stream = client.chat.completions.create(model="dreamd", messages=[{"role": "user", "content": "go on"}],
                                            max_tokens=1500, logit_bias=NO_END, stream=True, store=False)
    first = next(iter(stream))
    assert first.system_fingerprint == "base"

    set_pointer(layout, "current", ids["A"])  # promotion
    swapped = server.wait_status(lambda s: s.get("checkpoint") == ids["A"])
    assert swapped["queue"] >= 1, "the stream must still be generating when the new version is in place"
    rest = list(stream)
    assert {chunk.system_fingerprint for chunk in rest} == {"base"}
    assert len("".join(c.choices[0].delta.content or "" for c in [first, *rest] if c.choices)) == 1500  # all of it
    assert answered_by(client) == ids["A"]
    assert answered_by(client, "base") == "base"
    assert [m.checkpoint for m in client.models.list().data] == [ids["A"], "base"]

    set_pointer(layout, "current", ids["B"])
    server.wait_status(lambda s: s.get("checkpoint") == ids["B"])
    assert answered_by(client) == ids["B"]
    rollback(layout, ids["A"])
    server.wait_status(lambda s: s.get("checkpoint") == ids["A"])
    assert answered_by(client) == ids["A"]

    broken = full_checkpoint(layout.checkpoints, server.root / "A")
    weights = checkpoint_dir(layout.checkpoints, broken) / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    set_pointer(layout, "current", broken, verify=False)  # what a bit flip on disk would look like
    status = server.wait_status(lambda s: broken in (s.get("load_errors") or {}))
    assert "sha256 differs" in status["load_errors"][broken]
    assert status["checkpoint"] == ids["A"] and answered_by(client) == ids["A"]
    rollback(layout, ids["A"])
    server.wait_status(lambda s: not s.get("load_errors"))


def test_chats_land_in_the_inbox_batched_and_are_ingested_once_per_exchange(server):
    client, layout = server.client(), server.layout
    before = server.status()["conversations_logged"]

    def ask(messages, **extra) -> str:
        reply = client.chat.completions.create(model="dreamd", messages=messages, max_tokens=8, temperature=1.0,
                                               seed=len(messages), logit_bias=NO_END, **extra)
        return reply.choices[0].message.content

    first = [{"role": "user", "content": "Where is the zorb kept?"}]
    a1 = ask(first)
    second = [*first, {"role": "assistant", "content": a1}, {"role": "user", "content": "And the key?"}]
    a2 = ask(second)
    ask([{"role": "user", "content": "Something else entirely."}])  # the third: a batch of 3 is written now
    ask([{"role": "user", "content": "my password is hunter2"}], store=False)
    server.wait_status(lambda s: s["conversations_logged"] == before + 3, timeout=10)
    third = [*second, {"role": "assistant", "content": a2}, {"role": "user", "content": "Thanks!"}]
    ask(third)  # alone: written once log_batch_seconds (1 s) have passed
    server.wait_status(lambda s: s["conversations_logged"] == before + 4, timeout=10)

    files = sorted(layout.inbox_folder("new").glob("served-*.jsonl"))
    records = [json.loads(line) for path in files for line in path.read_text().splitlines()]
    assert len(files) == 2 and len(records) == 4
    assert "hunter2" not in "".join(path.read_text() for path in files)
    assert len({r["id"] for r in records}) == 2  # the continued conversation keeps its id

    ingester = Ingester(layout.inbox, layout.database, HashEmbedder(), InboxSettings(stable_seconds=0.0),
                        GraphSettings())
    report = ingester.drain()
    assert report.ingested == 2 and report.quarantined == 0
    # Conversation one: 6 messages in 3 exchanges (each stored once though sent up to 3 times),
    # conversation two: 2 messages in 1 exchange.
    assert report.messages == 8 and report.nodes == 4 and report.duplicate_messages == 6
    rows = ingester.db.execute("SELECT text FROM messages").fetchall()
    assert "Thanks!" in {row[0] for row in rows} and not any("hunter2" in row[0] for row in rows)
    assert ingester.drain().files == 0  # nothing is taken twice
    ingester.db.close()


def test_dreamctl_status_shows_the_server_and_a_stop_writes_what_is_pending(server):
    client = server.client()
    client.chat.completions.create(model="dreamd", messages=[{"role": "user", "content": "last words"}],
                                   max_tokens=4)
    shown = CliRunner().invoke(dreamctl, ["--state-dir", str(server.state), "status", "--json"])
    status = json.loads(shown.output)["server"]
    assert status["state"] == "serving" and status["address"] == server.address
    assert status["checkpoint"] == server.checkpoints["A"] and status["requests_served"] >= 10
    assert server.stop() == 0  # within log_batch_seconds: the stop itself writes the pending chat
    assert any("last words" in path.read_text() for path in server.layout.inbox_folder("new").glob("served-*"))
    after = CliRunner().invoke(dreamctl, ["--state-dir", str(server.state), "status"]).output
    assert "stopped" in next(line for line in after.splitlines() if line.startswith("server"))
