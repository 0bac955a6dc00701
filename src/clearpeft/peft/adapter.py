"""Houlsby adapters (Houlsby et al., 2019), hand-written because AdapterHub ``adapters`` does not install
with current ``transformers``.

A bottleneck MLP (down, GELU, up) with a residual connection sits after the attention output projection and
after the feed-forward output projection of every layer, before the residual + LayerNorm of the block.
A forward hook on the projection returns ``h + r·up(gelu(down(h)))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .gates import GateState, freeze_all_but_head, layer_index


@dataclass
class AdapterConfig:
    # What TrainConfig fills in when a run leaves them unset (learning rate: experiments/lr_sweep.py; γ, the
    # consistency temperature and the loss EMA: the reference code).
    training_defaults: ClassVar[dict] = {"lr": 1e-3, "gamma": 0.7, "temperature": 0.5, "loss_ema": 0.9}
    bottleneck: int = 16
    # BERT/RoBERTa names: the attention output projection and the FFN output projection of each block.
    target_modules: tuple[str, ...] = ("attention.output.dense", "output.dense")

    def validate(self) -> None:
        if self.bottleneck < 1:
            raise ValueError("adapter bottleneck size must be >= 1")


class BottleneckAdapter(nn.Module):
    def __init__(self, hidden: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)
        self.up = nn.Linear(bottleneck, hidden)
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)  # starts as the identity: training begins at the pre-trained model
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(nn.functional.gelu(self.down(h)))


def _adapter_hook(gates: GateState, layer: int, adapter: BottleneckAdapter):
    def hook(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        delta = adapter(output)
        g = gates.column(layer, output)
        return output + (delta if g is None else delta * g)

    return hook


def attach(model: nn.Module, config: AdapterConfig, gates: GateState) -> nn.Module:
    config.validate()
    freeze_all_but_head(model)
    hidden = model.config.hidden_size
    adapters = nn.ModuleDict()
    for name, module in list(model.named_modules()):
        layer = layer_index(name)
        if layer is None or not isinstance(module, nn.Linear) or module.out_features != hidden:
            continue
        suffix = name[name.index(f".{layer}.") + len(f".{layer}.") :]
        if suffix not in config.target_modules:
            continue
        adapter = BottleneckAdapter(hidden, config.bottleneck)
        adapters[name.replace(".", "__")] = adapter
        module.register_forward_hook(_adapter_hook(gates, layer, adapter))
    if not adapters:
        raise ValueError(f"no adapter position matched {config.target_modules} in {type(model).__name__}")
    model.clearpeft_adapters = adapters  # registered: trainable, saved, moved with the model
    return model
