"""LoRA (Hu et al., 2022) through Hugging Face ``peft``, routed per layer and sample.

peft computes ``base(x) + lora_B(lora_A(dropout(x))) · scaling``; a forward hook on ``lora_B`` multiplies
the low-rank branch by the gate, which gives ``W + r·BA`` in one pass of the layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from .gates import GateState, layer_index, scale_output_hook


@dataclass
class LoRAConfig:
    # What TrainConfig fills in when a run leaves them unset (learning rate: experiments/lr_sweep.py; γ and the
    # ensemble of 2 routed passes: the reference code).
    training_defaults: ClassVar[dict] = {"lr": 3e-3, "gamma": 0.85, "ensemble": 2}
    rank: int = 4
    alpha: int = 8
    dropout: float = 0.0
    # None: peft's default for the architecture (query/value for BERT and RoBERTa, query_proj/value_proj for
    # DeBERTa-v2), which is the reference code's choice.
    target_modules: tuple[str, ...] | None = None

    def validate(self) -> None:
        if self.rank < 1:
            raise ValueError("LoRA rank must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("LoRA dropout must lie in [0, 1)")


def attach(model: nn.Module, config: LoRAConfig, gates: GateState) -> nn.Module:
    from peft import LoraConfig, TaskType, get_peft_model

    config.validate()
    peft_model = get_peft_model(
        model,
        LoraConfig(
            task_type=TaskType.SEQ_CLS,  # keeps the classifier trainable (modules_to_save)
            r=config.rank,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            target_modules=list(config.target_modules) if config.target_modules else None,
        ),
    )
    hooked = 0
    for name, module in peft_model.named_modules():
        if name.endswith(".lora_B.default"):
            layer = layer_index(name)
            if layer is None:
                raise ValueError(f"LoRA module {name} is outside the encoder layers; it cannot be routed")
            module.register_forward_hook(scale_output_hook(gates, layer))
            hooked += 1
    if hooked == 0:
        raise ValueError(f"no LoRA module matched target modules {config.target_modules}")
    return peft_model
