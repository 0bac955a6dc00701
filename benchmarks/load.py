"""Large inputs, measured: time and peak RSS of each command in a process of its own.

- `clearpeft predict RUN --file` on 10,000 and 100,000 texts (SST-5 sentences, repeated), and
  `Run.predict_proba_batches` over the same file read line by line (and, at 10,000, `Run.predict_proba` on the
  list); the run predicts at --max-length 32, a LoRA run on the default backbone;
- `clearpeft data` on a generated CSV of 1,000,000 rows;
- `clearpeft label-issues` on a run folder whose report has 100,000 training rows (generated: the run itself
  trains on 64 samples; label-issues reads only the report).

The target: predict's peak RSS grows by less than 2x from 10,000 to 100,000 texts (it streams).

    CLEARPEFT_DATA=../shared/data HF_HUB_OFFLINE=1 nice .venv/bin/python benchmarks/load.py --work /tmp/load
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable


def measured(argv: list[str], stdout=subprocess.DEVNULL) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in MB) of one child process; os.wait4 gives the child's own usage,
    not the largest of all children so far (as RUSAGE_CHILDREN would). On a shared machine the CPU seconds are
    the figure to compare: wall time there depends on who else runs."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # KiB on Linux


def sentences() -> list[str]:
    from clearpeft.data import load_data

    bundle = load_data("sst5")
    return [*bundle.train.texts, *bundle.dev.texts, *bundle.test.texts]


def text_file(path: Path, texts: list[str], n: int) -> Path:
    if not path.exists():
        with open(path, "w", encoding="utf-8") as handle:
            for i in range(n):
                handle.write(texts[i % len(texts)] + "\n")
    return path


def big_csv(path: Path, texts: list[str], n: int) -> Path:
    if not path.exists():
        rng = random.Random(0)
        labels = ["very negative", "negative", "neutral", "positive", "very positive"]
        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            for i in range(n):
                writer.writerow([texts[i % len(texts)], labels[rng.randrange(5)]])
    return path


def trained_run(work: Path) -> Path:
    run = work / "run"
    if not (run / "summary.json").exists():
        subprocess.run([PY, "-m", "clearpeft", "train", "--dataset", "sst5", "--peft", "lora", "--routing", "none",
                        "--epochs", "1", "--max-train-samples", "64", "--max-eval-samples", "32", "--max-length",
                        "32", "--out", str(run), "--overwrite", "--json"], check=True, stdout=subprocess.DEVNULL)
    return run


def big_report(run: Path, work: Path, texts: list[str], n: int) -> Path:
    """A copy of ``run`` whose clean_probs.csv has ``n`` rows, as a run on n training samples writes it."""
    import shutil

    from clearpeft.runs import LABEL_ISSUE_COLUMNS

    big = work / "run_100k"
    if not (big / "clean_probs.csv").exists():
        shutil.rmtree(big, ignore_errors=True)
        shutil.copytree(run, big)
        names = json.loads((run / "config.json").read_text())["label_names"]
        rng = random.Random(0)
        rows = []
        for i in range(n):
            given, predicted = rng.randrange(len(names)), rng.randrange(len(names))
            score = rng.random()
            rows.append([i, texts[i % len(texts)], names[given], names[predicted], repr(score), score < 0.2,
                         repr(rng.random()), given, predicted])
        rows.sort(key=lambda r: float(r[4]))
        with open(big / "clean_probs.csv", "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(LABEL_ISSUE_COLUMNS)
            writer.writerows(rows)
    return big


API = """
import sys
from clearpeft import load_run
run, path, how = load_run(sys.argv[1]), sys.argv[2], sys.argv[3]
if how == "stream":  # the file read line by line, answered batch by batch
    with open(path, encoding="utf-8") as handle:
        n = sum(len(batch) for batch, _ in run.predict_proba_batches(line.strip() for line in handle if line.strip()))
else:  # the whole list, one array back
    n = len(run.predict_proba([line.strip() for line in open(path, encoding="utf-8") if line.strip()]))
print(n)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/clearpeft-load"))
    parser.add_argument("--texts", default="10000,100000", help="predict sizes")
    parser.add_argument("--csv-rows", type=int, default=1_000_000)
    parser.add_argument("--report-rows", type=int, default=100_000)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    texts = sentences()
    run = trained_run(args.work)
    results = []

    def record(what: str, n: int, seconds: float, cpu: float, rss: float) -> None:
        results.append({"what": what, "n": n, "wall_seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
                        "peak_rss_mb": round(rss)})
        print(f"{what:<38} {n:>9,}  wall {seconds:7.1f} s  CPU {cpu:7.1f} s  {rss:6.0f} MB  {n / cpu:7.0f}/CPU-s",
              flush=True)

    sizes = [int(s) for s in args.texts.split(",")]
    record("clearpeft predict --text (one text)", 1, *measured([PY, "-m", "clearpeft", "predict", str(run), "--text",
                                                               "a fine film ."]))
    for n in sizes:
        path = text_file(args.work / f"texts_{n}.txt", texts, n)
        out = open(args.work / f"predict_{n}.json", "w")
        record("clearpeft predict --file --json", n, *measured([PY, "-m", "clearpeft", "predict", str(run), "--file",
                                                                str(path), "--json"], stdout=out))
        out.close()
        assert len(json.loads((args.work / f"predict_{n}.json").read_text())) == n
        record("Run.predict_proba_batches (stream)", n, *measured([PY, "-c", API, str(run), str(path), "stream"]))
        if n == sizes[0]:  # the list in memory, for comparison (at the larger size it only costs time)
            record("Run.predict_proba (list)", n, *measured([PY, "-c", API, str(run), str(path), "list"]))
    predicts = {r["n"]: r for r in results if r["what"].startswith("clearpeft predict --file")}
    if len(sizes) >= 2:
        growth = predicts[sizes[-1]]["peak_rss_mb"] / predicts[sizes[0]]["peak_rss_mb"]
        print(f"predict peak RSS {sizes[0]:,} -> {sizes[-1]:,} texts: {growth:.2f}x (target < 2x)", flush=True)

    path = big_csv(args.work / f"big_{args.csv_rows}.csv", texts, args.csv_rows)
    record("clearpeft data (CSV)", args.csv_rows, *measured([PY, "-m", "clearpeft", "data", str(path), "--json"]))

    big = big_report(run, args.work, texts, args.report_rows)
    record("clearpeft label-issues --top 20", args.report_rows,
           *measured([PY, "-m", "clearpeft", "label-issues", str(big), "--top", "20"]))
    record("clearpeft label-issues --json (all)", args.report_rows,
           *measured([PY, "-m", "clearpeft", "label-issues", str(big), "--top", str(args.report_rows), "--json"]))
    (args.work / "load.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
