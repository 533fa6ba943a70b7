"""The memory-formation experiment's Measurer on the tiny model: a checkpoint its arm's gate already
evaluated has its probe and anchor numbers taken from that evaluation (they are the gate's own),
and only the held-out fact questions are asked; one the gate never saw is measured whole."""

from dreamd.daemon.experiments.memory_formation import measure as measure_module
from dreamd.daemon.experiments.memory_formation.facts import heldout_probes
from dreamd.daemon.experiments.memory_formation.measure import GeneralReference, Measurer, general_suite
from dreamd.daemon.gate.judge import apply_judgement, judge_candidate
from dreamd.daemon.loop.cycle import anchors_of
from tests.helpers.fakes import HashEmbedder


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
