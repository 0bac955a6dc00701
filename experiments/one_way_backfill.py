"""The one-way flows (label_issues.one_way_noise_rate) for finished runs made before they were recorded, read
off each run's own label-issue report: clean_probs.csv has every training sample's given and predicted label,
all the reading needs. Only where the report reproduces the confusion floor the run recorded is the reading
written into its summary (summary.json; for a --refit run also first_stage_summary.json and summary.json's
first stage, whose report it is). Nothing else is touched: the accuracies, the recorded estimate and the
refit's hand-over stay as the run made them; benchmarks/noise_rate.py applies the current rule to the readings.

    python experiments/one_way_backfill.py results/refit
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np


def readings(folder: Path, num_labels: int) -> tuple[float, float]:
    """(confusion floor, one-way flows) of the run's report."""
    from clearpeft.label_issues import confusion_floor_noise_rate, one_way_noise_rate

    with open(folder / "clean_probs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    given = np.array([int(r["given_label_id"]) for r in rows])
    probs = np.eye(num_labels)[[int(r["predicted_label_id"]) for r in rows]]  # only the argmax is read
    return confusion_floor_noise_rate(probs, given), one_way_noise_rate(probs, given)


def backfill(folder: Path) -> str | None:
    from clearpeft import runs

    summary_path = folder / "summary.json"
    summary = json.loads(summary_path.read_text())
    first_path = folder / "first_stage_summary.json"
    recorded = summary.get("first_stage", summary)
    if "one_way_noise_rate" in recorded or recorded.get("floor_noise_rate") is None:
        return None
    floor, one_way = readings(folder, len(json.loads((folder / "config.json").read_text())["label_names"]))
    if not math.isclose(floor, recorded["floor_noise_rate"], abs_tol=1e-9):
        return (f"{folder}: the report's floor {floor:.4f} is not the recorded {recorded['floor_noise_rate']:.4f}; "
                "left alone")
    if "first_stage" in summary:
        summary["first_stage"]["one_way_noise_rate"] = one_way
        first = json.loads(first_path.read_text())
        runs.atomic_write_json(first_path, {**first, "one_way_noise_rate": one_way})
    runs.atomic_write_json(summary_path, {**summary, "one_way_noise_rate": one_way})
    return f"{folder}: one-way flows {one_way:.4f} (floor {floor:.4f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path)
    args = parser.parse_args()
    for root in args.roots:
        for report in sorted(root.rglob("clean_probs.csv")):
            if (report.parent / "summary.json").exists():
                line = backfill(report.parent)
                if line:
                    print(line)


if __name__ == "__main__":
    main()
