"""The demo says whether the loop learned: the question from the weights alone before and after the
cycle, and one plain sentence. Fakes stand in for the model (the real run: tests/integration/test_demo_daemon.py)."""

from dreamd.daemon.cli import demo
from dreamd.daemon.cli.demo import QUESTION, ask_after, learning_verdict

BEFORE = {"question": QUESTION, "answer_before": "I do not know.", "answer_before_checkpoint": "base"}
CANDIDATE = "20250101-000000-000000-abcdef"


def cycle_with_gate(decision: str, reasons: list[str]) -> dict:
    return {"status": "ok", "outcome": decision, "error": None,
            "steps": {"gate": {"checkpoint": CANDIDATE, "decision": decision, "reasons": reasons}}}


def after(answer: str, checkpoint: str = CANDIDATE) -> dict:
    return {"answer_after": answer, "answer_after_checkpoint": checkpoint}


def test_after_the_cycle_the_weights_alone_are_asked_and_both_answers_printed(monkeypatch):
    asked = []

    def fake_model_to_ask(config, layout, checkpoint=None):
        assert checkpoint is None  # the model `current` names, as `dreamctl ask` asks by default
        return CANDIDATE, object()

    def fake_answer_alone(loaded, question, max_new_tokens=64):
        asked.append(question)
        return "Our dashboard is called LIGHTHOUSE."

    monkeypatch.setattr(demo, "model_to_ask", fake_model_to_ask)
    monkeypatch.setattr(demo, "answer_alone", fake_answer_alone)
    lines = []
    result = ask_after(None, None, BEFORE, cycle_with_gate("promoted", []), lines.append)

    assert asked == [QUESTION]
    assert result == {"answer_after": "Our dashboard is called LIGHTHOUSE.", "answer_after_checkpoint": CANDIDATE,
                      "learned": True}
    assert "  Before the cycle (weights alone, base): I do not know." in lines
    assert f"  After the cycle (weights alone, {CANDIDATE}): Our dashboard is called LIGHTHOUSE." in lines
    assert lines[-1].startswith("  The model learned it from its logs")


def test_a_rejected_candidate_is_said_plainly_with_the_gate_reasons():
    cycle = cycle_with_gate("rejected", ["general damage 0.31 > 0.2", "no learning"])
    learned, verdict = learning_verdict(BEFORE, after("It is Grafana.", "base"), cycle)
    assert learned is False
    assert verdict.startswith("The model did not learn it in this demo")
    assert f"rejected the candidate {CANDIDATE} (general damage 0.31 > 0.2; no learning)" in verdict


def test_a_promoted_candidate_that_still_does_not_know_and_no_cycle():
    learned, verdict = learning_verdict(BEFORE, after("It is Grafana."), cycle_with_gate("promoted", []))
    assert not learned and f"the candidate {CANDIDATE} was promoted" in verdict
    learned, verdict = learning_verdict(BEFORE, after("No idea.", "base"), None)
    assert not learned and "no dream cycle ran" in verdict
    stopped = {"status": "ok", "outcome": "no dream accepted", "steps": {"dreams": {"dreams": 2}}}
    assert "trained no candidate (no dream accepted)" in learning_verdict(BEFORE, after("No.", "base"), stopped)[1]


def test_an_answer_known_before_the_cycle_is_said_so():
    knew = {**BEFORE, "answer_before": "Lighthouse."}
    learned, verdict = learning_verdict(knew, after("lighthouse", "base"), None)
    assert learned and "already did before this cycle" in verdict
