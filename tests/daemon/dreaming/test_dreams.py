"""Dreams end to end on the tiny model and a scripted generator: the kinds of question, composition,
the teacher's play-out with the notes, scoring (grounding, the logged fallback), storage with
provenance, failures and timeouts, the training set (student examples without the notes, the
anchor share) and the review queue."""

from __future__ import annotations

import dataclasses

import pytest

from dreamd.daemon.dreaming import review, signal_agent
from dreamd.daemon.dreaming.batch import dream_batch, summary
from dreamd.daemon.dreaming.dreams import NOTES_HEADER, answers_about, memory_chat, new_dreams
from dreamd.daemon.dreaming.neighbours import neighbour_prompts
from dreamd.daemon.dreaming.records import load_dream, untrained_memories
from dreamd.daemon.dreaming.scenarios import Exchange, member_exchange, topic_of
from dreamd.daemon.dreaming.settings import DreamSettings, SignalSettings
from dreamd.daemon.dreaming.training_set import mark_trained, share_count, training_set
from dreamd.memory_graph.graph import Collision
from dreamd.trainers.anchors import Anchor
from dreamd.trainers.examples import encode_examples
from dreamd.trainers.generate import generate_chats
from dreamd.trainers.words import stems
from tests.helpers.dreams import GRAPH, install_scripted, is_teacher_chat, sample_graph, tiny_loaded
from tests.helpers.fakes import HashEmbedder

# Divergence on a random tiny model is noise around 0: its threshold is opened so that the tests
# decide on the other scores (the real-model test checks the divergence's direction).
SIGNAL = SignalSettings(min_divergence=-100.0, min_total=0.3)
# The judge runs only with a judge model configured; unset, the dreaming model (here, scripted) judges.
JUDGED = SignalSettings(min_divergence=-100.0, min_total=0.3, judge_model_path="judge")
DREAMS = DreamSettings(per_cycle=6, batch_size=4, scenario_tokens=16, response_tokens=16)
JOINS = DreamSettings(per_cycle=6, batch_size=4, scenario_tokens=16, response_tokens=16, kinds=["join"])


@pytest.fixture
def world(tmp_path):
    ingester = sample_graph(tmp_path / "state")
    yield ingester
    ingester.db.close()


@pytest.fixture
def scripted(monkeypatch):
    return lambda **kwargs: install_scripted(monkeypatch, **kwargs)


def status_counts(db) -> dict[str, int]:
    return dict(db.execute("SELECT status, count(*) FROM dreams GROUP BY status").fetchall())


def dreams_of_memory(db, node_id: int) -> list[int]:
    """From a memory to the dreams it took part in, through the `dream_memories` index."""
    return [r[0] for r in db.execute("SELECT dream_id FROM dream_memories WHERE node_id = ? ORDER BY dream_id",
                                     (node_id,)).fetchall()]


def reviews_of(db, dream_id: int) -> list[dict]:
    rows = db.execute("SELECT decision, reviewer, note, at FROM dream_reviews WHERE dream_id = ? ORDER BY id",
                      (dream_id,)).fetchall()
    return [dict(zip(("decision", "reviewer", "note", "at"), r)) for r in rows]


def run(world, dreams=DREAMS, signal=SIGNAL, seed=7):
    return dream_batch(world.db, world.graph, tiny_loaded(), HashEmbedder(), dreams=dreams, signal=signal,
                       graph_settings=GRAPH, seed=seed)


def test_generation_batches_with_row_temperatures_and_reports_why_it_ended():
    loaded = tiny_loaded()
    chats = [[{"role": "user", "content": text}] for text in ("hi", "a longer question here", "x")]
    batched = generate_chats(loaded, chats, max_new_tokens=6, batch_size=3, temperature=0.0)
    alone = [generate_chats(loaded, [chat], max_new_tokens=6, batch_size=1)[0] for chat in chats]
    assert [g.text for g in batched] == [g.text for g in alone]  # left padding + mask: same greedy text
    assert all(g.finish == "length" and g.tokens == 6 for g in batched)
    mixed = generate_chats(loaded, chats, max_new_tokens=6, batch_size=3, temperature=[0.0, 1.5, 0.0], seed=3)
    assert mixed[0].text == batched[0].text and mixed[2].text == batched[2].text  # greedy rows stay greedy
    timed_out = generate_chats(loaded, chats, max_new_tokens=50, batch_size=3, max_seconds=1e-9)
    assert all(g.finish == "timeout" and g.tokens < 50 for g in timed_out)


def test_dreams_are_asked_played_out_scored_and_stored_with_provenance(world, scripted):
    generator = scripted()
    batch = run(world)
    assert len(batch) == DREAMS.per_cycle and all(d.id is not None for d in batch)
    # The kinds in turn; only the `join` dreams are composed by the model, in one batch.
    assert [d.kind for d in batch] == ["logged", "reworded", "about", "join", "logged", "reworded"]
    joins = [d for d in batch if d.kind == "join"]
    assert [n for kind, n in generator.calls if kind == "compose"] == [len(joins)] * len(joins)
    # Batched as configured: 6 dreams played out in batches of 4 and 2.
    assert [n for kind, n in generator.calls if kind == "respond"] == [4] * 4 + [2] * 2
    accepted = [d for d in batch if d.accepted]
    assert accepted, [d.reasons for d in batch]
    node_ids = set(world.graph.ids)
    for dream in accepted:
        stored = load_dream(world.db, dream.id)
        assert stored["accepted"] and stored["status"] == "accepted"
        assert stored["kind"] == dream.kind and stored["target"] == dream.target
        assert 2 <= len(stored["node_ids"]) <= 4 and set(stored["node_ids"]) <= node_ids
        assert stored["memories"] == stored["node_ids"]
        assert len(stored["walk"]) == len(stored["node_ids"]) - 1
        for path, member in zip(stored["walk"], stored["node_ids"][1:]):
            assert path[0] == stored["node_ids"][0] and path[-1] == member
        assert len(stored["fragments"]) == len(stored["node_ids"])
        assert stored["scenario"] and stored["response"] and stored["failure"] is None
        assert set(stored["scores"]) == \
            {"divergence", "grounding", "agreement", "hygiene", "novelty"}  # no judge model
        if dream.target == "teacher":  # a replayed dream keeps the scores its teacher answer failed
            assert all(s["passed"] for s in stored["scores"].values())
        assert stored["reasons"] and stored["total"] >= SIGNAL.min_total
        assert stored["model"] == "tiny-llama" and stored["temperature"] > 0
        # and back from a memory to the dream
        assert dream.id in dreams_of_memory(world.db, stored["node_ids"][0])
    # Non-join dreams ask a member's logged question and keep its logged answer.
    for dream in batch:
        assert "Fragments" not in dream.scenario and dream.scenario
        if dream.kind != "join":
            assert dream.logged_answer
    logged = member_exchange(world.db, batch[0].node_ids[0])  # the collision's first member's exchange
    assert (batch[0].scenario, batch[0].logged_answer) == (logged.question, logged.answer)
    assert member_exchange(world.db, batch[1].node_ids[0]).question in batch[1].scenario  # reworded
    assert batch[1].scenario != member_exchange(world.db, batch[1].node_ids[0]).question
    assert batch[2].scenario.startswith("Tell me what you know about ")
    assert summary(batch)["accepted_by_kind"] == {k: sum(d.accepted and d.kind == k for d in batch)
                                                   for k in {d.kind for d in accepted}}


def asked_nodes(db) -> list[int]:
    """Memory nodes that hold a question and its logged answer (a non-join dream can ask them)."""
    return [n for (n,) in db.execute("SELECT id FROM memory_nodes ORDER BY id").fetchall()
            if member_exchange(db, n) is not None]


def test_notes_are_newest_first_and_held_out_memories_are_neither_notes_nor_questions(world):
    first, middle, last = asked_nodes(world.db)[:3]
    collision = Collision([first, last, middle], ["oldest note", "newest note", "middle note"], [1, 1, 1],
                          [[first, last], [first, middle]])
    settings = DreamSettings(kinds=["logged"])
    tokenizer = tiny_loaded().tokenizer
    [dream] = new_dreams(world.db, tokenizer, [collision], settings, seed=1)
    assert dream.fragments == ["newest note", "middle note", "oldest note"]  # node id descending
    assert (dream.kind, dream.scenario) == ("logged", member_exchange(world.db, first).question)
    assert dream.logged_answer == member_exchange(world.db, first).answer
    [held] = new_dreams(world.db, tokenizer, [collision], settings, seed=1, exclude=frozenset({first}))
    assert held.fragments == ["newest note", "middle note"]
    assert held.scenario == member_exchange(world.db, last).question  # the first member left: the next one asks
    [none] = new_dreams(world.db, tokenizer, [collision], settings, seed=1, exclude=frozenset({first, middle, last}))
    assert none.fragments == [] and none.failure == "every memory of the collision is held out for evaluation"
    [about] = new_dreams(world.db, tokenizer, [collision], DreamSettings(kinds=["about"]), seed=1)
    assert about.scenario.startswith("Tell me what you know about ")
    topic = stems(topic_of(member_exchange(world.db, first).question))
    naming = [e.answer for e in (member_exchange(world.db, n) for n in (last, middle, first))
              if topic <= stems(f"{e.question} {e.answer}")]
    assert naming and about.logged_answer == " ".join(naming)


def test_what_it_knows_about_x_holds_only_the_answers_about_x(monkeypatch):
    """A cluster can join two similar concepts; "about Zyphrex" must not take the Zypher's answers."""
    from dreamd.daemon.dreaming import dreams as dreams_module

    exchanges = {1: Exchange("Where does the Zyphrex live?", "On Tollbeck Island."),
                 2: Exchange("Where does the Zypher live?", "On Marrowick Island."),
                 3: Exchange("What colour is it?", "The Zyphrex is copper-red.")}
    monkeypatch.setattr(dreams_module, "member_exchange", lambda _db, node: exchanges[node])
    members = [(3, ""), (2, ""), (1, "")]
    assert answers_about(None, exchanges[1], members) == ["The Zyphrex is copper-red.", "On Tollbeck Island."]
    assert answers_about(None, exchanges[2], members) == ["On Marrowick Island."]


def test_the_teacher_sees_the_memories_and_the_students_example_does_not(world, scripted):
    generator = scripted()
    batch = run(world)
    teacher = [chat for kind, chat in generator.conversations if kind == "respond" and is_teacher_chat(chat)]
    assert len(teacher) == len(batch)  # every play-out is the teacher's, in the batch's order
    for dream, chat in zip(batch, teacher):
        assert chat == memory_chat(dream.fragments, dream.scenario)
        assert [m["role"] for m in chat] == ["system", "user"]
        assert chat[0]["content"].startswith(NOTES_HEADER) and chat[1]["content"] == dream.scenario
        assert all(fragment in chat[0]["content"] for fragment in dream.fragments)
    accepted = {d.id: d for d in batch if d.accepted}
    assert accepted
    examples = training_set(world.db, DreamSettings(replay_fraction=0.0, anchor_fraction=0.0), seed=1)
    assert sorted(int(e.id[6:]) for e in examples) == sorted(accepted)
    for example in examples:
        dream = accepted[int(example.id[6:])]
        # The student reads the question alone and learns the teacher's answer.
        assert example.messages == [{"role": "user", "content": dream.scenario},
                                    {"role": "assistant", "content": dream.response}]
        context = " ".join(m["content"] for m in example.messages[:-1])
        assert NOTES_HEADER not in context and not any(f in context for f in dream.fragments)
        rendered = tiny_loaded().tokenizer.apply_chat_template(example.messages[:-1], tokenize=False)
        assert "<|im_start|>system" not in rendered and NOTES_HEADER not in rendered


def test_the_teachers_distribution_is_kept_and_is_the_students_soft_target(world, scripted):
    scripted()  # the teacher answers from its first note: grounded
    batch = run(world, dreams=dataclasses.replace(DREAMS, teacher_top_k=4))
    by_id = {d.id: d for d in batch}
    examples = training_set(world.db, DreamSettings(replay_fraction=0.0, anchor_fraction=0.0), seed=1)
    assert examples
    tokenizer = tiny_loaded().tokenizer
    for example in examples:
        dream = by_id[int(example.id[6:])]
        if dream.target == "logged":  # the teacher's distribution was over its own answer, not this one
            assert dream.teacher is None and example.soft is None
            continue
        soft = example.soft
        assert soft is not None and not soft.held  # taught, weighted as a fact, not held as an anchor
        [encoded] = encode_examples(tokenizer, [example], max_context_tokens=512)  # one target per answer token
        assert len(soft.ids) == len(encoded.response_ids) and all(len(row) == 4 for row in soft.ids)
        assert soft.ids == dream.teacher.ids  # as stored
        assert all(0 >= row[0] >= row[-1] for row in soft.logprobs)  # log-probabilities, most likely first
    assert any(e.soft is not None for e in examples)
    # The same dreams scored without it keep none.
    assert all(d.teacher is None for d in run(world, seed=8))


UNGROUNDED = "Zorblat huggles quantum marmalade beside seventeen purple glaciers."


@pytest.mark.parametrize("teacher_answer, signal, scorer", [
    (UNGROUNDED, SIGNAL, "grounding"),  # words the memories do not hold
    (None, SignalSettings(min_divergence=100.0, min_total=0.0), "divergence"),  # the memories do not support it
])
def test_an_unsupported_teacher_answer_is_rejected_or_replaced_by_the_logged_answer(world, scripted, teacher_answer,
                                                                                      signal, scorer):
    scripted(teacher_answer=teacher_answer)
    batch = run(world, signal=signal)
    joins = [d for d in batch if d.kind == "join"]
    asked = [d for d in batch if d.kind != "join"]
    assert joins and asked
    for dream in joins:  # composed questions have no logged answer: rejected, naming the scorer
        assert not dream.accepted and dream.target == "teacher"
        assert any(r.startswith(f"{scorer}: ") for r in dream.reasons), dream.reasons
        assert load_dream(world.db, dream.id)["status"] == "rejected"
    if scorer == "grounding":
        reason = next(r for r in joins[0].reasons if r.startswith("grounding: "))
        assert "content words in neither the memories nor the question: zorblat, huggles" in reason.lower()
    for dream in asked:  # a member's own question: its logged answer is trained on instead
        assert dream.accepted and dream.target == "logged", dream.reasons
        assert dream.response == dream.logged_answer and dream.response != teacher_answer
        assert dream.reasons[0].startswith("replay: ") and f"{scorer}: " in dream.reasons[0]
        stored = load_dream(world.db, dream.id)
        assert (stored["target"], stored["response"], stored["status"]) == ("logged", dream.logged_answer, "accepted")
    assert summary(batch)["logged_targets"] == len(asked)
    assert summary(batch)["accepted_by_kind"] == {k: sum(d.kind == k for d in asked) for k in {d.kind for d in asked}}
    examples = {e.id: e for e in training_set(world.db, DreamSettings(replay_fraction=0.0, anchor_fraction=0.0),
                                              seed=1)}
    assert set(examples) == {f"dream:{d.id}" for d in asked}
    for dream in asked:
        assert examples[f"dream:{dream.id}"].messages[-1] == {"role": "assistant", "content": dream.logged_answer}


def test_an_unparsable_judgement_rejects_and_does_not_raise(world, scripted):
    scripted(judge_answer=" excellent, truly")
    batch = run(world, signal=JUDGED)
    assert batch and not any(d.accepted for d in batch)
    assert all(any(r.startswith("judge: unparsable judgement") for r in d.reasons) for d in batch)


@pytest.mark.parametrize("where, reason, settings", [
    ("compose", "generation failed: RuntimeError: scripted failure while compose", JOINS),  # only joins compose
    ("respond", "generation failed: RuntimeError: scripted failure while respond", DREAMS),
])
def test_a_failed_generation_is_stored_as_rejected_with_that_reason(world, scripted, where, reason, settings):
    scripted(fail_on=where)
    batch = run(world, dreams=settings)
    assert len(batch) == DREAMS.per_cycle
    for dream in batch:
        stored = load_dream(world.db, dream.id)
        assert not stored["accepted"] and stored["status"] == "rejected"
        assert stored["reasons"] == [reason] and stored["failure"] == reason
    assert summary(batch)["stop"] is True


def test_a_timed_out_generation_is_stored_as_rejected_with_that_reason(world, scripted):
    scripted(timeout_on="respond")
    batch = run(world)
    assert batch and all(load_dream(world.db, d.id)["reasons"][0].startswith("generation timed out playing")
                         for d in batch)


def test_a_real_timeout_on_the_tiny_model_rejects(world):
    settings = DreamSettings(per_cycle=2, batch_size=2, scenario_tokens=400, response_tokens=8,
                             generation_timeout_seconds=1e-9, kinds=["join"])
    batch = run(world, dreams=settings)
    assert batch and all(not d.accepted and d.failure.startswith("generation timed out composing") for d in batch)


def test_a_judge_that_raises_rejects(world, scripted):
    scripted(fail_on="judge")
    batch = run(world, signal=JUDGED)
    assert batch and all(any(r.startswith("judge: judge failed: RuntimeError") for r in d.reasons) for d in batch)


def test_training_set_mixes_accepted_dreams_with_replayed_exchanges(world, scripted):
    scripted()
    accepted = [d for d in run(world) if d.accepted]
    examples = training_set(world.db, DreamSettings(replay_fraction=0.5), seed=1)
    dream_ex = [e for e in examples if e.id.startswith("dream:")]
    replay_ex = [e for e in examples if e.id.startswith("replay:")]
    assert sorted(int(e.id[6:]) for e in dream_ex) == sorted(d.id for d in accepted)
    assert len(replay_ex) == share_count(len(accepted), 0.5) == len(accepted)
    for e in dream_ex:  # context = the scenario alone
        assert [m["role"] for m in e.messages] == ["user", "assistant"]
    for e in replay_ex:  # context = real history ending in the user's turn, response = the assistant's
        assert e.messages[-1]["role"] == "assistant" and any(m["role"] == "user" for m in e.messages[:-1])
        node = int(e.id.split(":")[1])
        assert node in world.graph.ids
    encoded = encode_examples(tiny_loaded().tokenizer, examples, max_context_tokens=512)
    assert all(x.context_ids and x.response_ids for x in encoded)
    assert training_set(world.db, DreamSettings(replay_fraction=0.75), seed=1).__len__() == 4 * len(accepted)
    assert len(training_set(world.db, DreamSettings(replay_fraction=0.0), seed=1)) == len(accepted)
    mark_trained(world.db, examples, "ckpt-1")
    assert training_set(world.db, DreamSettings(), seed=1) == []  # nothing new to train on


ANCHORS = [Anchor(f"a{i}", f"General prompt number {i}?", f"A general answer, number {i}.") for i in range(3)]


def test_every_round_carries_its_anchor_share(world, scripted):
    scripted()
    settings = DreamSettings(replay_fraction=0.5, anchor_fraction=0.25)
    for round_seed in (7, 8):  # two rounds, each of new dreams: the anchors come in each
        accepted = [d for d in run(world, seed=round_seed) if d.accepted]
        assert accepted
        examples = training_set(world.db, settings, seed=round_seed, anchors=ANCHORS)
        rest = [e for e in examples if not e.id.startswith("anchor:")]
        anchors = [e for e in examples if e.id.startswith("anchor:")]
        assert len(anchors) == share_count(len(rest), 0.25) > 0
        assert examples[-len(anchors):] == anchors  # after the dreams and the replays
        by_id = {f"anchor:{a.id}": a for a in ANCHORS}
        for example in anchors:
            anchor = by_id[example.id]
            assert example.messages == [{"role": "user", "content": anchor.prompt},
                                        {"role": "assistant", "content": anchor.answer}]
        assert training_set(world.db, settings, seed=round_seed, anchors=ANCHORS) == examples  # seeded
        mark_trained(world.db, examples, f"ckpt-{round_seed}")
    assert training_set(world.db, settings, seed=1, anchors=ANCHORS) == []  # no anchors without dreams


def test_the_anchor_share_cycles_a_small_bank_and_an_empty_bank_adds_nothing(world, scripted):
    scripted()
    assert any(d.accepted for d in run(world))
    plain = training_set(world.db, DreamSettings(replay_fraction=0.5, anchor_fraction=0.75), seed=1)
    assert plain and not any(e.id.startswith("anchor:") for e in plain)  # anchors=() by default
    assert training_set(world.db, DreamSettings(replay_fraction=0.5, anchor_fraction=0.75), seed=1, anchors=[]) == plain
    many = training_set(world.db, DreamSettings(replay_fraction=0.5, anchor_fraction=0.75), seed=1, anchors=ANCHORS)
    anchors = [e for e in many if e.id.startswith("anchor:")]
    assert many[: len(plain)] == plain and len(anchors) == share_count(len(plain), 0.75) == 3 * len(plain)
    assert {e.id for e in anchors} == {f"anchor:{a.id}" for a in ANCHORS}  # the bank in turn
    off = training_set(world.db, DreamSettings(replay_fraction=0.5, anchor_fraction=0.0), seed=1, anchors=ANCHORS)
    assert off == plain


def test_review_queue_holds_accepted_dreams_until_approved(world, scripted):
    scripted()
    batch = run(world, dreams=DreamSettings(**{**DREAMS.__dict__, "review": True}))
    accepted = [d for d in batch if d.accepted]
    assert len(accepted) >= 2
    assert status_counts(world.db).get("pending_review") == len(accepted) == len(review.pending(world.db))
    assert training_set(world.db, DreamSettings(), seed=1) == []  # nothing approved yet
    first, second = accepted[0].id, accepted[1].id
    assert review.decide(world.db, first, "approved", note="good", reviewer="alice")["status"] == "approved"
    assert review.decide(world.db, second, "rejected", note="off", reviewer="bob")["status"] == "review_rejected"
    assert [e.id for e in training_set(world.db, DreamSettings(replay_fraction=0.0), seed=1)] == [f"dream:{first}"]
    assert reviews_of(world.db, first) == [{"decision": "approved", "reviewer": "alice", "note": "good",
                                            "at": pytest.approx(reviews_of(world.db, first)[0]["at"])}]
    with pytest.raises(review.ReviewError):
        review.decide(world.db, second, "approved")  # decided once
    with pytest.raises(review.ReviewError):
        review.decide(world.db, first, "maybe")
    rejected = next(d for d in batch if not d.accepted) if not all(d.accepted for d in batch) else None
    if rejected is not None:
        with pytest.raises(review.ReviewError):
            review.decide(world.db, rejected.id, "approved")  # only accepted dreams wait for review
    assert [d["id"] for d in review.pending(world.db)] == [d.id for d in accepted[2:]]


def test_novelty_rejects_a_repeat_of_an_accepted_dream(world, scripted):
    scripted()
    first = run(world, seed=7)
    again = run(world, seed=7)  # same collisions, same scripted text: near-duplicates of stored dreams
    assert any(d.accepted for d in first)
    assert not any(d.accepted for d in again)
    assert all(any(r.startswith("novelty:") for r in d.reasons) for d in again)
    # Once trained on, a dream no longer blocks its repeat: rehearsing a fact in a later round is wanted.
    mark_trained(world.db, training_set(world.db, DreamSettings(replay_fraction=0.0), seed=1), "ckpt-1")
    later = run(world, dreams=dataclasses.replace(DREAMS, fresh_share=0.0), seed=7)  # the same collisions
    assert [d.accepted for d in later] == [d.accepted for d in first]


def test_memories_no_trained_dream_used_are_dreamt_about_first(world, scripted):
    scripted()
    graph, db = world.graph, world.db
    assert list(untrained_memories(db)) == list(graph.ids)  # nothing trained yet: every memory is fresh
    alike = graph.collisions(db, 6, seed=3, settings=GRAPH)
    # While every memory is fresh the draw is the one without a preference (same seed, same collisions).
    assert graph.collisions(db, 6, seed=3, settings=GRAPH, prefer=untrained_memories(db), prefer_share=1.0) == alike
    first = run(world, dreams=dataclasses.replace(DREAMS, fresh_share=0.0), seed=7)
    mark_trained(db, training_set(db, DreamSettings(replay_fraction=0.0), seed=1), "ckpt-1")
    used = {n for d in first if d.accepted for n in d.node_ids}
    fresh = set(untrained_memories(db).tolist())
    assert used and fresh and not used & fresh and fresh | used == set(graph.ids.tolist())
    starts = [c.node_ids[0] for c in graph.collisions(db, 12, seed=5, settings=GRAPH,
                                                      prefer=untrained_memories(db), prefer_share=1.0)]
    assert starts and set(starts) <= fresh
    mixed = [c.node_ids[0] for c in graph.collisions(db, 24, seed=5, settings=GRAPH,
                                                     prefer=untrained_memories(db), prefer_share=0.0)]
    assert not set(mixed) <= fresh  # without the preference, trained memories start collisions too


def test_a_scorer_that_raises_rejects_the_batch_instead_of_stopping_the_cycle(world, scripted):
    scripted()

    def broken(dreams, ctx):
        raise MemoryError("out of memory in the divergence pass")

    # join dreams: a dream that asks a logged question would fall back to its logged answer
    batch = dream_batch(world.db, world.graph, tiny_loaded(), HashEmbedder(), dreams=JOINS, signal=SIGNAL,
                        graph_settings=GRAPH, seed=7, scorers={**signal_agent.SCORERS, "divergence": broken})
    assert batch and not any(d.accepted for d in batch)
    assert all("divergence: scorer failed: MemoryError" in " ".join(d.reasons) for d in batch)


def test_neighbours_take_their_part_of_the_anchor_share_with_the_base_answers(world, scripted):
    scripted()
    assert any(d.accepted for d in run(world))
    asked: list[list[tuple[str, str]]] = []

    def as_base(prompts):  # stands in for the base model's cached answers (NeighbourCache.answers)
        asked.append(prompts)
        return [Anchor(i, p, f"The base says {i}.") for i, p in prompts]

    settings = DreamSettings(replay_fraction=0.5, anchor_fraction=0.75, neighbour_share=0.5)
    examples = training_set(world.db, settings, seed=1, anchors=ANCHORS, neighbours=as_base)
    plain = training_set(world.db, settings, seed=1, anchors=ANCHORS)  # no answerer: the bank alone
    rest = [e for e in examples if e.id.split(":")[0] in ("dream", "replay")]
    near = [e for e in examples if e.id.startswith("neighbour:")]
    bank = [e for e in examples if e.id.startswith("anchor:")]
    share = share_count(len(rest), 0.75)
    questions = [e.messages[0]["content"] for e in rest if e.id.startswith("dream:")]
    drawn = neighbour_prompts(questions, 1)
    assert near and len(near) == min(len(drawn), round(share * 0.5)) and len(near) + len(bank) == share
    assert examples == rest + near + bank and plain[: len(rest)] == rest and len(plain) == len(examples)
    assert len(asked) == 1 and len(asked[0]) == len(near)  # only the prompts taken are answered
    for example in near:
        prompt = example.messages[0]["content"]
        assert (example.id.removeprefix("neighbour:"), prompt) in drawn and prompt not in questions
        assert example.messages[1]["content"] == f"The base says {example.id.removeprefix('neighbour:')}."
    off = training_set(world.db, dataclasses.replace(settings, neighbour_share=0.0), seed=1, anchors=ANCHORS,
                       neighbours=as_base)
    assert off == plain
