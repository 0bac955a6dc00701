"""The results report of a grid (``results.csv`` and each run's ``metrics.jsonl``): Markdown tables in the
layout of the paper's Tables 1, 2, 3 and 5, each beside the paper's BERT-base numbers (``paper_tables.json``,
shipped with the package), the curves of the paper's Figures 1 and 4 as PNG, and the per-run routing dynamics
that explain where the results agree with the paper and where they do not.

Accuracies are test accuracy with every PEFT module on (``test_acc``; Peak = best epoch, Avg = mean over
epochs), in %, as mean ± sample standard deviation over the seeds a cell has; "—" marks a cell not run.
"""

from __future__ import annotations

import csv
import importlib.resources
import json
import math
import os
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from .. import runs
from ..errors import UserError
from ..noise import KINDS, NoiseSpec

PAPER_TABLES = "paper_tables.json"  # the paper's numbers, a data file of this package
DATASET_NAMES = {"sst5": "SST-5", "banking77": "BANKING77"}
METHOD_NAMES = {"full": "Full fine-tuning", "adapter": "Adapter", "bitfit": "BitFit", "prompt": "Prompt",
                "lora": "LoRA"}
PEFT = ("adapter", "bitfit", "prompt", "lora")
# The paper's row order: full fine-tuning, plain PEFT (routing none), CleaR (routing clean, reg_weight > 0).
ROWS = [("full", "none"), *((m, "none") for m in PEFT), *((m, "clean") for m in PEFT)]
MAIN_NOISES = ("clean", "symmetric:0.2", "symmetric:0.4", "symmetric:0.6", "asymmetric:0.1", "asymmetric:0.2",
               "asymmetric:0.4")
INSTANCE_NOISES = ("clean", "instance:0.4", "instance:0.6")
HIGH_NOISES = ("symmetric:0.6", "asymmetric:0.4", "instance:0.6")  # the high noise of the claim to reproduce
FIGURE_SETTING = "symmetric:0.6"  # paper Figure 1; Figure 4 does not say, we use the same setting
ABLATION_SETTING = ("sst5", "symmetric:0.6")
# Paper Table 3, row by row: (the paper's label, routing, regularization on); None rows are its headings.
# The paper's two pairs of identical settings (w/o Regularization = w/ Clean Routing, w/o both = w/ Random
# Routing) are one run each here.
ABLATION_ROWS = [
    ("CleaR _{Adapter} (ours)", "clean", True),
    ("Components in CleaR", None, None),
    ("CleaR w/o Clean Routing", "random", True),
    ("CleaR w/o Regularization", "clean", False),
    ("CleaR w/o Clean Routing & Regularization", "random", False),
    ("Routing Strategy in CleaR", None, None),
    ("CleaR w/ Clean Routing", "clean", False),
    ("CleaR w/ Deterministic Routing", "deterministic", False),
    ("CleaR w/ Random Routing", "random", False),
    ("CleaR w/ Noisy Routing", "noisy", False),
]
STATS = {"Peak": "peak_acc", "Avg": "avg_acc"}


# ---------------------------------------------------------------- the paper's tables

@dataclass
class PaperTable:
    caption: str
    columns: list[tuple[str | None, str]]  # (noise, "Peak" or "Avg"); noise None where the table has one setting
    rows: list[tuple[str, list[float] | None]]  # (label, values in %); None marks a heading row

    def value(self, key: tuple[str, str], noise: str | None, stat: str) -> float | None:
        """The paper's number for a (method, routing) row and a column, or None."""
        if (noise, stat) not in self.columns:
            return None
        j = self.columns.index((noise, stat))
        return next((values[j] for label, values in self.rows if values and _row_key(label) == key), None)


def parse_paper(text: str) -> dict[str, PaperTable]:
    """The tables of a JSON text in the layout of ``paper_tables.json``: {"tables": {"Table N": {"caption",
    "columns": [[noise or null, "Peak" or "Avg"], ...], "rows": [[label, [values in %] or null], ...]}}}."""
    try:
        data = json.loads(text)
        tables = {}
        for number, table in data["tables"].items():
            columns = [(noise, stat) for noise, stat in table["columns"]]
            rows = [(label, None if values is None else [float(v) for v in values]) for label, values in table["rows"]]
            for label, values in rows:
                if values is not None and len(values) != len(columns):
                    raise ValueError(f"row {label!r} of {number} has {len(values)} numbers for {len(columns)} columns")
            tables[number] = PaperTable(table["caption"], columns, rows)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a table of the paper ({exc!r})") from None
    return tables


def _row_key(label: str) -> tuple[str, str] | None:
    """(method, routing) of a paper row: "CleaR _{LoRA}" -> (lora, clean), "Adapter (2019)" -> (adapter, none)."""
    sub = re.search(r"_\{(\w+)\}", label)
    if sub:
        return sub.group(1).lower(), "clean"
    word = label.split()[0].lower() if label.split() else ""
    if word == "full":
        return "full", "none"
    return (word, "none") if word in PEFT else None


def load_paper(path: Path | None = None) -> tuple[dict[str, PaperTable], str | None]:
    """The paper's tables (from the package's ``paper_tables.json``, or from ``path``, a file in its layout)
    and, when they cannot be had, a note for the report saying why."""
    source = path if path is not None else importlib.resources.files(__package__).joinpath(PAPER_TABLES)
    try:
        return parse_paper(source.read_text(encoding="utf-8")), None
    except OSError as exc:
        return {}, f"The paper's tables are left out: cannot read {source} ({exc.strerror or exc})."
    except ValueError as exc:
        return {}, f"The paper's tables are left out: cannot parse {source} ({exc})."


def _paper_table(tables: dict[str, PaperTable], dataset: str, kind: str) -> tuple[str, PaperTable] | None:
    """The paper's table for ``dataset`` whose columns have noise of ``kind``."""
    name = DATASET_NAMES.get(dataset)
    for number, table in tables.items():
        if name and name in table.caption and any(n and n.split(":")[0] == kind for n, _ in table.columns):
            return number, table
    return None


# ---------------------------------------------------------------- our results

class Results:
    """results.csv of a grid and, on demand, each run's config.json and metrics.jsonl."""

    def __init__(self, results_dir: Path):
        self.root = results_dir
        path = results_dir / "results.csv"
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                raw = list(csv.DictReader(handle))
        except OSError:
            raise UserError(f"no readable results.csv in {results_dir}: run `clearpeft grid` first") from None
        try:
            self.rows = [{**r, "reg_weight": float(r["reg_weight"]), "seed": int(r["seed"]),
                          "peak_acc": float(r["peak_acc"]), "avg_acc": float(r["avg_acc"])} for r in raw]
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{path} is not a clearpeft results.csv ({exc})") from None
        self._cache: dict[str, tuple[dict, list[dict]]] = {}

    def datasets(self) -> list[str]:
        return list(dict.fromkeys(r["dataset"] for r in self.rows))

    def noises(self, dataset: str) -> set[str]:
        return {r["noise"] for r in self.rows if r["dataset"] == dataset}

    def select(self, dataset: str, noise: str, method: str, routing: str,
               regularized: bool | None = None) -> list[dict]:
        """The runs (one per seed) of a table cell. Plain PEFT is routing none; a routed row with
        ``regularized`` True takes the reg_weight > 0 with the most seeds (ties: closest to the paper's 1.0),
        with False reg_weight 0."""
        rows = [r for r in self.rows if (r["dataset"], r["noise"], r["method"], r["routing"]) ==
                (dataset, noise, method, routing)]
        if routing == "none" or regularized is None:
            return rows
        if not regularized:
            return [r for r in rows if r["reg_weight"] == 0]
        weights = [r["reg_weight"] for r in rows if r["reg_weight"] > 0]
        if not weights:
            return []
        best = max(set(weights), key=lambda w: (weights.count(w), -abs(w - 1.0)))
        return [r for r in rows if r["reg_weight"] == best]

    def row(self, dataset: str, noise: str, key: tuple[str, str]) -> list[dict]:
        """A paper row (method, routing) of our results: CleaR rows are regularized."""
        return self.select(dataset, noise, key[0], key[1], regularized=True)

    def run(self, row: dict) -> tuple[dict, list[dict]]:
        """(config.json, metrics.jsonl rows) of a run; empty when its folder is gone."""
        if row["run_dir"] not in self._cache:
            folder = self.root / row["run_dir"]
            try:
                config = json.loads((folder / runs.CONFIG).read_text())
            except (OSError, ValueError):
                config = {}
            self._cache[row["run_dir"]] = config, runs.read_jsonl(folder / runs.METRICS)
        return self._cache[row["run_dir"]]

    def curve(self, rows: list[dict], key: str) -> list[float] | None:
        """Per-epoch mean over the runs (seeds) of a metrics.jsonl field, or None without data."""
        curves = [[m.get(key) for m in self.run(r)[1]] for r in rows]
        curves = [c for c in curves if c and all(isinstance(v, (int, float)) for v in c)]
        if not curves:
            return None
        length = min(len(c) for c in curves)
        return [statistics.fmean(c[e] for c in curves) for e in range(length)]


# ---------------------------------------------------------------- Markdown helpers

def _noise_label(noise: str) -> str:
    spec = NoiseSpec.parse(noise)
    names = {"symmetric": "Sym", "symmetric-exclusive": "SymEx", "asymmetric": "Asym", "instance": "Inst"}
    return "Clean" if spec.kind == "clean" else f"{names[spec.kind]} {spec.rate * 100:g}%"


def _noise_order(noise: str) -> tuple[int, float]:
    spec = NoiseSpec.parse(noise)
    return KINDS.index(spec.kind), spec.rate


def _row_label(key: tuple[str, str]) -> str:
    method, routing = key
    return f"CleaR-{METHOD_NAMES[method]}" if routing == "clean" else METHOD_NAMES[method]


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _table(header: list[str], body: list[tuple[str, list[list[float]] | None]], labels: int = 1) -> list[str]:
    """A Markdown table whose first ``labels`` columns come from a row's label (joined with " | "); each
    other cell is a list of accuracies (fractions, one per seed; empty = not run); a None row is a heading.
    The best mean of a column (as shown, one decimal) is bold."""
    best = {}
    for j in range(len(header) - labels):
        means = [round(100 * _mean_std(cells[j])[0], 1) for _, cells in body if cells and cells[j]]
        if len(means) > 1:
            best[j] = max(means)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, cells in body:
        if cells is None:
            lines.append(f"| *{label}* |" + " |" * (len(header) - 1))
            continue
        texts = []
        for j, values in enumerate(cells):
            if not values:
                texts.append("—")
                continue
            mean, std = _mean_std(values)
            text = f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")
            texts.append(f"**{text}**" if best.get(j) == round(100 * mean, 1) else text)
        lines.append(f"| {label} | " + " | ".join(texts) + " |")
    return lines


def _paper_cells(table: PaperTable, key, columns) -> list[list[float]]:
    cells = []
    for noise, stat in columns:
        value = table.value(key, noise, stat)
        cells.append([] if value is None else [value / 100])
    return cells


def _paper_header(columns) -> list[str]:
    return ["Method"] + [_noise_label(n) if n == "clean" else f"{_noise_label(n)} {s}" for n, s in columns]


# ---------------------------------------------------------------- report sections

def _results_tables(res: Results, tables: dict, dataset: str, kind: str, noises: list[str]) -> list[str]:
    """Our table for ``noises`` in the paper's row layout, then the paper's table of the same data set."""
    columns = [(n, s) for n in noises for s in STATS]
    header = ["Method"] + [f"{_noise_label(n)} {s}" for n, s in columns]
    body = [(_row_label(key), [[r[STATS[s]] for r in res.row(dataset, n, key)] for n, s in columns])
            for key in ROWS]
    out = _table(header, body)
    found = _paper_table(tables, dataset, kind)
    if found:
        number, paper = found
        out += ["", f"Paper, {number} (BERT-base): {paper.caption.split('. ')[0].rstrip('.')}.", ""]
        out += _table(_paper_header(paper.columns),
                      [(_row_label(key), _paper_cells(paper, key, paper.columns)) for key in ROWS])
    elif tables:
        out += ["", f"The paper has no table for {DATASET_NAMES.get(dataset, dataset)} with {kind} noise."]
    return out


def _claim_section(res: Results, tables: dict) -> list[str]:
    """The claim to reproduce, in numbers: at high noise CleaR has a clearly higher Avg than the same PEFT
    method without it, with clean-data Peak unchanged. CleaR minus the same PEFT method, ours beside the
    paper's."""
    header = ["Data set", "Noise", "Metric", "Method", "PEFT", "CleaR", "Δ ours", "beyond 2 SE", "Δ paper"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for dataset in res.datasets():
        for noise in ("clean", *HIGH_NOISES):
            stat = "Peak" if noise == "clean" else "Avg"
            found = _paper_table(tables, dataset, noise.split(":")[0] if noise != "clean" else "symmetric")
            for method in PEFT:
                plain = [r[STATS[stat]] for r in res.row(dataset, noise, (method, "none"))]
                clear = [r[STATS[stat]] for r in res.row(dataset, noise, (method, "clean"))]
                if not plain and not clear:
                    continue
                ours = (f"{100 * (statistics.fmean(clear) - statistics.fmean(plain)):+.1f}"
                        if plain and clear else "—")
                paper = "—"
                if found:
                    a, b = (found[1].value((method, r), noise, stat) for r in ("none", "clean"))
                    paper = f"{b - a:+.1f}" if a is not None and b is not None else "—"
                lines.append(f"| {DATASET_NAMES.get(dataset, dataset)} | {_noise_label(noise)} | {stat} | "
                             f"{METHOD_NAMES[method]} | {_fmt_mean(plain)} | {_fmt_mean(clear)} | {ours} | "
                             f"{_beyond_two_se(plain, clear)} | {paper} |")
    if len(lines) == 2:
        return ["No PEFT runs at clean data or high noise (Sym 60%, Asym 40%, Inst 60%) yet."]
    return lines


def _beyond_two_se(plain: list[float], clear: list[float]) -> str:
    """Whether CleaR − PEFT is beyond two standard errors of a difference of means over seeds (Welch); a cell
    needs two seeds on each side to have one."""
    if len(plain) < 2 or len(clear) < 2:
        return "— (1 seed)" if plain and clear else "—"
    se = math.sqrt(statistics.variance(plain) / len(plain) + statistics.variance(clear) / len(clear))
    diff = statistics.fmean(clear) - statistics.fmean(plain)
    return f"{'yes' if abs(diff) > 2 * se else 'no'} (SE {100 * se:.1f})"


def _fmt_mean(values: list[float]) -> str:
    return f"{100 * statistics.fmean(values):.1f}" if values else "—"


def _ablation_section(res: Results, tables: dict) -> list[str]:
    dataset, noise = ABLATION_SETTING
    ablated = [m for m in PEFT if any(
        r["dataset"] == dataset and r["noise"] == noise and r["method"] == m
        and (r["routing"] not in ("none", "clean") or (r["routing"] == "clean" and r["reg_weight"] == 0))
        for r in res.rows)]
    paper = next((t for t in tables.values() if "ablation" in t.caption.lower()), None)
    out = []
    if not ablated:
        out += ["No ablation runs (routing deterministic, random or noisy, or clean with reg_weight 0, on "
                f"{DATASET_NAMES[dataset]} with {_noise_label(noise)}) in these results; the layout with the "
                "paper's numbers:", ""]
    for method in ablated or ["adapter"]:
        header = ["Variant", "Routing", "λ", f"{METHOD_NAMES[method]} Peak", f"{METHOD_NAMES[method]} Avg"]
        if paper:
            header += ["Paper Peak", "Paper Avg"]
        body = []
        for label, routing, regularized in ABLATION_ROWS:
            if routing is None:
                body.append((label, None))
                continue
            rows = res.select(dataset, noise, method, routing, regularized)
            weights = sorted({r["reg_weight"] for r in rows})
            reg = ", ".join(f"{w:g}" for w in weights) if weights else ("> 0" if regularized else "0")
            cells = [[r[STATS[s]] for r in rows] for s in STATS]
            if paper:
                values = dict(paper.rows).get(label)
                cells += [[values[j] / 100] if values else [] for j in range(2)]
            display = re.sub(r"\s*_\{(\w+)\}", r"-\1", label)
            body.append((f"{display} | {routing} | {reg}", cells))
        out += _table(header, body, labels=3) + [""]
    if paper:
        out.append(f"Paper columns (BERT-base, CleaR-Adapter): {paper.caption.split('. ')[0].rstrip('.')}.")
    return out


def _dynamics_section(res: Results) -> list[str]:
    """Every routed run: how well p separates clean from corrupted samples, and whether the gates follow."""
    header = ["Data set", "Noise", "Method", "Routing", "λ", "Seed", "AUC end of warm-up", "AUC last",
              "Gate clean", "Gate corrupted", "Clean learning", "Memorization", "Peak", "Avg"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in res.rows:
        if row["routing"] == "none":
            continue
        config, metrics = res.run(row)
        if not metrics:
            lines.append(f"| {row['dataset']} | {row['noise']} | {row['method']} | {row['routing']} | "
                         f"{row['reg_weight']:g} | {row['seed']} |" + " — |" * 6 + f" {_pct(row['peak_acc'])} | "
                         f"{_pct(row['avg_acc'])} |")
            continue
        warm = metrics[min(max(config.get("warmup_epochs", 1) - 1, 0), len(metrics) - 1)]
        last = metrics[-1]
        cells = [_num(warm.get("detect_auc")), _num(last.get("detect_auc")), _num(last.get("gate_mean_clean")),
                 _num(last.get("gate_mean_corrupted")), _pct(last.get("clean_learning")),
                 _pct(last.get("noisy_memorization")), _pct(row["peak_acc"]), _pct(row["avg_acc"])]
        lines.append(f"| {row['dataset']} | {row['noise']} | {row['method']} | {row['routing']} | "
                     f"{row['reg_weight']:g} | {row['seed']} | " + " | ".join(cells) + " |")
    if len(lines) == 2:
        return ["No routed runs in these results."]
    return lines


def _delivered_section(res: Results) -> list[str]:
    """Every run with dev accuracies: Delivered beside Peak, Avg and Last."""
    lines = ["| Data set | Noise | Method | Routing | λ | Seed | Delivered | Peak | Avg | Last | Kept epoch | Dev labels |",
             "|" + "---|" * 12]
    for row in res.rows:
        config, metrics = res.run(row)
        dev = [m.get("dev_acc") for m in metrics]
        if not metrics or None in dev or None in (m.get("test_acc") for m in metrics):
            continue
        kept = max(range(len(dev)), key=lambda e: (dev[e], -e))
        labels = config.get("dev_labels", "clean") if config.get("noise", "clean") != "clean" else "clean"
        lines.append(f"| {row['dataset']} | {row['noise']} | {row['method']} | {row['routing']} | "
                     f"{row['reg_weight']:g} | {row['seed']} | {_pct(metrics[kept]['test_acc'])} | "
                     f"{_pct(row['peak_acc'])} | {_pct(row['avg_acc'])} | {_pct(metrics[-1]['test_acc'])} | "
                     f"{kept + 1} of {len(metrics)} | {labels} |")
    if len(lines) == 2:
        return ["No runs with a dev split in these results."]
    return lines


def _inference_section(res: Results) -> list[str]:
    """Which test-time mode to report is an open choice: every module on, or the reference code's routed
    passes (gates ~ Bernoulli(γ)). Both are in every metrics line; this table puts them side by side."""
    lines = ["| Data set | Noise | Method | Routing | λ | Seed | Peak all on | Peak routed | Avg all on | "
             "Avg routed |", "|---|---|---|---|---|---|---|---|---|---|"]
    differences = []
    for row in res.rows:
        metrics = res.run(row)[1]
        on = [m.get("test_acc") for m in metrics]
        routed = [m.get("test_acc_routed") for m in metrics]
        if row["routing"] == "none" or not metrics or None in on or None in routed:
            continue
        avg_on, avg_routed = statistics.fmean(on), statistics.fmean(routed)
        differences.append(avg_on - avg_routed)
        lines.append(f"| {row['dataset']} | {row['noise']} | {row['method']} | {row['routing']} | "
                     f"{row['reg_weight']:g} | {row['seed']} | {_pct(max(on))} | {_pct(max(routed))} | "
                     f"{_pct(avg_on)} | {_pct(avg_routed)} |")
    if not differences:
        return ["No routed runs with routed test passes in these results."]
    wins = sum(d > 0 for d in differences)
    return [f"Avg with every module on minus Avg of the routed passes: mean {100 * statistics.fmean(differences):+.1f} "
            f"points over {len(differences)} routed runs (all-on higher in {wins}). The tables above report "
            "every module on.", ""] + lines


def _num(value) -> str:
    return "—" if not isinstance(value, (int, float)) or math.isnan(value) else f"{value:.3f}"


def _pct(value) -> str:
    return "—" if not isinstance(value, (int, float)) or math.isnan(value) else f"{100 * value:.1f}"


# ---------------------------------------------------------------- figures

def _figure1(res: Results, dataset: str, path: Path) -> str | None:
    """Paper Figure 1: plain PEFT and full fine-tuning at 60% symmetric noise, the clean-data run dashed.
    Returns what is missing (a note), or raises LookupError when nothing can be drawn."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    name = DATASET_NAMES.get(dataset, dataset)
    methods = ("full", *PEFT)
    runs_of = {(m, n): res.select(dataset, n, m, "none") for m in methods for n in (FIGURE_SETTING, "clean")}
    if not any(runs_of[(m, FIGURE_SETTING)] for m in methods):
        raise LookupError(f"no unrouted runs on {name} with {FIGURE_SETTING}")
    fig = Figure(figsize=(15, 4.6), layout="constrained")
    panels = [("test_acc", "Test accuracy (%)", 100), ("clean_learning", "Training accuracy, clean samples (%)", 100),
              ("train_loss", "Training loss (given labels)", 1)]
    colors = {m: f"C{i}" for i, m in enumerate(methods)}
    for ax, (key, title, scale) in zip(fig.subplots(1, 3), panels):
        for method in methods:
            for noise, style in ((FIGURE_SETTING, "-"), ("clean", "--")):
                curve = res.curve(runs_of[(method, noise)], key)
                if curve:
                    ax.plot(range(1, len(curve) + 1), [scale * v for v in curve], style, color=colors[method],
                            marker="o" if style == "-" else None, markersize=3, linewidth=1.6)
        ax.set(title=title, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colors[m], label=METHOD_NAMES[m]) for m in methods]
    handles += [Line2D([], [], color="gray", label=f"{_noise_label(FIGURE_SETTING)} noise"),
                Line2D([], [], color="gray", linestyle="--", label="clean data")]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    fig.suptitle(f"{name}, {_noise_label(FIGURE_SETTING)} noise: PEFT methods against full fine-tuning "
                 "(dashed: the same method on clean data)")
    fig.savefig(path, dpi=110)
    missing = [f"{METHOD_NAMES[m]} ({'clean data' if n == 'clean' else n})" for (m, n), r in runs_of.items() if not r]
    return f"Missing curves: {', '.join(missing)}." if missing else None


def _figure4(res: Results, dataset: str, path: Path) -> str | None:
    """Paper Figure 4: learning of clean samples and memorization of noisy labels, each PEFT method with and
    without CleaR."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    name = DATASET_NAMES.get(dataset, dataset)
    pairs = {(m, r): res.select(dataset, FIGURE_SETTING, m, r, regularized=True)
             for m in PEFT for r in ("none", "clean")}
    if not any(pairs.values()):
        raise LookupError(f"no PEFT runs on {name} with {FIGURE_SETTING}")
    fig = Figure(figsize=(15, 7), layout="constrained")
    grid = fig.subplots(2, len(PEFT), sharey="row")
    metrics = [("clean_learning", "Learning: clean samples right (%)"),
               ("noisy_memorization", "Memorization: noisy labels fitted (%)")]
    for i, (key, ylabel) in enumerate(metrics):
        for j, method in enumerate(PEFT):
            ax = grid[i][j]
            for routing, color in (("none", "C0"), ("clean", "C3")):
                curve = res.curve(pairs[(method, routing)], key)
                if curve:
                    ax.plot(range(1, len(curve) + 1), [100 * v for v in curve], "-o", color=color, markersize=3,
                            label=_row_label((method, routing)))
            warmup = next((res.run(r)[0].get("warmup_epochs") for r in pairs[(method, "clean")]), None)
            if warmup:
                ax.axvline(warmup + 0.5, color="gray", linestyle=":", linewidth=1)
            ax.set(title=METHOD_NAMES[method] if i == 0 else None, xlabel="epoch" if i == 1 else None,
                   ylabel=ylabel if j == 0 else None)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if i == 0 and ax.lines:
                ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{name}, {_noise_label(FIGURE_SETTING)} noise: PEFT with and without CleaR "
                 "(dotted line: end of warm-up)")
    fig.savefig(path, dpi=110)
    missing = [_row_label(k) for k, r in pairs.items() if not r]
    return f"Missing curves: {', '.join(missing)}." if missing else None


def _figures(res: Results, out_md: Path, figures_dir: Path) -> tuple[list[str], list[str]]:
    """The figure section and the PNG files written. A figure without runs is skipped with a note (and an
    old PNG of that name removed, so the folder never shows stale curves)."""
    import matplotlib

    matplotlib.use("Agg")
    lines, written = [], []
    datasets = ["sst5"] + [d for d in res.datasets() if d != "sst5" and FIGURE_SETTING in res.noises(d)]
    for dataset in datasets:
        name = DATASET_NAMES.get(dataset, dataset)
        for number, draw, what in (
                (1, _figure1, "test accuracy, clean-sample training accuracy and training loss per epoch"),
                (4, _figure4, "clean-sample learning and noisy-label memorization per epoch")):
            path = figures_dir / f"figure{number}_{_safe(dataset)}.png"
            title = f"**Figure {number} ({name}, {_noise_label(FIGURE_SETTING)}):** {what}."
            try:
                note = draw(res, dataset, path)
            except LookupError as exc:
                path.unlink(missing_ok=True)
                lines += [f"{title} Skipped: {exc}.", ""]
                continue
            written.append(str(path))
            link = Path(os.path.relpath(path, out_md.parent)).as_posix()
            lines += [title + (f" {note}" if note else ""), "", f"![Figure {number}, {name}]({link})", ""]
    return lines, written


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "_"


# ---------------------------------------------------------------- the report

def write_report(results_dirs, out_md: str | Path, figures_dir: str | Path,
                 paper_path: str | Path | None = None) -> dict:
    """Write the Markdown report and its figures; returns the paths written and the number of runs.
    The paper's numbers come from the package's ``paper_tables.json``, or from ``paper_path``, a JSON file in
    its layout.
    ``results_dirs`` is one grid's results folder, or several (one protocol each: cpu, converged, ...), which
    then get a section each, with their figures in a subfolder of ``figures_dir`` named after the folder."""
    dirs = [Path(d) for d in ([results_dirs] if isinstance(results_dirs, (str, Path)) else results_dirs)]
    out_md, figures_dir = Path(out_md), Path(figures_dir)
    protocols = [Results(d) for d in dirs]  # every folder is checked before anything is written
    tables, paper_note = load_paper(Path(paper_path) if paper_path else None)
    try:
        out_md.parent.mkdir(parents=True, exist_ok=True)
        figures_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the report's folders: {exc.strerror or exc}") from None
    intro = ("Accuracy on the test split in %, with every PEFT module on; Peak = best epoch, Avg = mean over all "
             "epochs; mean ± sample std over seeds where a cell has several; — = not run; best of a column in "
             "bold. Plain rows are routing `none`; CleaR rows routing `clean` with reg_weight > 0. The paper's "
             "numbers are BERT-base.")
    if len(dirs) == 1:
        lines = ["# Results", "", f"From `{dirs[0]}/results.csv` ({len(protocols[0].rows)} runs), written by "
                 f"`clearpeft report`. {intro}", ""]
        if paper_note:
            lines += [paper_note, ""]
        body, figures = _protocol_report(protocols[0], dirs[0], tables, out_md, figures_dir)
        lines += body
    else:
        lines = ["# Results", "", f"One section per protocol ({', '.join(f'`{d}`' for d in dirs)}), written by "
                 f"`clearpeft report`; compare runs within a section, not across. {intro}", ""]
        if paper_note:
            lines += [paper_note, ""]
        figures = []
        for res, folder in zip(protocols, dirs):
            body, written = _protocol_report(res, folder, tables, out_md, figures_dir / _safe(folder.name))
            lines += [f"## Protocol `{folder}` ({len(res.rows)} runs)", ""]
            # one level down, the embedded analysis.md's headings too
            lines += [("#" + line) if re.match(r"#{1,5} ", line) else line for line in "\n".join(body).split("\n")]
            figures += written
    runs.atomic_write_text(out_md, "\n".join(lines).rstrip() + "\n")
    return {"report": str(out_md), "figures": figures, "runs": sum(len(r.rows) for r in protocols)}


def _protocol_report(res: "Results", results_dir: Path, tables: dict, out_md: Path,
                     figures_dir: Path) -> tuple[list[str], list[str]]:
    """The sections of one protocol's results: tables beside the paper's, the claim, the ablation, the
    hand-written analysis, inference mode, dynamics and figures."""
    figures_dir.mkdir(parents=True, exist_ok=True)
    lines = _setup_section(res) + [""]

    for dataset in dict.fromkeys([*res.datasets(), *DATASET_NAMES]):
        name = DATASET_NAMES.get(dataset, dataset)
        lines += [f"## {name}: label noise (layout of paper Tables 1 and 2)", ""]
        if dataset not in res.datasets():
            lines += [f"No runs on {name} in these results.", ""]
        extra = sorted((n for n in res.noises(dataset) if n not in MAIN_NOISES and not n.startswith("instance")),
                       key=_noise_order)
        lines += _results_tables(res, tables, dataset, "symmetric", [*MAIN_NOISES, *extra]) + [""]

    instance = [d for d in dict.fromkeys(["sst5", *res.datasets()])
                if any(n.startswith("instance") for n in res.noises(d)) or _paper_table(tables, d, "instance")]
    for dataset in instance:
        name = DATASET_NAMES.get(dataset, dataset)
        noises = sorted({*INSTANCE_NOISES, *(n for n in res.noises(dataset) if n.startswith("instance"))},
                        key=_noise_order)
        lines += [f"## {name}: instance-dependent noise (layout of paper Table 5)", ""]
        lines += _results_tables(res, tables, dataset, "instance", noises) + [""]

    lines += ["## CleaR against the same PEFT method", "",
              "The paper's claim: at high noise every CleaR variant has a clearly higher Avg than "
              "the same PEFT method without it, while clean-data accuracy (Peak) stays the same. Δ in points.",
              ""]
    lines += _claim_section(res, tables) + [""]
    lines += [f"## Ablation on {DATASET_NAMES[ABLATION_SETTING[0]]}, {_noise_label(ABLATION_SETTING[1])} "
              "(layout of paper Table 3)", ""]
    lines += _ablation_section(res, tables) + [""]
    analysis = results_dir / "analysis.md"  # the findings, written by hand from the numbers above
    if analysis.exists():
        text = analysis.read_text(encoding="utf-8").strip()  # its headings go below this section's
        lines += ["## What the numbers say", "", re.sub(r"(?m)^(#{1,4}) ", r"##\1 ", text), ""]
    lines += ["## What a user gets: Delivered", "",
              "Delivered: the test accuracy of the weights a run hands over (`--keep best-dev`: the epoch of the "
              "best dev accuracy, the first of equals). Runs made before it was recorded are read from their "
              "metrics by the same rule; the last column says whether the dev labels carried the injected noise "
              "(runs made before noisy dev labels selected on clean ones).", ""]
    lines += _delivered_section(res) + [""]
    lines += ["## Inference mode", ""] + _inference_section(res) + [""]
    lines += ["## Routing dynamics of the routed runs", "",
              "AUC: how well the clean probability p separates clean from corrupted training samples (ROC AUC, "
              "from the per-sample pass at the end of the last warm-up epoch, whose p starts the routing, and "
              "of the last epoch). Gate: mean share of layers whose PEFT module was on, last epoch, for "
              "samples whose label is clean or corrupted. Clean learning and memorization: last epoch, in %.",
              ""]
    lines += _dynamics_section(res) + [""]
    lines += ["## Figures", ""]
    figure_lines, figures = _figures(res, out_md, figures_dir)
    return lines + figure_lines, figures


def _setup_section(res: Results) -> list[str]:
    """Which backbone, epochs and data sizes the runs used: the report's numbers depend on them."""
    keys = ("model", "epochs", "warmup_epochs", "max_train_samples", "eval_passes", "bf16")
    counts: dict[tuple, int] = {}
    for row in res.rows:
        config = res.run(row)[0]
        setup = tuple(config.get(k, "?") for k in keys)
        counts[setup] = counts.get(setup, 0) + 1
    lines = ["| Backbone | Epochs | Warm-up | Training samples | Eval passes | bf16 | Runs |",
             "|---|---|---|---|---|---|---|"]
    for (model, epochs, warmup, samples, passes, bf16), n in counts.items():
        lines.append(f"| {model} | {epochs} | {warmup} | {'all' if samples is None else samples} | {passes} | "
                     f"{bf16} | {n} |")
    return lines if counts else []
