"""bf16 autocast against fp32 on this CPU, and on the same CPU limited to AVX2 (no native bf16), side by side.

    python benchmarks/bf16_cpu.py [--steps 5] [--batch-size 32] [--length 48]

One training step of LoRA on the default backbone, one thread, random tokens of a fixed length. Each setting
runs in a fresh process; "avx2" caps oneDNN and ATen at AVX2 (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY), which
is what a CPU without AVX-512 BF16 or AMX runs. Prints one JSON line per ISA: median fp32 and bf16 step
seconds and bf16_over_fp32. Not a test: only the ratios mean something on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def child(steps: int, batch_size: int, length: int) -> dict:
    import torch

    from clearpeft.peft import build_model

    torch.set_num_threads(1)
    model = build_model("lora", 5, None, seed=0)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ids = torch.randint(1000, 20000, (batch_size, length), generator=torch.Generator().manual_seed(0))
    mask, labels = torch.ones_like(ids), torch.zeros(batch_size, dtype=torch.long)
    out = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        times = []
        for _ in range(steps + 1):  # the first step warms up
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = torch.nn.functional.cross_entropy(model(ids, mask).float(), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            times.append(time.perf_counter() - started)
        out[f"{name}_s"] = statistics.median(times[1:])
    out["bf16_over_fp32"] = out["bf16_s"] / out["fp32_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=48)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.steps, args.batch_size, args.length)))
        return
    for isa, env in (("native", {}), ("avx2", {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"})):
        done = subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps), "--batch-size",
                               str(args.batch_size), "--length", str(args.length)],
                              env={**os.environ, **env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                              check=True)
        print(json.dumps({"isa": isa, **json.loads(done.stdout.strip().splitlines()[-1])}), flush=True)


if __name__ == "__main__":
    main()
