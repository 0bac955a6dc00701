"""Does compiling pay over a whole long run? A full-data SST-5 CleaR-LoRA run (bf16, 3 epochs, 1 of warm-up)
eager, then compiled twice, each in a fresh process. Not a test: only the ratios of one invocation
mean something on a shared machine.

    python benchmarks/long_run.py [--epochs 3] [--max-train-samples N] [--cache-dir DIR] [--model M]

The first compiled run fills Inductor's on-disk cache (a fresh --cache-dir, default a temporary folder); the
second is what every later run of a grid costs. Prints one JSON line: eager_s, compiled_cold_s, compiled_s
(whole-run wall time of each, compiling included), compiled_over_eager (= compiled_s / eager_s),
compile_seconds_first / compile_seconds_second (Dynamo's and Inductor's own compile time in each compiled
run), graphs (distinct graphs Dynamo compiled in the second), mfu_eager / mfu_compiled (training FLOP/s of the
steps of the routed epochs over the bf16 peak of a 2048x2048 matmul measured in the same process), rss_mb_eager /
rss_mb_compiled (peak resident memory) and test_acc_eager / test_acc_compiled (per epoch); also device,
gpu_mb_eager / gpu_mb_compiled (peak allocated GPU memory, on a GPU) and the seconds of each epoch's phases
(steps, pass, evaluation) in each run. On a GPU (benchmarks/gpu/long_run.sh) the runs use it; the peak is then an
8192x8192 bf16 matmul.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(spec: dict) -> dict:
    import torch
    from torch._dynamo.utils import compile_times, counters

    sys.path.insert(0, str(HERE))
    from epoch_time import peak_matmul_flops, training_flops

    from clearpeft.train import TrainConfig, train

    cfg = TrainConfig(**spec)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    peak = peak_matmul_flops(torch.bfloat16, device=device)
    started = time.perf_counter()
    summary = train(cfg, overwrite=True, progress=False, log=lambda *a, **k: None)
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    flops_per_epoch = training_flops(cfg.resolved())
    routed = [r for r in rows if r["epoch"] >= cfg.warmup_epochs] or rows
    step_seconds = sum(r["step_seconds"] for r in routed) / len(routed)
    # (names, values) of Dynamo's timed phases; they nest, so the outermost (compile_inner: tracing and the
    # backend, Inductor included) is the compile time
    names, values = compile_times(repr="csv", aggregate=True)
    timed = dict(zip(names, (float(v) for v in values)))
    compile_seconds = next((v for k, v in timed.items() if k.endswith("compile_inner")), max(timed.values(), default=0.0))
    return {"wall_s": round(wall, 1), "compiled": summary["compiled"],
            "compile_seconds": round(compile_seconds, 1),
            "graphs": int(counters["stats"]["unique_graphs"]),
            "mfu": round(flops_per_epoch / step_seconds / peak, 3),
            "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else None,
            "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
            "phases": [[round(r[k], 1) for k in ("step_seconds", "pass_seconds", "eval_seconds")] for r in rows],
            "test_acc": [round(r["test_acc"], 4) for r in rows]}


def run_child(spec: dict, cache_dir: str) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TORCHINDUCTOR_CACHE_DIR": cache_dir}
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], check=True, stdout=subprocess.PIPE,
                         text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-train-samples", type=int, help="a subset (a quick look; the target is full data)")
    parser.add_argument("--cache-dir", help="Inductor's cache folder (default: a fresh temporary one)")
    parser.add_argument("--model", help="backbone (default: the default backbone)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or f"{tmp}/inductor-cache"
        base = {"dataset": "sst5", "peft": "lora", "routing": "clean", "epochs": args.epochs, "warmup_epochs": 1,
                "bf16": True, "seed": 0, "max_train_samples": args.max_train_samples,
                **({"model": args.model} if args.model else {})}
        eager = run_child({**base, "compile": "off", "out": f"{tmp}/eager"}, cache)
        cold = run_child({**base, "compile": "on", "out": f"{tmp}/cold"}, cache)
        warm = run_child({**base, "compile": "on", "out": f"{tmp}/warm"}, cache)
    print(json.dumps({
        "epochs": args.epochs, "max_train_samples": args.max_train_samples,
        "eager_s": eager["wall_s"], "compiled_cold_s": cold["wall_s"], "compiled_s": warm["wall_s"],
        "compiled_over_eager": round(warm["wall_s"] / eager["wall_s"], 3),
        "compile_seconds_first": cold["compile_seconds"], "compile_seconds_second": warm["compile_seconds"],
        "graphs": warm["graphs"], "mfu_eager": eager["mfu"], "mfu_compiled": warm["mfu"],
        "rss_mb_eager": eager["rss_mb"], "rss_mb_compiled": warm["rss_mb"],
        "test_acc_eager": eager["test_acc"], "test_acc_compiled": warm["test_acc"],
        "device": warm["device"], "gpu_mb_eager": eager["gpu_mb"], "gpu_mb_compiled": warm["gpu_mb"],
        "phases_eager": eager["phases"], "phases_cold": cold["phases"], "phases_compiled": warm["phases"],
    }), flush=True)


if __name__ == "__main__":
    main()
