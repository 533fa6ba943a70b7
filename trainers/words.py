"""Content words: the words of a text that carry its meaning, compared loosely.

The grounding scorer asks which of an answer's content words its memories or its question hold;
the gate's learning and retention items reword a logged question from its content words and score
a reply by the answer's content words it repeats. One definition serves all three, so they agree
on what "the same word" is: lowercased, a plural's or a verb's common ending taken off.
"""

from __future__ import annotations

import re

STOPWORDS = frozenset(
    "a an and are as at be been before being but by can could did do does doing for from had has have he her "
    "here him his how i if in into is it its just like made make many me more most much my need no nor not of "
    "off on once one only or other our out over own same she should so some such than that the their them then "
    "there these they this those through to too under until up upon very was we were what when where which "
    "while who whom why will with would you your yours about after again also any because both each few "
    "further else called let please thanks thank tell know told remind yes okay sure well really quite".split()
)
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'-]*|\d+(?:[.,]\d+)*")
_ENDINGS = ("ing", "ed", "s")


def stem(word: str) -> str:
    """A word's loose form: lowercase, no possessive, no common inflection (lives/lived/living/live -> liv)."""
    word = word.lower().removesuffix("'s").strip("'-")
    for ending in _ENDINGS:
        if len(word) > len(ending) + 2 and word.endswith(ending):
            word = word[: -len(ending)]
            break
    return word.removesuffix("e") if len(word) > 3 else word


def content_words(text: str) -> list[str]:
    """The text's content words as written, in order, each once (numbers count, stopwords not)."""
    seen: set[str] = set()
    out = []
    for word in _WORD.findall(text):
        key = stem(word)
        if (word.lower() in STOPWORDS or (len(key) < 3 and not key.isdigit())) or key in seen:
            continue
        seen.add(key)
        out.append(word)
    return out


def stems(text: str) -> set[str]:
    """Every word of the text in its loose form (stopwords included: they can only help a match)."""
    return {stem(word) for word in _WORD.findall(text)}


def unsupported(answer: str, *sources: str) -> tuple[list[str], int]:
    """(the answer's content words that no source holds, how many content words it has)."""
    known = set().union(*(stems(s) for s in sources)) if sources else set()
    words = content_words(answer)
    return [w for w in words if stem(w) not in known], len(words)


def key_words(answer: str, question: str) -> list[str]:
    """What an answer adds to its question: its content words the question does not hold."""
    return unsupported(answer, question)[0]


def recalled(reply: str, answer: str, question: str, share: float = 0.5) -> bool:
    """Whether a reply repeats at least `share` of what the answer adds to the question."""
    keys = key_words(answer, question)
    if not keys:
        return False
    found = stems(reply)
    return sum(stem(k) in found for k in keys) >= share * len(keys)


def is_name_or_number(word: str, text: str) -> bool:
    """A number, or a capitalised word that does not open a sentence of `text` (a name): the words
    a hallucination usually changes, and a paraphrase keeps."""
    if word[0].isdigit():
        return True
    if not word[0].isupper():
        return False
    return any(not _opens_sentence(text, m.start()) for m in re.finditer(rf"\b{re.escape(word)}\b", text))


def _opens_sentence(text: str, at: int) -> bool:
    before = text[:at].rstrip(" \t\"'(")
    return not before or before[-1] in ".!?:;\n"


def names_and_numbers(text: str) -> list[str]:
    """The content words of `text` that are names or numbers (see `is_name_or_number`)."""
    return [w for w in content_words(text) if is_name_or_number(w, text)]
