"""Small matplotlib helpers shared by `dreamctl report` and the experiments: a line chart with
event markers, a stacked bar chart, and one self-contained HTML page linking the PNGs.

Import this module lazily (inside the function that draws): matplotlib costs a few hundred
milliseconds to import, and `dreamctl status` must stay fast. The Agg backend is chosen before
pyplot is imported, so drawing works with no display (a service has none).
"""

from __future__ import annotations

import html
import io
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from dreamd.trainers.atomic import write_atomically  # noqa: E402  (after the backend choice)

# Colours of the event kinds drawn as vertical lines; any other kind is grey.
EVENT_COLOURS = {
    "promoted": "tab:green",
    "promotion": "tab:green",
    "good": "tab:green",
    "rejected": "tab:red",
    "rolled_back": "tab:red",
    "rollback": "tab:red",
    "bad": "tab:red",
    "manual": "tab:orange",
    "manual_rollback": "tab:orange",
}
DPI = 100
SIZE = (9, 4.5)


def line_chart(path, title: str, xlabel: str, ylabel: str,
               series: dict[str, tuple[Sequence, Sequence]],
               events: list[tuple[object, str, str]] | None = None, *,
               colours: dict[str, str] | None = None, steps: bool = False) -> Path:
    """Draw each series (name -> (xs, ys)) as a line with markers and save a PNG at `path`.

    `events` are (x, label, kind) drawn as vertical lines, coloured by kind (promoted green,
    rejected or rolled back red, manual rollback orange, others grey). x values may be numbers or
    datetimes; a `None` y is left out of its line rather than drawn as zero. `colours` picks a
    series' colour by name; `steps` draws running totals as steps rather than slopes.
    """
    fig, ax = plt.subplots(figsize=SIZE)
    try:
        for name, (xs, ys) in series.items():
            points = [(x, y) for x, y in zip(xs, ys) if y is not None]
            if points:
                px, py = zip(*points)
                ax.plot(px, py, marker="o", markersize=3, linewidth=1.2, label=name,
                        color=(colours or {}).get(name), drawstyle="steps-post" if steps else "default")
        _draw_events(ax, events or [])
        if _any_datetime(series, events):
            _pad_short_time_span(ax, series, events or [])
            fig.autofmt_xdate()  # slanted date labels do not overlap
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="best")
        return _save(fig, path)
    finally:
        plt.close(fig)


def _pad_short_time_span(ax, series, events) -> None:
    """Everything within a few minutes (one cycle, say): matplotlib would spread the axis over
    years; show an hour around it instead."""
    xs = [x for xs, _ys in series.values() for x in xs] + [event[0] for event in events]
    times = [x for x in xs if isinstance(x, datetime)]
    if times and max(times) - min(times) < timedelta(minutes=30):
        middle = min(times) + (max(times) - min(times)) / 2
        ax.set_xlim(middle - timedelta(minutes=30), middle + timedelta(minutes=30))


def bar_chart(path, title: str, xlabel: str, ylabel: str, categories: Sequence[str],
              stacks: dict[str, Sequence[float]], colours: dict[str, str] | None = None) -> Path:
    """Draw stacked bars, one per category, one layer per entry of `stacks` (name -> value per
    category, in the order of `categories`), and save a PNG at `path`."""
    fig, ax = plt.subplots(figsize=SIZE)
    try:
        positions = range(len(categories))
        bottom = [0.0] * len(categories)
        for name, values in stacks.items():
            values = [float(v) for v in values]
            colour = (colours or {}).get(name)
            ax.bar(positions, values, bottom=bottom, label=name, color=colour)
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_xticks(list(positions))
        # Long batch ids would overlap: rotate them, and show every label only when few.
        step = max(1, len(categories) // 30)
        ax.set_xticklabels([c if i % step == 0 else "" for i, c in enumerate(categories)],
                           rotation=45, ha="right", fontsize="small")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
        if stacks:
            ax.legend(fontsize="small", loc="best")
        return _save(fig, path)
    finally:
        plt.close(fig)


def write_html(path, title: str, sections: Iterable[dict]) -> Path:
    """Write one self-contained HTML page: a heading per section, its image (a file name or path
    relative to the page, or None) and its `html` fragment (already escaped by the caller; use
    `html_table` or `paragraph` to build one). Only relative links, so the folder can be moved or
    copied elsewhere whole."""
    path = Path(path)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "img{max-width:100%;border:1px solid #ddd}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}"
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(str(section.get('heading', '')))}</h2>")
        image = section.get("image")
        if image:
            name = html.escape(str(image), quote=True)
            parts.append(f'<p><a href="{name}"><img src="{name}" alt="{name}"></a></p>')
        if section.get("html"):
            parts.append(str(section["html"]))
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    # A reader never sees half a page; not fsynced: the page is redrawn from its sources at will.
    write_atomically(path, "\n".join(parts) + "\n", durable=False)
    return path


def paragraph(text: str) -> str:
    """An escaped <p> for a section's `html`."""
    return f"<p>{html.escape(str(text))}</p>"


def html_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """An escaped HTML table for a section's `html`."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _any_datetime(series, events) -> bool:
    xs = [x for xs, _ in series.values() for x in xs] + [e[0] for e in events or []]
    return any(isinstance(x, datetime) for x in xs)


def _draw_events(ax, events) -> None:
    seen = set()
    for x, label, kind in events:
        colour = EVENT_COLOURS.get(kind, "tab:gray")
        # One legend entry per kind, not per event.
        legend = kind if kind not in seen else None
        seen.add(kind)
        ax.axvline(x, color=colour, linestyle="--", linewidth=0.9, alpha=0.8, label=legend)
        if label:
            ax.annotate(str(label), xy=(x, 1.0), xycoords=("data", "axes fraction"),
                        rotation=90, va="top", ha="right", fontsize="x-small", color=colour)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, dpi=DPI, format="png")
    write_atomically(path, png.getvalue(), durable=False)  # as the page: atomic for readers, redrawn at will
    return path
