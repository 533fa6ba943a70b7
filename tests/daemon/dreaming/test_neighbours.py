"""Neighbourhood rehearsals: which words of a question are its names, how they are swapped for
common things, and the prompts a round draws (seeded, each once)."""

from __future__ import annotations

import random
import re

from dreamd.daemon.dreaming.neighbours import THINGS, names_in, neighbour_id, neighbour_prompts, neighbour_question


def test_names_are_capitalised_words_inside_a_sentence_and_runs_of_them_are_one_name():
    assert names_in("How many legs does the Zypher have?") == ["Zypher"]
    assert names_in("Quick question: Who discovered the Zypher? Keep it short.") == ["Zypher"]  # sentence starts
    assert names_in("Did Maria Lopez move Lighthouse to the new rack?") == ["Maria Lopez", "Lighthouse"]
    assert names_in("What is the name of our internal metrics dashboard?") == []
    assert names_in("Zypher is where?") == []  # the first word is capitalised anyway: not taken for a name


def test_a_neighbour_keeps_the_question_and_swaps_each_name_for_a_different_thing():
    rng = random.Random(3)
    asked = neighbour_question("How many legs does the Zypher have?", rng)
    assert asked.startswith("How many legs does the ") and asked.endswith(" have?")
    assert asked.removeprefix("How many legs does the ").removesuffix(" have?") in THINGS
    both = neighbour_question("What connects the Zypher and Zyphrex? Ask Maria Lopez.", rng)
    assert "Zyph" not in both and "Maria" not in both and "Lopez" not in both
    swapped = re.fullmatch(r"What connects the (\w+) and the (\w+)\? Ask the (\w+)\.", both).groups()
    assert len(set(swapped)) == 3 and set(swapped) <= set(THINGS)
    # Without an article before the name one is added; a possessive stays one.
    bare = neighbour_question("Tell me what you know about Zypher.", random.Random(0))
    assert bare.startswith("Tell me what you know about the ") and bare.removesuffix(".").split()[-1] in THINGS
    owned = neighbour_question("What is the colour of a Zypher's coat?", random.Random(0))
    assert owned.startswith("What is the colour of a ") and owned.endswith("'s coat?") and "the" not in owned[20:]
    assert neighbour_question("What is the name of our internal metrics dashboard?", rng) is None


def test_a_round_draws_the_same_prompts_for_the_same_seed_each_once():
    questions = ["How many legs does the Zypher have?", "What does the Zypher eat?", "What is it?",
                 "How many legs does the Zypher have?"]
    prompts = neighbour_prompts(questions, seed=5)
    assert prompts == neighbour_prompts(questions, seed=5)
    assert all(i == neighbour_id(p) for i, p in prompts) and len({i for i, _ in prompts}) == len(prompts)
    assert 4 <= len(prompts) <= 6  # two per named question, the repeated question's mostly the same again
    assert not any("Zypher" in p for _i, p in prompts)
    assert neighbour_prompts(questions, seed=5, per_question=1) != [] and neighbour_prompts(["What is it?"], 1) == []
