"""How well the label-issue reports of a pilot cell find the wrong labels, against cleanlab's recipe.

    pip install -e ".[compare]"                                     # cleanlab: only for the benchmarks
    python benchmarks/report_flags.py results/refit-pilot/sst5/instance-0.4

For every finished seed folder of the cell (its plain, clear and refit runs; a refit run's report is its first
stage's), the ranking by label_score (AUPRC, AUROC; wrong = positive), the report's flag (is_label_issue) and
its p < 0.5 part alone; then cleanlab's find_label_issues on 5-fold cross-validated logistic regression over
the frozen backbone's embeddings (benchmarks/label_issues.py), on the same noisy labels. Ground truth: each
run's noisy_labels.csv (label != noisy_label).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def read_csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def line(name: str, metrics: dict) -> str:
    return (f"{name:<28} AUPRC {metrics['auprc']:.3f}  AUROC {metrics['auroc']:.3f}  flagged {metrics['flagged']:>5}"
            f"  precision {metrics['precision']:.2f}  recall {metrics['recall']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cell", type=Path, help="a noise folder of experiments/refit.py, e.g. .../sst5/instance-0.4")
    args = parser.parse_args()
    from label_issues import cleanlab_rows, cross_validated_probs, detection_metrics

    for seed_folder in sorted(p for p in args.cell.iterdir() if p.is_dir()):
        noisy_rows = None
        for recipe in ("plain", "clear", "refit"):
            folder = seed_folder / recipe
            if not (folder / "summary.json").exists():
                continue
            noisy_rows = read_csv(folder / "noisy_labels.csv")
            config = json.loads((folder / "config.json").read_text())
            report = read_csv(folder / "clean_probs.csv")
            wrong = np.array([noisy_rows[int(r["index"])]["label"] != noisy_rows[int(r["index"])]["noisy_label"]
                              for r in report])
            suspicion = -np.array([float(r["label_score"]) for r in report])
            flag = np.array([r["is_label_issue"] == "True" for r in report])
            low_p = detection_metrics(None, np.array([float(r["clean_prob"]) < 0.5 for r in report]), wrong)
            print(line(f"{seed_folder.name} {recipe}", detection_metrics(suspicion, flag, wrong)),
                  f"| p < 0.5 alone: flagged {low_p['flagged']}, precision {low_p['precision']:.2f}, recall "
                  f"{low_p['recall']:.2f} | {low_p['corrupted']} wrong")
        if noisy_rows is None:
            continue
        from clearpeft.backbone import embed_texts

        noisy = np.array([int(r["noisy_label"]) for r in noisy_rows])
        wrong = np.array([r["label"] != r["noisy_label"] for r in noisy_rows])
        probs = cross_validated_probs(embed_texts([r["text"] for r in noisy_rows]), noisy,
                                      len(config["label_names"]), folds=5, seed=config["seed"])
        for name, metrics in cleanlab_rows(probs, noisy, wrong, f"{seed_folder.name} cleanlab-cv",
                                           methods=("self_confidence",)).items():
            print(line(name, metrics))


if __name__ == "__main__":
    main()
