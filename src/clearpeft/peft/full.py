"""Full fine-tuning: every weight trainable, nothing to route (the baseline of the paper's tables)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .gates import GateState


@dataclass
class FullConfig:
    def validate(self) -> None:
        pass


def attach(model: nn.Module, config: FullConfig, gates: GateState) -> nn.Module:
    for param in model.parameters():
        param.requires_grad = True
    return model
