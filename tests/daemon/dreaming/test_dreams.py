"""Dreams end to end on the tiny model and a scripted generator: composition, play-out, scoring,
storage with provenance, failures and timeouts, the training set and the review queue."""

from __future__ import annotations

import pytest

from dreamd.daemon.dreaming import review, signal_agent
from dreamd.daemon.dreaming.batch import dream_batch, summary
from dreamd.daemon.dreaming.records import load_dream
from dreamd.daemon.dreaming.settings import DreamSettings, SignalSettings
from dreamd.daemon.dreaming.training_set import mark_trained, replay_count, training_set
from dreamd.trainers.examples import encode_examples
from dreamd.trainers.generate import generate_chats
from tests.helpers.dreams import GRAPH, install_scripted, sample_graph, tiny_loaded
from tests.helpers.fakes import HashEmbedder

# Divergence on a random tiny model is noise around 0: its threshold is opened so that the tests
# decide on the other scores (the real-model test checks the divergence's direction).
SIGNAL = SignalSettings(min_divergence=-100.0, min_total=0.3)
DREAMS = DreamSettings(per_cycle=6, batch_size=4, scenario_tokens=16, response_tokens=16)


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


def test_dreams_are_composed_played_out_scored_and_stored_with_provenance(world, scripted):
    generator = scripted()
    batch = run(world)
    assert len(batch) == DREAMS.per_cycle and all(d.id is not None for d in batch)
    # Batched as configured: 6 dreams in batches of 4 and 2, for composing and playing out.
    assert [n for kind, n in generator.calls if kind == "compose"] == [4] * 4 + [2] * 2
    accepted = [d for d in batch if d.accepted]
    assert accepted, [d.reasons for d in batch]
    node_ids = set(world.graph.ids)
    for dream in accepted:
        stored = load_dream(world.db, dream.id)
        assert stored["accepted"] and stored["status"] == "accepted"
        assert 2 <= len(stored["node_ids"]) <= 4 and set(stored["node_ids"]) <= node_ids
        assert stored["memories"] == stored["node_ids"]
        assert len(stored["walk"]) == len(stored["node_ids"]) - 1
        for path, member in zip(stored["walk"], stored["node_ids"][1:]):
            assert path[0] == stored["node_ids"][0] and path[-1] == member
        assert len(stored["fragments"]) == len(stored["node_ids"])
        assert stored["scenario"] and stored["response"] and stored["failure"] is None
        assert set(stored["scores"]) == {"divergence", "judge", "hygiene", "novelty"}
        assert all(s["value"] is not None and s["passed"] for s in stored["scores"].values())
        assert stored["reasons"] and stored["total"] >= SIGNAL.min_total
        assert stored["model"] == "tiny-llama" and stored["temperature"] > 0
        # and back from a memory to the dream
        assert dream.id in dreams_of_memory(world.db, stored["node_ids"][0])
    # The scenario is what the model answered: no fragments, no instructions in the play-out.
    assert all("Fragments" not in d.scenario and d.scenario for d in batch)


def test_an_unparsable_judgement_rejects_and_does_not_raise(world, scripted):
    scripted(judge_answer=" excellent, truly")
    batch = run(world)
    assert batch and not any(d.accepted for d in batch)
    assert all(any(r.startswith("judge: unparsable judgement") for r in d.reasons) for d in batch)


@pytest.mark.parametrize("where, reason", [
    ("compose", "generation failed: RuntimeError: scripted failure while compose"),
    ("respond", "generation failed: RuntimeError: scripted failure while respond"),
])
def test_a_failed_generation_is_stored_as_rejected_with_that_reason(world, scripted, where, reason):
    scripted(fail_on=where)
    batch = run(world)
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
                             generation_timeout_seconds=1e-9)
    batch = run(world, dreams=settings)
    assert batch and all(not d.accepted and d.failure.startswith("generation timed out composing") for d in batch)


def test_a_judge_that_raises_rejects(world, scripted):
    scripted(fail_on="judge")
    batch = run(world)
    assert batch and all(any(r.startswith("judge: judge failed: RuntimeError") for r in d.reasons) for d in batch)


def test_training_set_mixes_accepted_dreams_with_replayed_exchanges(world, scripted):
    scripted()
    accepted = [d for d in run(world) if d.accepted]
    examples = training_set(world.db, DreamSettings(replay_fraction=0.5), seed=1)
    dream_ex = [e for e in examples if e.id.startswith("dream:")]
    replay_ex = [e for e in examples if e.id.startswith("replay:")]
    assert sorted(int(e.id[6:]) for e in dream_ex) == sorted(d.id for d in accepted)
    assert len(replay_ex) == replay_count(len(accepted), 0.5) == len(accepted)
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


def test_a_scorer_that_raises_rejects_the_batch_instead_of_stopping_the_cycle(world, scripted):
    scripted()

    def broken(dreams, ctx):
        raise MemoryError("out of memory in the divergence pass")

    batch = dream_batch(world.db, world.graph, tiny_loaded(), HashEmbedder(), dreams=DREAMS, signal=SIGNAL,
                        graph_settings=GRAPH, seed=7, scorers={**signal_agent.SCORERS, "divergence": broken})
    assert batch and not any(d.accepted for d in batch)
    assert all("divergence: scorer failed: MemoryError" in " ".join(d.reasons) for d in batch)
