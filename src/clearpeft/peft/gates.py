"""The one gate mechanism every PEFT method shares.

A caller sets a gate matrix ``r`` of shape ``[num_layers, batch]`` (values in [0, 1]) for the next forward
passes; each method reads ``r[l]`` inside layer ``l`` through forward hooks and scales only its own delta
by it, so layer ``l`` of sample ``i`` computes ``θ + r[l, i]·δ`` and no layer runs twice. No gate set
(``r is None``) means every module is on: plain PEFT.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

_LAYER_INDEX = re.compile(r"\.(?:layer|layers)\.(\d+)\.")


class GateState:
    """Holds the gate matrix for the forward passes to come."""

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self.r: torch.Tensor | None = None

    def set(self, r: torch.Tensor | None) -> None:
        if r is not None:
            if r.dim() != 2 or r.shape[0] != self.num_layers:
                raise ValueError(f"gates must have shape [num_layers={self.num_layers}, batch], got {tuple(r.shape)}")
            if r.numel() and (float(r.min()) < 0.0 or float(r.max()) > 1.0):
                raise ValueError("gate values must lie in [0, 1]")
        self.r = r

    def column(self, layer: int, like: torch.Tensor) -> torch.Tensor | None:
        """Gates of ``layer`` shaped to broadcast against ``like`` (batch first), or None when all on."""
        if self.r is None:
            return None
        g = self.r[layer]
        if g.shape[0] != like.shape[0]:
            raise ValueError(f"gate batch size {g.shape[0]} does not match the input batch size {like.shape[0]}")
        return g.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.dim() - 1)))

    @contextmanager
    def routing(self, r: torch.Tensor | None) -> Iterator[None]:
        previous = self.r
        self.set(r)
        try:
            yield
        finally:
            self.r = previous


def layer_index(module_name: str) -> int | None:
    """Encoder layer of a module from its dotted name (``...encoder.layer.3.attention...`` -> 3)."""
    match = _LAYER_INDEX.search(module_name + ".")
    return int(match.group(1)) if match else None


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a BERT-family encoder: the ModuleList named ``...encoder.layer``."""
    num = getattr(getattr(model, "config", None), "num_hidden_layers", None)  # wrappers may have no config
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.endswith(("encoder.layer", "encoder.layers")):
            if num is None or len(module) == num:
                return module
    raise ValueError(f"cannot find the encoder layers of {type(model).__name__}: not a BERT-family encoder?")


def scale_output_hook(gates: GateState, layer: int):
    """Forward hook: multiply a module's output (a PEFT delta) by the layer's gate."""

    def hook(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        g = gates.column(layer, output)
        return output if g is None else output * g

    return hook


def freeze_all_but_head(model: nn.Module) -> None:
    """Freeze the pre-trained weights; keep the task head (classifier) trainable: it is never routed."""
    for name, param in model.named_parameters():
        # DeBERTa's head has its own freshly initialised pooler at the top level; BERT's pooler is pre-trained.
        param.requires_grad = name.startswith(("classifier.", "pooler.", "score."))
