"""The learning-rate sweep behind the per-method defaults: plain PEFT (no routing, no noise) on a seeded
subset of clean SST-5 train, scored on a seeded 800-sample subset of the SST-5 dev split, never on test.
Sized for a 2-core CPU: 18 runs of 2000 samples x 3 epochs (188 steps of 32), about 2 minutes each.

    python experiments/lr_sweep.py [--train-samples 2000] [--epochs 3] [--out runs/lr_sweep]

Each run is a normal `clearpeft train` run folder; finished runs are skipped when started again. Writes
results/lr_sweep.csv and prints the best learning rate per method by peak dev accuracy.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from clearpeft.train import TrainConfig, train

GRID = {
    "lora": [5e-4, 1e-3, 3e-3, 1e-2],  # 1e-2 added: 3e-3 was best, at the edge of the first grid
    "adapter": [3e-4, 1e-3, 3e-3],
    "bitfit": [1e-3, 3e-3, 1e-2],
    "prompt": [5e-3, 1e-2, 3e-2, 1e-1],  # 1e-1 added: 3e-2 was best, at the edge of the first grid
    "full": [2e-5, 5e-5, 1e-4, 3e-4],  # 3e-4 added: 1e-4 was best, at the edge of the first grid
}
FIELDS = ["method", "lr", "train_samples", "epochs", "dev_peak_acc", "dev_avg_acc", "dev_last_acc", "train_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--methods", default=",".join(GRID))
    parser.add_argument("--out", default="runs/lr_sweep")
    parser.add_argument("--results", default="results/lr_sweep.csv")
    args = parser.parse_args()
    rows = []
    for method in args.methods.split(","):
        for lr in GRID[method]:
            out = Path(args.out) / f"{method}-lr{lr:g}"
            if (out / "summary.json").exists():
                summary = json.loads((out / "summary.json").read_text())
            else:
                cfg = TrainConfig(dataset="sst5", peft=method, routing="none", noise="clean", lr=lr,
                                  epochs=args.epochs, max_train_samples=args.train_samples,
                                  max_eval_samples=800, seed=0, out=str(out))
                summary = train(cfg, overwrite=True, progress=False)
            rows.append({"method": method, "lr": lr, "train_samples": args.train_samples, "epochs": args.epochs,
                         **{k: summary[k] for k in FIELDS[4:]}})
            print(json.dumps(rows[-1]), flush=True)
            Path(args.results).parent.mkdir(parents=True, exist_ok=True)
            with open(args.results, "w", newline="") as handle:
                writer = csv.DictWriter(handle, FIELDS)
                writer.writeheader()
                writer.writerows(rows)
    for method in dict.fromkeys(r["method"] for r in rows):
        best = max((r for r in rows if r["method"] == method), key=lambda r: r["dev_peak_acc"])
        print(f"best {method}: lr {best['lr']:g}  dev peak {best['dev_peak_acc']:.4f}")


if __name__ == "__main__":
    main()
