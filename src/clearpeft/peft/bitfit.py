"""BitFit (Ben Zaken et al., 2022), hand-written: a trainable delta on every bias of the encoder layers
(attention, feed-forward and LayerNorm biases).

The pre-trained biases stay frozen; a forward hook adds ``r·Δb`` to the module's output, so the layer
computes with bias ``b_pre + r·Δb`` (r = 0 gives the pre-trained bias, as CleaR-BitFit requires). Keeping
the delta apart, rather than training the bias in place, is what makes per-sample routing possible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .gates import GateState, freeze_all_but_head, layer_index


@dataclass
class BitFitConfig:
    # What TrainConfig fills in when a run leaves them unset (lr: experiments/lr_sweep.py; γ: the reference code).
    training_defaults: ClassVar[dict] = {"lr": 3e-3, "gamma": 0.9}
    include_layernorm: bool = True

    def validate(self) -> None:
        pass


def _bias_hook(gates: GateState, layer: int, delta: nn.Parameter):
    def hook(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        g = gates.column(layer, output)
        d = delta.to(output.dtype)
        return output + (d if g is None else g * d)

    return hook


def attach(model: nn.Module, config: BitFitConfig, gates: GateState) -> nn.Module:
    freeze_all_but_head(model)
    kinds = (nn.Linear, nn.LayerNorm) if config.include_layernorm else (nn.Linear,)
    deltas = nn.ParameterDict()
    for name, module in list(model.named_modules()):
        layer = layer_index(name)
        if layer is None or not isinstance(module, kinds) or getattr(module, "bias", None) is None:
            continue
        delta = nn.Parameter(torch.zeros_like(module.bias))
        deltas[name.replace(".", "__")] = delta
        module.register_forward_hook(_bias_hook(gates, layer, delta))
    if not deltas:
        raise ValueError(f"no biased Linear/LayerNorm found in the encoder layers of {type(model).__name__}")
    model.clearpeft_bitfit = deltas
    return model
