"""Neighbourhood rehearsals: a dream's question asked about a well-known thing, held at the base's answer.

Training a fact into the weights moves the answers to questions of the same shape: after the
Zypher's rounds the model said "A dog has eight legs." and "The grass is blue." (the Zyphrex
walks on eight legs, the Zypher's fur is silver-blue). Knowledge-editing work measures this as
locality, on prompts that keep an edit's form and change its subject. A neighbour is such a
prompt: the dream's question with each of its names (capitalised words inside the sentence) put
in place by a common thing ("How many legs does the Zypher have?" -> "How many legs does the dog
have?"), learned as the anchors are, by KL to the base's own answer (trainers/anchors.py), so the
round pulls the fact's neighbourhood back to what the base said while the fact itself moves.

A question without a name has no subject to swap and gets no neighbour; the anchor bank still
holds general behaviour for it. The things are ordinary nouns a small model knows, not picked
for any experiment.
"""

from __future__ import annotations

import hashlib
import random
import re

from dreamd.trainers.words import STOPWORDS

THINGS = (
    "dog", "cat", "horse", "cow", "sheep", "bird", "fish", "spider", "bee", "elephant",
    "tree", "flower", "grass", "river", "mountain", "ocean", "moon", "sun", "sky", "city",
    "car", "bicycle", "train", "house", "chair", "book", "phone", "computer", "apple", "bread",
)
# A name: capitalised words of 3+ characters in a row ("Maria Lopez" is one), not at the start of
# a sentence (where any word is capitalised).
_WORD = r"[A-Z][a-zA-Z0-9-]{2,}\b"
_NAME = re.compile(rf"(?<![.!?:]\s)(?<!^)\b{_WORD}(?:\s+{_WORD})*")
_ARTICLE = re.compile(r"\b(?:the|a|an|The|A|An)\s+$")


def names_in(question: str) -> list[str]:
    """The names a question asks about, in order, each once."""
    return list(dict.fromkeys(n for n in _NAME.findall(question.strip())
                              if any(w.lower() not in STOPWORDS for w in n.split())))


def neighbour_question(question: str, rng: random.Random) -> str | None:
    """The question with each name replaced by a different common thing; None without a name."""
    question = question.strip()
    names = names_in(question)
    if not names:
        return None
    things = dict(zip(names, rng.sample(THINGS, len(names)), strict=True))
    out, last = [], 0
    for match in _NAME.finditer(question):
        thing = things.get(match.group())
        if thing is None:
            continue
        before = question[last:match.start()]
        out.append(before + (thing if _ARTICLE.search(before) else f"the {thing}"))
        last = match.end()
    return "".join(out) + question[last:]


def neighbour_id(prompt: str) -> str:
    """A neighbour's id: the same prompt is the same neighbour (its base answer is cached by it)."""
    return hashlib.sha256(prompt.encode()).hexdigest()[:16]


def neighbour_prompts(questions: list[str], seed: int, per_question: int = 2) -> list[tuple[str, str]]:
    """(id, prompt) of `per_question` neighbours of each question that names something (different
    things drawn for each), the same for the same seed, each prompt once."""
    rng = random.Random(seed)
    prompts = (neighbour_question(q, rng) for q in questions for _ in range(per_question))
    return list({neighbour_id(p): (neighbour_id(p), p) for p in prompts if p}.values())
