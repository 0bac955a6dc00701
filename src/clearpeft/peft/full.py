"""Full fine-tuning: every weight trainable, nothing to route (the baseline of the paper's tables)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from .gates import GateState


@dataclass
class FullConfig:
    # What TrainConfig fills in when a run leaves it unset (experiments/lr_sweep.py). Nothing to route.
    training_defaults: ClassVar[dict] = {"lr": 1e-4}

    def validate(self) -> None:
        pass


def attach(model: nn.Module, config: FullConfig, gates: GateState) -> nn.Module:
    for param in model.parameters():
        param.requires_grad = True
    return model
