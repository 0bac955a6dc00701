"""How well clearpeft's label-issue report finds the corrupted training labels, against cleanlab.

    pip install -e ".[compare]"                                          # cleanlab: only for this benchmark
    clearpeft grid experiments/label_issues.yaml --out runs/label_issues  # plain and CleaR LoRA, 7 settings
    python benchmarks/label_issues.py runs/label_issues                  # -> results/label_issues.csv

Ground truth is each run's noisy_labels.csv (label != noisy_label). Detectors, all on the same noisy labels:
  clearpeft-clear / clearpeft-plain   the report of the CleaR-LoRA / plain LoRA run: ranked by label_score,
                                      flagged by is_label_issue (p < 0.5 or confident learning finds another
                                      label; the candidates file has each part alone)
  cleanlab-cv-*                       out-of-fold pred_probs of 5-fold cross-validated logistic regression on
                                      frozen default-backbone embeddings (cleanlab's standard recipe); flagged:
                                      cleanlab.filter.find_label_issues (default filter_by); ranked by
                                      get_label_quality_scores (self_confidence, normalized_margin). The
                                      find_label_issues row is a flag only: its ranking metrics stay empty.
  cleanlab-on-clearpeft               cleanlab fed the CleaR run's final-model probabilities (in-sample):
                                      ranked by self_confidence, flagged by find_label_issues
Metrics as cleanlab's label-error benchmarks report them: AUROC and AUPRC of the ranking (corrupted = positive),
Lift@num_errors (share corrupted among the num_errors most suspicious, over the base rate), precision / recall /
F1 of the flagged set, how many flagged against how many corrupted. Settings whose runs have not finished yet
get only the cleanlab-cv rows (their noisy labels are rebuilt from the grid file, exactly as the runs draw them).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GRID = ROOT / "experiments" / "label_issues.yaml"
DETECTORS = ("clearpeft-clear", "clearpeft-plain", "cleanlab-cv-find_label_issues", "cleanlab-cv-self_confidence",
             "cleanlab-cv-normalized_margin", "cleanlab-on-clearpeft")
COLUMNS = ["dataset", "noise", "detector", "auroc", "auprc", "lift_at_num_errors", "precision", "recall", "f1",
           "flagged", "corrupted"]


def detection_metrics(suspicion: np.ndarray | None, flagged: np.ndarray, corrupted: np.ndarray) -> dict:
    """Ranking metrics of ``suspicion`` (higher = more likely corrupted; None: a flag-only detector) and
    precision / recall / F1 of the boolean ``flagged``, against the boolean ``corrupted``."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    corrupted, flagged = np.asarray(corrupted, bool), np.asarray(flagged, bool)
    errors, hits = int(corrupted.sum()), int((flagged & corrupted).sum())
    out = dict.fromkeys(("auroc", "auprc", "lift_at_num_errors"), math.nan)
    if suspicion is not None and 0 < errors < len(corrupted):
        top = np.argsort(-np.asarray(suspicion), kind="stable")[:errors]
        out.update(auroc=float(roc_auc_score(corrupted, suspicion)),
                   auprc=float(average_precision_score(corrupted, suspicion)),
                   lift_at_num_errors=float(corrupted[top].mean() / corrupted.mean()))
    precision = hits / int(flagged.sum()) if flagged.any() else math.nan
    recall = hits / errors if errors else math.nan
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else math.nan
    out.update(precision=precision, recall=recall, f1=f1, flagged=int(flagged.sum()), corrupted=errors)
    return out


def cross_validated_probs(features: np.ndarray, labels: np.ndarray, num_classes: int, folds: int = 5,
                          seed: int = 0) -> np.ndarray:
    """Out-of-fold predicted probabilities [n, K] of a standardized logistic regression (cleanlab's recipe)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    present = np.unique(labels)
    probs = cross_val_predict(model, features, labels, method="predict_proba",
                              cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    full = np.zeros((len(labels), num_classes))
    full[:, present] = probs  # a class nobody carries as its noisy label gets probability 0
    return full


def cleanlab_rows(pred_probs: np.ndarray, labels: np.ndarray, corrupted: np.ndarray, prefix: str,
                  methods=("self_confidence", "normalized_margin")) -> dict[str, dict]:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    flagged = find_label_issues(labels, pred_probs)
    rows = {f"{prefix}-find_label_issues": detection_metrics(None, flagged, corrupted)} if len(methods) > 1 else {}
    for method in methods:
        quality = get_label_quality_scores(labels, pred_probs, method=method)
        name = f"{prefix}-{method}" if len(methods) > 1 else prefix
        rows[name] = detection_metrics(1.0 - quality, flagged, corrupted)
    return rows


def finished_runs(runs_dir: Path) -> dict[tuple[str, str, str], Path]:
    """(dataset, noise, routing) -> folder of every finished LoRA run of seed 0 under ``runs_dir``."""
    import json

    found = {}
    for summary in sorted(runs_dir.rglob("summary.json")):
        config = json.loads((summary.parent / "config.json").read_text())
        if config["peft"] == "lora" and config["seed"] == 0 and config["reg_weight"] in (0.0, 1.0):
            found[(config["dataset"], config["noise"], config["routing"])] = summary.parent
    return found


def noisy_training_set(cfg) -> tuple[list[str], np.ndarray, np.ndarray, int]:
    """(texts, true labels, noisy labels, K) of a grid cell, drawn exactly as its run draws them."""
    from clearpeft.backbone import load_tokenizer
    from clearpeft.train import prepare_data

    data = prepare_data(cfg, load_tokenizer(cfg.model))
    return data.texts, data.bundle.train.labels, data.noisy.noisy, data.bundle.num_labels


def rewrite_old_report(folder: Path) -> None:
    """Rewrite a report of an older format (p to 6 decimals, which tied hundreds of samples at 0; ranked by p;
    flagged by p < 0.5 alone) the way a run writes it now: the final model over the training set, every module
    on, the same GMM."""
    import json

    from accelerate import Accelerator

    from clearpeft import runs
    from clearpeft.backbone import load_tokenizer
    from clearpeft.peft import load_model
    from clearpeft.train import TrainConfig, label_issue_report, prepare_data

    with open(folder / "clean_probs.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    # Reports written before the confident-learning flag have these columns but flag exactly p < 0.5.
    if tuple(rows[0]) == runs.LABEL_ISSUE_COLUMNS and any(
            (r[5] == "True") != (float(r[6]) < 0.5) for r in rows[1:]):
        return
    config = json.loads((folder / "config.json").read_text())
    cfg = TrainConfig(**{k: v for k, v in config.items() if k in TrainConfig.field_names()})
    data = prepare_data(cfg, load_tokenizer(cfg.model))
    core = load_model(folder / "weights", cfg.model)
    accelerator = Accelerator(cpu=True, mixed_precision="bf16" if cfg.bf16 else "no")  # as the run's own pass
    runs.atomic_write_text(folder / "clean_probs.csv", label_issue_report(core, data, cfg, accelerator)[0])
    print(f"rewrote {folder / 'clean_probs.csv'} in the current format", file=sys.stderr)


def cached_setting(cfg, runs: dict, cache_dir: Path) -> dict[str, dict]:
    """benchmark_setting, kept in ``cache_dir`` per setting until one of its runs changes (a grid still running
    adds runs: the benchmark is started again and redoes only the settings that gained one). The key is the
    runs, not this file: delete the cache folder after changing how a detector is scored."""
    import hashlib
    import json

    from clearpeft.runs import atomic_write_json

    used = {r: runs[(cfg.dataset, cfg.noise, r)] for r in ("clean", "none") if (cfg.dataset, cfg.noise, r) in runs}
    key = {r: hashlib.sha256((f / "summary.json").read_bytes()).hexdigest() for r, f in used.items()}
    path = cache_dir / f"{cfg.dataset}-{cfg.noise.replace(':', '-')}.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if cached["key"] == key:
            return {k: {m: (math.nan if v is None else v) for m, v in row.items()} for k, row in cached["rows"].items()}
    rows = benchmark_setting(cfg, runs)
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"key": key, "rows": {k: {m: (None if isinstance(v, float) and math.isnan(v) else v)
                                                       for m, v in row.items()} for k, row in rows.items()}})
    return rows


def benchmark_setting(cfg, runs: dict) -> dict[str, dict]:
    from clearpeft import load_run
    from clearpeft.backbone import embed_texts
    from clearpeft.label_issues import confident_flags

    texts, true, noisy, num_classes = noisy_training_set(cfg)
    corrupted = true != noisy
    rows = {}
    for routing, name in (("clean", "clearpeft-clear"), ("none", "clearpeft-plain")):
        folder = runs.get((cfg.dataset, cfg.noise, routing))
        if folder is None:
            continue
        with open(folder / "noisy_labels.csv", newline="") as handle:
            saved = np.array([int(r["noisy_label"]) for r in csv.DictReader(handle)])
        if not np.array_equal(saved, noisy):
            raise SystemExit(f"{folder}: its noisy labels are not the grid file's: was it run with other settings?")
        rewrite_old_report(folder)
        run = load_run(folder)
        issues = run.label_issues().sort_values("index")
        flags = issues["is_label_issue"].to_numpy()
        rows[name] = detection_metrics(1.0 - issues["label_score"].to_numpy(), flags, corrupted)
        # candidates file: the ranking the report had before (by p itself), and each part of the flag alone
        # beside "the predicted label differs", from the final model's in-sample probabilities
        p = issues["clean_prob"].to_numpy()
        rows[f"{name}-rank-by-p"] = detection_metrics(1.0 - p, flags, corrupted)
        in_sample = run.predict_proba(texts)
        for flag_name, flag in (("p-below-half", p < 0.5), ("confident-learning", confident_flags(in_sample, noisy)),
                                ("predicted-differs", in_sample.argmax(1) != noisy)):
            rows[f"{name}-flag-{flag_name}"] = detection_metrics(None, flag, corrupted)
        if routing == "clean":
            rows.update(cleanlab_rows(in_sample, noisy, corrupted, "cleanlab-on-clearpeft", ("self_confidence",)))
    features = embed_texts(texts)
    rows.update(cleanlab_rows(cross_validated_probs(features, noisy, num_classes), noisy, corrupted, "cleanlab-cv"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", nargs="?", default="runs/label_issues", type=Path)
    parser.add_argument("--out", default=ROOT / "results" / "label_issues.csv", type=Path,
                        help="the detectors compared; the other rows go to <out stem>_candidates.csv")
    parser.add_argument("--only", help="settings whose noise is this, e.g. symmetric:0.2 (a quick look; the CSVs "
                                           "are written for them only)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from clearpeft.study.grid import load_grid

    runs = finished_runs(args.runs_dir) if args.runs_dir.exists() else {}
    settings = {}
    for planned in load_grid(GRID):  # one config per (dataset, noise): the plain cell's
        settings.setdefault((planned.config.dataset, planned.config.noise), planned.config)
    lines = []
    for (dataset, noise), cfg in settings.items():
        if args.only and noise != args.only:
            continue
        for detector, m in cached_setting(cfg, runs, args.runs_dir / "label_issues_cache").items():
            lines.append({"dataset": dataset, "noise": noise, "detector": detector, **m})
            print(f"{dataset:<10} {noise:<15} {detector:<36} " + "  ".join(
                f"{k} {m[k]:.3f}" for k in ("auroc", "auprc", "lift_at_num_errors", "precision", "recall", "f1"))
                + f"  flagged {m['flagged']} of {m['corrupted']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    main_rows = [line for line in lines if line["detector"] in DETECTORS]
    write_csv(args.out, main_rows)
    write_csv(args.out.with_name(args.out.stem + "_candidates.csv"), [x for x in lines if x not in main_rows])
    print(f"wrote {args.out} ({len(main_rows)} rows) and its candidates file", file=sys.stderr)
    print(markdown(lines))


def markdown(lines: list[dict]) -> str:
    """The two tables of benchmarks/README.md: AUPRC of every ranking, and the flagged sets."""
    by = {(x["dataset"], x["noise"], x["detector"]): x for x in lines}
    settings = list(dict.fromkeys((x["dataset"], x["noise"]) for x in lines))
    rankers = ["clearpeft-clear", "clearpeft-plain", "cleanlab-cv-self_confidence", "cleanlab-cv-normalized_margin",
               "cleanlab-on-clearpeft", "clearpeft-clear-rank-by-p"]
    flaggers = ["clearpeft-clear", "clearpeft-plain", "cleanlab-cv-find_label_issues", "cleanlab-on-clearpeft"]

    def cell(key, metric):
        row = by.get(key)
        return "–" if row is None or math.isnan(row[metric]) else f"{row[metric]:.3f}"

    out = ["| data set | noise | " + " | ".join(rankers) + " |", "|---|---|" + "---|" * len(rankers)]
    for d, n in settings:
        out.append(f"| {d} | {n} | " + " | ".join(cell((d, n, r), "auprc") for r in rankers) + " |")
    out += ["", "| data set | noise | corrupted | " + " | ".join(f"{f} P / R / flagged" for f in flaggers) + " |",
            "|---|---|---|" + "---|" * len(flaggers)]
    for d, n in settings:
        corrupted = by[(d, n, "cleanlab-cv-find_label_issues")]["corrupted"]
        parts = [f"{cell((d, n, f), 'precision')} / {cell((d, n, f), 'recall')} / {by[(d, n, f)]['flagged']}"
                 if (d, n, f) in by else "–" for f in flaggers]
        out.append(f"| {d} | {n} | {corrupted} | " + " | ".join(parts) + " |")
    # F1 of the report's flag and of each part alone, per run, with the mean over the runs that have all of them
    variants = ["", "-flag-p-below-half", "-flag-confident-learning", "-flag-predicted-differs"]
    out += ["", "| data set | noise | run | " + " | ".join(v.lstrip("-") or "is_label_issue" for v in variants)
            + " |", "|---|---|---|" + "---|" * len(variants)]
    f1s = []
    for d, n in settings:
        for run in ("clearpeft-clear", "clearpeft-plain"):
            if all((d, n, run + v) in by for v in variants):
                f1s.append([by[(d, n, run + v)]["f1"] for v in variants])
                out.append(f"| {d} | {n} | {run} | " + " | ".join(cell((d, n, run + v), "f1") for v in variants) + " |")
    if f1s:
        out.append(f"| mean of {len(f1s)} runs | | | " + " | ".join(f"{x:.3f}" for x in np.mean(f1s, 0)) + " |")
    return "\n".join(out)


def write_csv(path: Path, lines: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        for line in lines:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) and not math.isnan(v) else
                                 ("" if isinstance(v, float) else v)) for k, v in line.items()})
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
