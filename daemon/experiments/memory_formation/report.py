"""The memory-formation experiment's artefacts, from its results alone: a table per arm, learning
curves, a written summary, and one HTML page linking them (results.json is written by the run).

The summary is templated from the numbers, so it says what they show whichever way they fall: a
claim the numbers do not support ("the dream loop beat plain fine-tuning") is written as failed.
Everything here is pure but for the files written, so it can be tested on made-up results.
"""

from __future__ import annotations

from pathlib import Path

ARM_LABELS = {
    "dream_loop": "(a) full dream loop",
    "plain_finetune": "(b) plain fine-tuning",
    "no_training": "(c) no training",
    "replay_only": "(d) loop without dreams (replay only)",
    "full_backprop": "(e) (a)'s data, full backprop",
}
CONCEPT_NOTES = {"Zypher": "first concept, acquisition", "Zyphrex": "second concept, interference"}
PROBE_LOSS_TOLERANCE = 0.03  # the targets (and the gate's default budgets) for "kept its capabilities":
PROBE_ACCURACY_TOLERANCE = 0.02  # probe loss at most +3%, probe accuracy at most 2 points below the base


def present(results: dict) -> list[str]:
    """The arms this run has, in the order of ARM_LABELS."""
    return [arm for arm in ARM_LABELS if arm in results["arms"]]


def _m(results: dict, arm: str, index: int) -> dict:
    return next(p for p in results["arms"][arm] if p["index"] == index)["measurement"]


def _ends(results: dict) -> tuple[int, int]:
    """Checkpoint indices of the end of acquisition and of interference."""
    n = results["settings"]["cycles_per_phase"]
    return n, 2 * n


def questions(results: dict, concept: str) -> int:
    return len(results["probes"][concept])


# --- the table ----------------------------------------------------------------------------------

HEADER = ("#", "phase", "cycle", "steps", "Zypher logp", "Zypher recall", "Zypher confused",
          "Zyphrex logp", "Zyphrex recall", "Zyphrex confused", "probe loss", "probe acc", "outcome")


def rows(results: dict, arm: str) -> list[list]:
    out = []
    for p in results["arms"][arm]:
        m = p["measurement"]
        outcome = p.get("outcome") or ("base" if p["index"] == 0 else "trained" if p["steps"] else "not trained")
        probes = m["probes"] or {"loss": "—", "accuracy": "—"}  # an ungated arm's mid-phase round: not measured
        out.append([p["index"], p["phase"], p["cycle"], p["steps"],
                    m["Zypher"]["logprob"], m["Zypher"]["recall"], m["Zypher"]["confusion"],
                    m["Zyphrex"]["logprob"], m["Zyphrex"]["recall"], m["Zyphrex"]["confusion"],
                    probes["loss"], probes["accuracy"], outcome])
    return out


def _cell(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def table_markdown(results: dict) -> str:
    lines = ["# Memory-formation experiment: every checkpoint", "",
             "logp: mean log-probability per token of the fact's value after a held-out question (higher is "
             "better); recall: share of held-out questions whose greedy reply holds the answer; confused: share "
             "answered with the other concept's value; probes: the general-capability probes (loss of the "
             "reference answers, greedy accuracy). Steps: optimizer steps of that round.", ""]
    arms = present(results)
    for arm in arms:
        lines += [f"## {ARM_LABELS[arm]}", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows(results, arm)]
        lines.append("")
    lines += ["## Budget (optimizer steps per phase)", "",
              "| phase | " + " | ".join(ARM_LABELS[a] for a in arms) + " |", "|---" * (len(arms) + 1) + "|"]
    for phase, per_arm in results["budget"].items():
        lines.append(f"| {phase} | " + " | ".join(str(per_arm.get(a, "")) for a in arms) + " |")
    return "\n".join(lines) + "\n"


# --- the plots ----------------------------------------------------------------------------------

def _events(results: dict) -> list[tuple]:
    acquired, _ = _ends(results)
    events = [(acquired + 0.5, "interference begins", "phase")]
    for p in results["arms"]["dream_loop"]:
        if p["index"] and p.get("outcome") not in ("promoted",):
            kind = "rejected" if p.get("outcome") == "rejected" else "other"
            events.append((p["index"], f"(a) {p.get('outcome')}", kind))
    return events


def curves(results: dict, metric) -> dict:
    """Series per arm (name -> (checkpoint indices, values)); `metric(measurement) -> float`."""
    series = {}
    # (c) first and (a) after it: where the loop stays at the base, its line is drawn on top.
    for arm in ("no_training", "plain_finetune", "full_backprop", "replay_only", "dream_loop"):
        if arm not in results["arms"]:
            continue
        # A point without the metric (an ungated arm's general numbers mid-phase) is left out of its line.
        points = [(p["index"], metric(p["measurement"])) for p in results["arms"][arm]]
        points = [(x, y) for x, y in points if y is not None]
        series[ARM_LABELS[arm]] = ([x for x, _ in points], [y for _, y in points])
    loop = results["arms"]["dream_loop"]
    if any("candidate_measurement" in p for p in loop):  # what the gate kept out
        series["(a) candidates, rejected ones too"] = (
            [p["index"] for p in loop], [metric(p.get("candidate_measurement", p["measurement"])) for p in loop])
    return series


def draw(results: dict, out: Path) -> list[tuple[str, Path]]:
    from dreamd.daemon.report.plotting import line_chart

    xlabel = "checkpoint (0: base; then one per dream cycle / plain round)"
    charts = []
    for concept in results["concepts"]:
        note = CONCEPT_NOTES.get(concept, "")
        charts.append((f"{concept}: log-probability of its facts ({note})", line_chart(
            out / f"{concept.lower()}-logprob.png", f"{concept}: mean log-prob per value token, held-out questions",
            xlabel, "log-probability (higher is better)",
            curves(results, lambda m, c=concept: m[c]["logprob"]), _events(results))))
        charts.append((f"{concept}: greedy recall ({note})", line_chart(
            out / f"{concept.lower()}-recall.png", f"{concept}: greedy recall of held-out questions", xlabel,
            "recall (share of questions)", curves(results, lambda m, c=concept: m[c]["recall"]), _events(results))))
    charts.append(("General capability: probe loss", line_chart(
        out / "probes-loss.png", "Capability probes: reference-answer loss", xlabel, "loss (lower is better)",
        curves(results, lambda m: m["probes"] and m["probes"]["loss"]), _events(results))))
    charts.append(("General capability: probe accuracy", line_chart(
        out / "probes-accuracy.png", "Capability probes: greedy accuracy", xlabel, "accuracy",
        curves(results, lambda m: m["probes"] and m["probes"]["accuracy"]), _events(results))))
    return charts


# --- the summary --------------------------------------------------------------------------------

def _compare(a: float, b: float, unit: float) -> str:
    """'more' / 'less' / 'the same' with a tolerance of `unit` (below it is noise)."""
    if a > b + unit / 2:
        return "more"
    if a < b - unit / 2:
        return "less"
    return "the same"


def summary_lines(results: dict) -> list[str]:
    s, budget = results["settings"], results["budget"]
    t, d = results["config"]["training"], results["config"]["dreams"]
    acquired, end = _ends(results)
    qz, qx = questions(results, "Zypher"), questions(results, "Zyphrex")
    a_acq, b_acq, c = (_m(results, "dream_loop", acquired), _m(results, "plain_finetune", acquired),
                       _m(results, "no_training", 0))
    a_end, b_end = _m(results, "dream_loop", end), _m(results, "plain_finetune", end)
    loop = [p for p in results["arms"]["dream_loop"] if p["index"]]
    lines = [
        f"**Setup.** Model {results['model']}; the daemon's settings: {t['mode']}, learning rate "
        f"{t['lora_learning_rate' if t['mode'] == 'lora' else 'full_learning_rate']:g}, {t['epochs']} epochs per "
        "round, "
        f"batch {t['batch_size']}, seed {s['seed']}; {s['cycles_per_phase']} dream cycle(s) per phase of "
        f"{d['per_cycle']} dreams, replay fraction {d['replay_fraction']:g}, anchor fraction "
        f"{d.get('anchor_fraction', 0):g}. Budget, in optimizer steps, "
        + "; ".join(f"{phase}: {b['dream_loop']} for the dream loop and {b['plain_finetune']} for plain fine-tuning"
                    for phase, b in budget.items())
        + f". Measured on {qz} held-out Zypher and {qx} Zyphrex questions (one question is {1 / qz:.2f} of recall)."
        + f" Wall time {results['timings'].get('total', 0) / 60:.1f} min"
        + (" (--quick)." if results["quick"] else "."),
    ]
    if any(b["dream_loop"] != b["plain_finetune"] for b in budget.values()):
        lines.append("**The budgets differ between the trained arms**, so the comparison below is not like for like.")

    def recall_triple(concept, ma, mb):
        return (f"{ma[concept]['recall']:.2f} with the dream loop, {mb[concept]['recall']:.2f} with plain fine-tuning "
                f"and {c[concept]['recall']:.2f} without training (log-probability per value token "
                f"{ma[concept]['logprob']:.2f}, {mb[concept]['logprob']:.2f} and {c[concept]['logprob']:.2f})")

    lines.append(f"**Acquisition.** After {s['cycles_per_phase']} cycle(s) on the Zypher logs, Zypher recall was "
                 f"{recall_triple('Zypher', a_acq, b_acq)}.")
    lines.append("**Interference.** After the Zyphrex logs, Zyphrex recall was "
                 f"{recall_triple('Zyphrex', a_end, b_end)};"
                 f" Zypher questions answered with a Zyphrex value: {a_end['Zypher']['confusion']:.2f} (dream loop), "
                 f"{b_end['Zypher']['confusion']:.2f} (plain fine-tuning).")
    persist = []
    for arm, before, after in (("the dream loop", a_acq, a_end), ("plain fine-tuning", b_acq, b_end)):
        persist.append(f"with {arm} Zypher recall went from {before['Zypher']['recall']:.2f} to "
                       f"{after['Zypher']['recall']:.2f} and its log-probability from "
                       f"{before['Zypher']['logprob']:.2f} "
                       f"to {after['Zypher']['logprob']:.2f}")
    persisted = "; ".join(persist)
    lines.append("**Persistence.** " + persisted[0].upper() + persisted[1:] + ".")
    cap = []
    for arm, m in (("dream loop", a_end), ("plain fine-tuning", b_end)):
        cap.append(f"{arm} probe loss {c['probes']['loss']:.3f} → {m['probes']['loss']:.3f}, accuracy "
                   f"{c['probes']['accuracy']:.2f} → {m['probes']['accuracy']:.2f}")
    lines.append("**General capability** (base → end): " + "; ".join(cap) + ".")
    promoted = sum(p.get("outcome") == "promoted" for p in loop)
    rejected = [p for p in loop if p.get("outcome") == "rejected"]
    untrained = [p for p in loop if not p["steps"]]
    gate = f"**Quality gate.** {promoted} of {len(loop)} dream-loop cycles were promoted"
    if rejected:
        gate += f"; {len(rejected)} rejected, first for: {'; '.join(rejected[0].get('gate_reasons', [])[:2]) or '?'}"
    if untrained:
        outcomes = ", ".join(sorted({str(p.get("outcome")) for p in untrained}))
        gate += f"; {len(untrained)} cycle(s) trained nothing ({outcomes})"
    lines.append(gate + ".")
    for p in loop:  # what the gate kept out: the last rejected candidate of each phase
        last_of_phase = p is [q for q in loop if q["phase"] == p["phase"]][-1]
        if last_of_phase and "candidate_measurement" in p:
            m = p["candidate_measurement"]
            lines.append(f"The {p['phase']} phase's last candidate, kept out by the gate, had Zypher recall "
                         f"{m['Zypher']['recall']:.2f} (log-probability {m['Zypher']['logprob']:.2f}), Zyphrex recall "
                         f"{m['Zyphrex']['recall']:.2f} ({m['Zyphrex']['logprob']:.2f}), probe loss "
                         f"{m['probes']['loss']:.3f} and accuracy {m['probes']['accuracy']:.2f}.")
    lines.append("**Plainly:**")
    lines += [f"- {claim}" for claim in verdicts(results)]
    lines.append(f"One seed and {qz} questions per concept: a difference of one question ({1 / qz:.2f}) is within "
                 "noise; the log-probabilities are the finer signal.")
    return lines


def verdicts(results: dict) -> list[str]:
    """The experiment's claims, each stated as it came out (held or failed)."""
    acquired, end = _ends(results)
    unit = 1 / questions(results, "Zypher")
    c = _m(results, "no_training", 0)
    a_acq, b_acq = _m(results, "dream_loop", acquired), _m(results, "plain_finetune", acquired)
    a_end, b_end = _m(results, "dream_loop", end), _m(results, "plain_finetune", end)
    out = []
    for arm, m in (("the dream loop", a_acq), ("plain fine-tuning", b_acq)):
        learned = m["Zypher"]["recall"] > c["Zypher"]["recall"]
        out.append(f"{arm} {'learned' if learned else 'did NOT learn'} the Zypher well enough to recall more of it "
                   f"than the untrained model ({m['Zypher']['recall']:.2f} vs {c['Zypher']['recall']:.2f}).")
    word = _compare(a_acq["Zypher"]["recall"], b_acq["Zypher"]["recall"], unit)
    out.append({"more": "the dream loop beat plain fine-tuning on Zypher recall after acquisition.",
                "less": "the dream loop did NOT beat plain fine-tuning on Zypher recall after acquisition "
                        "(it recalled less).",
                "the same": "the dream loop did NOT beat plain fine-tuning on Zypher recall after acquisition "
                            "(they were level)."}[word])
    word = _compare(a_end["Zypher"]["recall"], b_end["Zypher"]["recall"], unit)
    lp = "higher" if a_end["Zypher"]["logprob"] > b_end["Zypher"]["logprob"] else "lower"
    out.append({"more": "after interference the dream loop kept more of the Zypher than plain fine-tuning",
                "less": "after interference the dream loop did NOT keep more of the Zypher than plain fine-tuning "
                        "(it recalled less)",
                "the same": "after interference the dream loop did NOT keep more of the Zypher than plain "
                            "fine-tuning by recall (level)"}[word]
               + f"; its Zypher log-probability was {lp} ({a_end['Zypher']['logprob']:.2f} vs "
                 f"{b_end['Zypher']['logprob']:.2f}).")
    word = _compare(a_end["Zyphrex"]["recall"], b_end["Zyphrex"]["recall"], 1 / questions(results, "Zyphrex"))
    out.append(f"on the new concept (Zyphrex) the dream loop recalled {word if word != 'the same' else 'as much'}"
               f"{' than' if word != 'the same' else ' as'} plain fine-tuning.")
    for arm, m in (("the dream loop", a_end), ("plain fine-tuning", b_end)):
        kept = (m["probes"]["accuracy"] >= c["probes"]["accuracy"] - PROBE_ACCURACY_TOLERANCE
                and m["probes"]["loss"] <= c["probes"]["loss"] * (1 + PROBE_LOSS_TOLERANCE))
        out.append(f"{arm} {'kept' if kept else 'did NOT keep'} its general capability (probe accuracy at most "
                   f"{PROBE_ACCURACY_TOLERANCE * 100:.0f} points lower and probe loss at most "
                   f"{PROBE_LOSS_TOLERANCE:.0%} above the base's).")
    return [line[0].upper() + line[1:] for line in out]


def summary_markdown(results: dict) -> str:
    return "# Memory-formation experiment: summary\n\n" + "\n\n".join(summary_lines(results)) + "\n"


# --- everything ---------------------------------------------------------------------------------

def write_artefacts(results: dict, out: Path) -> list[Path]:
    """table.md, summary.md, the PNG learning curves and index.html; returns their paths."""
    from dreamd.daemon.report.plotting import html_table, paragraph, write_html

    table = out / "table.md"
    table.write_text(table_markdown(results), encoding="utf-8")
    summary = out / "summary.md"
    summary.write_text(summary_markdown(results), encoding="utf-8")
    charts = draw(results, out)
    sections = [{"heading": "Summary", "image": None,
                 "html": "".join(paragraph(line.replace("**", "")) for line in summary_lines(results))}]
    sections += [{"heading": title, "image": path.name, "html": ""} for title, path in charts]
    sections += [{"heading": f"Table: {ARM_LABELS[arm]}", "image": None, "html": html_table(HEADER, rows(results, arm))}
                 for arm in present(results)]
    links = " · ".join(f'<a href="{name}">{name}</a>' for name in ("results.json", "table.md", "summary.md"))
    sections.append({"heading": "Files", "image": None, "html": f"<p>{links}</p>"})
    index = write_html(out / "index.html", "Memory-formation experiment", sections)
    results["artefacts"] = [p.name for p in (table, summary, index, *(path for _t, path in charts))]
    return [table, summary, index, *(path for _t, path in charts)]
