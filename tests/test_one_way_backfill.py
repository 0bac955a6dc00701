"""experiments/one_way_backfill.py: the one-way reading written into a finished run's summary from its own
report, and only where the report reproduces the floor the run recorded."""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

from one_way_backfill import backfill  # noqa: E402

from clearpeft.label_issues import confusion_floor_noise_rate, one_way_noise_rate  # noqa: E402


def finished_run(folder: Path, pairs: list[tuple[int, int]], floor: float, refit: bool = False) -> None:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"label_names": list("abcde")}))
    with open(folder / "clean_probs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "given_label_id", "predicted_label_id"])
        writer.writerows((i, given, predicted) for i, (predicted, given) in enumerate(pairs))
    stage = {"floor_noise_rate": floor, "estimated_noise_rate": floor, "peak_acc": 0.5}
    if refit:
        (folder / "first_stage_summary.json").write_text(json.dumps(stage))
        stage = {**stage, "first_stage": dict(stage), "handed_over": "first"}
    (folder / "summary.json").write_text(json.dumps(stage))


def test_backfill_writes_the_reading_of_the_runs_own_report(tmp_path):
    # 20 per class on the diagonal, one of every other given label per row, and labels of class 0 given as 1
    pairs = [(i, i) for i in range(5) for _ in range(20)] + [(i, j) for i in range(5) for j in range(5) if i != j]
    pairs += [(0, 1)] * 29
    predicted, given = np.array(pairs).T
    probs = np.eye(5)[predicted]
    floor, one_way = confusion_floor_noise_rate(probs, given), one_way_noise_rate(probs, given)
    assert one_way == pytest.approx(29 / 149)

    finished_run(tmp_path / "plain", pairs, floor)
    assert backfill(tmp_path / "plain").endswith(f"one-way flows {one_way:.4f} (floor {floor:.4f})")
    summary = json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert summary == {"floor_noise_rate": floor, "estimated_noise_rate": floor, "peak_acc": 0.5,
                       "one_way_noise_rate": one_way}  # the recorded estimate and accuracies untouched
    assert backfill(tmp_path / "plain") is None  # once only

    finished_run(tmp_path / "refit", pairs, floor, refit=True)  # a --refit run's report is its first stage's
    backfill(tmp_path / "refit")
    summary = json.loads((tmp_path / "refit" / "summary.json").read_text())
    first = json.loads((tmp_path / "refit" / "first_stage_summary.json").read_text())
    assert summary["one_way_noise_rate"] == summary["first_stage"]["one_way_noise_rate"] == first[
        "one_way_noise_rate"] == one_way and summary["handed_over"] == "first"

    finished_run(tmp_path / "other", pairs, floor + 0.01)  # not the report the run recorded from: left alone
    before = (tmp_path / "other" / "summary.json").read_text()
    assert "left alone" in backfill(tmp_path / "other")
    assert (tmp_path / "other" / "summary.json").read_text() == before
