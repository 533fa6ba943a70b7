"""The service's default inbox stage is memory_graph's Ingester, and status reads what it wrote."""

from importlib import resources

from dreamd.daemon.loop import stages
from dreamd.daemon.service.child import resolve
from dreamd.daemon.config import config_from_dict
from dreamd.daemon.service.state_dir import StateLayout
from dreamd.daemon.service.status import collect_status
from dreamd.memory_graph.inbox import Inbox
from tests.helpers.fakes import HashEmbedder


def test_default_ingest_drains_the_inbox_into_the_graph(tmp_path, monkeypatch):
    monkeypatch.setattr("dreamd.memory_graph.embedder.Embedder", lambda settings: HashEmbedder())
    monkeypatch.setattr(stages, "_ingesters", {})
    config = config_from_dict({"inbox": {"stable_seconds": 0.0}})
    layout = StateLayout(tmp_path / "state").ensure()
    sample = resources.files("dreamd.memory_graph").joinpath("samples", "team_chats.jsonl")
    Inbox(layout, config.inbox).drop(sample)

    result = stages.default_stages().ingest(config, layout)
    assert result["files"] == 1 and result["ingested"] == 1 and result["messages"] > 0
    assert "outcomes" not in result

    status = collect_status(layout)
    assert status["inbox"] == {"new": 0, "processing": 0, "quarantine": 0}
    assert status["graph"]["messages"] == result["messages"]
    assert status["graph"]["nodes"] == result["nodes"] and status["graph"]["edges"] is not None
    assert status["database"] == "ok"

    again = stages.default_stages().ingest(config, layout)  # the warm ingester is reused
    assert again["files"] == 0 and len(stages._ingesters) == 1


def test_every_cycle_stage_is_wired_and_an_unwired_one_is_reported():
    assert [name for name, target in stages.CYCLE_STEPS if target is None] == []
    for _name, target in stages.CYCLE_STEPS:
        assert callable(resolve(target))
    assert callable(resolve(stages.REEVALUATE_TARGET))
    result = stages.run_cycle({}, "/nonexistent", steps=(("dreams", None), ("gate", "x:y")))
    assert result["outcome"] == "skipped" and result["not_wired"] == ["dreams"]


def test_cycle_runs_wired_steps_in_order_and_stops_early(tmp_path):
    steps = (("a", "tests.daemon.loop.test_service_wiring:step_a"), ("gate", "tests.daemon.loop.test_service_wiring:step_stop"),
             ("promote", "tests.daemon.loop.test_service_wiring:step_a"))
    result = stages.run_cycle({"x": 1}, str(tmp_path), steps=steps)
    assert result["outcome"] == "rejected" and result["stopped_at"] == "gate"
    assert result["steps"]["a"] == {"saw": ["config", "state_root"]}


def step_a(context):
    return {"saw": sorted(context)}


def step_stop(context):
    assert context["a"]["saw"] == ["config", "state_root"]
    return {"stop": True, "outcome": "rejected"}
