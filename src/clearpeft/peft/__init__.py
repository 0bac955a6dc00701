"""The four PEFT methods and full fine-tuning behind one routed classifier.

    model = build_model("lora", num_labels=5)           # the default backbone, LoRA rank 4 on query/value
    logits = model(input_ids, attention_mask)           # no gates: plain PEFT
    with model.routing(r):                              # r: [num_layers, batch] in [0, 1]
        logits = model(input_ids, attention_mask)       # layer l of sample i uses θ + r[l, i]·δ

Each method lives in its own module (config dataclass + ``attach``), sharing the gate mechanism of
``gates.py``. LoRA and Prompt stand on Hugging Face ``peft``; Adapter and BitFit are hand-written.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from . import adapter, bitfit, full, lora, prompt
from .gates import GateState, encoder_layers

METHODS: dict[str, tuple[type, Any]] = {
    "lora": (lora.LoRAConfig, lora.attach),
    "prompt": (prompt.PromptConfig, prompt.attach),
    "adapter": (adapter.AdapterConfig, adapter.attach),
    "bitfit": (bitfit.BitFitConfig, bitfit.attach),
    "full": (full.FullConfig, full.attach),
}
ROUTABLE = ("lora", "prompt", "adapter", "bitfit")
# Training options a method may give its own default (its config's ``training_defaults``), and the value where
# it gives none. TrainConfig fills them in for whatever a run leaves unset.
TRAINING_DEFAULTS = {"lr": None, "gamma": 1.0, "temperature": 1.0, "ensemble": 1, "loss_ema": 0.0}
WEIGHTS_FILE = "trained.safetensors"
METHOD_FILE = "method.json"


def method_config(method: str, **options: Any):
    """The config dataclass of ``method``, with only the options it knows taken from ``options``."""
    if method not in METHODS:
        raise ValueError(f"unknown PEFT method {method!r}; choose one of {', '.join(METHODS)}")
    cls = METHODS[method][0]
    known = {f.name for f in fields(cls)}
    config = cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in options.items() if k in known})
    config.validate()
    return config


def training_defaults(method: str) -> dict:
    """lr, γ, consistency temperature, ensemble size and loss EMA of ``method`` when a run leaves them unset."""
    return {**TRAINING_DEFAULTS, **METHODS[method][0].training_defaults}


class RoutedClassifier(nn.Module):
    """A sequence classifier whose PEFT modules are switched per layer and per sample by a gate matrix."""

    def __init__(self, hf_model: nn.Module, method: str, config):
        super().__init__()
        self.method = method
        self.config = config
        self.num_layers = len(encoder_layers(hf_model))
        self.num_labels = hf_model.config.num_labels
        self.gates = GateState(self.num_layers)
        self.model = METHODS[method][1](hf_model, config, self.gates)

    @property
    def routable(self) -> bool:
        return self.method in ROUTABLE

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        kwargs = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        return self.model(input_ids=input_ids, **kwargs).logits

    @contextmanager
    def routing(self, r: torch.Tensor | None) -> Iterator[None]:
        """Use gate matrix ``r`` ([num_layers, batch]) for forward passes inside the block; None = all on."""
        if r is not None and not self.routable:
            raise ValueError(f"{self.method} fine-tuning has no PEFT modules to route")
        with self.gates.routing(r):
            yield

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def num_total(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_trained(self, folder: str | Path) -> None:
        """Write the trained pieces (safetensors) and, for LoRA/Prompt, peft's own adapter folder."""
        from safetensors.torch import save_file

        from ..runs import writing  # a failed write (a full disk) is one line naming the file

        folder = Path(folder)
        with writing(folder):
            folder.mkdir(parents=True, exist_ok=True)
        state = {n: t.contiguous().cpu() for n, t in self.trainable_state().items()}
        tmp = folder / (WEIGHTS_FILE + ".tmp")
        with writing(folder / WEIGHTS_FILE):
            try:
                save_file(state, str(tmp))
                tmp.replace(folder / WEIGHTS_FILE)
            finally:
                tmp.unlink(missing_ok=True)  # a half-written file gives its space back
        meta = {"method": self.method, "config": asdict(self.config), "num_labels": self.num_labels}
        tmp = folder / (METHOD_FILE + ".tmp")
        with writing(folder / METHOD_FILE):
            try:
                tmp.write_text(json.dumps(meta, indent=2))
                tmp.replace(folder / METHOD_FILE)
            finally:
                tmp.unlink(missing_ok=True)
        peft_model = self.peft_model()
        if peft_model is not None:
            with writing(folder / "peft"):
                peft_model.save_pretrained(str(folder / "peft"))

    def load_trained(self, folder: str | Path) -> None:
        from safetensors.torch import load_file

        state = load_file(str(Path(folder) / WEIGHTS_FILE))
        missing = set(self.trainable_state()) - set(state)
        if missing:
            raise ValueError(f"{folder} lacks {len(missing)} trained tensors, e.g. {sorted(missing)[0]}")
        self.load_state_dict(state, strict=False)

    def peft_model(self):
        """The underlying ``peft.PeftModel`` for LoRA and Prompt, else None."""
        from peft import PeftModel

        inner = self.model.peft_model if isinstance(self.model, prompt.PromptModel) else self.model
        return inner if isinstance(inner, PeftModel) else None


def build_model(method: str, num_labels: int, model_name: str | None = None, seed: int = 0,
                **options: Any) -> RoutedClassifier:
    """Load the backbone and attach ``method`` (options go to its config, unknown ones are ignored)."""
    from ..backbone import load_classifier

    from ..errors import UserError

    try:
        config = method_config(method, **options)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    hf_model = load_classifier(model_name, num_labels, seed=seed)
    torch.manual_seed(seed)  # PEFT module init is seeded too
    try:
        return RoutedClassifier(hf_model, method, config)
    except ValueError as exc:  # no encoder layers, no module to attach to: the model does not fit the method
        raise UserError(f"model {model_name or 'default'!r} does not fit {method}: {exc}") from exc


def load_model(folder: str | Path, model_name: str | None = None) -> RoutedClassifier:
    """Rebuild a trained RoutedClassifier from a folder written by ``save_trained``."""
    meta = json.loads((Path(folder) / METHOD_FILE).read_text())
    model = build_model(meta["method"], meta["num_labels"], model_name, **meta["config"])
    model.load_trained(folder)
    return model


__all__ = ["METHODS", "ROUTABLE", "RoutedClassifier", "build_model", "load_model", "method_config", "training_defaults", "GateState"]
