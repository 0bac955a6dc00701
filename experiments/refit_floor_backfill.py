"""The confusion floor for a pilot run made before it was recorded: train the run again with the pilot's
settings; only where its accuracies come out identical (Peak, Avg, Last, Delivered, the kept epoch, dev
accuracy), write the noise-rate readings into the recorded summary.json. The accuracies are not touched.

    python experiments/refit_floor_backfill.py banking77 asymmetric:0.4 lora 0    # its clear/ run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import refit  # noqa: E402

PILOT = ROOT / "results" / "refit-pilot"
SAME = ("peak_acc", "avg_acc", "last_acc", "delivered_acc", "kept_epoch", "dev_peak_acc")
FIELDS = ("floor_noise_rate", "estimated_noise_rate", "noise_rate_source", "fit_noise_rate", "cl_noise_rate",
          "cl_noise_rate_dev")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("noise")
    parser.add_argument("method")
    parser.add_argument("seed", type=int)
    parser.add_argument("--recipe", default="clear", choices=("clear",))
    args = parser.parse_args()
    from clearpeft import runs

    refit.BASE.update(max_train_samples=2000, max_length=64)  # the pilot's --set
    rel = Path(args.dataset) / args.noise.replace(":", "-") / f"{args.method}-s{args.seed}" / args.recipe
    cfg = refit.config(args.dataset, args.noise, args.method, args.seed, ROOT / "runs" / "floor-backfill" / rel,
                       routing="clean")
    new = refit.run(cfg, print)
    old = json.loads((PILOT / rel / "summary.json").read_text())
    same = all(new.get(k) == old.get(k) for k in SAME)
    print(rel, "reproduces" if same else "DIFFERS", {k: (old.get(k), new.get(k)) for k in SAME})
    if same:
        runs.atomic_write_json(PILOT / rel / "summary.json", {**old, **{k: new[k] for k in FIELDS if k in new}})


if __name__ == "__main__":
    main()
