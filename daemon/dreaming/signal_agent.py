"""The signal agent: scores each dream and accepts or rejects it, with reasons.

Only dreams it accepts are trained on, so it decides what the weights learn. It asks of the
teacher's answer (played out with the memories as notes):

- memory support (`divergence`): the memories make the answer likelier, per token, by more than a
  positive threshold: the answer carries something the memories know and the weights do not yet;
- grounding: the answer's content words come from the memories or the question (the reason names
  the words that do not), and it invents no name or number;
- agreement, for a dream that asks a memory's own question: the answer agrees with that memory's
  logged answer (a cluster can hold a similar concept's notes, whose facts are grounded but wrong);
- hygiene, and novelty as a near-duplicate filter; a judge model only when one is configured.

A dream that asks a memory's own question (every kind but `join`) and whose teacher answer fails
support or grounding is not lost: the memory's logged answer becomes its target (replay).

Each scorer is a function `(dreams, context) -> [Score]` over a whole batch (the model-backed
ones batch their forward passes); `score_dreams` runs those with a weight above 0 in `[signal]`,
and `decide` (pure) turns a dream's scores into the decision:

- every enabled scorer must pass its own threshold (hygiene has no threshold: any problem fails);
- the weighted mean of their normalised scores (each 0..1) must reach `min_total`.

A dream whose generation failed is rejected with that failure and scored no further. A judge
whose answer cannot be parsed rejects the dream; it never raises.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from dreamd.daemon.dreaming.dreams import NO_RESPONSE, Dream, memory_chat
from dreamd.daemon.dreaming.settings import SignalSettings
from dreamd.trainers.examples import SoftTargets, TrainingExample
from dreamd.trainers.gate.metrics import scored_responses
from dreamd.trainers.generate import generate_chats
from dreamd.trainers.model_store import LoadedModel
from dreamd.trainers.words import is_name_or_number, key_words, names_and_numbers, stem, stems, unsupported


@dataclass(frozen=True)
class Score:
    name: str
    value: float | None  # the raw measurement (nats/token, rating, cosine distance, problems)
    normalized: float  # 0..1, what the weighted total uses
    passed: bool
    reason: str
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ScoringContext:
    """What the scorers may need; a scorer uses only its part."""

    settings: SignalSettings
    loaded: LoadedModel | None = None  # the dreaming model (divergence)
    judge: LoadedModel | None = None  # the judge (the dreaming model unless configured)
    embed: Callable[[list[str]], np.ndarray] | None = None  # novelty
    prior_vectors: np.ndarray | None = None  # unit vectors of dreams accepted before
    teacher_top_k: int = 0  # keep the teacher's top-k at each answer token (soft targets); 0: none


# -- hygiene (pure) ---------------------------------------------------------------------------
_BROKEN = re.compile("[\ufffd\x00-\x08\x0b\x0c\x0e-\x1f]|Ã[\x80-\xbf]|â€")
_WORD = re.compile(r"\w+", re.UNICODE)


def repeated_ngram_share(text: str, n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier one: near 0 for prose, high for loops."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def hygiene_problems(dream: Dream, settings: SignalSettings) -> list[str]:
    problems = []
    response, scenario = dream.response, dream.scenario
    if len(response) < settings.min_response_chars:
        problems.append(f"response too short ({len(response)} < {settings.min_response_chars} chars)")
    if len(response) > settings.max_response_chars:
        problems.append(f"response too long ({len(response)} > {settings.max_response_chars} chars)")
    share = repeated_ngram_share(response)
    if share > settings.max_repeated_ngrams:
        problems.append(f"repetitive response ({share:.2f} of word 3-grams repeat > {settings.max_repeated_ngrams:g})")
    lowered = response.lower()
    hits = [p for p in settings.refusal_patterns if p.lower() in lowered]
    if hits:
        problems.append(f"refusal or boilerplate ({hits[0]!r})")
    for what, text in (("response", response), ("scenario", scenario)):
        if _BROKEN.search(text):
            problems.append(f"broken encoding in the {what}")
    if repeated_ngram_share(scenario) > settings.max_repeated_ngrams:
        problems.append("repetitive scenario")
    plain = " ".join(scenario.lower().split())
    if dream.kind == "join" and len(plain) >= 20 and any(plain in " ".join(f.lower().split()) for f in dream.fragments):
        problems.append("the scenario copies a memory instead of combining them")
    return problems


def score_hygiene(dreams: list[Dream], ctx: ScoringContext) -> list[Score]:
    out = []
    for dream in dreams:
        problems = hygiene_problems(dream, ctx.settings)
        out.append(Score("hygiene", float(len(problems)), 0.0 if problems else 1.0, not problems,
                         "; ".join(problems) if problems else "clean", {"problems": problems}))
    return out


# -- judge ------------------------------------------------------------------------------------
_NUMBER = r"(?<![\d.\-])(\d{1,2}(?:\.\d+)?)(?![\d])"
_PATTERNS = (
    re.compile(r"(?:score|rating|rate)\s*(?:is|of)?\s*[:=]?\s*\**\s*" + _NUMBER, re.IGNORECASE),
    re.compile(_NUMBER + r"\s*(?:/|out of)\s*10\b", re.IGNORECASE),
)


def parse_judgement(text: str) -> float | None:
    """The 1-10 rating in a judge's answer, or None when there is none or it is ambiguous:
    `Score: N` first, then `N/10` or `N out of 10`, then a lone number; anything else is None."""
    if not isinstance(text, str):
        return None
    for pattern in _PATTERNS:
        match = pattern.search(text)
        if match:
            return _rating(match.group(1))
    numbers = re.findall(_NUMBER, text)
    if len(numbers) == 1 and len(text.strip()) <= 40:  # a short answer holding one number
        return _rating(numbers[0])
    return None


def _rating(word: str) -> float | None:
    try:
        value = float(word)
    except ValueError:
        return None
    return value if 1 <= value <= 10 and math.isfinite(value) else None


def judge_chat(rubric: str, dream: Dream) -> list[dict]:
    return [{"role": "user", "content": f"{rubric}\n\nUser's message: {dream.scenario}\n\n"
                                        f"Assistant's reply: {dream.response}\n\n"
                                        "Answer with \"Score:\" and a number from 1 to 10."}]


def score_judge(dreams: list[Dream], ctx: ScoringContext) -> list[Score]:
    judge = ctx.judge or ctx.loaded
    settings = ctx.settings
    try:
        # "Score:" written as the start of the answer: a small judge then nearly always names a number.
        answers = [g.text for g in generate_chats(judge, [judge_chat(settings.judge_rubric, d) for d in dreams],
                                                  max_new_tokens=8, batch_size=16, prefill="Score:")]
    except Exception as exc:  # a broken judge rejects, it does not stop the cycle
        answers = [None] * len(dreams)
        error = f"{type(exc).__name__}: {exc}"[:300]
    out = []
    for answer in answers:
        if answer is None:
            out.append(Score("judge", None, 0.0, False, f"judge failed: {error}"))
            continue
        rating = parse_judgement("Score:" + answer)
        if rating is None:
            out.append(Score("judge", None, 0.0, False, f"unparsable judgement: {answer[:80]!r}", {"raw": answer}))
        else:
            ok = rating >= settings.min_judge_score
            out.append(Score("judge", rating, (rating - 1) / 9, ok,
                             f"rated {rating:g} {'>=' if ok else '<'} {settings.min_judge_score:g}", {"raw": answer}))
    return out


# -- memory divergence ----------------------------------------------------------------------------
def divergences(loaded: LoadedModel, dreams: list[Dream], teacher_top_k: int = 0) -> list[float]:
    """Per dream, log p(response | memories, scenario) - log p(response | scenario), in nats per
    response token (mean). Positive: the memories make the response likelier. With `teacher_top_k`,
    each dream also keeps the teacher's distribution over its answer from the same pass
    (`Dream.teacher`: the model with the memories, what the student without them should match),
    where its answer is the same tokens without the memories, as the student reads it. Both sides carry the
    same system message, with and without the memories in it: comparing against the bare scenario
    measured mostly the swap of the template's default system prompt (about -0.1 nats/token on
    every dream of the default model), not the memories.

    For a response sampled from the weights (the play-out), the expected gap is
    -KL(p(.|scenario) || p(.|memories, scenario)) <= 0: most dreams score below 0, and keeping
    those at or above `min_divergence` is rejection sampling towards what the memories imply."""
    def answer(d: Dream) -> dict:
        return {"role": "assistant", "content": d.response}

    with_memory = [TrainingExample(f"with:{i}", [*memory_chat(d.fragments, d.scenario), answer(d)])
                   for i, d in enumerate(dreams)]
    without = [TrainingExample(f"without:{i}", [*memory_chat([], d.scenario), answer(d)]) for i, d in enumerate(dreams)]
    scored = scored_responses(loaded, with_memory + without, teacher_top_k)
    n = len(dreams)
    for dream, teacher, student in zip(dreams, scored[:n], scored[n:]):
        if teacher.top_k is not None and teacher.top_k.ids.shape[0] == student.top_k.ids.shape[0]:
            dream.teacher = SoftTargets(teacher.top_k.ids.tolist(), teacher.top_k.logprobs.tolist(), held=False)
    return [student.loss - teacher.loss for teacher, student in zip(scored[:n], scored[n:])]


def score_divergence(dreams: list[Dream], ctx: ScoringContext) -> list[Score]:
    settings = ctx.settings
    out = []
    for gap in divergences(ctx.loaded, dreams, ctx.teacher_top_k):
        ok = math.isfinite(gap) and gap >= settings.min_divergence
        above = (gap - settings.min_divergence) / settings.divergence_scale
        normalized = min(max(above, 0.0), 1.0) if math.isfinite(gap) else 0.0
        out.append(Score("divergence", gap, normalized, ok,
                         f"{gap:+.3f} nats/token {'>=' if ok else '<'} {settings.min_divergence:g}"))
    return out


# -- grounding and agreement (pure) ------------------------------------------------------------
def score_grounding(dreams: list[Dream], ctx: ScoringContext) -> list[Score]:
    limit = ctx.settings.max_unsupported_share
    out = []
    for dream in dreams:
        words, total = unsupported(dream.response, dream.scenario, *dream.fragments)
        share = len(words) / total if total else 0.0
        # A made-up name or number is the hallucination that matters, however short the answer.
        invented = [w for w in words if is_name_or_number(w, dream.response)]
        ok = share <= limit and not invented
        listed = ", ".join(words[:8]) + (" ..." if len(words) > 8 else "")
        reason = (f"{len(words)} of {total} content words in neither the memories nor the question"
                  f"{': ' + listed if words else ''} ({share:.2f} {'<=' if share <= limit else '>'} {limit:g})"
                  + (f"; names or numbers no memory holds: {', '.join(invented)}" if invented else ""))
        out.append(Score("grounding", share, 1.0 - share, ok, reason,
                         {"unsupported": words, "invented": invented}))
    return out


def score_agreement(dreams: list[Dream], ctx: ScoringContext) -> list[Score]:
    """For a dream that asks a memory's own question: does the answer agree with that memory's
    logged answer? Grounding accepts words from any note, and a cluster can hold a similar
    concept's notes (two animals with similar names): an answer that takes the other one's facts
    is grounded but wrong. So the answer's content words must come from the question or the
    logged answer(s) it asks about, and it must keep the logged answer's names and numbers and at
    least half of what else that answer adds to the question (an answer that says nothing agrees
    with nothing).
    A join (no logged answer) is not asked."""
    limit = ctx.settings.max_unsupported_share
    out = []
    for dream in dreams:
        if not dream.logged_answer:
            out.append(Score("agreement", None, 1.0, True, "no logged answer to agree with (a join)"))
            continue
        foreign, total = unsupported(dream.response, dream.scenario, dream.logged_answer)
        share = len(foreign) / total if total else 0.0
        asked, said = stems(dream.scenario), stems(dream.response)
        missing: list[str] = []
        if dream.kind != "about":  # "about" may tell any part of what it knows
            # Its names and numbers, and at least half of what else it adds to the question.
            adds = key_words(dream.logged_answer, dream.scenario)
            missing = [w for w in names_and_numbers(dream.logged_answer) if stem(w) not in asked | said]
            if adds and sum(stem(w) in said for w in adds) < 0.5 * len(adds):
                missing += [w for w in adds if stem(w) not in said and w not in missing]
        ok = share <= limit and not missing
        reason = (f"{len(foreign)} of {total} content words not in the logged answer or the question"
                  f"{': ' + ', '.join(foreign[:8]) if foreign else ''} ({share:.2f} "
                  f"{'<=' if share <= limit else '>'} {limit:g})"
                  + (f"; leaves out the logged answer's {', '.join(missing)}" if missing else ""))
        out.append(Score("agreement", share, 1.0 - share if ok else 0.0, ok, reason,
                         {"foreign": foreign, "missing": missing}))
    return out


# -- novelty ------------------------------------------------------------------------------------
def dream_text(dream: Dream) -> str:
    return f"{dream.scenario}\n{dream.response}"


def novelty(vectors: np.ndarray, prior: np.ndarray | None) -> list[float]:
    """1 - the highest cosine to a prior vector or to an earlier row of this batch (pure)."""
    out = []
    for i, vector in enumerate(vectors):
        others = [vectors[:i]] + ([prior] if prior is not None and len(prior) else [])
        stacked = np.concatenate(others) if others else vectors[:0]
        out.append(1.0 - float((stacked @ vector).max()) if len(stacked) else 1.0)
    return out


def score_novelty(dreams: list[Dream], ctx: ScoringContext) -> list[Score]:
    vectors = ctx.embed([dream_text(d) for d in dreams])
    out = []
    for dream, vector in zip(dreams, vectors):
        dream.vector = vector  # stored with the dream: later batches measure novelty against it
    for value in novelty(vectors, ctx.prior_vectors):
        ok = value >= ctx.settings.min_novelty
        out.append(Score("novelty", value, min(max(value, 0.0), 1.0), ok,
                         f"{value:.3f} from the nearest earlier dream {'>=' if ok else '<'} "
                         f"{ctx.settings.min_novelty:g}"))
    return out


SCORERS: dict[str, Callable[[list[Dream], ScoringContext], list[Score]]] = {
    "hygiene": score_hygiene,
    "divergence": score_divergence,
    "grounding": score_grounding,
    "agreement": score_agreement,
    "judge": score_judge,
    "novelty": score_novelty,
}


# -- the decision (pure) --------------------------------------------------------------------------
def decide(scores: dict[str, Score], settings: SignalSettings,
           failure: str | None = None) -> tuple[bool, float | None, list[str]]:
    """(accepted, weighted total, reasons) from a dream's scores."""
    if failure:
        return False, None, [failure]
    weights = settings.weights()
    if not weights:
        return False, None, ["no scorer is enabled (every [signal] weight is 0)"]
    reasons = [f"{name}: not scored" for name in weights if name not in scores]
    reasons += [f"{name}: {scores[name].reason}" for name in weights if name in scores and not scores[name].passed]
    total = sum(w * scores[n].normalized for n, w in weights.items() if n in scores) / sum(weights.values())
    if total < settings.min_total:
        reasons.append(f"total {total:.3f} < min_total {settings.min_total:g}")
    if reasons:
        return False, total, reasons
    return True, total, [f"total {total:.3f} >= {settings.min_total:g}"] + [
        f"{name}: {scores[name].reason}" for name in weights]


def score_dreams(dreams: list[Dream], ctx: ScoringContext, scorers=None) -> None:
    """Score the dreams that generated and decide on every dream (in place)."""
    scorers = scorers if scorers is not None else SCORERS
    live = [d for d in dreams if d.failure is None]
    for name in ctx.settings.weights():
        if not live:
            break
        try:
            batch_scores = scorers[name](live, ctx)
        except Exception as exc:  # a scorer that breaks rejects this batch's dreams; the cycle goes on
            reason = f"scorer failed: {type(exc).__name__}: {exc}"[:300]
            batch_scores = [Score(name, None, 0.0, False, reason) for _ in live]
        for dream, score in zip(live, batch_scores, strict=True):
            dream.scores[name] = score
    for dream in dreams:
        dream.accepted, dream.total, dream.reasons = decide(dream.scores, ctx.settings, dream.failure)
        fall_back_to_logged(dream, ctx.settings)


# What a logged answer, taken from the memory itself, passes.
TEACHER_CHECKS = ("divergence", "grounding", "agreement")


def fall_back_to_logged(dream: Dream, settings: SignalSettings) -> None:
    """A dream that asks a memory's own question, whose teacher answer failed only support or
    grounding (or came out empty), is trained on the memory's logged answer instead (in place; its scores stay the
    teacher's, `target` says which answer it holds)."""
    if dream.accepted or not dream.logged_answer or dream.failure not in (None, NO_RESPONSE):
        return  # nothing to replace, or generation failed or timed out: rejected as decided
    failed = [name for name, score in dream.scores.items() if not score.passed]
    if dream.failure is None and (not failed or any(name not in TEACHER_CHECKS or dream.scores[name].value is None
                                                    for name in failed)):
        return  # another check failed, or a scorer broke (value None): rejected as decided
    problems = hygiene_problems(dataclasses.replace(dream, response=dream.logged_answer), settings)
    if problems:
        dream.reasons = dream.reasons + [f"the logged answer fails hygiene too: {'; '.join(problems)}"]
        return
    teacher = dream.reasons
    dream.response, dream.target, dream.failure = dream.logged_answer, "logged", None
    dream.teacher = None  # its distribution was over its own answer, not the logged one
    dream.accepted = True
    dream.reasons = [f"replay: the teacher's answer failed ({'; '.join(teacher)}); the memory's logged answer "
                     "is the target"]
