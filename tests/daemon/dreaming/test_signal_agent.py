"""The signal agent's pure parts: the decision on fixed scores, the judge parser, hygiene, novelty,
scenario extraction and the temperature schedule."""

from __future__ import annotations

import numpy as np
import pytest

from dreamd.daemon.dreaming.dreams import Dream, extract_scenario, temperatures
from dreamd.daemon.dreaming.settings import DreamSettings, SignalSettings
from dreamd.daemon.dreaming.signal_agent import (
    Score,
    decide,
    hygiene_problems,
    novelty,
    parse_judgement,
    repeated_ngram_share,
)


def scores(divergence=0.3, judge=8.0, hygiene_ok=True, novelty_value=0.4) -> dict[str, Score]:
    s = SignalSettings()
    return {
        "divergence": Score("divergence", divergence,
                            min(max((divergence - s.min_divergence) / s.divergence_scale, 0), 1),
                            divergence >= s.min_divergence, f"{divergence:+.3f}"),
        "judge": Score("judge", judge, (judge - 1) / 9, judge >= s.min_judge_score, f"rated {judge}"),
        "hygiene": Score("hygiene", 0.0 if hygiene_ok else 1.0, 1.0 if hygiene_ok else 0.0, hygiene_ok,
                         "clean" if hygiene_ok else "response too short"),
        "novelty": Score("novelty", novelty_value, novelty_value, novelty_value >= s.min_novelty, f"{novelty_value}"),
    }


def test_good_scores_are_accepted_with_reasons():
    accepted, total, reasons = decide(scores(), SignalSettings())
    # divergence 0.3 is 0.4 above min_divergence -0.1: 0.8 of the scale 0.5
    assert accepted and total == pytest.approx((0.8 + 7 / 9 + 1 + 0.4) / 4)
    assert reasons[0].startswith("total") and any(r.startswith("judge:") for r in reasons)


@pytest.mark.parametrize("bad, reason", [
    ({"divergence": -0.2}, "divergence:"),
    ({"judge": 3.0}, "judge:"),
    ({"hygiene_ok": False}, "hygiene: response too short"),
    ({"novelty_value": 0.01}, "novelty:"),
])
def test_one_failing_threshold_rejects_naming_it(bad, reason):
    accepted, _total, reasons = decide(scores(**bad), SignalSettings())
    assert not accepted and any(r.startswith(reason) for r in reasons)


def test_low_total_rejects_even_when_every_threshold_passes():
    settings = SignalSettings(min_total=0.9)
    accepted, total, reasons = decide(scores(), settings)
    assert not accepted and total < 0.9 and reasons == [f"total {total:.3f} < min_total 0.9"]


def test_weights_change_the_total_and_zero_turns_a_scorer_off():
    only_judge = SignalSettings(divergence_weight=0, hygiene_weight=0, novelty_weight=0)
    accepted, total, _ = decide(scores(divergence=-5.0, novelty_value=0.0), only_judge)
    assert accepted and total == pytest.approx(7 / 9)  # divergence and novelty no longer count


def test_a_missing_score_and_a_failure_reject():
    partial = scores()
    del partial["judge"]
    assert decide(partial, SignalSettings())[2][0] == "judge: not scored"
    accepted, total, reasons = decide(scores(), SignalSettings(), failure="generation timed out")
    assert (accepted, total, reasons) == (False, None, ["generation timed out"])


@pytest.mark.parametrize("text, expected", [
    ("Score: 8", 8.0), ("score:7/10", 7.0), ("**Score:** 9", 9.0), ("Rating: 6.5", 6.5),
    ("I'd give it 4 out of 10.", 4.0), ("3/10, too vague", 3.0), ("7", 7.0), (" 10.", 10.0),
])
def test_judge_parser_reads_well_formed_answers(text, expected):
    assert parse_judgement(text) == expected


@pytest.mark.parametrize("text", [
    "", "   ", "Score:", "Score: eleven", "Score: 0", "Score: 11", "Score: 85", "Score: -3",
    "between 2 and 9 depending on taste", "The reply is fine.", None, 7, "Score: NaN",
    "\x00\ufffd garbage \ufffd", "Score: " + "9" * 5000,
])
def test_judge_parser_returns_none_on_malformed_answers(text):
    assert parse_judgement(text) is None


def dream(response="Keep the basil stems in a glass of water on the counter.", scenario="How do I store basil?",
          fragments=("User: herbs\nAssistant: water",)) -> Dream:
    return Dream([1, 2], [[1, 2]], list(fragments), 0.7, scenario=scenario, response=response)


def test_hygiene_passes_a_plain_answer_and_names_each_problem():
    settings = SignalSettings()
    assert hygiene_problems(dream(), settings) == []
    assert "too short" in hygiene_problems(dream(response="Ok."), settings)[0]
    assert "too long" in hygiene_problems(dream(response="word " * 1000), settings)[0]
    loop = "I can help you with that. " * 8
    assert any("repetitive response" in p for p in hygiene_problems(dream(response=loop), settings))
    refusal = "As an AI language model, I do not have opinions on basil."
    assert any("refusal" in p for p in hygiene_problems(dream(response=refusal), settings))
    broken = dream(response="Put it in water \ufffd\ufffd now")
    assert any("broken encoding" in p for p in hygiene_problems(broken, settings))
    assert any("broken encoding" in p for p in hygiene_problems(dream(response="Ã©tÃ© is summer in French"), settings))
    copied = dream(scenario="How do I keep basil fresh for a week?",
                   fragments=["User: How do I keep basil fresh for a week?\nAssistant: water"])
    assert any("copies a memory" in p for p in hygiene_problems(copied, settings))


def test_repeated_ngram_share():
    assert repeated_ngram_share("the quick brown fox jumps over the lazy dog") == 0.0
    assert repeated_ngram_share("a b c a b c a b c a b c") > 0.5


def test_novelty_against_prior_and_earlier_batch_members():
    a, b = np.eye(3, dtype=np.float32)[:2]
    batch = np.stack([a, b, a])  # the third duplicates the first
    assert novelty(batch, None) == pytest.approx([1.0, 1.0, 0.0])
    prior = np.stack([b])
    assert novelty(batch, prior) == pytest.approx([1.0, 0.0, 0.0])


@pytest.mark.parametrize("raw, scenario", [
    ("Sure, here is a new message: How can I keep herbs fresh during a long deploy?",
     "How can I keep herbs fresh during a long deploy?"),
    ('User: "Can basil survive in a server room?"', "Can basil survive in a server room?"),
    ("**User's message:** My migration times out while I cook.", "My migration times out while I cook."),
    ("  plain message  ", "plain message"),
    ("", ""),
])
def test_extract_scenario(raw, scenario):
    assert extract_scenario(raw) == scenario


def test_temperature_schedules():
    assert temperatures(DreamSettings(temperature_schedule="constant", temperature=0.8), 3) == [0.8] * 3
    spread = temperatures(DreamSettings(temperature=1.0, temperature_min=0.5), 6)
    assert spread[0] == 0.5 and spread[-1] == 1.0 and spread == sorted(spread)
    assert temperatures(DreamSettings(), 1) == [DreamSettings().temperature]


@pytest.mark.parametrize("section, values, key", [
    (DreamSettings, {"temperature_schedule": "cosine"}, "temperature_schedule"),
    (DreamSettings, {"temperature_min": 2.0, "temperature": 1.0}, "temperature_min"),
    (DreamSettings, {"replay_fraction": 1.0}, "replay_fraction"),
    (DreamSettings, {"per_cycle": 0}, "per_cycle"),
    (SignalSettings, {"judge_weight": -1.0}, "judge_weight"),
    (SignalSettings, {"min_judge_score": 11.0}, "min_judge_score"),
    (SignalSettings, {"min_total": 1.5}, "min_total"),
])
def test_settings_reject_bad_values_naming_the_key(section, values, key):
    with pytest.raises(ValueError) as caught:  # the config loader names it `dreams.<key>` / `signal.<key>`
        section(**values)
    assert str(caught.value).startswith(key + ": must be")
