"""Settings of dream composition (`[dreams]`) and of the signal agent that filters dreams (`[signal]`)."""

from __future__ import annotations

from dataclasses import dataclass

from dreamd.trainers.settings import require, setting

SCHEDULES = ("constant", "spread")
SCORERS = ("divergence", "grounding", "agreement", "judge", "hygiene", "novelty")
KINDS = ("logged", "reworded", "about", "join")


@dataclass
class DreamSettings:
    """How dreams are composed from memory collisions and played out by the model."""

    per_cycle: int = setting(32, "Dreams per cycle (one collision each).")
    kinds: list[str] = setting(
        ["logged", "reworded", "about", "join"],
        "The questions dreams ask, in turn: logged (a memory's own question), reworded (it in other words), "
        "about (\"tell me what you know about X\"), join (a new question the model composes from the "
        "memories). A kind listed twice comes twice as often.",
    )
    batch_size: int = setting(16, "Dreams generated together in one left-padded batch.")
    fragment_tokens: int = setting(
        384, "Token budget of the memory fragments shown to the model when composing, shared among the 2-4 memories."
    )
    scenario_tokens: int = setting(96, "Longest scenario (the new user message) the model may write, in tokens.")
    response_tokens: int = setting(128, "Longest response to a scenario, in tokens.")
    temperature: float = setting(
        0.9,
        "Sampling temperature of composition: the noise knob (0: greedy, the same scenario for the same memories).",
    )
    temperature_schedule: str = setting(
        "spread",
        "constant (every dream at `temperature`) or spread (a batch's dreams spread evenly from "
        "`temperature_min` to `temperature`, so one cycle explores several noise levels).",
    )
    temperature_min: float = setting(0.5, "Lowest composition temperature of the spread schedule.")
    response_temperature: float = setting(
        0.0,
        "Sampling temperature of the teacher's answer (the model with the memories as notes). 0: "
        "greedy, its most likely answer given the notes, which is what the student should learn.",
    )
    teacher_top_k: int = setting(
        0,
        "Soft targets: the teacher's top-k tokens at each answer position, kept by the signal agent's "
        "divergence pass (so only while it runs) and matched by the student (KL) instead of the "
        "answer's tokens alone. 0: the answer's tokens.",
    )
    generation_timeout_seconds: float = setting(
        300.0,
        "A batch still generating after this long stops; its unfinished dreams are rejected as timed out.",
    )
    seed: int = setting(0, "Added to the cycle's seed for collision sampling and generation.")
    fresh_share: float = setting(
        0.75,
        "Share of a cycle's collisions that start from a memory no trained dream has used yet (while there "
        "are such and older ones too): what was just logged is rehearsed first, older memories still come "
        "up. 0: every memory alike.",
    )
    replay_fraction: float = setting(
        0.5,
        "Share of a round's training set that is replayed real exchanges from the logs (for "
        "diversity), the rest accepted dreams; 0: dreams only.",
    )
    # 0.6, measured: the same Zypher round with 0.4 lost 3.9 probe points, with 0.6 1.7, at the same
    # held-out recall (0.21) and anchor KL 0.05 -> 0.03 (one round, tests/bench/README.md).
    anchor_fraction: float = setting(
        0.6,
        "Share of every round's training set taken from the anchor bank: general prompts with the base "
        "model's own answers, so general behaviour is held while facts move. 0 turns the anchor off.",
    )
    neighbour_share: float = setting(
        0.5,
        "Part of the anchor share given to neighbourhood rehearsals: the round's dream questions with "
        "their names swapped for common things (\"how many legs does the dog have?\"), held at the base "
        "model's answers so a taught fact does not spill over onto them. 0: the anchor bank alone.",
    )
    replay_history_messages: int = setting(
        6, "Earlier messages of its conversation kept as the context of a replayed exchange."
    )
    max_dreams_per_round: int = setting(64, "Most accepted dreams taken into one training round (oldest first).")
    review: bool = setting(
        False,
        "Hold accepted dreams in a review queue: only dreams a person approved are trained on.",
    )

    def __post_init__(self) -> None:
        for key in ("per_cycle", "batch_size", "fragment_tokens", "scenario_tokens", "response_tokens",
                    "max_dreams_per_round"):
            require(1 <= getattr(self, key) <= 100_000, key, "an integer from 1 to 100000", getattr(self, key))
        require(0 <= self.temperature <= 5, "temperature", "a number from 0 to 5", self.temperature)
        require(0 <= self.temperature_min <= self.temperature, "temperature_min",
                "a number from 0 to `temperature`", self.temperature_min)
        require(self.temperature_schedule in SCHEDULES, "temperature_schedule", "constant or spread",
                self.temperature_schedule)
        require(0 <= self.response_temperature <= 5, "response_temperature", "a number from 0 to 5",
                self.response_temperature)
        require(self.generation_timeout_seconds > 0, "generation_timeout_seconds", "a positive number",
                self.generation_timeout_seconds)
        require(self.seed >= 0, "seed", "0 or more", self.seed)
        require(0 <= self.teacher_top_k <= 256, "teacher_top_k", "an integer from 0 to 256", self.teacher_top_k)
        require(0 <= self.fresh_share <= 1, "fresh_share", "a number from 0 to 1", self.fresh_share)
        require(0 <= self.replay_fraction < 1, "replay_fraction", "a number in [0, 1)", self.replay_fraction)
        require(0 <= self.anchor_fraction < 1, "anchor_fraction", "a number in [0, 1)", self.anchor_fraction)
        require(0 <= self.neighbour_share <= 1, "neighbour_share", "a number from 0 to 1", self.neighbour_share)
        require(bool(self.kinds) and all(k in KINDS for k in self.kinds), "kinds",
                "a non-empty list of " + ", ".join(KINDS), self.kinds)
        require(0 <= self.replay_history_messages <= 1000, "replay_history_messages", "an integer from 0 to 1000",
                self.replay_history_messages)


@dataclass
class SignalSettings:
    """How the signal agent scores dreams and decides which become training examples."""

    divergence_weight: float = setting(
        1.0,
        "Weight of memory support: how much likelier the answer is with its memories in context than "
        "without (what the memories know and the weights do not yet). 0 turns it off.",
    )
    min_divergence: float = setting(
        0.1,
        "Least memory support accepted, in nats per answer token (log p(answer | memories, question) "
        "minus log p(answer | question)). Positive: an answer the memories do not make likelier "
        "teaches the weights nothing they do not already say.",
    )
    divergence_scale: float = setting(
        0.5, "Divergence above min_divergence (nats per token) that counts as a full 1.0 in the weighted total."
    )
    grounding_weight: float = setting(
        1.0, "Weight of grounding: the answer's content words must come from its memories or its question."
    )
    max_unsupported_share: float = setting(
        0.34,
        "Largest share of the answer's content words found neither in its memories nor in its question "
        "(a cheap hallucination check; the reason names the words).",
    )
    agreement_weight: float = setting(
        1.0,
        "Weight of agreement, for a dream that asks a memory's own question: the answer's content words must "
        "come from that memory's logged answer or the question (max_unsupported_share), and it must keep the "
        "logged answer's names and numbers and at least half of what else it adds to the question. It "
        "tells a grounded but wrong answer (another note's facts) from "
        "a right one; a failing teacher answer is replaced by the logged one. 0 turns it off.",
    )
    judge_weight: float = setting(
        1.0,
        "Weight of the judge's rating of the answer; the judge runs only when judge_model_path names a "
        "model (a small model rates its own dreams 10 whatever they say). 0 turns it off.",
    )
    min_judge_score: float = setting(5.0, "Least judge rating accepted, on the rubric's 1-10 scale.")
    judge_model_path: str = setting(
        "", "A larger local Hugging Face model directory to judge with. Empty: no judge."
    )
    judge_rubric: str = setting(
        "Rate the assistant's reply to the user's message from 1 to 10: 10 if it is helpful, correct "
        "and on topic, 1 if it is useless, wrong, or off topic.",
        "The rubric the judge rates each response against (it is asked to answer \"Score:\" and a number).",
    )
    hygiene_weight: float = setting(
        1.0, "Weight of hygiene in the total; a hygiene problem (below) always rejects while this is above 0."
    )
    min_response_chars: int = setting(8, "Shortest response accepted, in characters.")
    max_response_chars: int = setting(4000, "Longest response accepted, in characters.")
    max_repeated_ngrams: float = setting(
        0.3, "Largest share of repeated word 3-grams in a response (loops and degenerate text score high)."
    )
    refusal_patterns: list[str] = setting(
        ["as an ai language model", "i'm sorry, but i can", "i cannot help with", "i can't assist",
         "i am unable to", "as a large language model"],
        "Case-insensitive phrases that mark a refusal or boilerplate response.",
    )
    novelty_weight: float = setting(
        1.0,
        "Weight of novelty, a near-duplicate filter: embedding distance from the batch's other dreams and "
        "from accepted dreams not yet trained on (a fact repeated in new words is wanted).",
    )
    min_novelty: float = setting(
        0.01,
        "Least novelty accepted: 1 minus the highest cosine similarity to another dream (0.01: cosine below 0.99).",
    )
    min_total: float = setting(
        0.0, "Least weighted mean of the enabled scores (each from 0 to 1); 0: each scorer's own threshold decides."
    )

    def __post_init__(self) -> None:
        for name in SCORERS:
            key = f"{name}_weight"
            require(getattr(self, key) >= 0, key, "0 (off) or positive", getattr(self, key))
        require(0 <= self.max_unsupported_share <= 1, "max_unsupported_share", "a number from 0 to 1",
                self.max_unsupported_share)
        require(self.divergence_scale > 0, "divergence_scale", "a positive number", self.divergence_scale)
        require(1 <= self.min_judge_score <= 10, "min_judge_score", "a number from 1 to 10", self.min_judge_score)
        require(self.judge_rubric.strip() != "", "judge_rubric", "a non-empty text", self.judge_rubric)
        require(0 <= self.min_response_chars < self.max_response_chars, "min_response_chars",
                "0 or more and below max_response_chars", self.min_response_chars)
        require(0 < self.max_repeated_ngrams <= 1, "max_repeated_ngrams", "a number in (0, 1]",
                self.max_repeated_ngrams)
        require(-1 <= self.min_novelty <= 2, "min_novelty", "a number from -1 to 2", self.min_novelty)
        require(0 <= self.min_total <= 1, "min_total", "a number from 0 to 1", self.min_total)

    def weights(self) -> dict[str, float]:
        """The enabled scorers and their weights (the judge only with a judge model)."""
        return {name: getattr(self, f"{name}_weight") for name in SCORERS
                if getattr(self, f"{name}_weight") > 0 and (name != "judge" or self.judge_model_path)}
