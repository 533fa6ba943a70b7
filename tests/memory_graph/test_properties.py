"""Property tests: whatever lands in the inbox, the ingester does not crash, and every file ends
either in the database (done/ with a sources row) or in quarantine/ with a reason.
On the cheap test embedder: what is tested is the parsing and the bookkeeping around it."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dreamd.daemon.service.state_dir import StateLayout
from dreamd.memory_graph.formats.parse import parse_bytes
from dreamd.memory_graph.formats.records import ParseError
from dreamd.memory_graph.ingest import Ingester
from dreamd.memory_graph.settings import GraphSettings, InboxSettings
from tests.helpers.fakes import HashEmbedder

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
    | st.sampled_from(["user", "assistant", "human", "gpt", "system", "messages", "role", "content"]),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(
        st.sampled_from(["messages", "role", "content", "conversations", "from", "value", "mapping", "parent",
                         "children", "message", "author", "parts", "current_node", "chat_messages", "sender",
                         "text", "created_at", "id"]) | st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)


def ends_somewhere(tmp_path_factory, name: str, data: bytes):
    layout = StateLayout(tmp_path_factory.mktemp("prop") / "state").ensure()
    ingester = Ingester(layout.inbox, layout.database, HashEmbedder(8), InboxSettings(stable_seconds=0.0),
                        GraphSettings())
    (layout.inbox_folder("new") / name).write_bytes(data)
    report = ingester.drain()
    done = list(layout.inbox_folder("done").iterdir())
    quarantined = [p for p in layout.inbox_folder("quarantine").iterdir() if not p.name.endswith(".error.json")]
    assert not list(layout.inbox_folder("processing").iterdir()) and not list(layout.inbox_folder("new").iterdir())
    if done:
        assert report.ingested == 1 and not quarantined
        assert ingester.db.execute("SELECT count(*) FROM sources").fetchone()[0] == 1
    else:
        assert report.quarantined == 1 and len(quarantined) == 1
        error = json.loads((layout.inbox_folder("quarantine") / f"{name}.error.json").read_text())
        assert error["reason"] and "internal error" not in error["reason"], error  # a reason, not a bug
        assert ingester.db.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
    ingester.db.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes(tmp_path_factory, data):
    ends_somewhere(tmp_path_factory, "blob.bin", data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_values, lines=st.booleans())
def test_arbitrary_json(tmp_path_factory, value, lines):
    text = (json.dumps(value) + "\n" + json.dumps(value)) if lines else json.dumps(value)
    ends_somewhere(tmp_path_factory, "doc.json", text.encode())


@settings(max_examples=300, deadline=None)
@given(value=json_values)
def test_the_parser_only_ever_raises_parse_error(value):
    try:
        parse_bytes(json.dumps(value).encode())
    except ParseError:
        pass


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("UserAsitn:SystemHuman \n-={}[]\"x")), max_size=200))
def test_transcript_like_text_never_crashes(text):
    try:
        parsed = parse_bytes(text.encode())
    except ParseError:
        return
    assert all(m.text and m.role in ("system", "user", "assistant", "tool")
               for c in parsed.conversations for m in c.messages)
