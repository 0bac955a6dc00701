"""Time one training step of plain PEFT, routed PEFT (random gates) and the reference code's way of routing
(every layer run twice, once with and once without its PEFT module, mixed by the gate), side by side in one
run. Not a test: the machine is shared and noisy, so only the ratios measured here mean something.

    python benchmarks/step_time.py [--batch-size 32] [--steps 20] [--methods lora,adapter,bitfit,prompt]

Prints one JSON line per method: method, plain_ms, routed_ms, routed_over_plain, duplicate_over_routed.
Prompt has no run-twice figure (null): its prompts reach a layer as the key/value cache, which a second run of
the layer would extend, and the reference code routes prompts by masking them, as we do.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from torch import nn

from clearpeft.backbone import load_tokenizer
from clearpeft.data import load_data
from clearpeft.peft import build_model
from clearpeft.peft.gates import encoder_layers


class RunTwice(nn.Module):
    """The reference code's routing: the layer with PEFT and the frozen layer, both computed, mixed by r."""

    def __init__(self, layer: nn.Module, gates, index: int):
        super().__init__()
        self.layer, self.gates, self.index = layer, gates, index

    def forward(self, hidden, *args, **kwargs):
        r = self.gates.r
        if r is None:
            return self.layer(hidden, *args, **kwargs)
        batch = r.shape[1]
        on, off = torch.ones_like(r), torch.zeros_like(r)
        self.gates.r = on
        with_peft = self.layer(hidden, *args, **kwargs)
        self.gates.r = off
        frozen = self.layer(hidden, *args, **kwargs)
        self.gates.r = r
        g = r[self.index].view(batch, 1, 1).to(hidden.dtype)
        if isinstance(with_peft, tuple):
            return (g * with_peft[0] + (1 - g) * frozen[0],) + tuple(with_peft[1:])
        return g * with_peft + (1 - g) * frozen


RUN_TWICE = ("lora", "adapter", "bitfit")


def make_step(model, batch, gates_fn):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    labels = batch["labels"]

    def step():
        with model.routing(gates_fn()):
            logits = model(batch["input_ids"], batch["attention_mask"])
        loss = nn.functional.cross_entropy(logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--methods", default="lora,adapter,bitfit,prompt")
    parser.add_argument("--model", default="default")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = load_data("sst5", os.environ.get("CLEARPEFT_DATA"))
    tokenizer = load_tokenizer(args.model)
    texts, labels = data.train.texts[: args.batch_size], data.train.labels[: args.batch_size]
    batch = dict(tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt"))
    batch["labels"] = torch.as_tensor(labels)
    for method in args.methods.split(","):
        model = build_model(method, data.num_labels, args.model).train()
        layers = model.num_layers
        random_gates = lambda: (torch.rand(layers, args.batch_size) < 0.5).float()  # noqa: E731
        plain = make_step(model, batch, lambda: None)
        routed = make_step(model, batch, random_gates)
        contenders = {"plain": plain, "routed": routed}
        if method in RUN_TWICE:
            duplicate_model = build_model(method, data.num_labels, args.model).train()
            blocks = encoder_layers(duplicate_model.model)
            for i in range(len(blocks)):
                blocks[i] = RunTwice(blocks[i], duplicate_model.gates, i)
            contenders["duplicate"] = make_step(duplicate_model, batch, random_gates)
        timings = {name: [] for name in contenders}
        for fn in contenders.values():  # warm-up
            fn(), fn()
        for _ in range(args.steps):  # interleaved, so that machine noise hits all alike
            for name, fn in contenders.items():
                start = time.perf_counter()
                fn()
                timings[name].append(time.perf_counter() - start)
        ms = {k: 1000 * statistics.median(v) for k, v in timings.items()}
        print(json.dumps({"method": method, "batch_size": args.batch_size, "seq_len": batch["input_ids"].shape[1],
                          "plain_ms": round(ms["plain"], 2), "routed_ms": round(ms["routed"], 2),
                          "routed_over_plain": round(ms["routed"] / ms["plain"], 3),
                          "duplicate_over_routed": round(ms["duplicate"] / ms["routed"], 3) if "duplicate" in ms
                          else None}), flush=True)


if __name__ == "__main__":
    main()
