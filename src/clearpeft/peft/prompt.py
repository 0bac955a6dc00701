"""Deep prompts (P-Tuning v2, Liu et al., 2022b) through ``peft`` prefix tuning, routed per layer and sample.

peft supplies the trainable prefix key/value vectors of every layer (``get_prompt``) and its save format;
we pass them to the backbone as its key/value cache. A forward pre-hook on every self-attention module
then builds that layer's own attention mask: the sample's padding mask for its tokens and ``log r[l, i]``
for the prefix positions, so r = 1 attends to the prompts as plain prefix tuning does, r = 0 masks them out
(the frozen layer), and a gate in between scales their attention weights by r before normalisation.

Position ids: with a cache the backbone would number the tokens from the prefix length on, so that even
with every gate at 0 the model would differ from the frozen one. We undo that shift (tokens keep
positions 0..T-1, as without prompts), which makes r = 0 exactly the frozen layer (docs/method.md).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .gates import GateState, encoder_layers


@dataclass
class PromptConfig:
    # What TrainConfig fills in when a run leaves them unset (lr: experiments/lr_sweep.py; γ: the reference code).
    training_defaults: ClassVar[dict] = {"lr": 3e-2, "gamma": 0.85}
    length: int = 20

    def validate(self) -> None:
        if self.length < 1:
            raise ValueError("prompt length must be >= 1")


class PromptRouter:
    """Per-forward state the hooks need: the padding mask of the current batch."""

    def __init__(self, gates: GateState, length: int):
        self.gates = gates
        self.length = length
        self.padding_mask: torch.Tensor | None = None  # [B, T], 1 = token

    def layer_mask(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """Additive mask [B, 1, 1, P + T] for layer ``layer``."""
        batch, tokens = hidden.shape[0], hidden.shape[1]
        dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) \
            else hidden.dtype
        neg = torch.finfo(dtype).min
        pad = self.padding_mask
        if pad is None:
            token_part = torch.zeros(batch, tokens, device=hidden.device, dtype=dtype)
        else:
            token_part = torch.zeros(pad.shape, device=hidden.device, dtype=dtype).masked_fill(pad == 0, neg)
        g = self.gates.column(layer, hidden)
        if g is None:
            prefix_part = torch.zeros(batch, self.length, device=hidden.device, dtype=dtype)
        else:
            g = g.view(batch, 1).to(torch.float32).expand(batch, self.length)
            prefix_part = torch.where(g > 0, torch.log(g.clamp_min(1e-30)), torch.full_like(g, neg)).to(dtype)
        return torch.cat([prefix_part, token_part], dim=1)[:, None, None, :]


def _attention_pre_hook(router: PromptRouter, layer: int):
    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        kwargs["attention_mask"] = router.layer_mask(layer, hidden)
        return args, kwargs

    return hook


def _no_position_shift(module, args, kwargs):
    for key in ("cache_length", "past_key_values_length"):
        if key in kwargs:
            kwargs[key] = 0
    return args, kwargs


class PromptModel(nn.Module):
    """Wraps the peft prefix-tuning model with the routed forward described above."""

    def __init__(self, peft_model: nn.Module, router: PromptRouter):
        super().__init__()
        self.peft_model = peft_model
        self.router = router
        classifier = peft_model.base_model
        encoder = getattr(classifier, classifier.base_model_prefix)
        # transformers 5 renamed the cache argument; older releases call it past_key_values.
        params = inspect.signature(encoder.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **kwargs):
        batch = input_ids.shape[0]
        self.router.padding_mask = attention_mask
        try:
            extra = {self._cache_kwarg: self.peft_model.get_prompt(batch_size=batch)}
            if token_type_ids is not None:
                extra["token_type_ids"] = token_type_ids
            return self.peft_model.base_model(input_ids=input_ids, attention_mask=attention_mask, **extra, **kwargs)
        finally:
            self.router.padding_mask = None


def attach(model: nn.Module, config: PromptConfig, gates: GateState) -> nn.Module:
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    config.validate()
    layers = encoder_layers(model)
    attentions = [getattr(getattr(block, "attention", None), "self", None) for block in layers]
    embeddings = getattr(getattr(model, model.base_model_prefix, None), "embeddings", None)
    encoder = getattr(model, model.base_model_prefix, None)
    # The prompts reach the layers as the encoder's key/value cache; DeBERTa, for one, takes none.
    params = set(inspect.signature(encoder.forward).parameters) if encoder is not None else set()
    takes_cache = bool({"cache", "past_key_values"} & params)
    if any(a is None for a in attentions) or embeddings is None or not takes_cache:
        raise ValueError(f"prompt tuning supports BERT/RoBERTa-style encoders, not {type(model).__name__}")
    peft_model = get_peft_model(
        model, PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=config.length)
    )
    router = PromptRouter(gates, config.length)
    for layer, attention in enumerate(attentions):
        attention.register_forward_pre_hook(_attention_pre_hook(router, layer), with_kwargs=True)
    embeddings.register_forward_pre_hook(_no_position_shift, with_kwargs=True)
    return PromptModel(peft_model, router)
