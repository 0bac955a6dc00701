"""Does torch.compile pay for itself on a CleaR epoch? Times routed training steps of one method eager and
compiled (`torch.compile(dynamic=True)`), on the same real length-bucketed SST-5 batches, side by side in one
run. Not a test: only the ratios measured here mean something.

    python benchmarks/compile_time.py [--methods lora,bitfit] [--batches 30] [--bf16] [--static 16]

Prints one JSON line per method: first_pass_s (compiled, compile time included, over --batches batches),
eager_s and compiled_s (a second pass over the same batches, graphs cached), compiled_over_eager (steady
state), compile_overhead_s (first pass minus steady pass), and break_even_batches: how many batches the steady
saving needs to repay the compile time (an SST-5 epoch has 267 batches of 32, BANKING77 282). Every new batch
length may compile again, so the first pass covers the lengths of a real epoch's first batches.

--static M adds a second compiled model per method, with static shapes (`dynamic=False`) on the same batches
padded to a multiple of M tokens (one graph per padded length; the line says how many): the other way to bound
the number of graphs. Its compiled_over_eager is against the same eager pass on the unpadded batches.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

import torch

from clearpeft.backbone import load_tokenizer
from clearpeft.data import load_data
from clearpeft.data.batching import encode, loader
from clearpeft.peft import build_model


def timed_pass(model, forward, batches, bf16: bool) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for batch in batches:
        gates = (torch.rand((model.num_layers, len(batch["labels"])), generator=generator) < 0.5).float()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with model.routing(gates), autocast:
            logits = forward(batch["input_ids"], batch["attention_mask"]).float()
        torch.nn.functional.cross_entropy(logits, batch["labels"]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="lora,bitfit")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--model", default="default")
    parser.add_argument("--static", type=int, help="also compile with static shapes, lengths padded to a multiple")
    args = parser.parse_args()
    torch._dynamo.config.specialize_float = True  # as --compile sets it (train.compile_inner_model)
    data = load_data("sst5", os.environ.get("CLEARPEFT_DATA"))
    tokenizer = load_tokenizer(args.model)
    split = encode(tokenizer, data.train.texts, data.train.labels, 128)
    batches = []
    for batch in loader(split, 32, shuffle=True, pad_id=tokenizer.pad_token_id, seed=0):
        batches.append(batch)
        if len(batches) == args.batches:
            break
    for method in args.methods.split(","):
        eager = build_model(method, data.num_labels, args.model, seed=0).train()
        compiled = build_model(method, data.num_labels, args.model, seed=0).train()
        compiled_forward = torch.compile(compiled, dynamic=True)
        first = timed_pass(compiled, compiled_forward, batches, args.bf16)
        eager_s = timed_pass(eager, eager, batches, args.bf16)
        compiled_s = timed_pass(compiled, compiled_forward, batches, args.bf16)
        print(json.dumps({
            "method": method, "bf16": args.bf16, "batches": len(batches),
            "lengths": len({int(b["input_ids"].shape[1]) for b in batches}),
            **timings(first, eager_s, compiled_s, len(batches)),
        }), flush=True)
        if args.static:
            torch._dynamo.reset()
            torch._dynamo.config.recompile_limit = 64  # one graph per padded length
            padded = [pad_to_multiple(b, args.static, tokenizer.pad_token_id) for b in batches]
            static = build_model(method, data.num_labels, args.model, seed=0).train()
            static_forward = torch.compile(static, dynamic=False)
            first = timed_pass(static, static_forward, padded, args.bf16)
            static_s = timed_pass(static, static_forward, padded, args.bf16)
            print(json.dumps({
                "method": method, "bf16": args.bf16, "shapes": f"static, padded to a multiple of {args.static}",
                "graphs": len({int(b["input_ids"].shape[1]) for b in padded}),
                **timings(first, eager_s, static_s, len(batches)),
            }), flush=True)


def timings(first: float, eager_s: float, compiled_s: float, batches: int) -> dict:
    """The JSON fields of one compiled model against eager: ratio, compile overhead and its break-even."""
    saving = (eager_s - compiled_s) / batches
    return {"first_pass_s": round(first, 2), "eager_s": round(eager_s, 2), "compiled_s": round(compiled_s, 2),
            "compiled_over_eager": round(compiled_s / eager_s, 3), "compile_overhead_s": round(first - compiled_s, 2),
            "break_even_batches": round((first - compiled_s) / saving) if saving > 0 else None}


def pad_to_multiple(batch: dict, multiple: int, pad_id: int) -> dict:
    """The batch with input_ids and attention_mask padded on the right to a multiple of ``multiple`` tokens."""
    extra = -batch["input_ids"].shape[1] % multiple
    pad = torch.nn.functional.pad
    return {**batch, "input_ids": pad(batch["input_ids"], (0, extra), value=pad_id),
            "attention_mask": pad(batch["attention_mask"], (0, extra), value=0)}


if __name__ == "__main__":
    main()
