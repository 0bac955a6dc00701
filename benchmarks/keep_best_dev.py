"""--keep best-dev against Peak and Last on finished runs: the test accuracy of the epoch with the best dev
accuracy (the first of equals), read from each run's metrics.jsonl.

    python benchmarks/keep_best_dev.py results/cpu results/converged-cpu results/converged-gpu

Prints the mean Peak, best-dev and Last test accuracy per (noise kind, plain or routed) group, the worst gap
to Peak, and the runs where best-dev fell furthest below Peak.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def runs(roots: list[str]) -> list[dict]:
    rows = []
    for root in roots:
        for path in sorted(Path(root).rglob("metrics.jsonl")):
            lines = [json.loads(line) for line in path.read_text().splitlines()]
            if not lines or lines[0].get("dev_acc") is None or lines[0].get("test_acc") is None \
                    or not (path.parent / "summary.json").exists():
                continue
            config = json.loads((path.parent / "config.json").read_text())
            dev, test = [r["dev_acc"] for r in lines], [r["test_acc"] for r in lines]
            best = max(range(len(dev)), key=lambda e: (dev[e], -e))
            rows.append({"run": str(path.parent), "noise": config["noise"], "routing": config["routing"],
                         "best": test[best], "last": test[-1], "peak": max(test), "epochs": len(lines)})
    return rows


def main() -> None:
    rows = runs(sys.argv[1:])
    if not rows:
        raise SystemExit("no finished runs with dev and test accuracy under " + ", ".join(sys.argv[1:]))
    groups = defaultdict(list)
    for r in rows:
        kind = r["noise"].split(":")[0]
        groups[f"{kind} {'plain' if r['routing'] == 'none' else 'routed'}"].append(r)
    for name, group in sorted(groups.items()):
        def mean(key):
            return sum(r[key] for r in group) / len(group)

        worst = max(r["peak"] - r["best"] for r in group)
        print(f"{name:<20} {len(group):>3} runs  Peak {mean('peak'):.4f}  best-dev {mean('best'):.4f}  "
              f"Last {mean('last'):.4f}  worst Peak - best-dev {worst:.4f}")
    print(f"\n{len(rows)} runs; furthest below Peak:")
    for r in sorted(rows, key=lambda r: r["best"] - r["peak"])[:5]:
        print(f"  {r['run']:<70} Peak {r['peak']:.3f}  best-dev {r['best']:.3f}  Last {r['last']:.3f}")


if __name__ == "__main__":
    main()
