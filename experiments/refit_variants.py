"""The refit's open choices, made on dev: which flag, drop or relabel (and at which threshold), and whether the
second stage trains as plain PEFT or with clean-auto routing.

    python experiments/refit_variants.py --worker 0 --workers 2   # cells 0, 2, 4 ...; a second process the rest
    python experiments/refit_variants.py --collect    # results/refit-pilot/refit-variants.csv from the finished ones

Per cell (the refit pilot's protocol: 2,000 training samples, 64 tokens, 6 epochs, noisy dev labels) the first
stage is the pilot's clean-auto run, trained again (it reproduces the pilot's metrics; the script checks);
each variant is a second stage on its report, built as refit.second_stage builds it:
  drop            the report's union flag (p < 0.5 or confident learning), plain PEFT  (--refit drop, as shipped)
  drop-p          only p < 0.5 flags, plain PEFT
  relabel-0.9     --refit relabel at the default threshold
  relabel-0.6     --refit relabel at a lower threshold
  drop-clean-auto the union flag, second stage with --refit-routing clean-auto
The variant to ship is the one with the best dev accuracy (the noisy dev labels the run selects by); test
accuracies are written beside it, never used to choose. Where the first stage reproduces the pilot, `drop` is
read from the pilot's second stage instead of trained again.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PILOT = ROOT / "results" / "refit-pilot"
BASE = dict(epochs=6, warmup_epochs=3, eval_passes=1, max_train_samples=2000, max_length=64, bf16=True)
CELLS = [("sst5", "symmetric:0.6", "lora", 0), ("banking77", "symmetric:0.6", "lora", 0),
         ("sst5", "instance:0.4", "lora", 0), ("banking77", "symmetric:0.2", "lora", 0),
         ("sst5", "symmetric:0.6", "prompt", 0), ("banking77", "symmetric:0.6", "prompt", 0),
         ("banking77", "asymmetric:0.4", "lora", 0), ("sst5", "symmetric:0.2", "lora", 0)]
# The rest of the pilot's cells, for the chosen variant only (--variants drop-p): 60% seeds 1-2, clean, others.
MORE = [(d, "symmetric:0.6", m, s) for s in (1, 2) for d in ("sst5", "banking77") for m in ("lora", "prompt")] + \
       [(d, "clean", m, 0) for d in ("sst5", "banking77") for m in ("lora", "prompt")] + \
       [("banking77", "asymmetric:0.4", "prompt", 0), ("sst5", "asymmetric:0.4", "lora", 0),
        ("sst5", "asymmetric:0.4", "prompt", 0), ("sst5", "instance:0.4", "prompt", 0),
        ("sst5", "symmetric:0.2", "prompt", 0), ("banking77", "symmetric:0.2", "prompt", 0)]
VARIANTS = ("drop", "drop-p", "relabel-0.9", "relabel-0.6", "drop-clean-auto")
SAME = ("peak_acc", "avg_acc", "last_acc", "delivered_acc", "kept_epoch", "dev_peak_acc")
COLUMNS = ["dataset", "noise", "method", "seed", "variant", "dev_acc", "dev_acc_first", "delivered_acc",
           "delivered_acc_first", "peak_acc", "avg_acc", "last_acc", "kept_fraction", "kept_noise_rate",
           "epochs", "source"]


def cell_dir(cell) -> str:
    dataset, noise, method, seed = cell
    return f"{dataset}/{noise.replace(':', '-')}/{method}-s{seed}"


def first_stage(cell, out: Path, log) -> dict:
    from clearpeft.config import TrainConfig
    from clearpeft.train import train

    dataset, noise, method, seed = cell
    values = {**BASE, "dataset": dataset, "noise": noise, "peft": method, "seed": seed, "out": str(out),
              "routing": "clean-auto", "refit": "none"}
    if dataset == "banking77":
        values["dev_holdout"] = 0.1
    cfg = TrainConfig.from_mapping(values, "experiments/refit_variants.py")
    if (out / "summary.json").exists():
        return cfg, json.loads((out / "summary.json").read_text())
    return cfg, train(cfg, resume=(out / "config.json").exists(), progress=False, log=log)


def variant(name: str, cfg, first: dict, out: Path, data, report: dict, predicted_prob, log) -> dict:
    """One second stage, as refit.second_stage trains it, with this variant's flag, relabelling and routing."""
    from clearpeft.refit import second_stage_bundle, second_stage_epochs, trusted_labels
    from clearpeft.train import train

    if (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())
    flags = report["clean_prob"] < 0.5 if name == "drop-p" else report["flags"]
    how, threshold = ("relabel", float(name.split("-")[1])) if name.startswith("relabel") else ("drop", 0.9)
    k = data.bundle.num_labels
    kept, labels = trusted_labels(flags, report["given"], report["predicted"], report["score"], predicted_prob,
                                  k, how, threshold)
    routing = "clean-auto" if name == "drop-clean-auto" else "none"
    epochs = second_stage_epochs(cfg.epochs, len(report["given"]), len(kept))
    warmup = min(cfg.warmup_epochs, epochs - 1) if routing != "none" else cfg.warmup_epochs
    stage = replace(cfg, routing=routing, noise="clean", refit="none", out=str(out), epochs=epochs,
                    warmup_epochs=warmup, max_train_samples=None, max_eval_samples=None, dev_holdout=0.0,
                    dev_labels="clean", no_dynamics=routing == "none")
    summary = train(stage, resume=(out / "config.json").exists(), progress=False, log=log,
                    data=second_stage_bundle(data, kept, labels))
    true = np.asarray(data.bundle.train.labels)
    summary.update(kept_fraction=len(kept) / len(true), kept_noise_rate=float(np.mean(labels != true[kept])))
    from clearpeft import runs

    runs.atomic_write_json(out / "summary.json", summary)
    return summary


def run_cell(cell, root: Path, log, variants=VARIANTS) -> None:
    from clearpeft.api import load_run
    from clearpeft.backbone import load_tokenizer
    from clearpeft.refit import read_report
    from clearpeft.train import prepare_data

    folder = root / cell_dir(cell)
    if variants == ["drop-p"] and (PILOT / cell_dir(cell) / "refit-union").exists():
        return  # adopted already: the pilot's refit/ is this variant's run
    cfg, first = first_stage(cell, folder / "first", log)
    union = PILOT / cell_dir(cell) / "refit-union"  # the pilot's own run, once --adopt moved it
    pilot = json.loads(((union if union.exists() else union.parent / "refit") / "summary.json").read_text())
    same = all(first.get(k) == pilot["first_stage"].get(k) for k in SAME)
    log(f"{cell}: first stage {'reproduces' if same else 'DIFFERS FROM'} the pilot's")
    cfg = cfg.resolved()
    data = prepare_data(cfg, load_tokenizer(cfg.model))
    report = read_report(folder / "first")
    predicted_prob = load_run(folder / "first").predict_proba(data.texts).max(1)
    for name in variants:
        if name == "drop" and same:
            continue
        log(f"{cell} {name} ...")
        s = variant(name, cfg, first, folder / name, data, report, predicted_prob, log)
        log(f"{cell} {name}: dev {s['dev_peak_acc']:.4f} delivered {s['delivered_acc']:.4f}")
    (folder / "first_same_as_pilot.json").write_text(json.dumps({"same": same}))


RUN_FILES = ("config.json", "metrics.jsonl", "summary.json")


def adopt(cell, root: Path, name: str, log) -> bool:
    """Make variant ``name`` the pilot's refit run of ``cell``: the old one moves to refit-union/, and refit/
    gets the two-stage run as --refit builds it now (refit.run_summary: the stage dev prefers is handed over),
    from this script's first stage and the variant's second. False where either is not finished."""
    import shutil

    from clearpeft import runs
    from clearpeft.backbone import load_tokenizer
    from clearpeft.refit import read_report, run_summary, trusted_labels
    from clearpeft.train import prepare_data

    folder, pilot = root / cell_dir(cell), PILOT / cell_dir(cell)
    if not (folder / name / "summary.json").exists() or not (folder / "first_same_as_pilot.json").exists() or \
            not json.loads((folder / "first_same_as_pilot.json").read_text())["same"]:
        return False  # not finished, or its first stage is not the pilot's clean-auto run
    if not (pilot / "refit-union").exists():
        os.replace(pilot / "refit", pilot / "refit-union")
    cfg, first = first_stage(cell, folder / "first", log)
    cfg = replace(cfg.resolved(), refit="drop", refit_flag="clean-prob" if name == "drop-p" else "report",
                  out=str(pilot / "refit"))
    data = prepare_data(cfg, load_tokenizer(cfg.model))
    report = read_report(folder / "first")
    flags = report["clean_prob"] < 0.5 if name == "drop-p" else report["flags"]
    kept, labels = trusted_labels(flags, report["given"], report["predicted"], report["score"],
                                  np.zeros(len(flags)), data.bundle.num_labels, "drop")
    second = json.loads((folder / name / "summary.json").read_text())
    result = run_summary(cfg, first, second, kept, labels, np.asarray(data.bundle.train.labels),
                         len(data.dev.labels), second["epochs"], data.bundle.num_labels)
    out = pilot / "refit"
    (out / "refit").mkdir(parents=True, exist_ok=True)
    for f in RUN_FILES[:2]:
        shutil.copyfile(folder / "first" / f, out / f)
    for f in RUN_FILES:
        shutil.copyfile(folder / name / f, out / "refit" / f)
    runs.atomic_write_json(out / "config.json", {**json.loads((out / "config.json").read_text()),
                                                 **{k: getattr(cfg, k) for k in ("refit", "refit_flag", "out")}})
    runs.atomic_write_json(out / "first_stage_summary.json", first)
    runs.atomic_write_json(out / "summary.json", result)
    log(f"{cell}: refit/ is {name} now (handed over: {result['handed_over']}, delivered {result['delivered_acc']:.4f})")
    return True


def collect(root: Path, kept: list[dict]) -> list[dict]:
    """The finished variants under ``root``; a cell whose run folders are gone (they live under runs/, which is
    not committed) keeps its rows from the last collected table, ``kept``."""
    rows = []
    for cell in CELLS + MORE:
        folder = root / cell_dir(cell)
        if not (folder / "first" / "summary.json").exists():
            key = tuple(str(v) for v in cell)
            rows += [r for r in kept if (r["dataset"], r["noise"], r["method"], r["seed"]) == key]
            continue
        first = json.loads((folder / "first" / "summary.json").read_text())
        same = json.loads((folder / "first_same_as_pilot.json").read_text())["same"] \
            if (folder / "first_same_as_pilot.json").exists() else False
        for name in VARIANTS:
            path, source = folder / name / "summary.json", "trained"
            if name == "drop" and same and not path.exists():
                union = PILOT / cell_dir(cell) / "refit-union"  # where --adopt moved it
                pilot = json.loads(((union if union.exists() else union.parent / "refit") / "summary.json").read_text())
                # the second stage, handed over or not (runs made before the hand-over rule always handed it over)
                s, source = {**pilot, **pilot.get("second_stage", {})}, "pilot"
            elif path.exists():
                s = json.loads(path.read_text())
            else:
                continue
            rows.append({**dict(zip(("dataset", "noise", "method", "seed"), cell)), "variant": name,
                         "dev_acc": s["dev_peak_acc"], "dev_acc_first": first["dev_peak_acc"],
                         "delivered_acc": s["delivered_acc"], "delivered_acc_first": first["delivered_acc"],
                         **{k: s.get(k) for k in ("peak_acc", "avg_acc", "last_acc", "kept_fraction",
                                                  "kept_noise_rate", "epochs")}, "source": source})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "refit-variants")
    parser.add_argument("--results", type=Path, default=PILOT / "refit-variants.csv")
    parser.add_argument("--worker", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--more", action="store_true", help="the other pilot cells instead of the first eight")
    parser.add_argument("--adopt", choices=VARIANTS[1:2], help="train nothing: make this variant the pilot's refit "
                                                               "run wherever it is finished (the old one: refit-union)")
    parser.add_argument("--collect", action="store_true", help="train nothing: write the finished variants to --results")
    args = parser.parse_args()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if args.adopt:
        for cell in CELLS + MORE:
            adopt(cell, args.out, args.adopt, log)
        return
    if not args.collect:
        for cell in (MORE if args.more else CELLS)[args.worker::args.workers]:
            run_cell(cell, args.out, log, args.variants)
        return
    from clearpeft import runs

    kept = list(csv.DictReader(open(args.results, newline="", encoding="utf-8"))) if args.results.exists() else []
    rows = collect(args.out, kept)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    runs.atomic_write_text(args.results, buf.getvalue())
    print(buf.getvalue())


if __name__ == "__main__":
    main()
