"""The memory-formation experiment's Measurer on the tiny model: a checkpoint its arm's gate already
evaluated has its probe and anchor numbers taken from that evaluation (they are the gate's own),
and only the held-out fact questions are asked; one the gate never saw is measured whole; the
value log-probabilities are those of a plain forward."""

import pytest
import torch
import torch.nn.functional as F

from dreamd.daemon.experiments.memory_formation import measure as measure_module
from dreamd.daemon.experiments.memory_formation.facts import heldout_probes, probe_example
from dreamd.daemon.experiments.memory_formation.measure import GeneralReference, Measurer, general_suite
from dreamd.daemon.gate.judge import apply_judgement, judge_candidate
from dreamd.daemon.loop.cycle import anchors_of
from dreamd.trainers.examples import split_point
from dreamd.trainers.model_store import LoadedModel
from tests.helpers.fakes import HashEmbedder
from tests.helpers.tiny import tiny_llama, tiny_tokenizer


def test_the_gate_s_evaluation_is_reused_and_an_unseen_checkpoint_measured(world, monkeypatch):
    world.point(current=world.parent, last_good=world.parent)
    embed = HashEmbedder().encode
    judged = judge_candidate(world.config, world.layout, world.db, world.child, embed)
    apply_judgement(world.layout, world.db, judged)
    suite = general_suite(anchors_of(world.config, world.layout), world.config.evaluation.max_new_tokens)
    assert suite.general_key() == judged.metrics["general_key"]  # the experiment asks the gate's banks

    measured = []
    real = measure_module.general_scores

    def counting(loaded, *args):
        measured.append(loaded)
        return real(loaded, *args)

    monkeypatch.setattr(measure_module, "general_scores", counting)
    measurer = Measurer(world.config, world.layout, {"Zypher": heldout_probes("Zypher", 1, 1)},
                        GeneralReference(suite, embed, None), base={})
    child = measurer(world.child)
    assert measured == []
    assert child["probes"] == {"loss": judged.metrics["probe_loss"], "accuracy": judged.metrics["probe_accuracy"]}
    assert child["anchor_kl"] == judged.metrics["kl_to_base"] and 0 <= child["Zypher"]["recall"] <= 1
    wrecked = measurer(world.wrecked)  # never evaluated by the gate
    assert len(measured) == 1
    assert wrecked["probes"]["loss"] > 0 and measurer(world.wrecked) is wrecked  # each checkpoint once


def test_value_logprobs_score_the_values_tokens_as_one_plain_forward_does():
    """The batched answer pass gives each probe's value tokens the log-probabilities one plain
    forward of that exchange alone gives (tokens located by character offsets, the value only)."""
    tokenizer, model = tiny_tokenizer(), tiny_llama().eval()
    loaded = LoadedModel(model, tokenizer, None)
    probes = heldout_probes("Zypher", 4, 2)
    expected = []
    for probe in probes:
        full, boundary = split_point(tokenizer, probe_example(probe).messages)
        encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = encoding["input_ids"]
        start = full.index(probe.value, boundary)
        value = [i for i, (s, e) in enumerate(encoding["offset_mapping"]) if s < start + len(probe.value) and e > start]
        with torch.no_grad():
            logp = F.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
        expected.append(float(torch.stack([logp[i - 1, ids[i]] for i in value]).mean()))
        assert tokenizer.decode([ids[i] for i in value]).strip().endswith(probe.value.split()[-1])
    assert measure_module.value_logprobs(loaded, probes) == pytest.approx(expected, abs=1e-4)


def test_a_point_measured_without_general_numbers_gets_them_when_asked_again(world, monkeypatch):
    """An ungated arm's mid-phase round: fact questions only; asked again with general numbers, the
    same checkpoint is measured whole (never served the partial numbers)."""
    suite = general_suite(anchors_of(world.config, world.layout), world.config.evaluation.max_new_tokens)
    measurer = Measurer(world.config, world.layout, {"Zypher": heldout_probes("Zypher", 1, 1)},
                        GeneralReference(suite, HashEmbedder().encode, None), base={})
    monkeypatch.setattr(measure_module, "stored_general", lambda *a: None)  # as in an arm without a gate
    partial = measurer(world.wrecked, general=False)
    assert partial["probes"] is None and partial["anchor_kl"] is None and 0 <= partial["Zypher"]["recall"] <= 1
    assert measurer(world.wrecked, general=False) is partial
    whole = measurer(world.wrecked)
    assert whole["probes"]["loss"] > 0 and whole["anchor_kl"] is not None
    assert whole["Zypher"] == partial["Zypher"]
