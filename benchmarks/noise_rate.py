"""How close is the estimated noise rate to the realized one? Every finished run folder under the given roots
with fit statistics in its metrics.jsonl.

    python benchmarks/noise_rate.py results/cpu-clean-auto results/converged-gpu runs/label_issues

A run's estimate is the current rule (label_issues.noise_rate_estimate) applied to its recorded readings: the
larger of its last fit's reading and its confusion floor plus one-way flows; runs that predate the floor have
the fit's alone, and runs that predate the flows (and were not backfilled by experiments/one_way_backfill.py)
the floor without them. Runs made
before the estimate became "the high-loss weight where the fit shows a mode of wrong labels, else 0" logged
the weight as estimated_noise_rate, with the separation D and the component's mean loss beside it: the
current estimate is derived from those logged numbers by the same rule (routing.py), so every run counts.
Prints one line per run and the mean absolute error, overall and by noise kind; --markdown prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

from clearpeft.label_issues import noise_rate_estimate
from clearpeft.routing import is_wrong_label_mode


def last_fit(folder: Path) -> dict | None:
    fits = [row for row in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
            if row.get("loss_separation") is not None]
    return fits[-1] if fits else None


def estimate(fit: dict, num_labels: int) -> tuple[float, float]:
    """(estimated noise rate, high-loss weight) of a logged fit."""
    if "high_loss_weight" in fit:
        return fit["estimated_noise_rate"], fit["high_loss_weight"]
    weight = fit["estimated_noise_rate"]
    wrong = is_wrong_label_mode(fit["loss_separation"], fit["noisy_component_loss"], math.log(num_labels))
    return (weight if wrong else 0.0), weight


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--recording-floor", action="store_true",
                        help="the per-setting lines over the runs that record the confusion floor only")
    args = parser.parse_args()
    rows = []
    for root in args.roots:
        for summary_path in sorted(root.rglob("summary.json")):
            folder = summary_path.parent
            if folder.name == "refit-union" and (folder.parent / "refit").exists():
                continue  # the same first stage as its sibling refit/ (same seed, same draws): counted once
            config = json.loads((folder / "config.json").read_text())
            fit = last_fit(folder)
            if fit is None:
                continue
            est, weight = estimate(fit, len(config["label_names"]))
            summary = json.loads(summary_path.read_text())
            summary = summary.get("first_stage", summary)  # a --refit run: the first stage read the noise
            run_estimate = noise_rate_estimate(est, summary.get("floor_noise_rate"),
                                               summary.get("one_way_noise_rate"))[0]
            rows.append({"run": str(folder), "dataset": config["dataset"], "noise": config["noise"],
                         "method": config["peft"], "routing": config["routing"],
                         "realized": summary["realized_noise_rate"], "fit": est, "estimated": run_estimate,
                         "weight": weight,
                         # runs made since they are recorded: the confusion floor, and confident learning's count
                         # in-sample and on dev
                         "floor": summary.get("floor_noise_rate"), "one_way": summary.get("one_way_noise_rate"),
                         "cl": summary.get("cl_noise_rate"), "cl_dev": summary.get("cl_noise_rate_dev")})
    if not rows:
        raise SystemExit("no finished runs with fit statistics under " + ", ".join(map(str, args.roots)))
    groups = defaultdict(list, {"all": [], "recording the floor": [], "recording one-way flows": []})
    for r in rows:
        groups["all"].append(r)
        if r["floor"] is not None:
            groups["recording the floor"].append(r)
        if r["one_way"] is not None:
            groups["recording one-way flows"].append(r)
        if r["floor"] is not None or not args.recording_floor:
            groups[f"{r['dataset']} {r['noise']}"].append(r)
    if args.markdown:
        print("| data set | noise | method | routing | realized | estimated | fit | high-loss weight |")
        print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if args.markdown:
            print(f"| {r['dataset']} | {r['noise']} | {r['method']} | {r['routing']} | {r['realized']:.3f} | "
                  f"{r['estimated']:.3f} | {r['fit']:.3f} | {r['weight']:.3f} |")
        else:
            print(f"{r['run']:<70} realized {r['realized']:.3f}  estimated {r['estimated']:.3f}"
                  f"  fit {r['fit']:.3f}  weight {r['weight']:.3f}")
    print()
    for name, group in groups.items():
        if not group:
            continue
        mae = sum(abs(r["estimated"] - r["realized"]) for r in group) / len(group)
        mae_fit = sum(abs(r["fit"] - r["realized"]) for r in group) / len(group)
        mae_weight = sum(abs(r["weight"] - r["realized"]) for r in group) / len(group)
        zeros = sum(r["estimated"] == 0 for r in group)
        extra = ""
        have = [r for r in group if r["one_way"] is not None]
        if have:  # the rule before the flows, on the same runs
            before = sum(abs(noise_rate_estimate(r["fit"], r["floor"])[0] - r["realized"]) for r in have) / len(have)
            extra += f"; estimate without the flows: {before:.3f} ({len(have)})"
        for key, label in (("floor", "confusion floor"), ("cl", "confident learning on train"), ("cl_dev", "on dev")):
            have = [r for r in group if r[key] is not None]
            if have:
                extra += f"; {label}: {sum(abs(r[key] - r['realized']) for r in have) / len(have):.3f} ({len(have)})"
        print(f"{name:<26} {len(group):>3} runs  MAE estimated {mae:.3f} ({zeros} read 0)  (fit: {mae_fit:.3f}; "
              f"high-loss weight: {mae_weight:.3f}{extra})")


if __name__ == "__main__":
    main()
