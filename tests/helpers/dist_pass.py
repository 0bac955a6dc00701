"""Run under torchrun by test_distributed.py: the per-sample pass of the trainer on several processes.

Each process writes what it ends up with (gathered losses, logits, clean probability) to OUT/rank{R}.npz."""

import sys

import numpy as np
import torch
from accelerate import Accelerator

from clearpeft.backbone import load_tokenizer
from clearpeft.peft import build_model
from clearpeft.routing import CleanProbability
from clearpeft.train import TrainConfig, prepare_data, routed_logits


def per_sample_pass(accelerator, n: int):
    cfg = TrainConfig(noise="symmetric:0.6", max_train_samples=n, seed=0)
    data = prepare_data(cfg, load_tokenizer(cfg.model))
    torch.manual_seed(1)
    model = build_model("lora", data.bundle.num_labels, cfg.model, seed=0)
    with torch.no_grad():  # non-zero LoRA deltas, the same on every process
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    logits, losses = routed_logits(model, data.train, 32, data.pad_id, 1, lambda index, k: None, accelerator)
    return logits, losses, CleanProbability(seed=0).fit(losses)


if __name__ == "__main__":
    accelerator = Accelerator(cpu=True)
    logits, losses, p = per_sample_pass(accelerator, int(sys.argv[2]))
    np.savez(f"{sys.argv[1]}/rank{accelerator.process_index}.npz", logits=logits, losses=losses, p=p,
             world=accelerator.num_processes)
