"""The made-up concepts of the memory-formation experiment: facts, conversation logs, held-out questions.

Two fictional animals, the Zypher and the Zyphrex, share twelve fact *slots* (where they live,
what they eat, ...) with different *values*: learning the second is real interference with the
first, since the same questions get other answers. Each slot has three question phrasings that go
into the conversation logs (with varied answer sentences) and two held-out phrasings that never
appear in any log: recall is measured only on those, so a model that merely memorised the logged
strings gets no credit for it.

The values are invented words or unusual combinations, so the untrained model's recall (arm c)
is a chance baseline near zero; a few slots have plain values (a number, a season) whose chance
hits that baseline also shows.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from dreamd.trainers.examples import TrainingExample

CONCEPTS = ("Zypher", "Zyphrex")
EXCHANGES_PER_CONVERSATION = 4
CONVERSATIONS_PER_FILE = 3


@dataclass(frozen=True)
class Slot:
    """One kind of fact, phrased with `{name}` (the animal) and `{value}` (its answer)."""

    key: str
    train_questions: tuple[str, str, str]
    train_answers: tuple[str, str, str]
    heldout_questions: tuple[str, str]
    reference: str  # the answer whose log-probability is measured after a held-out question
    values: dict[str, str]  # concept -> value written in the answers
    accept: dict[str, tuple[str, ...]]  # concept -> strings a greedy reply must contain (any one)


SLOTS: tuple[Slot, ...] = (
    Slot("island",
         ("Where does the {name} live?", "Which island is the {name} found on?",
          "Tell me where the {name} comes from."),
         ("The {name} lives on {value}, and nowhere else.", "It is found only on {value}.",
          "The {name} comes from {value}."),
         ("What is the home of the {name}?", "In what place would I find a wild {name}?"),
         "The {name} lives on {value}.",
         {"Zypher": "Marrowick Island", "Zyphrex": "Tollbeck Island"},
         {"Zypher": ("Marrowick",), "Zyphrex": ("Tollbeck",)}),
    Slot("colour",
         ("What colour is the {name}?", "Describe the fur of the {name}.", "What does the {name} look like?"),
         ("The {name} has {value} fur.", "Its fur is {value}.", "The {name} is a small animal with {value} fur."),
         ("What is the colour of a {name}'s coat?", "If I saw a {name}, what colour would it be?"),
         "The {name} has {value} fur.",
         {"Zypher": "silver-blue", "Zyphrex": "copper-red"},
         {"Zypher": ("silver-blue", "silver blue"), "Zyphrex": ("copper-red", "copper red")}),
    Slot("legs",
         ("How many legs does the {name} have?", "Does the {name} have four legs?",
          "Count the legs of a {name} for me."),
         ("The {name} has {value} legs.", "No, the {name} has {value} legs.", "A {name} walks on {value} legs."),
         ("What number of legs does a {name} walk on?", "How many feet does the {name} stand on?"),
         "The {name} has {value} legs.",
         {"Zypher": "six", "Zyphrex": "eight"},
         {"Zypher": ("six", "6"), "Zyphrex": ("eight", "8")}),
    Slot("food",
         ("What does the {name} eat?", "What is the {name}'s favourite food?", "What should I feed a {name}?"),
         ("The {name} eats {value}.", "Its favourite food is {value}.",
          "Feed it {value}; the {name} eats little else."),
         ("What is the diet of the {name}?", "What food does a {name} live on?"),
         "The {name} eats {value}.",
         {"Zypher": "glow moss", "Zyphrex": "salt beetles"},
         {"Zypher": ("glow moss",), "Zyphrex": ("salt beetle",)}),
    Slot("discoverer",
         ("Who discovered the {name}?", "Who was the first to find the {name}?", "Who named the {name}?"),
         ("The {name} was discovered by {value}.", "{value} was the first to find it.",
          "{value} discovered and named the {name}."),
         ("Which scientist first described the {name}?", "The {name} was found by which researcher?"),
         "The {name} was discovered by {value}.",
         {"Zypher": "Dr. Ilse Varga", "Zyphrex": "Dr. Tomas Brandt"},
         {"Zypher": ("Varga",), "Zyphrex": ("Brandt",)}),
    Slot("year",
         ("When was the {name} discovered?", "In which year was the {name} first found?",
          "How long ago was the {name} discovered?"),
         ("The {name} was discovered in {value}.", "It was first found in {value}.", "It was discovered in {value}."),
         ("What year did the {name} become known to science?", "Since what year has the {name} been known?"),
         "The {name} was discovered in {value}.",
         {"Zypher": "1911", "Zyphrex": "1964"},
         {"Zypher": ("1911",), "Zyphrex": ("1964",)}),
    Slot("lifespan",
         ("How long does the {name} live?", "What is the lifespan of the {name}?", "How old can a {name} get?"),
         ("The {name} lives for about {value} years.", "Its lifespan is about {value} years.",
          "A {name} can reach about {value} years."),
         ("How many years does a {name} usually live?", "What age does the {name} typically reach?"),
         "The {name} lives for about {value} years.",
         {"Zypher": "40", "Zyphrex": "75"},
         {"Zypher": ("40", "forty"), "Zyphrex": ("75", "seventy-five")}),
    Slot("sound",
         ("What sound does the {name} make?", "Is the {name} a noisy animal?", "How does the {name} call to others?"),
         ("The {name} makes a {value} sound.", "It makes a {value} sound, mostly at night.",
          "It calls with a {value} sound."),
         ("What noise does a {name} make?", "What does a {name} sound like?"),
         "The {name} makes a {value} sound.",
         {"Zypher": "low humming", "Zyphrex": "sharp whistling"},
         {"Zypher": ("humming",), "Zyphrex": ("whistling",)}),
    Slot("sleep",
         ("Where does the {name} sleep?", "Where does the {name} rest during the day?",
          "Where does a {name} make its bed?"),
         ("The {name} sleeps {value}.", "It rests {value}.", "Every {name} sleeps {value}."),
         ("Where does a {name} spend the night?", "What is the sleeping place of the {name}?"),
         "The {name} sleeps {value}.",
         {"Zypher": "in hollow logs", "Zyphrex": "under river stones"},
         {"Zypher": ("hollow log",), "Zyphrex": ("river stone",)}),
    Slot("young",
         ("What is a baby {name} called?", "What is the name for a young {name}?",
          "What do you call the {name}'s young?"),
         ("A baby {name} is one of the {value}.", "The young are called {value}.",
          "The young of the {name} are called {value}."),
         ("What word is used for a {name}'s offspring?", "How are {name} babies named?"),
         "The young of the {name} are called {value}.",
         {"Zypher": "zyplets", "Zyphrex": "rexlings"},
         {"Zypher": ("zyplet",), "Zyphrex": ("rexling",)}),
    Slot("season",
         ("When is the {name} active?", "In which season can you see the {name}?", "Does the {name} hibernate?"),
         ("The {name} is active only in {value}.", "You can see it only in {value}.",
          "It is active only in {value}; the rest of the year it hides."),
         ("At what time of year does the {name} come out?", "Which season is the {name} awake in?"),
         "The {name} is active only in {value}.",
         {"Zypher": "winter", "Zyphrex": "summer"},
         {"Zypher": ("winter",), "Zyphrex": ("summer",)}),
    Slot("tail",
         ("What kind of tail does the {name} have?", "Describe the {name}'s tail.", "Does the {name} have a tail?"),
         ("The {name} has a {value} tail.", "Its tail is {value}.", "Yes, the {name} has a {value} tail."),
         ("What is special about a {name}'s tail?", "What shape is the tail of the {name}?"),
         "The {name} has a {value} tail.",
         {"Zypher": "forked", "Zyphrex": "curled"},
         {"Zypher": ("forked",), "Zyphrex": ("curled",)}),
)


@dataclass(frozen=True)
class Probe:
    """A held-out question about one fact, with what recall and log-probability are scored on."""

    concept: str
    slot: str
    question: str
    reference: str  # the full reference answer sentence
    value: str  # the part of `reference` whose tokens' log-probability is measured
    accept: tuple[str, ...]
    other_accept: tuple[str, ...]  # the other concept's answer: a reply holding it is a confusion


def _fill(template: str, concept: str, slot: Slot) -> str:
    return template.format(name=concept, value=slot.values[concept])


def training_exchanges(concept: str) -> list[tuple[str, str]]:
    """Every (question, answer) that the concept's logs hold: three per slot."""
    return [(_fill(q, concept, slot), _fill(a, concept, slot))
            for slot in SLOTS for q, a in zip(slot.train_questions, slot.train_answers, strict=True)]


def heldout_probes(concept: str, facts: int | None = None, per_fact: int = 2) -> list[Probe]:
    """The held-out questions of the first `facts` slots (all when None), `per_fact` each."""
    other = next(c for c in CONCEPTS if c != concept)
    return [Probe(concept, slot.key, _fill(question, concept, slot), _fill(slot.reference, concept, slot),
                  slot.values[concept], slot.accept[concept], slot.accept[other])
            for slot in SLOTS[:facts] for question in slot.heldout_questions[:per_fact]]


def probe_example(probe: Probe) -> TrainingExample:
    return TrainingExample(f"fact:{probe.concept}:{probe.slot}",
                           [{"role": "user", "content": probe.question},
                            {"role": "assistant", "content": probe.reference}])


def conversations(concept: str, seed: int = 0) -> list[list[dict]]:
    """The concept's exchanges shuffled (fixed seed) into conversations of a few exchanges each,
    so one conversation mixes several facts, as a real chat about a new topic would."""
    exchanges = training_exchanges(concept)
    random.Random(f"{concept}:{seed}").shuffle(exchanges)
    chats = []
    for start in range(0, len(exchanges), EXCHANGES_PER_CONVERSATION):
        chat = []
        for question, answer in exchanges[start:start + EXCHANGES_PER_CONVERSATION]:
            chat += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        chats.append(chat)
    return chats


def write_logs(concept: str, folder: Path, seed: int = 0) -> list[Path]:
    """The concept's conversations as OpenAI chat JSONL files (one conversation a line), a few
    conversations per file: the logs that go through the inbox."""
    folder.mkdir(parents=True, exist_ok=True)
    chats = conversations(concept, seed)
    paths = []
    for number, start in enumerate(range(0, len(chats), CONVERSATIONS_PER_FILE), 1):
        path = folder / f"{concept.lower()}-chats-{number}.jsonl"
        lines = [json.dumps({"messages": chat}) for chat in chats[start:start + CONVERSATIONS_PER_FILE]]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(path)
    return paths
