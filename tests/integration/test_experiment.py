"""`dreamctl experiment memory-formation --quick` on the real default model: the artefacts exist, and
the numbers are finite and consistent with the protocol (not whether the loop wins: that is the
experiment's finding, reported in its summary, not a property to assert)."""

import json
import math

import pytest
from click.testing import CliRunner

from dreamd.daemon.cli.dreamctl import main
from tests.helpers.anchors import share_anchors

# About half an hour on 2 cores (five arms, the 230-item probe bank at every checkpoint): out of
# the default run; `pytest -m slow` runs it. tests/integration/test_learning.py covers the loop's
# learning on the real model in the default run.
pytestmark = [pytest.mark.real_model, pytest.mark.slow]

PNG = b"\x89PNG\r\n\x1a\n"


def numbers(value):
    """Every number in a nested structure (bools are not numbers here)."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from numbers(v)


def test_quick_memory_formation_experiment(default_model_dir, default_anchor_cache, tmp_path):
    share_anchors(default_anchor_cache, tmp_path / "state")
    config = tmp_path / "dreamd.toml"
    config.write_text(f'[model]\npath = "{default_model_dir}"\ndevice = "cpu"\n')
    out = tmp_path / "mf"
    result = CliRunner().invoke(main, ["--config", str(config), "--state-dir", str(tmp_path / "state"),
                                       "experiment", "memory-formation", "--quick", "--out", str(out), "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    reply = json.loads(result.stdout.strip().splitlines()[-1])
    assert reply["out"] == str(out) and "Plainly" in reply["summary"]

    # The artefacts: every PNG a real PNG, linked from the page with the other files.
    results = json.loads((out / "results.json").read_text())
    page = (out / "index.html").read_text()
    pngs = [name for name in results["artefacts"] if name.endswith(".png")]
    assert len(pngs) >= 6
    for name in pngs:
        data = (out / name).read_bytes()
        assert data[:8] == PNG and len(data) > 2000, name
        assert f'src="{name}"' in page
    for name in ("results.json", "table.md", "summary.md"):
        assert (out / name).stat().st_size > 0 and f'href="{name}"' in page
    assert "(a) full dream loop" in (out / "table.md").read_text()

    # The numbers: finite, in range, and consistent with the protocol.
    arms = results["arms"]
    assert all(math.isfinite(x) for x in numbers(arms))
    cycles = results["settings"]["cycles_per_phase"]
    assert all(len(points) == 1 + 2 * cycles for points in arms.values())
    assert set(arms) == {"dream_loop", "plain_finetune", "no_training", "replay_only", "full_backprop"}
    for key in ("zypher_recall_acquired", "zypher_recall_after_interference", "zyphrex_recall",
                "probe_accuracy_drop", "probe_loss_rise", "plain_zypher_after_interference",
                "plain_probe_accuracy_drop"):
        assert math.isfinite(reply[key]), key
    base = arms["no_training"][0]["measurement"]
    assert all(p["measurement"] == base for p in arms["no_training"])  # (c): the same model throughout
    assert arms["dream_loop"][0]["measurement"] == base == arms["plain_finetune"][0]["measurement"]
    for phase, per_arm in results["budget"].items():
        assert per_arm["dream_loop"] == per_arm["plain_finetune"], phase  # the same step budget
    for a, b in zip(arms["dream_loop"], arms["plain_finetune"], strict=True):
        assert ((a["index"], a["phase"], a["steps"], a["examples"])
                == (b["index"], b["phase"], b["steps"], b["examples"]))
    for points in arms.values():
        for point in points:
            m = point["measurement"]
            for concept in results["concepts"]:
                assert 0 <= m[concept]["recall"] <= 1 and 0 <= m[concept]["confusion"] <= 1
                assert m[concept]["logprob"] <= 0
                assert len(m[concept]["per_question"]) == len(results["probes"][concept])
            assert 0 <= m["probes"]["accuracy"] <= 1 and m["probes"]["loss"] > 0
    # A dream-loop cycle that promoted nothing leaves `current`, and so every number, where it was.
    loop = arms["dream_loop"]
    for before, after in zip(loop, loop[1:]):
        if after.get("outcome") != "promoted":
            assert after["checkpoint"] == before["checkpoint"] and after["measurement"] == before["measurement"]
        else:
            assert after["checkpoint"] == after["candidate"]
