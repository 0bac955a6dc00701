"""The recipes a user has on noisy labels, side by side on the CPU protocol (experiments/cpu.yaml's base).

    python experiments/refit.py                       # every cell, in priority order, into results/refit/
    python experiments/refit.py --cells 2             # only the first two cells
    python experiments/refit.py --collect --table     # results.csv from every finished run, as a table
    python experiments/refit.py --checks              # refit against CleaR's Peak, cleanlab, plain; best-dev gaps

Recipes of one (dataset, noise, method, seed) cell, each with Delivered (the weights the run hands over:
--keep best-dev, selected on dev labels that carry the same injected noise), Peak, Avg and Last:
  plain            plain PEFT (routing none, no consistency loss)
  clear            CleaR as the paper has it (routing clean)
  clean-auto       the default routing (stands down while the losses show no mode of wrong labels)
  refit            clean-auto, then --refit drop: plain PEFT again on the samples its first stage flags
                   (clean probability p < 0.5, --refit-flag's default)
  refit-union      (recorded, not trained here) the same with --refit-flag report, the report's union flag
  plain-long       (a variant, trained when asked for) plain PEFT for twice the epochs: about the optimizer
                   steps of refit's two stages, so a gain of the refit over it is not just longer training
  cleanlab-refit   cleanlab's find_label_issues on 5-fold cross-validated logistic regression over the frozen
                   backbone's embeddings, then plain PEFT on the rest (CleanLearning's idea with our model)
clean-auto and refit are one run: the refit run's first stage is the clean-auto run (same seed, same draws).
Finished runs are skipped and a half-finished one resumes, so a killed script started again goes on.
results/refit/results.csv is rewritten after every finished recipe.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

BASE = dict(epochs=6, warmup_epochs=3, eval_passes=1, max_train_samples=4000, bf16=True)
# Priority order: 60% symmetric first (the claim), then clean data (the cost), then the rest.
CELLS = [(d, n, m, 0) for n in ("symmetric:0.6", "clean") for m in ("lora", "prompt") for d in ("sst5", "banking77")]
CELLS += [(d, n, m, 0) for n in ("symmetric:0.2", "asymmetric:0.4") for m in ("lora", "prompt")
          for d in ("sst5", "banking77")]
CELLS += [("sst5", "instance:0.4", m, 0) for m in ("lora", "prompt")]
CELLS += [(d, "symmetric:0.6", m, s) for s in (1, 2) for m in ("lora", "prompt") for d in ("sst5", "banking77")]
COLUMNS = ["dataset", "noise", "method", "recipe", "seed", "delivered_acc", "peak_acc", "avg_acc", "last_acc",
           "kept_fraction", "kept_noise_rate", "realized_noise_rate", "estimated_noise_rate", "dev_labels",
           "kept_epoch", "train_seconds", "run_dir"]


def config(dataset, noise, method, seed, out, **changes):
    from clearpeft.config import TrainConfig

    values = {**BASE, "dataset": dataset, "noise": noise, "peft": method, "seed": seed, "out": str(out)}
    if dataset == "banking77":
        values["dev_holdout"] = 0.1
    return TrainConfig.from_mapping({**values, **changes}, "experiments/refit.py")


def run(cfg, log) -> dict:
    from clearpeft.train import train

    summary_path = Path(cfg.out) / "summary.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    return train(cfg, resume=(Path(cfg.out) / "config.json").exists(), overwrite=False, progress=False, log=log)


def cleanlab_refit(cfg, log) -> dict:
    """Drop what cleanlab flags on cross-validated logistic regression over frozen embeddings; plain PEFT on the
    rest, with the same class guard and the same noisy dev labels as --refit."""
    from cleanlab.filter import find_label_issues
    from label_issues import cross_validated_probs

    from clearpeft import runs
    from clearpeft.backbone import embed_texts, load_tokenizer
    from clearpeft.refit import second_stage_bundle, second_stage_epochs, trusted_labels
    from clearpeft.train import prepare_data, train

    out = Path(cfg.out)
    if (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())
    cfg = cfg.resolved()
    data = prepare_data(cfg, load_tokenizer(cfg.model))
    noisy, true, k = data.noisy.noisy, np.asarray(data.bundle.train.labels), data.bundle.num_labels
    folds = int(max(2, min(5, np.bincount(noisy)[np.unique(noisy)].min())))  # tiny smoke-test subsets
    probs = cross_validated_probs(embed_texts(data.texts), noisy, k, folds=folds, seed=cfg.seed)
    flags = find_label_issues(noisy, probs)
    kept, labels = trusted_labels(flags, noisy, probs.argmax(1), probs[np.arange(len(noisy)), noisy],
                                  probs.max(1), k, "drop")
    bundle = second_stage_bundle(data, kept, labels)
    stage = replace(cfg, routing="none", reg_weight=0.0, noise="clean", max_train_samples=None,
                    epochs=second_stage_epochs(cfg.epochs, len(noisy), len(kept)),
                    max_eval_samples=None, dev_holdout=0.0, dev_labels="clean", no_dynamics=True)
    resume = (out / "config.json").exists()
    summary = train(stage, resume=resume, overwrite=False, progress=False, log=log, data=bundle)
    summary.update({"noise": cfg.noise, "realized_noise_rate": data.noisy.realized_rate,
                    "kept_fraction": len(kept) / len(noisy), "kept_noise_rate": float(np.mean(labels != true[kept])),
                    "dev_labels": "noisy" if data.dev_noisy is not None else "clean", "cleanlab_flagged": int(flags.sum())})
    runs.atomic_write_json(out / "summary.json", summary)
    return summary


def recipes(cell, root: Path, log):
    dataset, noise, method, seed = cell
    folder = root / dataset / noise.replace(":", "-") / f"{method}-s{seed}"
    plain = dict(routing="none", reg_weight=0.0)  # plain PEFT has no consistency loss to weigh
    yield "plain", folder / "plain", lambda: run(config(*cell, folder / "plain", **plain), log)
    yield "plain-long", folder / "plain-long", lambda: run(config(*cell, folder / "plain-long", **plain,
                                                                  epochs=2 * BASE["epochs"]), log)
    yield "clear", folder / "clear", lambda: run(config(*cell, folder / "clear", routing="clean"), log)

    def refit():
        return run(config(*cell, folder / "refit", routing="clean-auto", refit="drop"), log)

    yield "refit", folder / "refit", refit
    yield "refit-union", folder / "refit-union", lambda: run(config(*cell, folder / "refit-union", routing="clean-auto",
                                                                    refit="drop", refit_flag="report"), log)
    yield "clean-auto", folder / "refit", lambda: json.loads((folder / "refit" / "summary.json").read_text())["first_stage"]
    yield "cleanlab-refit", folder / "cleanlab-refit", lambda: cleanlab_refit(
        config(*cell, folder / "cleanlab-refit", **plain), log)


def write(rows: list[dict], path: Path) -> None:
    from clearpeft import runs

    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    runs.atomic_write_text(path, buf.getvalue())


RECIPES = ("plain", "clear", "clean-auto", "refit", "cleanlab-refit")
VARIANTS = ("refit-union", "plain-long")  # trained only when asked for (--recipes), collected wherever finished


def read_cells(path: Path) -> tuple[list[dict], dict]:
    """results.csv's rows, and the same rows grouped: (dataset, noise, method) -> recipe -> rows."""
    from collections import defaultdict

    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    cells = defaultdict(lambda: defaultdict(list))
    for r in rows:
        cells[(r["dataset"], r["noise"], r["method"])][r["recipe"]].append(r)
    return rows, cells


def table(path: Path) -> str:
    """A markdown table of results.csv: per cell, each recipe's Delivered (Peak in brackets), in %; the mean
    over the seeds that every recipe of the cell finished."""
    from statistics import fmean

    _, cells = read_cells(path)
    lines = ["| data set | noise | method | seeds | " + " | ".join(RECIPES) + " | refit kept (wrong) |",
             "|---|---|---|---|" + "---|" * (len(RECIPES) + 1)]
    for (dataset, noise, method), by in cells.items():
        # the seeds every recipe of the cell finished (all of them where no seed is common to all)
        common = set.intersection(*({r["seed"] for r in got} for recipe, got in by.items() if recipe in RECIPES))
        by = {recipe: [r for r in got if r["seed"] in common] or got for recipe, got in by.items()}

        def shown(recipe):
            got = by.get(recipe)
            if not got:
                return "—"
            return f"{100 * fmean(float(r['delivered_acc']) for r in got):.1f} ({100 * fmean(float(r['peak_acc']) for r in got):.1f})"

        refit = by.get("refit") or []
        kept = (f"{100 * fmean(float(r['kept_fraction']) for r in refit):.0f}% "
                f"({100 * fmean(float(r['kept_noise_rate']) for r in refit):.1f}%)") if refit and refit[0]["kept_noise_rate"] else "—"
        seeds = len({r["seed"] for recipe in by.values() for r in recipe})
        lines.append(f"| {dataset} | {noise} | {method} | {seeds} | " + " | ".join(shown(x) for x in RECIPES)
                     + f" | {kept} |")
    return "\n".join(lines)


def checks(path: Path) -> str:
    """The comparisons the recipes are judged by, from results.csv (test accuracy %, seed means):
    at 60% symmetric noise refit's Delivered against CleaR's Peak, cleanlab-refit's and plain-long's Delivered;
    on clean data refit's Delivered against plain's; and, in every run of plain and CleaR, Delivered against Peak."""
    from statistics import fmean

    rows, by = read_cells(path)

    def mean(cell, recipe, key, seeds):
        return 100 * fmean(float(r[key]) for r in by[cell][recipe] if r["seed"] in seeds)

    lines = []
    for noise, against in (("symmetric:0.6", (("clear", "peak_acc"), ("cleanlab-refit", "delivered_acc"),
                                               ("plain-long", "delivered_acc"))),
                           ("clean", (("plain", "delivered_acc"),))):
        for cell in sorted(c for c in by if c[1] == noise and by[c].get("refit")):
            parts = []
            for recipe, key in against:  # seed means over the seeds both recipes finished
                seeds = {r["seed"] for r in by[cell]["refit"]} & {r["seed"] for r in by[cell].get(recipe, [])}
                if not seeds:
                    parts.append(f"{recipe}: not run")
                    continue
                refit, other = mean(cell, "refit", "delivered_acc", seeds), mean(cell, recipe, key, seeds)
                parts.append(f"refit delivered {refit:.1f} against {recipe} {key.split('_')[0]} {other:.1f}: "
                             f"{refit - other:+.1f} (seeds {','.join(sorted(seeds))})")
            lines.append(f"{' '.join(cell)}: " + "; ".join(parts))
    gaps = [(100 * (float(r["peak_acc"]) - float(r["delivered_acc"])), r) for r in rows
            if r["recipe"] in ("plain", "clear")]
    within = sum(g <= 1.0 for g, _ in gaps)
    lines.append(f"best-dev Delivered within 1 point of Peak: {within} of {len(gaps)} plain / CleaR runs")
    lines += [f"  not within: {r['dataset']} {r['noise']} {r['method']} {r['recipe']} seed {r['seed']}: "
              f"Peak {100 * float(r['peak_acc']):.1f}, Delivered {100 * float(r['delivered_acc']):.1f} "
              f"(epoch {int(r['kept_epoch']) + 1})" for g, r in gaps if g > 1.0]
    return "\n".join(lines)


def hand_over_again(root: Path) -> list[str]:
    """Take every finished refit run's hand-over again with the current rule (refit.two_stage_summary), from
    the summaries of its two stages; summary.json is rewritten, the weights are not moved (the run folders here
    keep only summaries). The dev size comes from summary.json, or, where a run predates it, from the margin
    it recorded under the rule before it (one standard error, sqrt(a (1 - a) / n))."""
    from clearpeft import runs
    from clearpeft.config import TrainConfig
    from clearpeft.refit import STAGE_FIELDS, two_stage_summary

    changed = []
    for path in sorted(root.glob("*/*/*/refit/summary.json")):
        folder = path.parent
        old = json.loads(path.read_text())
        if not (folder / "refit" / "summary.json").exists() or "first_stage" not in old:
            continue
        config = json.loads((folder / "config.json").read_text())
        num_labels = len(config.pop("label_names"))
        options = {k: v for k, v in config.items() if k not in ("versions", "realized_noise_rate")}
        cfg = TrainConfig.from_mapping(options, str(folder / "config.json"))
        first, second = old["first_stage"], json.loads((folder / "refit" / "summary.json").read_text())
        assert {k: second.get(k) for k in STAGE_FIELDS} == old["second_stage"], folder
        a = first["dev_peak_acc" if cfg.keep == "best-dev" else "dev_last_acc"]
        n_dev = old.get("dev_samples") or round(a * (1 - a) / old["handover_margin"] ** 2)
        kept = {k: old[k] for k in ("kept_samples", "kept_fraction", "kept_noise_rate")}
        new = two_stage_summary(cfg, first, second, kept, n_dev, old["refit_epochs"], num_labels)
        if new["handed_over"] != old["handed_over"]:
            changed.append(f"{folder.relative_to(root)}: {old['handed_over']} -> {new['handed_over']} "
                           f"(delivered {old['delivered_acc']:.4f} -> {new['delivered_acc']:.4f})")
        runs.atomic_write_json(path, new)
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "refit")
    parser.add_argument("--cells", type=int, default=len(CELLS), help="run only N cells")
    parser.add_argument("--start", type=int, default=0, help="skip the first K cells (a second process on other "
                                                             "cells; results.csv then holds only this process's)")
    parser.add_argument("--collect", action="store_true",
                        help="train nothing: write results.csv from the finished runs of every cell")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="change the protocol (a smoke test: --set max_train_samples=64 epochs=2)")
    parser.add_argument("--table", action="store_true", help="print results.csv as a markdown table and stop")
    parser.add_argument("--hand-over-again", action="store_true",
                        help="take every finished refit run's hand-over again with the current rule, then stop")
    parser.add_argument("--checks", action="store_true",
                        help="print the comparisons the recipes are judged by (from results.csv) and stop")
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=RECIPES + VARIANTS,
                        help="train only these recipes (clean-auto is read from the refit run)")
    args = parser.parse_args()
    if args.hand_over_again:
        print("\n".join(hand_over_again(args.out)) or "no hand-over changed")
        return
    if args.table or args.checks:
        print((table if args.table else checks)(args.out / "results.csv"))
        return
    BASE.update((key, yaml.safe_load(value)) for key, value in (item.split("=", 1) for item in args.set))
    args.out.mkdir(parents=True, exist_ok=True)
    from clearpeft.errors import RunLocked

    rows = []
    for cell in CELLS[args.start:args.start + args.cells]:
        for recipe, folder, make in recipes(cell, args.out, log=lambda m: print(m, file=sys.stderr, flush=True)):
            if recipe not in args.recipes and not (recipe == "clean-auto" and "refit" in args.recipes) \
                    and not (args.collect and recipe in VARIANTS):
                continue
            print(f"{cell} {recipe} ...", file=sys.stderr, flush=True)
            try:
                if args.collect:
                    done = folder / "summary.json"
                    if not done.exists():
                        continue
                    summary = json.loads(done.read_text())
                    summary = summary["first_stage"] if recipe == "clean-auto" else summary
                else:
                    summary = make()
            except RunLocked as exc:  # another process trains this cell: go on with the next one
                print(f"{cell} skipped: {exc}", file=sys.stderr, flush=True)
                break
            rows.append({**dict(zip(("dataset", "noise", "method", "seed"), cell)), "recipe": recipe,
                         **{k: summary.get(k) for k in COLUMNS if k not in ("dataset", "noise", "method", "seed", "recipe")},
                         "run_dir": str(folder.relative_to(args.out))})
            if recipe in ("plain", "plain-long", "clear", "clean-auto"):
                rows[-1].update(kept_fraction=1.0, kept_noise_rate=summary.get("realized_noise_rate"))
            write(rows, args.out / ("results.csv" if args.start == 0 or args.collect else f"results-from-{args.start}.csv"))
            print(f"{cell} {recipe}: delivered {summary.get('delivered_acc')} peak {summary.get('peak_acc')}",
                  file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
