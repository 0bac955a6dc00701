"""One run's options, declared once: type, default, constraint and help of each field.

Every entry point builds its config through ``TrainConfig.from_mapping``: the CLI's flags and ``--config``
YAML, a grid cell (study/grid.py) and ``clearpeft.fit(**options)``. So ``lr: 1e-3``, which PyYAML reads as
text, means the same everywhere, and a wrong value gets the same one-line ``UserError`` everywhere, before
any data is loaded. The constraints are declared next to each field, as scikit-learn's
``_parameter_constraints`` are, and ``resolved()`` checks them after filling in the method's own defaults.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import typing
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, Callable

import numpy as np

from .errors import UserError
from .peft import METHODS, training_defaults
from .peft.adapter import AdapterConfig
from .peft.lora import LoRAConfig
from .peft.prompt import PromptConfig
from .routing import STRATEGIES

# --compile auto compiles a bf16 CPU run that plans more training batches than this: a compiled step saves
# about as much per batch as it takes to repay the compile time after about this many batches with a warm
# cache (benchmarks/README.md, "long_run.py"). Not measured on a GPU, so auto does not compile there.
COMPILE_BREAK_EVEN_BATCHES = 1500


@dataclass(frozen=True)
class Interval:
    """A numeric constraint: ``low`` and ``high`` (None: unbounded), each end closed or open."""

    low: float | None = None
    high: float | None = None
    closed: str = "both"  # both | left | right | neither

    def holds(self, value: float) -> bool:
        if isinstance(value, float) and math.isnan(value):
            return False
        left_ok = self.low is None or (value >= self.low if self.closed in ("both", "left") else value > self.low)
        right_ok = self.high is None or (value <= self.high if self.closed in ("both", "right") else value < self.high)
        return left_ok and right_ok

    def __str__(self) -> str:
        def shown(x):  # whole bounds exactly (a seed's 4294967295), others as %g (a rate's 0.9)
            return str(x) if isinstance(x, int) else f"{x:g}"

        if self.high is None:
            return f"at least {shown(self.low)}" if self.closed in ("both", "left") else \
                f"greater than {shown(self.low)}"
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        return f"in {left}{shown(self.low)}, {shown(self.high)}{right}"


AT_LEAST_1 = Interval(1)
NON_NEGATIVE = Interval(0)
POSITIVE = Interval(0, None, "neither")
UNIT = Interval(0.0, 1.0)
# Whole numbers go to torch and numpy as int64: beyond this they overflow there (after the data is loaded).
INT_LIMIT = 2**63 - 1
# torch.manual_seed takes the seed times 1009 plus the epoch (train.train_steps): it must stay in 64 bits.
SEEDS = Interval(0, 2**32 - 1)


# The longest file name (one path component, in bytes) the common file systems take.
NAME_MAX = 255


def _path_text(value: str) -> str:
    """Text that names a file or folder: the OS must be able to take it (no NUL byte, encodable, no name
    longer than NAME_MAX bytes: the OS would refuse it on first use, deep in a run)."""
    try:
        if "\x00" in value:
            raise ValueError("a NUL byte")
        encoded = os.fsencode(value)
    except (ValueError, UnicodeError) as exc:
        reason = "a NUL byte" if "\x00" in value else f"not encodable as a file name ({exc.__class__.__name__})"
        raise UserError(f"{value!r:.60} is no path: it holds {reason}") from None
    if any(len(part) > NAME_MAX for part in encoded.split(b"/")):
        raise UserError(f"{value!r:.60} is no path: it holds a name longer than {NAME_MAX} bytes")
    return value


def _dataset_name(value: str) -> str:
    """A registered data set, a local .csv/.tsv/.jsonl file (read later, with its own errors), or the API's
    in-memory data."""
    from .data.loaders import LOCAL_SUFFIXES, REGISTERED

    _path_text(value)
    key = value.strip().lower()
    if key in REGISTERED or key.endswith(LOCAL_SUFFIXES) or value.startswith("in-memory:"):
        return value
    raise UserError(f"unknown data set {value!r:.60}: use one of {', '.join(REGISTERED)} or a local file ending "
                    ".csv, .tsv or .jsonl")


def _noise_spec(value: str) -> str:
    from .noise import NoiseSpec

    NoiseSpec.parse(value)  # raises a UserError naming the problem
    return value


def option(default, help: str, constraint: Interval | tuple | Callable | None = None, per_method: bool = False):
    """A TrainConfig field: its default, its help line (`clearpeft train --help`), its constraint (an Interval,
    a tuple of choices, or a parser that raises UserError), and whether an unset value (None) takes the
    method's own default (clearpeft.peft.training_defaults)."""
    return field(default=default, metadata={"help": help, "constraint": constraint, "per_method": per_method})


@dataclass
class TrainConfig:
    """One run's options, the one source of their defaults, checks and help: the CLI's `train` flags, the YAML
    keys and the keywords of ``fit`` are made from these fields."""

    dataset: str = option("sst5", "sst5, banking77, or a local .csv/.tsv/.jsonl file", _dataset_name)
    data_dir: str | None = option(None, "folder with sst5/ and banking77/ (default: $CLEARPEFT_DATA, else the hub)",
                                  _path_text)
    text_column: str = option("text", "column (or JSON key) of the texts in a local file")
    label_column: str = option("label", "column (or JSON key) of the labels in a local file")
    test_file: str | None = option(None, "separate test file for a local data set; without it a seeded 20% "
                                         "per-class hold-out of the file is the test split", _path_text)
    model: str = option("default", "encoder: default (the packaged all-MiniLM-L6-v2), or a hub name or local folder "
                                   "of a BERT, RoBERTa, DeBERTa, ...", _path_text)
    peft: str = option("lora", "PEFT method (full: full fine-tuning, the baseline)", tuple(METHODS))
    routing: str = option("clean-auto", "clean-auto (CleaR that stands down, as plain PEFT, while the losses show no "
                                        "mode of wrong labels: safe on clean data) | clean (CleaR exactly as the "
                                        "paper has it) | none (plain PEFT) | deterministic | random | noisy",
                          STRATEGIES)
    noise: str = option("clean", "clean, symmetric:R, symmetric-exclusive:R, asymmetric:R or instance:R "
                                 "(training split only)", _noise_spec)
    epochs: int = option(10, "training epochs", AT_LEAST_1)
    warmup_epochs: int = option(3, "epochs before routing by clean probability starts (every module on w.p. γ)",
                                NON_NEGATIVE)
    batch_size: int = option(32, "training batch size (global, over all processes)", AT_LEAST_1)
    # On CPU, 256 pads more and ran slower per sample than 64 (benchmarks/README.md).
    eval_batch_size: int = option(64, "batch size of the no-gradient passes (per-sample pass, evaluation)",
                                  AT_LEAST_1)
    lr: float | None = option(None, "learning rate", POSITIVE, per_method=True)
    weight_decay: float = option(0.01, "AdamW weight decay", NON_NEGATIVE)
    warmup_ratio: float = option(0.06, "share of the steps of linear learning-rate warm-up (--lr-schedule linear)",
                                 UNIT)
    lr_schedule: str = option("linear", "linear: warm-up, then decay to 0 | constant: the reference code's (no "
                                        "scheduler, no warm-up)", ("linear", "constant"))
    gamma: float | None = option(None, "upper bound γ of the gate probability", UNIT, per_method=True)
    reg_weight: float = option(1.0, "λ of the consistency regularization; 0 turns it off", NON_NEGATIVE)
    ensemble: int | None = option(None, "N routed passes averaged into f_ens", AT_LEAST_1, per_method=True)
    temperature: float | None = option(None, "temperature T of the consistency loss", POSITIVE, per_method=True)
    loss_ema: float | None = option(None, "weight of the previous epoch's loss in the loss EMA (0 = off)", UNIT,
                                    per_method=True)
    eval_passes: int = option(1, "routed test passes averaged for test_acc_routed (0: none); test_acc, every "
                                 "module on, is the headline", NON_NEGATIVE)
    estimate_from: str = option("pass", "pass: p and f_ens from a no-gradient pass after each epoch (faithful); "
                                        "train: from the losses and logits of the epoch's own training steps (no "
                                        "extra pass)", ("pass", "train"))
    pass_gates: str = option("random", "gates of that pass: random = Bernoulli(γ) for every sample, independent of "
                                       "p (reference code); routed = drawn as the epoch's steps (by p), which lets "
                                       "p feed on itself", ("random", "routed"))
    no_dynamics: bool = option(False, "make the per-sample pass only where CleaR uses it (before routed epochs; "
                                      "never for plain PEFT): faster, without the per-epoch learning, memorization "
                                      "and detection metrics")
    gate_weighted_loss: bool = option(False, "diagnosis, not part of CleaR: weight each sample's loss by the share "
                                             "of its layers routed on, so a sample routed off trains neither its "
                                             "modules nor the never-routed head")
    max_length: int = option(128, "tokens per text (longer ones are cut)", AT_LEAST_1)
    max_train_samples: int | None = option(None, "a seeded subset of this many training samples", AT_LEAST_1)
    max_eval_samples: int | None = option(None, "a seeded subset of this many test (and dev) samples", AT_LEAST_1)
    dev_holdout: float = option(0.0, "share of train held out (per class, seeded) as dev when the data set has "
                                     "no dev split, e.g. 0.1 for banking77", Interval(0.0, 0.9))
    dev_labels: str = option("noisy", "labels of the dev split under --noise: noisy (the same injected noise as the "
                                      "training labels, as a user's dev data would be) or clean", ("noisy", "clean"))
    keep: str = option("best-dev", "weights the run hands over: best-dev (the epoch of the best dev accuracy; the "
                                   "last epoch where there is no dev split) or last", ("best-dev", "last"))
    refit: str = option("none", "after the run, train a fresh model on the labels it trusts: none | drop (leave "
                                "out the samples it flags, --refit-flag) | relabel (flagged samples whose predicted label is "
                                "confident enough take it, the others are left out); a class keeps its best-scored "
                                "samples when the flag would empty it", ("none", "drop", "relabel"))
    refit_flag: str = option("clean-prob", "samples --refit leaves out or relabels: clean-prob (clean probability "
                                           "p < 0.5; chosen on dev) or report (the report's is_label_issue: p < 0.5 or "
                                           "confident learning)", ("clean-prob", "report"))
    refit_routing: str = option("none", "routing of the second stage of --refit (none: plain PEFT)", STRATEGIES)
    refit_epochs: int | None = option(None, "epochs of the second stage of --refit (default: about as many optimizer "
                                            "steps as the first stage, at most 4x its epochs)", AT_LEAST_1)
    relabel_threshold: float = option(0.9, "--refit relabel: the predicted label's probability that relabels a "
                                           "flagged sample", UNIT)
    # The method options take their defaults from the method configs (peft/), where they are stated.
    lora_rank: int = option(LoRAConfig.rank, "LoRA rank r", AT_LEAST_1)
    lora_alpha: int = option(LoRAConfig.alpha, "LoRA scaling α", POSITIVE)
    lora_dropout: float = option(LoRAConfig.dropout, "LoRA dropout", Interval(0.0, 1.0, "left"))
    prompt_length: int = option(PromptConfig.length, "prefix-tuning virtual tokens per layer", AT_LEAST_1)
    adapter_size: int = option(AdapterConfig.bottleneck, "Houlsby adapter bottleneck size", AT_LEAST_1)
    bf16: bool = option(False, "bf16 autocast (a GPU, or a CPU with native bf16: AVX-512 BF16 or AMX; elsewhere "
                               "it is far slower than fp32, and a run says so)")
    compile: str = option("auto", "torch.compile the encoder (training steps, no-gradient passes, evaluation): on "
                                  "| off | auto = on a CPU for bf16 runs of more than "
                                  f"{COMPILE_BREAK_EVEN_BATCHES} planned training batches, where the faster steps "
                                  "repay the compile time (benchmarks/long_run.py); off on a GPU (not measured "
                                  "there yet)", ("auto", "on", "off"))
    seed: int = option(0, "seed of the subset, the noise, the initialization, the order and every gate draw",
                       SEEDS)
    log_with: str = option("none", "trackers of Accelerate", ("none", "tensorboard", "wandb", "all"))
    out: str = option("runs/latest", "run folder", _path_text)

    @classmethod
    def from_mapping(cls, values: dict, where: str = "") -> "TrainConfig":
        """A config from option: value pairs (keys with ``-`` or ``_``), each coerced to its field's type and
        checked against its constraint. ``where`` (e.g. "config c.yaml") starts every error message."""
        known = {f.name: f for f in fields(cls)}
        out = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise UserError(f"{_at(where)}unknown option {key!r} (see `clearpeft train --help`)")
            out[name] = _coerce(known[name], value, where)
        config = cls(**out)
        for name in out:
            _check(known[name], getattr(config, name), where)
        return config

    def resolved(self) -> "TrainConfig":
        """A copy with the per-method defaults filled in; checks every field and the combinations (UserError)."""
        by_name = {f.name: f for f in fields(self)}
        _check(by_name["peft"], self.peft)
        c = replace(self)
        for name, value in training_defaults(c.peft).items():
            if getattr(c, name) is None:
                setattr(c, name, value)
        for f in fields(c):
            _check(f, _coerce(f, getattr(c, f.name)))
        if c.peft == "full" and c.routing != "none":
            raise UserError("full fine-tuning has no PEFT modules to route: use --routing none")
        return c

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def flag(name: str) -> str:
    """The CLI flag of a field: lora_rank -> --lora-rank."""
    return "--" + name.replace("_", "-")


def field_kinds(f) -> tuple[type, ...]:
    """The types a field takes (None among them for an optional one)."""
    hint = _type_hints()[f.name]
    return typing.get_args(hint) or (hint,)


@functools.cache
def _type_hints() -> dict:
    # Evaluated once: get_type_hints compiles every annotation on each call, and every field of every config
    # checked asks for it (a grid file of hundreds of cells took seconds per hundred).
    return typing.get_type_hints(TrainConfig)


def _at(where: str) -> str:
    return f"{where}: " if where else ""


def _coerce(f, value: Any, where: str = "") -> Any:
    """``value`` as field ``f`` takes it. Number-like text is a number where one is wanted (YAML reads
    ``1e-3`` as text); an integral float is an int where one is wanted (``epochs: 10.0``); numpy's numbers count
    as numbers (a notebook's ``np.int64(3)``); nothing else is converted. Numbers are finite, whole numbers fit
    in 64 bits."""
    kinds = field_kinds(f)
    if value is None and type(None) in kinds:
        return None
    if bool in kinds:
        if isinstance(value, (bool, np.bool_)):  # numpy's bool too
            return bool(value)
    elif isinstance(value, (bool, np.bool_)):
        pass  # True is not a number of epochs
    elif int in kinds:
        number = _number(value)
        if isinstance(number, int) and abs(number) <= INT_LIMIT:
            return number
        if isinstance(number, float) and math.isfinite(number) and number.is_integer() and abs(number) <= INT_LIMIT:
            return int(number)
    elif float in kinds:
        number = _finite(_number(value))
        if number is not None:
            return number
    elif isinstance(value, str):
        return value
    wanted = {bool: "true or false", int: "an integer", float: "a number", str: "text"}
    what = " or ".join(wanted[k] for k in kinds if k is not type(None))
    number = _number(value) if int in kinds or float in kinds else None
    if isinstance(number, int) and int in kinds and abs(number) > INT_LIMIT:
        what = f"an integer of at most {INT_LIMIT}"
    elif number is not None and _finite(number) is None:
        what = "a finite number"
    raise UserError(f"{_at(where)}{flag(f.name)} must be {what}, got {value!r:.60}")


def _finite(number: float | int | None) -> float | None:
    """``number`` as a finite float, else None (NaN, infinities, and ints too large for a float)."""
    try:
        number = None if number is None else float(number)
    except OverflowError:
        return None
    return number if number is not None and math.isfinite(number) else None


def _number(value: Any) -> float | int | None:
    """``value`` as a Python int or float, or None when it is no number. Whole-number text stays exact
    (``"9007199254740993"`` does not go through a float)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # a Fraction too large for a float
            return math.inf
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            return float(text)
        except (ValueError, OverflowError):
            return None
    return None


def _check(f, value: Any, where: str = "") -> None:
    """Raise a UserError naming the option, the value and what is allowed when ``value`` breaks f's constraint."""
    constraint = f.metadata["constraint"]
    if value is None or constraint is None:
        return
    if isinstance(constraint, Interval):
        if not constraint.holds(value):
            raise UserError(f"{_at(where)}{flag(f.name)} must be {constraint}, got {value!r}")
    elif isinstance(constraint, tuple):
        if value not in constraint:
            raise UserError(f"{_at(where)}{flag(f.name)} must be {', '.join(constraint[:-1])} or {constraint[-1]}, "
                            f"got {value!r}")
    else:
        try:
            constraint(value)
        except UserError as exc:
            raise UserError(f"{_at(where)}{flag(f.name)}: {exc}") from None


def config_defaults() -> dict:
    """TrainConfig's defaults: what a run made before a field existed is taken to have used (runs.config_diff)."""
    return {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}


__all__ = ["TrainConfig", "Interval", "config_defaults", "flag", "field_kinds", "COMPILE_BREAK_EVEN_BATCHES"]
