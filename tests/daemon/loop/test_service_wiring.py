"""The service's default stages: the inbox stage is memory_graph's Ingester (and status reads what it
wrote); the child jobs are module-level functions the daemon can hold without importing torch."""

import pickle
import subprocess
import sys
from importlib import resources

from dreamd.daemon.config import config_from_dict
from dreamd.daemon.loop import default_stages, dream_cycle, reevaluate_current
from dreamd.daemon.loop import ingest as ingest_module
from dreamd.daemon.service.state_dir import StateLayout
from dreamd.daemon.service.status import collect_status
from dreamd.memory_graph.inbox import Inbox
from tests.helpers.fakes import HashEmbedder


def test_default_ingest_drains_the_inbox_into_the_graph(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_module, "Embedder", lambda settings: HashEmbedder())
    monkeypatch.setattr(ingest_module, "_ingesters", {})
    config = config_from_dict({"inbox": {"stable_seconds": 0.0}})
    layout = StateLayout(tmp_path / "state").ensure()
    sample = resources.files("dreamd.memory_graph").joinpath("samples", "team_chats.jsonl")
    Inbox(layout.inbox, config.inbox).drop(sample)

    result = default_stages().ingest(config, layout)
    assert result["files"] == 1 and result["ingested"] == 1 and result["messages"] > 0
    assert "outcomes" not in result

    status = collect_status(layout)
    assert status["inbox"] == {"new": 0, "processing": 0, "quarantine": 0}
    assert status["graph"]["messages"] == result["messages"]
    assert status["graph"]["nodes"] == result["nodes"] and status["graph"]["edges"] is not None
    assert status["database"] == "ok"

    again = default_stages().ingest(config, layout)  # the warm ingester is reused
    assert again["files"] == 0 and len(ingest_module._ingesters) == 1


def test_the_child_jobs_cross_to_a_spawned_child_by_reference():
    stages = default_stages()
    assert (stages.cycle, stages.reevaluate) == (dream_cycle, reevaluate_current)
    for job in (stages.cycle, stages.reevaluate):
        assert pickle.loads(pickle.dumps(job)) is job  # what spawn does with run_in_child's target


def test_the_daemon_holds_its_stages_without_importing_torch():
    code = ("import sys; from dreamd.daemon.service.runtime import Service; "
            "from dreamd.daemon.cli.dreamd import load_stages; load_stages(None); "
            "heavy = sorted({'torch', 'transformers'} & set(sys.modules)); assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
