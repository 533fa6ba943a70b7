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
from dreamd.daemon.experiments.memory_formation.report import (
    curves,
    present,
    summary_lines,
    table_markdown,
    verdicts,
    write_artefacts,
)
from dreamd.daemon.experiments.memory_formation.run import ARMS, ExperimentSettings, arm_config, headline
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
    assert (quick.cycles_per_phase, quick.dreams_per_cycle, quick.facts, quick.heldout_per_fact, quick.seed,
            quick.quick) == (1, 16, 6, 1, 3, True)
    with pytest.raises(ValueError):
        ExperimentSettings(facts=13)
    with pytest.raises(ValueError):
        ExperimentSettings(dreams_per_cycle=300)
    base = config_from_dict({"training": {"mode": "full", "epochs": 3}, "dreams": {"anchor_fraction": 0.1}})
    raw = arm_config(base, "/models/x", ExperimentSettings(seed=5))
    config = config_from_dict(raw)  # still a valid config
    # The daemon's settings as the operator has them: only the model, the dream count and the seed are set.
    assert (config.training.mode, config.training.epochs, config.training.seed) == ("full", 3, 5)
    assert config.dreams.anchor_fraction == 0.1 and config.signal == base.signal and config.gate == base.gate
    assert config.model.path == "/models/x" and config.dreams.per_cycle == Config().dreams.per_cycle == 32
    assert config_from_dict(arm_config(base, "/m", ExperimentSettings(dreams_per_cycle=8))).dreams.per_cycle == 8
    # The learning rate is the daemon's (no experiment-only rate), and the operator's config is not changed.
    assert config.training.lora_learning_rate == Config().training.lora_learning_rate
    assert base.to_dict()["model"]["path"] != "/models/x"


# --- the report on made-up results ---------------------------------------------------------------

def measurement(z_recall, z_logp, x_recall, x_logp, probe_loss=1.0, probe_acc=0.6, z_conf=0.0, anchor_kl=0.0):
    return {"Zypher": {"recall": z_recall, "logprob": z_logp, "confusion": z_conf},
            "Zyphrex": {"recall": x_recall, "logprob": x_logp, "confusion": 0.0},
            "probes": {"loss": probe_loss, "accuracy": probe_acc}, "anchor_kl": anchor_kl, "seconds": 1.0}


def fake_results(loop, plain, steps=(10, 12), outcomes=("promoted", "rejected"), others=None):
    """Made-up results of the three arms (a)-(c); `others` adds arms by name (their measurements)."""
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

    arms = {"dream_loop": arm(loop, True), "plain_finetune": arm(plain, False),
            "no_training": [{"index": i, "phase": p, "cycle": 1, "steps": 0, "measurement": base}
                            for i, p in enumerate(("start",) + phases)]}
    arms.update({name: arm(ms, False) for name, ms in (others or {}).items()})
    return {
        "settings": {"cycles_per_phase": 1, "dreams_per_cycle": None, "facts": 6, "heldout_per_fact": 1, "seed": 0,
                     "quick": True},
        "config": {"training": {"mode": "lora", "lora_learning_rate": 1e-3, "full_learning_rate": 1e-5, "epochs": 2,
                                "batch_size": 4},
                   "dreams": {"per_cycle": 4, "replay_fraction": 0.5, "anchor_fraction": 0.25}},
        "model": "tiny", "quick": True, "concepts": ["Zypher", "Zyphrex"],
        "probes": {"Zypher": [{}] * 6, "Zyphrex": [{}] * 6}, "timings": {"total": 90.0},
        "arms": arms,
        "budget": {phase: {name: (sum(p["steps"] for p in points if p["phase"] == phase)) for name, points in
                           arms.items()} for phase in phases},
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
    # The setup is the daemon's own settings, as the run recorded them.
    assert ("the daemon's settings: lora, learning rate 0.001, 2 epochs per round, batch 4, seed 0; 1 dream cycle(s) "
            "per phase of 4 dreams, replay fraction 0.5, anchor fraction 0.25.") in summary


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
    # An ungated arm's mid-run point without its general numbers: a dash in the table, a gap in the line.
    results["arms"]["plain_finetune"][1]["measurement"].update(probes=None, anchor_kl=None)
    loss = curves(results, lambda m: m["probes"] and m["probes"]["loss"])
    assert loss["(b) plain fine-tuning"] == ([0, 2], [1.0, 1.0])
    written = write_artefacts(results, tmp_path)
    names = {p.name for p in written}
    assert {"table.md", "summary.md", "index.html", "zypher-recall.png", "probes-loss.png"} <= names
    page = (tmp_path / "index.html").read_text()
    for png in (n for n in names if n.endswith(".png")):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f'src="{png}"' in page
    table = table_markdown(results)
    assert table.count("| 2 | interference | 1 | 8 |") == 2  # (a) and (b) rows, same budget
    assert "| 1 | acquisition | 1 | 8 | -2.500 | 0.330 | 0.000 | -5.000 | 0.000 | 0.000 | — | — | trained |" in table
    json.dumps(results)  # still JSON
    assert all(math.isfinite(float(x)) for x in (results["budget"]["acquisition"]["dream_loop"],))


FIVE = {"replay_only": [measurement(0.17, -3.5, 0.0, -5.0), measurement(0.0, -4.2, 0.17, -3.1)],
        "full_backprop": [measurement(0.33, -2.8, 0.0, -5.0, anchor_kl=0.2),
                          measurement(0.17, -3.3, 0.33, -2.6, probe_acc=0.5, probe_loss=1.1, anchor_kl=0.4)]}


def test_the_five_arms_in_the_tables_and_the_headline(tmp_path):
    three = fake_results(loop=[measurement(0.17, -3.0, 0.0, -5.0), measurement(0.17, -3.2, 0.17, -3.0)],
                         plain=[measurement(0.33, -2.5, 0.0, -5.0), measurement(0.0, -4.0, 0.33, -2.5)])
    assert present(three) == ["dream_loop", "plain_finetune", "no_training"]
    five = fake_results(loop=[measurement(0.17, -3.0, 0.0, -5.0),
                              measurement(0.17, -3.2, 0.17, -3.0, probe_acc=0.55, probe_loss=1.05, anchor_kl=0.1)],
                        plain=[measurement(0.33, -2.5, 0.0, -5.0), measurement(0.0, -4.0, 0.33, -2.5)], others=FIVE)
    assert present(five) == list(ARMS) == ["dream_loop", "plain_finetune", "no_training", "replay_only",
                                           "full_backprop"]
    table = table_markdown(five)
    assert "## (d) loop without dreams (replay only)" in table and "## (e) (a)'s data, full backprop" in table
    assert "| acquisition | 10 | 10 | 0 | 10 | 10 |" in table  # the budget row: every arm, in order
    assert "(d) loop without dreams" not in table_markdown(three)
    top = headline(five)
    assert (top["zypher_recall_acquired"], top["zypher_recall_after_interference"], top["zyphrex_recall"]) == (
        0.17, 0.17, 0.17)
    assert top["probe_accuracy_drop"] == pytest.approx(0.05) and top["probe_loss_rise"] == pytest.approx(0.05)
    assert top["anchor_kl"] == 0.1 and top["base_zypher_recall"] == 0.0 and top["base_probe_accuracy"] == 0.6
    assert (top["plain_zypher_recall_after_interference"], top["plain_zypher_after_interference"]) == (0.0, 0.0)
    assert top["replay_only_zypher_recall_acquired"] == 0.17 and top["replay_only_zyphrex_recall"] == 0.17
    assert top["full_backprop_anchor_kl"] == 0.4 and top["full_backprop_probe_accuracy_drop"] == pytest.approx(0.1)
    assert not any(key.startswith("replay_only") for key in headline(three))
    written = {p.name for p in write_artefacts(five, tmp_path)}
    assert {"table.md", "summary.md", "index.html", "zypher-recall.png"} <= written
    page = (tmp_path / "index.html").read_text()
    assert "Table: (d) loop without dreams (replay only)" in page and "Table: (e) (a)&#x27;s data" in page


def test_the_progress_line_of_a_point_without_its_general_numbers():
    from dreamd.daemon.experiments.memory_formation.run import brief

    m = measurement(0.5, -1.0, 0.25, -2.0)
    assert brief(m).endswith("| probes loss 1.000 acc 0.60")
    m.update(probes=None, anchor_kl=None)  # an ungated arm's mid-phase round
    assert brief(m) == ("Zypher recall 0.50 logp -1.00 | Zyphrex recall 0.25 logp -2.00 | "
                        "probes measured at the phase's end")
