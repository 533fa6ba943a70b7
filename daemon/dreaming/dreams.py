"""Dreams: a new situation composed from a memory collision, then played out by the model.

The idea: the memory graph is a latent space, a collision (2-4 distant memories joined by a
walk) is a sample from it, and the model decodes it twice:

1. compose — the model reads the memory fragments (cut to a token budget) and writes a new user
   message that combines them: a situation it has not seen, drawn at a temperature (the noise);
2. play out — the model answers that scenario with neither the fragments nor the instructions in
   its context, exactly as a training example will present it, so what is learned is the
   behaviour and not the prompt.

Both steps are batched generation (trainers/generate.py). A dream whose generation fails or
times out keeps its `failure` and is rejected with it by the signal agent; it is still stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dreamd.daemon.dreaming.settings import DreamSettings
from dreamd.memory_graph.graph import Collision
from dreamd.trainers.generate import Generation, generate_chats
from dreamd.trainers.model_store import LoadedModel

COMPOSE_INSTRUCTION = (
    "Write a new message that a user could send to an assistant: a new situation or question that "
    "combines ideas from these fragments, and is not a copy of any of them. Write only the user's "
    "message, in the user's own words."
)
# The reply is started for the model as an opened quotation of the user (a small model otherwise
# answers the fragments as an assistant, or describes the task); the closing quote, or the start
# of another speaker, ends the scenario.
COMPOSE_PREFILL = 'User: "'
SCENARIO_STOPS = ('"', "\nAssistant:", "\nassistant:", "\nUser:", "<|im_start|>")
RESPONSE_STOPS = ("<|im_start|>", "\nUser:", "\nuser:")
_PREAMBLE = re.compile(r"^(sure|okay|ok|here(?:'s| is)|certainly|of course)\b[^\n:]*[:!.]\s*", re.IGNORECASE)
_SPEAKER = re.compile(r"^\s*\**\s*(?:user's message|new message|message|user)\s*\**\s*:\s*\**\s*", re.IGNORECASE)


@dataclass
class Dream:
    """One dream and its provenance; the signal agent fills in the scores and the decision."""

    node_ids: list[int]
    walk: list[list[int]]  # the collision's paths: node ids from node_ids[0] to each later member
    fragments: list[str]  # the memories as the model saw them (compressed)
    temperature: float
    scenario: str = ""
    response: str = ""
    scenario_tokens: int = 0
    response_tokens: int = 0
    failure: str | None = None  # why generation gave no usable dream
    scores: dict = field(default_factory=dict)  # name -> signal_agent.Score
    total: float | None = None
    accepted: bool = False
    reasons: list[str] = field(default_factory=list)
    vector: object = None  # unit embedding of scenario + response (numpy), set by the novelty scorer
    id: int | None = None  # its row in the dreams table, once stored

    @property
    def generated_tokens(self) -> int:
        return self.scenario_tokens + self.response_tokens


def compress(tokenizer, texts: list[str], budget: int) -> list[str]:
    """Each text cut to an equal share of `budget` tokens. A long memory keeps its start and its
    end (the question and how it was answered), joined by an ellipsis."""
    share = max(8, budget // max(len(texts), 1))
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= share:
            out.append(text.strip())
            continue
        head = (share * 2) // 3
        tail = share - head
        out.append(tokenizer.decode(ids[:head]).strip() + " … " + tokenizer.decode(ids[-tail:]).strip())
    return out


def composition_chat(fragments: list[str]) -> list[dict]:
    listed = "\n\n".join(f"[{i}] {text}" for i, text in enumerate(fragments, start=1))
    return [{"role": "user", "content": f"Fragments of earlier conversations:\n\n{listed}\n\n{COMPOSE_INSTRUCTION}"}]


def memory_chat(fragments: list[str], scenario: str) -> list[dict]:
    """The scenario with its source memories in context (the divergence scorer's "with" side);
    with no fragments, the same chat with the memories left out (its "without" side), so that the
    two differ only in the memories and not in the system prompt the template would add."""
    listed = "\n\n".join(fragments) if fragments else "(none)"
    return [{"role": "system", "content": f"Memories from earlier conversations:\n\n{listed}"},
            {"role": "user", "content": scenario}]


def extract_scenario(text: str) -> str:
    """The user message inside what the model wrote: no "Sure, here is..." preamble, no speaker
    label, no surrounding quotes."""
    text = text.strip()
    text = _PREAMBLE.sub("", text, count=1).strip()
    text = _SPEAKER.sub("", text, count=1).strip()
    if len(text) >= 2 and text[0] in "\"'“" and text[-1] in "\"'”":
        text = text[1:-1].strip()
    return text


def temperatures(settings: DreamSettings, count: int) -> list[float]:
    """The composition temperature of each dream of a cycle (see `temperature_schedule`)."""
    if settings.temperature_schedule == "constant" or count == 1:
        return [settings.temperature] * count
    low, high = settings.temperature_min, settings.temperature
    return [round(low + (high - low) * i / (count - 1), 4) for i in range(count)]


def new_dreams(tokenizer, collisions: list[Collision], settings: DreamSettings) -> list[Dream]:
    temps = temperatures(settings, len(collisions))
    return [Dream(list(c.node_ids), [list(p) for p in c.paths], compress(tokenizer, c.texts, settings.fragment_tokens),
                  temp) for c, temp in zip(collisions, temps)]


def _generate(loaded: LoadedModel, dreams: list[Dream], chats: list[list[dict]], settings: DreamSettings,
              max_new_tokens: int, temps: list[float], stops: tuple[str, ...], seed: int, batch_size: int,
              prefill: str = ""):
    """Generation in batches of `batch_size`; a batch that raises fails its dreams, not the cycle."""
    out: list[Generation | None] = []
    for start in range(0, len(chats), batch_size):
        chunk = chats[start : start + batch_size]
        try:
            out += generate_chats(loaded, chunk, max_new_tokens, len(chunk), temps[start : start + batch_size],
                                  stops, settings.generation_timeout_seconds, prefill, seed=seed + start)
        except Exception as exc:  # any failure of the model or tokenizer: recorded, not raised
            for dream in dreams[start : start + batch_size]:
                dream.failure = dream.failure or f"generation failed: {type(exc).__name__}: {exc}"[:500]
            out += [None] * len(chunk)
    return out


def compose(loaded: LoadedModel, dreams: list[Dream], settings: DreamSettings, seed: int,
            batch_size: int | None = None) -> None:
    """Write each dream's scenario (in place)."""
    size = batch_size or settings.batch_size
    chats = [composition_chat(d.fragments) for d in dreams]
    made = _generate(loaded, dreams, chats, settings, settings.scenario_tokens, [d.temperature for d in dreams],
                     SCENARIO_STOPS, seed, size, prefill=COMPOSE_PREFILL)
    for dream, generation in zip(dreams, made):
        if generation is None:
            continue
        dream.scenario_tokens = generation.tokens
        dream.scenario = extract_scenario(generation.text)
        if generation.finish == "timeout":
            dream.failure = ("generation timed out composing the scenario "
                             f"(over {settings.generation_timeout_seconds:g} s)")
        elif not dream.scenario:
            dream.failure = "composition produced no scenario"


def play_out(loaded: LoadedModel, dreams: list[Dream], settings: DreamSettings, seed: int,
             batch_size: int | None = None) -> None:
    """The model's response to each scenario, with nothing else in its context (in place)."""
    size = batch_size or settings.batch_size
    live = [d for d in dreams if d.failure is None]
    chats = [[{"role": "user", "content": d.scenario}] for d in live]
    made = _generate(loaded, live, chats, settings, settings.response_tokens,
                     [settings.response_temperature] * len(live), RESPONSE_STOPS, seed + 100_003, size)
    for dream, generation in zip(live, made):
        if generation is None:
            continue
        dream.response, dream.response_tokens = generation.text, generation.tokens
        if generation.finish == "timeout":
            dream.failure = ("generation timed out playing the dream out "
                             f"(over {settings.generation_timeout_seconds:g} s)")
        elif not dream.response:
            dream.failure = "the model gave no response"


def dream(loaded: LoadedModel, collisions: list[Collision], settings: DreamSettings, seed: int,
          batch_size: int | None = None) -> list[Dream]:
    """Compose and play out one dream per collision (not yet scored or stored)."""
    dreams = new_dreams(loaded.tokenizer, collisions, settings)
    compose(loaded, dreams, settings, seed, batch_size)
    play_out(loaded, dreams, settings, seed, batch_size)
    return dreams
