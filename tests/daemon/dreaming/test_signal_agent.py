"""The signal agent's pure parts: the decision on fixed scores, the judge parser, hygiene, novelty,
scenario extraction and the temperature schedule."""

from __future__ import annotations

import numpy as np
import pytest

from dreamd.daemon.dreaming.dreams import Dream, extract_scenario, temperatures
from dreamd.daemon.dreaming.settings import DreamSettings, SignalSettings
from dreamd.daemon.dreaming.signal_agent import (
    Score,
    ScoringContext,
    decide,
    fall_back_to_logged,
    hygiene_problems,
    novelty,
    parse_judgement,
    repeated_ngram_share,
    score_agreement,
    score_grounding,
)
from dreamd.trainers.examples import SoftTargets
from dreamd.trainers.words import content_words, unsupported

JUDGED = SignalSettings(judge_model_path="judge")  # the judge runs only with a judge model configured


def scores(divergence=0.3, judge=8.0, hygiene_ok=True, novelty_value=0.4, unsupported_share=0.0,
           foreign_share=0.0) -> dict[str, Score]:
    s = SignalSettings()
    return {
        "divergence": Score("divergence", divergence,
                            min(max((divergence - s.min_divergence) / s.divergence_scale, 0), 1),
                            divergence >= s.min_divergence, f"{divergence:+.3f}"),
        "grounding": Score("grounding", unsupported_share, 1 - unsupported_share,
                           unsupported_share <= s.max_unsupported_share, f"{unsupported_share:.2f} unsupported"),
        "agreement": Score("agreement", foreign_share, 1 - foreign_share,
                           foreign_share <= s.max_unsupported_share, f"{foreign_share:.2f} not in the logged answer"),
        "judge": Score("judge", judge, (judge - 1) / 9, judge >= s.min_judge_score, f"rated {judge}"),
        "hygiene": Score("hygiene", 0.0 if hygiene_ok else 1.0, 1.0 if hygiene_ok else 0.0, hygiene_ok,
                         "clean" if hygiene_ok else "response too short"),
        "novelty": Score("novelty", novelty_value, novelty_value, novelty_value >= s.min_novelty, f"{novelty_value}"),
    }


def test_good_scores_are_accepted_with_reasons():
    accepted, total, reasons = decide(scores(), SignalSettings())
    # divergence 0.3 is 0.2 above min_divergence +0.1: 0.4 of the scale 0.5; no judge model, no judge
    assert accepted and total == pytest.approx((0.4 + 1 + 1 + 1 + 0.4) / 5)
    assert reasons[0].startswith("total") and any(r.startswith("grounding:") for r in reasons)
    assert not any(r.startswith("judge:") for r in reasons)
    accepted, total, reasons = decide(scores(), JUDGED)
    assert accepted and total == pytest.approx((0.4 + 1 + 1 + 7 / 9 + 1 + 0.4) / 6)
    assert any(r.startswith("judge:") for r in reasons)


def test_the_judge_counts_only_with_a_judge_model_and_memory_support_must_be_positive():
    assert "judge" not in SignalSettings().weights() and "judge" in JUDGED.weights()
    assert set(SignalSettings().weights()) == {"divergence", "grounding", "agreement", "hygiene", "novelty"}
    assert SignalSettings().min_divergence > 0 and SignalSettings().min_total == 0
    only_judge = SignalSettings(divergence_weight=0, grounding_weight=0, agreement_weight=0, hygiene_weight=0,
                                novelty_weight=0)
    assert decide(scores(), only_judge) == (False, None, ["no scorer is enabled (every [signal] weight is 0)"])


@pytest.mark.parametrize("bad, reason", [
    ({"divergence": -0.2}, "divergence:"),
    ({"divergence": 0.05}, "divergence:"),  # positive, but below the positive threshold
    ({"unsupported_share": 0.5}, "grounding:"),
    ({"foreign_share": 0.5}, "agreement:"),
    ({"judge": 3.0}, "judge:"),
    ({"hygiene_ok": False}, "hygiene: response too short"),
    ({"novelty_value": 0.005}, "novelty:"),
])
def test_one_failing_threshold_rejects_naming_it(bad, reason):
    accepted, _total, reasons = decide(scores(**bad), JUDGED)
    assert not accepted and any(r.startswith(reason) for r in reasons)


def test_a_bad_judgement_does_not_count_without_a_judge_model():
    accepted, _total, reasons = decide(scores(judge=1.0), SignalSettings())
    assert accepted and not any("judge" in r for r in reasons)


def test_low_total_rejects_even_when_every_threshold_passes():
    settings = SignalSettings(min_total=0.9)
    accepted, total, reasons = decide(scores(), settings)
    assert not accepted and total < 0.9 and reasons == [f"total {total:.3f} < min_total 0.9"]


def test_weights_change_the_total_and_zero_turns_a_scorer_off():
    only_judge = SignalSettings(divergence_weight=0, grounding_weight=0, agreement_weight=0, hygiene_weight=0,
                                novelty_weight=0, judge_model_path="judge")
    accepted, total, _ = decide(scores(divergence=-5.0, novelty_value=0.0, unsupported_share=1.0), only_judge)
    assert accepted and total == pytest.approx(7 / 9)  # divergence, grounding and novelty no longer count


def test_a_missing_score_and_a_failure_reject():
    partial = scores()
    del partial["judge"]
    assert decide(partial, JUDGED)[2][0] == "judge: not scored"
    assert decide(partial, SignalSettings())[0]  # without a judge model no judgement is wanted
    del partial["grounding"]
    assert decide(partial, SignalSettings())[2][0] == "grounding: not scored"
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


def test_only_a_composed_question_may_not_copy_a_memory():
    settings = SignalSettings()
    question = "How do I keep basil fresh for a week?"
    memory = [f"User: {question}\nAssistant: water"]
    assert any("copies a memory" in p for p in hygiene_problems(dream(scenario=question, fragments=memory), settings))
    for kind in ("logged", "reworded", "about"):  # these ask a memory's own question by design
        asked = Dream([1, 2], [[1, 2]], memory, 0.7, kind=kind, scenario=question,
                      response="Keep the basil stems in a glass of water on the counter.")
        assert hygiene_problems(asked, settings) == []


def test_grounding_names_the_unsupported_words():
    words, total = unsupported("Your huggle VPN password expires on Fridays at the office.",
                               "How do I reset my VPN password?",
                               "User: my password expires every Friday\nAssistant: at the office desk")
    assert (words, total) == (["huggle"], 6)  # Fridays/Friday, expires, office match loosely
    assert unsupported("", "anything") == ([], 0)
    assert content_words("The lived living lives of 42 cats") == ["lived", "42", "cats"]

    settings = SignalSettings()
    made_up = Dream([1, 2], [[1, 2]], ["User: VPN broken\nAssistant: reinstall the certificate"], 0.7,
                    scenario="How do I fix my VPN?", response="The huggle zorblat fixes your VPN.")
    grounded = Dream([1, 2], [[1, 2]], list(made_up.fragments), 0.7, scenario=made_up.scenario,
                     response="Reinstall the certificate to fix the VPN.")
    bad, good = score_grounding([made_up, grounded], ScoringContext(settings))
    assert not bad.passed and bad.value == pytest.approx(0.5) and bad.detail["unsupported"] == ["huggle", "zorblat"]
    assert bad.reason == "2 of 4 content words in neither the memories nor the question: huggle, zorblat (0.50 > 0.34)"
    assert good.passed and good.value == 0 and good.normalized == 1
    assert good.reason == "0 of 4 content words in neither the memories nor the question (0.00 <= 0.34)"
    accepted, _total, reasons = decide({**scores(), "grounding": bad}, settings)
    assert not accepted and reasons == [f"grounding: {bad.reason}"]
    many = Dream([1, 2], [[1, 2]], ["nothing here"], 0.7, scenario="Why?",
                 response=" ".join(f"zq{chr(97 + i)}word" for i in range(10)))
    assert score_grounding([many], ScoringContext(settings))[0].reason.startswith(
        "10 of 10 content words in neither the memories nor the question: zqaword, zqbword,")
    assert " ... (1.00 > 0.34)" in score_grounding([many], ScoringContext(settings))[0].reason


def test_grounding_rejects_an_invented_name_or_number_however_short_the_answer():
    notes = ["User: When was the Zyphrex discovered?\nAssistant: The Zyphrex was discovered in 1964."]
    ask = "When was the Zyphrex discovered?"
    misspelt, wrong_year, right = score_grounding(
        [Dream([1, 2], [[1, 2]], notes, 0.7, scenario=ask, response=r) for r in
         ("The Zyphreth was discovered in 1964.", "The Zyphrex was discovered in 1911.",
          "It was discovered in 1964.")], ScoringContext(SignalSettings()))
    # one unsupported word of three is under the share limit: only the name/number rule catches it
    assert misspelt.value == pytest.approx(1 / 3)
    assert not misspelt.passed and misspelt.reason.endswith("names or numbers no memory holds: Zyphreth")
    assert not wrong_year.passed and wrong_year.detail["invented"] == ["1911"]
    assert right.passed and right.detail["invented"] == []


def agreement_of(response: str, scenario: str = "Where does the Zyphrex live?", kind: str = "logged",
                 logged: str | None = "The Zyphrex lives on Tollbeck Island, and nowhere else.") -> Score:
    # The notes hold both animals: grounding alone would accept either island.
    notes = [f"User: {scenario}\nAssistant: {logged}",
             "User: Where does the Zypher live?\nAssistant: The Zypher lives on Marrowick Island."]
    d = Dream([1, 2], [[1, 2]], notes, 0.7, kind=kind, scenario=scenario, response=response, logged_answer=logged)
    return score_agreement([d], ScoringContext(SignalSettings()))[0]


def test_agreement_rejects_a_grounded_answer_that_takes_another_memorys_facts():
    other = agreement_of("The Zyphrex lives on Marrowick Island.")
    assert not other.passed and other.detail["foreign"] == ["Marrowick"]
    assert other.detail["missing"][0] == "Tollbeck" and "leaves out the logged answer's Tollbeck" in other.reason
    assert agreement_of("It lives only on Tollbeck Island.").passed  # a paraphrase keeping the name
    assert not agreement_of("It lives on an island.").passed  # vague: leaves the name out
    # Says nothing of what the logged answer adds ("It walks on six legs."): nothing to agree with.
    empty = agreement_of("You forgot to remind me.", "I forgot, can you remind me? Count the Zyphrex's legs.",
                         logged="It walks on six legs.")
    assert not empty.passed and empty.detail["missing"] == ["walks", "six"]
    assert agreement_of("The Zyphrex has six legs.", "Count the Zyphrex's legs.", logged="It walks on six legs.").passed
    # "about" may tell any part of what it knows, but only from what it logged about the topic
    assert agreement_of("It lives on Tollbeck Island.", "Tell me what you know about Zyphrex.", "about").passed
    assert not agreement_of("The Zyphrex comes from Marrowick Island.", "Tell me what you know about Zyphrex.",
                            "about").passed
    join = agreement_of("Both live on islands.", "What connects them?", "join", None)
    assert join.passed and join.value is None
    d = asked_again(foreign_share=0.6)
    assert d.accepted and d.target == "logged" and "agreement: " in d.reasons[0]


LOGGED_ANSWER = "The team standup moved to 9:30 on Tuesdays, in the small meeting room."


def asked_again(kind="logged", logged_answer=LOGGED_ANSWER, response="The standup is whenever you like, honestly.",
                **bad) -> Dream:
    """A dream that asks a memory's own question, decided on fixed scores (`bad` as in `scores`)."""
    d = Dream([1, 2], [[1, 2]], [f"User: When is the standup?\nAssistant: {LOGGED_ANSWER}"], 0.7, kind=kind,
              scenario="When is the standup?", response=response, logged_answer=logged_answer)
    d.scores = scores(**bad)
    d.teacher = SoftTargets([[5]] * 8, [[-0.1]] * 8, held=False)  # the teacher's distribution over its answer
    d.accepted, d.total, d.reasons = decide(d.scores, SignalSettings())
    fall_back_to_logged(d, SignalSettings())
    return d


@pytest.mark.parametrize("bad, scorer", [
    ({"unsupported_share": 0.6}, "grounding"),
    ({"divergence": -0.4}, "divergence"),
    ({"unsupported_share": 0.6, "divergence": -0.4}, "grounding"),
])
def test_a_teacher_answer_without_support_falls_back_to_the_logged_answer(bad, scorer):
    d = asked_again(**bad)
    assert d.accepted and d.target == "logged" and d.response == LOGGED_ANSWER
    assert d.teacher is None  # it was over the teacher's answer, not the logged one
    assert len(d.reasons) == 1 and d.reasons[0].startswith("replay: the teacher's answer failed (")
    assert f"{scorer}: " in d.reasons[0] and d.reasons[0].endswith("the memory's logged answer is the target")


@pytest.mark.parametrize("dream_of", [
    lambda: asked_again(unsupported_share=0.6, hygiene_ok=False),  # a failure the logged answer does not mend
    lambda: asked_again(divergence=-0.4, novelty_value=0.0),
    lambda: asked_again(kind="join", logged_answer=None, unsupported_share=0.6),  # nothing logged to fall back on
])
def test_no_fallback_past_other_checks_or_without_a_logged_answer(dream_of):
    d = dream_of()
    assert not d.accepted and d.target == "teacher" and d.response != LOGGED_ANSWER
    assert not any(r.startswith("replay:") for r in d.reasons)


def test_a_logged_answer_that_fails_hygiene_is_no_fallback():
    d = asked_again(logged_answer="Ok.", unsupported_share=0.6)
    assert not d.accepted
    assert d.reasons[0].startswith("grounding: ")
    assert d.reasons[-1] == "the logged answer fails hygiene too: response too short (3 < 8 chars)"


def test_a_good_teacher_answer_is_kept_over_the_logged_one():
    d = asked_again()
    assert d.accepted and d.target == "teacher" and d.response != LOGGED_ANSWER and d.reasons[0].startswith("total")
    assert d.teacher is not None


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
    (DreamSettings, {"anchor_fraction": 1.0}, "anchor_fraction"),
    (DreamSettings, {"kinds": []}, "kinds"),
    (DreamSettings, {"kinds": ["logged", "dreamt"]}, "kinds"),
    (SignalSettings, {"grounding_weight": -1.0}, "grounding_weight"),
    (SignalSettings, {"max_unsupported_share": 1.5}, "max_unsupported_share"),
    (SignalSettings, {"judge_weight": -1.0}, "judge_weight"),
    (SignalSettings, {"min_judge_score": 11.0}, "min_judge_score"),
    (SignalSettings, {"min_total": 1.5}, "min_total"),
])
def test_settings_reject_bad_values_naming_the_key(section, values, key):
    with pytest.raises(ValueError) as caught:  # the config loader names it `dreams.<key>` / `signal.<key>`
        section(**values)
    assert str(caught.value).startswith(key + ": must be")
