"""Time one training epoch of plain PEFT, of CleaR (routed steps, the per-epoch clean-probability pass, the GMM,
routed evaluation), of CleaR with --estimate-from train, and of the reference code's way (every sample padded
to 128 tokens, fp32, every layer run twice for LoRA and BitFit), side by side in one run. Not a test: the
machine is shared and noisy, so only ratios measured in the same run mean something.

    python benchmarks/epoch_time.py [--quick] [--datasets sst5,banking77] [--methods lora,adapter,bitfit,prompt]
                                    [--bf16] [--steps 20] [--no-reference]

Every configuration is a real one-epoch `clearpeft.train.train` run (warm-up 0, so routing is on from the first
step) in its own child process, so that each one's peak resident memory is its own. `--quick` trains on
`--steps` batches and evaluates on 256 samples instead of whole splits.

Prints one JSON line per data set and method: dataset, method, plain_s (training steps and evaluation of
plain PEFT, run with --no-dynamics: no per-sample pass), clear_s (a routed epoch followed by its clean-probability
pass, as every epoch between warm-up and the last one is), clear_over_plain, clear_train_s (with
--estimate-from train), clear_train_over_plain, reference_s, reference_over_clear, mfu (training FLOP/s of the
CleaR steps over the peak FLOP/s of a plain 2048x2048 matmul in the same dtype, measured in the same child),
peak_rss_mb (of the CleaR run), and the phases of each epoch. clear_train_no_routed_eval_over_plain leaves out
the routed test passes (--eval-passes 0), which only measure test_acc_routed. The *_within ratios take the
plain epoch from the CleaR child's own phases (its epoch without the pass and the routed test passes), since
the machine's speed can drift by 10-30% between children. clear_run_over_plain is the whole-run ratio of
the cpu.yaml protocol (6 epochs, 3 of warm-up) with --no-dynamics, computed the same way from the CleaR child's
measured phases: CleaR makes its pass only before each routed epoch (3 of 6 epochs, for every method: the
adapter's loss EMA starts at the end of warm-up).
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

import torch

HERE = Path(__file__).resolve().parent
RUN_EPOCHS, RUN_WARMUP = 6, 3  # experiments/cpu.yaml, for clear_run_over_plain


def peak_matmul_flops(dtype: torch.dtype, size: int | None = None, reps: int = 10, device: str = "cpu") -> float:
    """Best FLOP/s of a square matmul in ``dtype`` on ``device`` (2048 on a CPU; 8192 on a GPU, which a smaller
    one does not fill)."""
    size = size or (8192 if device != "cpu" else 2048)
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def training_flops(cfg, sample_batches: int = 20) -> float:
    """FLOPs of one epoch of training steps (forward and backward): torch's FlopCounterMode counts the matmuls
    exactly on up to ``sample_batches`` batches, scaled by padded tokens to the whole epoch. FlopCounterMode
    does not see CPU scaled-dot-product attention, so attention is added by formula: 4·S·(S+P)·hidden per
    sequence and layer forward (QKᵀ and AV, P prompt positions), three times that with the backward pass."""
    from transformers import AutoConfig
    from torch.utils.flop_counter import FlopCounterMode

    from clearpeft.backbone import load_tokenizer, resolve_model
    from clearpeft.data.batching import loader
    from clearpeft.peft import build_model
    from clearpeft.train import prepare_data

    tokenizer = load_tokenizer(cfg.model)
    data = prepare_data(cfg, tokenizer)
    model = build_model(cfg.peft, data.bundle.num_labels, cfg.model, seed=cfg.seed).train()
    batches = list(loader(data.train, cfg.batch_size, shuffle=True, pad_id=data.pad_id, seed=cfg.seed))
    tokens = sum(b["input_ids"].numel() for b in batches)
    config = AutoConfig.from_pretrained(resolve_model(cfg.model))
    prefix = cfg.prompt_length if cfg.peft == "prompt" else 0
    attention = sum(3 * 4 * b["input_ids"].shape[0] * b["input_ids"].shape[1] * (b["input_ids"].shape[1] + prefix)
                    * config.hidden_size * config.num_hidden_layers for b in batches)
    counted_tokens, flops = 0, 0
    for batch in batches[:sample_batches]:
        with FlopCounterMode(display=False) as counter:
            logits = model(batch["input_ids"], batch["attention_mask"])
            torch.nn.functional.cross_entropy(logits, batch["labels"]).backward()
        flops += counter.get_total_flops()
        counted_tokens += batch["input_ids"].numel()
        model.zero_grad(set_to_none=True)
    return flops * tokens / counted_tokens + attention


def patch_reference_style(method: str) -> None:
    """The reference implementation's costs: fixed padding to max_length, and for LoRA and BitFit every
    encoder layer computed twice (with and without its PEFT module) and mixed by the gate."""
    import clearpeft.data.batching as batching
    import clearpeft.peft as peft
    from clearpeft.peft.gates import encoder_layers

    sys.path.insert(0, str(HERE))
    from step_time import RunTwice

    original_call = batching.PadCollator.__call__

    def pad_to_max(self, items):
        out = original_call(self, items)
        width = 128 - out["input_ids"].shape[1]
        if width > 0:
            out["input_ids"] = torch.nn.functional.pad(out["input_ids"], (0, width), value=self.pad_id)
            out["attention_mask"] = torch.nn.functional.pad(out["attention_mask"], (0, width), value=0)
        return out

    batching.PadCollator.__call__ = pad_to_max
    if method in ("lora", "bitfit"):
        original_build = peft.build_model

        def build_run_twice(*args, **kwargs):
            model = original_build(*args, **kwargs)
            blocks = encoder_layers(model.model)
            for i in range(len(blocks)):
                blocks[i] = RunTwice(blocks[i], model.gates, i)
            return model

        peft.build_model = build_run_twice


def child(spec: dict) -> dict:
    from clearpeft.train import TrainConfig, train

    kind = spec.pop("kind")
    if kind == "reference":
        patch_reference_style(spec["peft"])
    cfg = TrainConfig(**spec)
    import sklearn.metrics  # noqa: F401  imported once per run (~1-2 s), not per epoch: keep it out of the epoch
    import sklearn.mixture  # noqa: F401
    peak = peak_matmul_flops(torch.bfloat16 if cfg.bf16 else torch.float32)
    train(cfg, overwrite=True, progress=False, log=lambda *a, **k: None)
    metrics = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    row = metrics[0]
    result = {k: round(row.get(k, 0.0), 2)
              for k in ("epoch_seconds", "step_seconds", "pass_seconds", "eval_seconds", "eval_routed_seconds")}
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if kind == "clear":
        result["train_flops"] = training_flops(cfg.resolved())
        result["mfu"] = round(result["train_flops"] / row["step_seconds"] / peak, 3)
        result["peak_matmul_gflops"] = round(peak / 1e9, 1)
    return result


def run_child(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], check=True,
                         capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="--steps training batches, 256 eval samples")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--datasets", default="sst5,banking77")
    parser.add_argument("--methods", default="lora,adapter,bitfit,prompt")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for our runs (the reference is fp32)")
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) reference-style epoch")
    parser.add_argument("--model", default="default")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets.split(","):
            for method in args.methods.split(","):
                base = {"dataset": dataset, "peft": method, "model": args.model, "epochs": 1, "warmup_epochs": 0,
                        "seed": 0, "bf16": args.bf16, "dev_holdout": 0.1 if dataset == "banking77" else 0.0}
                if args.quick:
                    base.update(max_train_samples=32 * args.steps, max_eval_samples=256)
                configs = {
                    "plain": {**base, "routing": "none", "no_dynamics": True},
                    "clear": {**base, "routing": "clean"},
                    "clear_train": {**base, "routing": "clean", "estimate_from": "train"},
                    "reference": {**base, "routing": "clean", "bf16": False},
                }
                if args.no_reference:
                    del configs["reference"]
                times = {}
                for kind, spec in configs.items():
                    spec = {**spec, "kind": "clear" if kind == "clear" else kind, "out": f"{tmp}/{kind}"}
                    times[kind] = run_child(spec)
                clear, plain = times["clear"], times["plain"]["epoch_seconds"]
                passes = RUN_EPOCHS - RUN_WARMUP
                # Whole run against plain, both from the CleaR child's phases (as the *_within ratios below).
                clear_base = clear["epoch_seconds"] - clear["pass_seconds"] - clear["eval_routed_seconds"]
                clear_run = (RUN_EPOCHS * (clear["epoch_seconds"] - clear["pass_seconds"])
                             + passes * clear["pass_seconds"]) / (RUN_EPOCHS * clear_base)
                # The same ratios from the phases of one child (routed steps cost what plain steps cost, see
                # step_time.py), immune to the machine changing speed between children.
                within = {kind: round(t["epoch_seconds"] / (t["epoch_seconds"] - t["pass_seconds"]
                                                             - t["eval_routed_seconds"]), 3)
                          for kind, t in times.items() if kind in ("clear", "clear_train")}
                print(json.dumps({
                    "dataset": dataset, "method": method, "bf16": args.bf16, "quick": args.quick,
                    "plain_s": plain, "clear_s": clear["epoch_seconds"],
                    "clear_over_plain": round(clear["epoch_seconds"] / plain, 3),
                    "clear_run_over_plain": round(clear_run, 3),
                    "clear_train_s": times["clear_train"]["epoch_seconds"],
                    "clear_train_over_plain": round(times["clear_train"]["epoch_seconds"] / plain, 3),
                    "clear_train_no_routed_eval_over_plain": round(
                        (times["clear_train"]["epoch_seconds"] - times["clear_train"]["eval_routed_seconds"]) / plain,
                        3),
                    "reference_s": times["reference"]["epoch_seconds"] if "reference" in times else None,
                    "reference_over_clear": round(times["reference"]["epoch_seconds"] / clear["epoch_seconds"], 3)
                    if "reference" in times else None,
                    "clear_over_plain_within": within["clear"],
                    "clear_train_over_plain_within": within["clear_train"],
                    "mfu": clear["mfu"], "peak_matmul_gflops": clear["peak_matmul_gflops"],
                    "peak_rss_mb": clear["peak_rss_mb"],
                    "phases": {k: {p: v[p] for p in ("step_seconds", "pass_seconds", "eval_seconds",
                                                     "eval_routed_seconds")}
                               for k, v in times.items()},
                }), flush=True)


if __name__ == "__main__":
    main()
