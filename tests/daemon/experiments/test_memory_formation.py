"""The memory-formation experiment's pure parts: its facts and logs, its settings, and the report
written from results (made-up numbers here; tests/integration/test_experiment.py runs it for real)."""

import json
import math
import re

import pytest

from dreamd.daemon.config import Config, config_from_dict
from dreamd.daemon.experiments.memory_formation.facts import (
    CONCEPTS,
    SLOTS,
    conversations,
    heldout_probes,
    training_exchanges,
    write_logs,
)
from dreamd.daemon.experiments.memory_formation.report import summary_lines, table_markdown, verdicts, write_artefacts
from dreamd.daemon.experiments.memory_formation.run import ExperimentSettings, arm_config
from dreamd.memory_graph.formats.parse import parse_bytes


def test_held_out_questions_never_appear_in_the_logs(tmp_path):
    for concept in CONCEPTS:
        logged = " ".join(path.read_text() for path in write_logs(concept, tmp_path / concept)).lower()
        trained_questions = {q.lower() for q, _a in training_exchanges(concept)}
        for probe in heldout_probes(concept):
            assert probe.question.lower() not in logged, probe.question
            assert probe.question.lower() not in trained_questions


def test_the_two_concepts_share_slots_but_differ_in_every_value():
    assert len(SLOTS) == 12 and len({s.key for s in SLOTS}) == 12
    for slot in SLOTS:
        zypher, zyphrex = slot.values["Zypher"], slot.values["Zyphrex"]
        assert zypher != zyphrex, slot.key
        # Each accepted string is in its own value and not in the other's: a confusion is unambiguous.
        for own, other in (("Zypher", "Zyphrex"), ("Zyphrex", "Zypher")):
            assert any(a.lower() in slot.values[own].lower() for a in slot.accept[own]), slot.key
            assert not any(a.lower() in slot.values[other].lower() for a in slot.accept[own]), slot.key
    z, x = heldout_probes("Zypher"), heldout_probes("Zyphrex")
    assert [p.slot for p in z] == [p.slot for p in x] and len(z) == 24
    assert all(p.value in p.reference and p.concept in p.question for p in z + x)
    # Same questions, other name: the interference is real.
    assert [p.question.replace("Zypher", "X") for p in z] == [p.question.replace("Zyphrex", "X") for p in x]


def test_logs_parse_as_chat_jsonl_and_hold_only_their_own_concept(tmp_path):
    for concept, other in (("Zypher", "Zyphrex"), ("Zyphrex", "Zypher")):
        paths = write_logs(concept, tmp_path / concept)
        messages = sum(parse_bytes(p.read_bytes()).message_count for p in paths)
        assert messages == 2 * len(training_exchanges(concept)) == 72
        text = " ".join(p.read_text() for p in paths)
        assert not re.search(rf"\b{other}\b", text) and re.search(rf"\b{concept}\b", text)
    # A conversation mixes several facts, and the shuffle is fixed.
    assert conversations("Zypher") == conversations("Zypher")
    assert len({m["content"] for m in conversations("Zypher")[0] if m["role"] == "user"}) == 4


def test_quick_settings_and_the_arm_config():
    quick = ExperimentSettings.quick_run(seed=3)
    assert (quick.cycles_per_phase, quick.facts, quick.heldout_per_fact, quick.seed, quick.quick) == (1, 6, 1, 3, True)
    with pytest.raises(ValueError):
        ExperimentSettings(facts=13)
    base = config_from_dict({"training": {"mode": "full"}})
    raw = arm_config(base, "/models/x", ExperimentSettings())
    config = config_from_dict(raw)  # still a valid config
    assert config.training.mode == "lora" and config.training.lora_learning_rate == 2e-3
    assert config.model.path == "/models/x" and config.dreams.per_cycle == 8
    assert Config().training.lora_learning_rate == 1e-4  # the daemon's own default is untouched


# --- the report on made-up results ---------------------------------------------------------------

def measurement(z_recall, z_logp, x_recall, x_logp, probe_loss=1.0, probe_acc=0.6, z_conf=0.0):
    return {"Zypher": {"recall": z_recall, "logprob": z_logp, "confusion": z_conf},
            "Zyphrex": {"recall": x_recall, "logprob": x_logp, "confusion": 0.0},
            "probes": {"loss": probe_loss, "accuracy": probe_acc}, "seconds": 1.0}


def fake_results(loop, plain, steps=(10, 12), outcomes=("promoted", "rejected")):
    base = measurement(0.0, -5.0, 0.0, -5.0)
    phases = ("acquisition", "interference")

    def arm(ms, with_outcomes):
        points = [{"index": 0, "phase": "start", "cycle": 0, "steps": 0, "measurement": base}]
        for i, m in enumerate(ms, 1):
            point = {"index": i, "phase": phases[i - 1], "cycle": 1, "steps": steps[i - 1], "measurement": m}
            if with_outcomes:
                point.update(outcome=outcomes[i - 1], gate_reasons=["probe loss rose 3%"])
            points.append(point)
        return points

    return {
        "settings": {"cycles_per_phase": 1, "lora_learning_rate": 1e-3, "epochs": 2, "batch_size": 4, "seed": 0,
                     "dreams_per_cycle": 4, "replay_fraction": 0.75},
        "model": "tiny", "quick": True, "concepts": ["Zypher", "Zyphrex"],
        "probes": {"Zypher": [{}] * 6, "Zyphrex": [{}] * 6}, "timings": {"total": 90.0},
        "arms": {"dream_loop": arm(loop, True), "plain_finetune": arm(plain, False),
                 "no_training": [{"index": i, "phase": p, "cycle": 1, "steps": 0, "measurement": base}
                                 for i, p in enumerate(("start",) + phases)]},
        "budget": {"acquisition": {"dream_loop": steps[0], "plain_finetune": steps[0], "no_training": 0},
                   "interference": {"dream_loop": steps[1], "plain_finetune": steps[1], "no_training": 0}},
    }


def test_verdicts_state_failures_plainly():
    # The plain arm learns more and forgets less: every claim in the loop's favour fails.
    results = fake_results(loop=[measurement(0.0, -4.0, 0.0, -5.0), measurement(0.0, -4.5, 0.0, -4.0)],
                           plain=[measurement(0.5, -2.0, 0.0, -5.0), measurement(0.33, -3.0, 0.5, -2.0)])
    text = " ".join(verdicts(results))
    assert "The dream loop did NOT learn the Zypher" in text
    assert "Plain fine-tuning learned the Zypher" in text
    assert "did NOT beat plain fine-tuning on Zypher recall after acquisition (it recalled less)" in text
    assert "did NOT keep more of the Zypher" in text
    summary = "\n".join(summary_lines(results))
    assert "1 of 2 dream-loop cycles were promoted; 1 rejected, first for: probe loss rose 3%" in summary
    assert "budgets differ" not in summary


def test_verdicts_credit_the_loop_when_the_numbers_do():
    results = fake_results(loop=[measurement(0.5, -2.0, 0.0, -5.0), measurement(0.5, -2.2, 0.33, -3.0)],
                           plain=[measurement(0.5, -2.0, 0.0, -5.0), measurement(0.0, -4.0, 0.5, -2.0)])
    text = " ".join(verdicts(results))
    assert "after acquisition (they were level)" in text
    assert "After interference the dream loop kept more of the Zypher than plain fine-tuning" in text
    assert "recalled less than plain fine-tuning" in text  # on the Zyphrex


def test_artefacts_from_results(tmp_path):
    results = fake_results(loop=[measurement(0.17, -3.0, 0.0, -5.0), measurement(0.17, -3.2, 0.17, -3.0)],
                           plain=[measurement(0.33, -2.5, 0.0, -5.0), measurement(0.0, -4.0, 0.33, -2.5)],
                           steps=(8, 8))
    results["arms"]["dream_loop"][2]["candidate_measurement"] = measurement(0.2, -2.9, 0.3, -2.8)
    written = write_artefacts(results, tmp_path)
    names = {p.name for p in written}
    assert {"table.md", "summary.md", "index.html", "zypher-recall.png", "probes-loss.png"} <= names
    page = (tmp_path / "index.html").read_text()
    for png in (n for n in names if n.endswith(".png")):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f'src="{png}"' in page
    table = table_markdown(results)
    assert table.count("| 2 | interference | 1 | 8 |") == 2  # (a) and (b) rows, same budget
    json.dumps(results)  # still JSON
    assert all(math.isfinite(float(x)) for x in (results["budget"]["acquisition"]["dream_loop"],))
