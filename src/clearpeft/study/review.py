"""The label-review page of a finished run: one self-contained HTML file to look at the suspicious labels,
decide on each, and download the corrected data set.

    write_review(clearpeft.load_run("runs/x"))           # runs/x/review.html
    clearpeft review runs/x --out review.html            # the same from the command line

The page holds everything it shows: the run's header and training curves (inline SVG, drawn here), and the
label-issue report (``Run.label_issues``) as JSON in a ``<script type="application/json">`` block, which the
page's own script (``review.js``, plain JavaScript) turns into the given × predicted matrix and the table.
Nothing is fetched from elsewhere, so it opens from disk in any browser, offline. Decisions are made and
exported in the browser: the corrected CSV and a decisions file that a later review loads to go on.
"""

from __future__ import annotations

import errno
import hashlib
import html
import importlib.resources
import json
import math
import os
from pathlib import Path

from .. import runs
from ..errors import UserError, WriteError, first_line
from ..modelcard import noise_estimate_statement

PAGE = "review.html"  # the default file name, in the run folder
DECISIONS_FORMAT = "clearpeft-review-decisions"
# The curves drawn from metrics.jsonl: (title, [(field, legend, colour)], what an empty chart means).
CURVES = [
    ("Test accuracy", [("test_acc", "every module on", "#1f6fb2"), ("test_acc_routed", "routed", "#e08a1e"),
                       ("dev_acc", "dev, every module on", "#7a7a7a")],
     "no test or dev split"),
    ("Clean learning and noisy memorization", [
        ("clean_learning", "clean labels learnt", "#2c9a4a"),
        ("noisy_memorization", "wrong labels memorized", "#c83c3c"),
        ("noisy_correction", "wrong labels corrected", "#7b52ab")],
     "measured only with injected noise and the per-sample pass"),
    ("Mean gate: clean and corrupted labels", [
        ("gate_mean_clean", "clean labels", "#2c9a4a"), ("gate_mean_corrupted", "corrupted labels", "#c83c3c")],
     "no routed epoch (plain PEFT, warm-up, or clean-auto standing down)"),
    ("Estimated noise rate", [("estimated_noise_rate", "estimated", "#1f6fb2"),
                              ("flagged_rate", "share with p < 0.5", "#7a7a7a")],
     "no fit of the clean probability"),
]


def _asset(name: str) -> str:
    return importlib.resources.files("clearpeft.study").joinpath(name).read_text(encoding="utf-8")


def _metric_rows(path: Path) -> list[dict]:
    """metrics.jsonl's whole rows; an unreadable file or line costs points on the curves, not the page."""
    try:
        return runs.metric_rows(path)
    except OSError:
        return []


def _number(value) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def svg_chart(title: str, series: list[tuple[str, list, str]], note: str, width: int = 320,
              height: int = 225) -> str:
    """One line chart, epochs on x and a share in [0, 1] on y, as an inline SVG element.

    Parameters
    ----------
    title : str
        The chart's heading.
    series : list of (legend, values, colour)
        ``values`` per epoch; None where the epoch has no value (the line breaks there).
    note : str
        What it means that no series has a value (shown instead of the lines).
    """
    left, right, top, bottom = 36, 10, 26, 62
    plot_w, plot_h = width - left - right, height - top - bottom
    epochs = max((len(v) for _, v, _ in series), default=0)
    drawn = [(name, values, colour) for name, values, colour in series
             if any(_number(v) is not None for v in values)]

    def x(i: int) -> float:
        return left + (plot_w / 2 if epochs <= 1 else plot_w * i / (epochs - 1))

    def y(v: float) -> float:
        return top + plot_h * (1 - min(max(v, 0.0), 1.0))

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="{html.escape(title)}">',
             f'<text x="{left}" y="15" class="chart-title">{html.escape(title)}</text>']
    for tick in (0, 0.25, 0.5, 0.75, 1):
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" class="grid"/>'
                     f'<text x="{left - 4}" y="{y(tick) + 3:.1f}" class="tick" text-anchor="end">{tick:g}</text>')
    step = max(1, math.ceil(epochs / 10))  # at most about ten epoch labels
    for i in range(0, epochs, step):
        parts.append(f'<text x="{x(i):.1f}" y="{top + plot_h + 13}" class="tick" text-anchor="middle">{i + 1}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h + 26}" class="tick" '
                 f'text-anchor="middle">epoch</text>')
    if not drawn:
        parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" class="empty" '
                     f'text-anchor="middle">not measured: {html.escape(note)}</text>')
    for name, values, colour in drawn:
        segment: list[str] = []
        segments = []
        for i, v in enumerate(values):
            v = _number(v)
            if v is None:  # a gap: the line breaks rather than joining across epochs without a value
                segments.append(segment)
                segment = []
                continue
            segment.append(f"{x(i):.1f},{y(v):.1f}")
            parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.6" fill="{colour}">'
                         f'<title>{html.escape(name)}, epoch {i + 1}: {v:.3f}</title></circle>')
        segments.append(segment)
        parts += [f'<polyline points="{" ".join(s)}" fill="none" stroke="{colour}" stroke-width="1.8"/>'
                  for s in segments if len(s) > 1]
    legend_x, legend_y = left, top + plot_h + 42
    for name, _, colour in drawn:  # the legend under the axis, left to right, wrapping to a second line
        item = 20 + 5.6 * len(name)  # about the width of 10 px text
        if legend_x + item > width and legend_x > left:
            legend_x, legend_y = left, legend_y + 13
        parts.append(f'<rect x="{legend_x:.0f}" y="{legend_y - 8}" width="9" height="9" fill="{colour}"/>'
                     f'<text x="{legend_x + 12:.0f}" y="{legend_y}" class="tick">{html.escape(name)}</text>')
        legend_x += item
    parts.append("</svg>")
    return "".join(parts)


def curves_html(history: list[dict]) -> str:
    """The training curves of metrics.jsonl, one SVG chart each (CURVES)."""
    charts = [svg_chart(title, [(name, [row.get(field) for row in history], colour)
                                for field, name, colour in fields], note)
              for title, fields, note in CURVES]
    return "".join(charts)


def _percent(value) -> str:
    value = _number(value)
    return "–" if value is None else f"{100 * value:.1f}%"


def header_html(run, summary: dict, samples: int, flagged: int) -> str:
    """The page's header: what the run is, its test accuracy, and the noise estimate with how far to trust it."""
    esc = html.escape
    dataset, method, routing = (str(summary.get(k, run.config.get(k, "?"))) for k in ("dataset", "method", "routing"))
    noise = str(summary.get("noise", run.config.get("noise", "clean")))
    facts = [("data set", dataset), ("method", method), ("routing", routing),
             ("noise injected", "none" if noise == "clean" else
              f"{noise} (realized {_number(summary.get('realized_noise_rate')) or 0:.3f})"),
             ("epochs", str(summary.get("epochs", "?"))), ("training samples", f"{samples:,}"),
             ("flagged", f"{flagged:,} ({100 * flagged / max(samples, 1):.1f}%)")]
    if _number(summary.get("peak_acc")) is not None:
        facts.append(("test accuracy Peak / Avg / Last", " / ".join(
            _percent(summary.get(k)) for k in ("peak_acc", "avg_acc", "last_acc"))))
    else:
        facts.append(("test accuracy", "no test split"))
    estimated = _number(summary.get("estimated_noise_rate"))
    facts.append(("estimated noise rate", "–" if estimated is None else f"{estimated:.3f}"))
    items = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in facts)
    return (f'<header><h1>Label review: {esc(dataset)}, {esc(method)}</h1>'
            f'<p class="run">{esc(str(run.folder))}</p><dl class="facts">{items}</dl>'
            f'<p class="trust"><b>Noise estimate.</b> '
            f'{esc(noise_estimate_statement(estimated, summary.get("noise_rate_source")))}</p>'
            f'<p class="trust"><b>Flags.</b> A sample is flagged when its clean probability p is below 0.5 or '
            f'confident learning finds another label; the table is ranked by score, the final model\'s '
            f'probability of the given label (lowest first). The flag errs towards flagging more than are wrong '
            f'(docs/label-issues.md).</p></header>')


def report_payload(frame, label_names: list[str], name: str) -> dict:
    """The label-issue report as the page reads it: one array per column, in the report's order.

    Parameters
    ----------
    frame : pandas.DataFrame
        ``Run.label_issues()``: most suspicious first.
    label_names : list of str
        The run's labels; the frame's label ids index them.
    name : str
        Base of the downloaded files' names.
    """
    index = [int(v) for v in frame["index"]]
    texts = [str(t) for t in frame["text"]]
    given = [int(v) for v in frame["given_label_id"]]
    predicted = [int(v) for v in frame["predicted_label_id"]]
    num_labels = len(label_names)
    if any(not 0 <= k < num_labels for k in given + predicted):
        raise UserError(f"the label-issue report has label ids outside the run's {num_labels} labels: "
                        "the run folder is damaged")
    # What a decisions file was made on: the samples and their given labels (not the model, so a review
    # can go on against a retrained run of the same data).
    digest = hashlib.sha256(json.dumps([index, texts, [label_names[k] for k in given]]).encode()).hexdigest()
    return {
        "name": name, "labels": list(label_names), "fingerprint": digest[:16], "format": DECISIONS_FORMAT,
        "index": index, "text": texts, "given": given, "predicted": predicted,
        "score": [round(float(v), 6) for v in frame["label_score"]],
        "p": [round(float(v), 6) for v in frame["clean_prob"]],
        "flag": [1 if bool(v) else 0 for v in frame["is_label_issue"]],
    }


def embed_json(data) -> str:
    """``data`` as JSON that is safe inside a <script> element: every ``<``, ``>`` and ``&`` escaped, so no
    text (a sample holding ``</script>`` or ``<!--``) can end the element or change how it is parsed."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def page_html(title: str, header: str, curves: str, payload: dict) -> str:
    """The whole page: header and curves as HTML, the report as embedded JSON, the style and script inline."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_asset('review.css')}</style></head><body>"
        f'{header}<section id="curves"><h2>Training curves</h2><div class="charts">{curves}</div></section>'
        '<section id="matrix-section"><h2>Flagged samples: given label × predicted label</h2>'
        '<p class="hint">Click a cell to show those samples in the table, a row label for all of a given label.'
        '</p><div id="matrix"></div></section>'
        '<section id="review"><h2>Training samples, most suspicious first</h2><div id="app"></div></section>'
        f'<script type="application/json" id="review-data">{embed_json(payload)}</script>'
        f"<script>{_asset('review.js')}</script></body></html>\n")


def review_html(run) -> str:
    """The review page of ``run`` (a ``clearpeft.Run``) as one HTML string."""
    try:
        summary = run.summary
    except FileNotFoundError:
        raise UserError(f"{run.folder} is not a finished clearpeft run (no {runs.SUMMARY})") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{run.folder / runs.SUMMARY} is damaged ({first_line(exc)})") from None
    if not isinstance(summary, dict):
        raise UserError(f"{run.folder / runs.SUMMARY} is not a JSON object: the run folder is damaged")
    frame = run.label_issues()
    name = f"{summary.get('dataset', 'data')}-{summary.get('method', run.config['peft'])}".replace("/", "_")
    payload = report_payload(frame, run.label_names, Path(name).name)
    header = header_html(run, summary, len(frame), int(sum(payload["flag"])))
    return page_html(f"Label review: {run.folder.name}", header,
                     curves_html(_metric_rows(run.folder / runs.METRICS)), payload)


def _check_out(out: Path) -> None:
    """Refuse a file name that cannot be written, before the page is built."""
    if out.is_dir():
        raise UserError(f"cannot write {out}: it is a folder; give a file name such as {out / PAGE}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"cannot write {out}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {out}: permission denied in {parent}")


def write_review(run, out: str | Path | None = None) -> Path:
    """Write the review page of ``run`` atomically and return its path.

    Parameters
    ----------
    run : clearpeft.Run
        A finished run (``clearpeft.load_run``).
    out : str or Path, optional
        The HTML file; default ``review.html`` in the run folder.

    Raises
    ------
    UserError
        The run is not finished or is damaged, or ``out`` cannot be written (one line).
    """
    path = Path(out) if out is not None else run.folder / PAGE
    if "\x00" in str(path):
        raise UserError("the output file name holds a NUL byte")
    _check_out(path)
    text = review_html(run)
    try:
        runs.atomic_write_text(path, text)
    except WriteError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
            raise UserError(f"cannot write {path}: {exc.cause}") from None
        raise  # a full disk is not bad input: WriteError, exit 1 (docs/runs.md)
    return path
