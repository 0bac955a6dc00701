"""The CleaR training loop (SPEC.md steps 1-5) on Hugging Face Accelerate.

One epoch, in order:
  1. training steps: gates r ~ strategy(p) per layer and sample (Bernoulli(γ) during warm-up, none for plain
     PEFT, nor for clean-auto until a fit shows a noisy mode); loss = CE(f(x; δ_r), ỹ) +
     λ·CE_soft(f(x; δ_r)/T, f_ens(x)/T) once f_ens exists;
  2. the per-sample pass over the training set (eval mode, no gradient, N routed passes): per-sample loss,
     f_ens = mean logits, predictions for the training dynamics (--no-dynamics: only where CleaR uses it);
  3. clean probability p from those losses (EMA, GMM), used from the first epoch after warm-up on;
  4. evaluation on test (and dev): all modules on, and the mean of routed passes;
  5. one line of metrics.jsonl and an atomic checkpoint.
Step 2 at the end of epoch e is the estimate "at the start of epoch e+1" of SPEC.md: the weights are the same.
Every random draw of an epoch (shuffle, dropout, gates) is seeded from (seed, epoch), so a resumed run
continues exactly.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import runs
from .errors import UserError
from .metrics import accuracy, detection_quality, summarize_curve, training_dynamics
from .routing import DEFAULT_GAMMA, STRATEGIES, CleanProbability, gates_from_draws

# Learning rates per method (see README, "Learning rates"), γ from the reference code (routing.py),
# consistency temperature and ensemble size and loss EMA as the reference code.
DEFAULT_LR = {"lora": 3e-3, "adapter": 1e-3, "bitfit": 3e-3, "prompt": 3e-2, "full": 1e-4}  # experiments/lr_sweep.py
DEFAULT_TEMPERATURE = {"adapter": 0.5}
DEFAULT_ENSEMBLE = {"lora": 2}
DEFAULT_LOSS_EMA = {"adapter": 0.9}
# Fields of a metrics.jsonl line that differ between identical runs (wall-clock times).
TIMING_FIELDS = frozenset({"epoch_seconds", "step_seconds", "pass_seconds", "eval_seconds", "eval_routed_seconds"})
# Metrics of the per-sample pass; null in the epochs that --no-dynamics skips it.
DYNAMICS_FIELDS = ("clean_learning", "noisy_memorization", "noisy_correction", "detect_precision", "detect_recall",
                   "detect_auc")
# What each epoch's clean-probability fit says about the noise (routing.CleanProbability.fit_stats).
FIT_FIELDS = ("estimated_noise_rate", "flagged_rate", "loss_separation", "bic_gain", "noisy_component_loss")


@dataclass
class TrainConfig:
    dataset: str = "sst5"
    data_dir: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    test_file: str | None = None
    model: str = "default"
    peft: str = "lora"
    routing: str = "clean"
    noise: str = "clean"
    epochs: int = 10
    warmup_epochs: int = 3
    batch_size: int = 32
    eval_batch_size: int = 64  # no-gradient passes: on CPU, 256 pads more and ran 1.6x slower per sample
    lr: float | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    lr_schedule: str = "linear"  # linear: warm-up then decay to 0; constant: the reference code's (no scheduler)
    gamma: float | None = None
    reg_weight: float = 1.0
    ensemble: int | None = None
    temperature: float | None = None
    loss_ema: float | None = None
    eval_passes: int = 1  # routed test passes (0: none); all-on test_acc is the reported mode
    estimate_from: str = "pass"  # pass: the per-epoch no-gradient pass; train: losses/logits of the epoch's steps
    pass_gates: str = "random"  # gates of that pass: random = Bernoulli(γ) for all (reference); routed = as the steps
    no_dynamics: bool = False  # skip the pass where CleaR does not use it (no per-epoch learning/memorization)
    gate_weighted_loss: bool = False  # diagnosis, not CleaR: a sample's loss counts by its share of layers routed on
    max_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    dev_holdout: float = 0.0  # share of train held out as dev when the data set has no dev split (banking77)
    lora_rank: int = 4
    lora_alpha: int = 8
    lora_dropout: float = 0.0
    prompt_length: int = 20
    adapter_size: int = 16
    bf16: bool = False
    seed: int = 0
    log_with: str = "none"
    out: str = "runs/latest"

    def resolved(self) -> "TrainConfig":
        """A copy with the per-method defaults filled in; validates every field (UserError)."""
        from .peft import METHODS

        if self.peft not in METHODS:
            raise UserError(f"unknown PEFT method {self.peft!r}: choose one of {', '.join(METHODS)}")
        if self.routing not in STRATEGIES:
            raise UserError(f"unknown routing strategy {self.routing!r}: choose one of {', '.join(STRATEGIES)}")
        if self.peft == "full" and self.routing != "none":
            raise UserError("full fine-tuning has no PEFT modules to route: use --routing none")
        c = TrainConfig(**asdict(self))
        c.lr = DEFAULT_LR[c.peft] if c.lr is None else c.lr
        c.gamma = DEFAULT_GAMMA.get(c.peft, 1.0) if c.gamma is None else c.gamma
        c.temperature = DEFAULT_TEMPERATURE.get(c.peft, 1.0) if c.temperature is None else c.temperature
        c.ensemble = DEFAULT_ENSEMBLE.get(c.peft, 1) if c.ensemble is None else c.ensemble
        if c.loss_ema is None:
            c.loss_ema = DEFAULT_LOSS_EMA.get(c.peft, 0.0)
        for name in ("epochs", "batch_size", "eval_batch_size", "ensemble", "max_length",
                     "lora_rank", "prompt_length", "adapter_size"):
            if getattr(c, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(c, name)}")
        if c.eval_passes < 0:
            raise UserError(f"--eval-passes must be at least 0, got {c.eval_passes}")
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(c, name) is not None and getattr(c, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        checks = [("gamma", 0.0, 1.0), ("loss_ema", 0.0, 1.0), ("warmup_ratio", 0.0, 1.0),
                  ("dev_holdout", 0.0, 0.9), ("lora_dropout", 0.0, 0.999)]
        for name, low, high in checks:
            value = getattr(c, name)
            if not (low <= value <= high) or math.isnan(value):
                raise UserError(f"--{name.replace('_', '-')} must lie in [{low}, {high}], got {value}")
        if not (c.lr > 0) or not (c.temperature > 0):
            raise UserError("--lr and --temperature must be positive")
        if c.reg_weight < 0 or c.weight_decay < 0 or c.warmup_epochs < 0:
            raise UserError("--reg-weight, --weight-decay and --warmup-epochs must not be negative")
        if c.estimate_from not in ("pass", "train"):
            raise UserError(f"--estimate-from must be pass or train, got {c.estimate_from!r}")
        if c.lr_schedule not in ("linear", "constant"):
            raise UserError(f"--lr-schedule must be linear or constant, got {c.lr_schedule!r}")
        if c.pass_gates not in ("random", "routed"):
            raise UserError(f"--pass-gates must be random or routed, got {c.pass_gates!r}")
        if c.log_with not in ("none", "tensorboard", "wandb", "all"):
            raise UserError("--log-with must be none, tensorboard, wandb or all")
        return c

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def config_defaults() -> dict:
    """TrainConfig's defaults: what a run made before a field existed is taken to have used (runs.config_diff)."""
    return {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}


@dataclass
class Prepared:
    """Everything a run needs that comes from the data: splits, noisy labels, encodings."""

    bundle: object
    noisy: object
    train: object  # EncodedSplit with the noisy labels
    test: object
    dev: object | None
    pad_id: int
    texts: list[str] = field(repr=False, default_factory=list)


def prepare_data(cfg: TrainConfig, tokenizer) -> Prepared:
    from .backbone import embed_texts
    from .data import load_data
    from .data.batching import encode
    from .noise import NoiseSpec, apply_noise

    spec = NoiseSpec.parse(cfg.noise)
    bundle = load_data(cfg.dataset, cfg.data_dir, text_column=cfg.text_column, label_column=cfg.label_column,
                       test_file=cfg.test_file)
    if bundle.dev is None and cfg.dev_holdout > 0:
        bundle = bundle.with_holdout_dev(cfg.dev_holdout, cfg.seed)
    bundle.train = bundle.train.subset(cfg.max_train_samples, cfg.seed)
    bundle.test = bundle.test.subset(cfg.max_eval_samples, cfg.seed)
    if bundle.dev is not None:
        bundle.dev = bundle.dev.subset(cfg.max_eval_samples, cfg.seed)
    features = embed_texts(bundle.train.texts) if spec.kind == "instance" else None
    noisy = apply_noise(bundle.train.labels, bundle.num_labels, spec, cfg.seed, features=features)
    train = encode(tokenizer, bundle.train.texts, noisy.noisy, cfg.max_length)
    test = encode(tokenizer, bundle.test.texts, bundle.test.labels, cfg.max_length)
    dev = encode(tokenizer, bundle.dev.texts, bundle.dev.labels, cfg.max_length) if bundle.dev is not None else None
    return Prepared(bundle, noisy, train, test, dev, tokenizer.pad_token_id or 0, list(bundle.train.texts))


def _generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """The random stream of one (seed, epoch, purpose): runs and resumed runs draw the same numbers."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def gather_by_index(accelerator, n: int, index: np.ndarray, *columns: np.ndarray) -> list[np.ndarray]:
    """Put every process's rows (sample index -> values) together into full arrays of n rows, on every process.
    Rows a process did not see stay 0; a sample seen twice (Accelerate repeats a few to even out the last
    batch) keeps one of its values."""
    parts = [(index, columns)]
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        parts = gather_object(parts)
    out = [np.zeros((n,) + c.shape[1:], dtype=c.dtype) for c in columns]
    for rows, values in parts:
        for full, part in zip(out, values):
            full[rows] = part
    return out


@torch.no_grad()
def routed_logits(core, split, batch_size: int, pad_id: int, passes: int, gates_for, accelerator):
    """Mean logits over ``passes`` forward passes (eval mode) and the mean per-sample CE against the split's
    labels; ``gates_for(index, pass)`` gives the gate matrix of a batch, or None for all modules on.
    With several processes each takes every num_processes-th batch and the results are gathered by index,
    so every process returns the same full arrays."""
    from .data.batching import loader

    was_training = core.training
    core.eval()
    world, rank = accelerator.num_processes, accelerator.process_index
    rows, logit_rows, loss_rows = [np.zeros(0, dtype=np.int64)], [np.zeros((0, core.num_labels), np.float32)], \
        [np.zeros(0, np.float32)]
    for b, batch in enumerate(loader(split, batch_size, shuffle=False, pad_id=pad_id)):
        if b % world != rank:
            continue
        index = batch["index"]
        input_ids, mask = batch["input_ids"].to(accelerator.device), batch["attention_mask"].to(accelerator.device)
        labels = batch["labels"].to(accelerator.device)
        logits_sum, loss_sum = 0.0, 0.0
        for k in range(passes):
            with core.routing(gates_for(index, k)), accelerator.autocast():
                logits = core(input_ids, mask).float()
            logits_sum = logits_sum + logits
            loss_sum = loss_sum + F.cross_entropy(logits, labels, reduction="none")
        rows.append(index.numpy())
        logit_rows.append((logits_sum / passes).cpu().numpy())
        loss_rows.append((loss_sum / passes).cpu().numpy())
    core.train(was_training)
    return tuple(gather_by_index(accelerator, len(split), np.concatenate(rows), np.concatenate(logit_rows),
                                 np.concatenate(loss_rows)))


def soft_cross_entropy(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """-Σ_c softmax(teacher/T)_c · log softmax(logits/T)_c per sample, the teacher detached."""
    target = F.softmax(teacher_logits.detach() / temperature, dim=-1)
    return -(target * F.log_softmax(logits / temperature, dim=-1)).sum(-1)


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("clearpeft", "torch", "transformers", "peft", "accelerate", "scikit-learn", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
          log=print) -> dict:
    """Train one run into ``cfg.out``; returns the summary (also written to summary.json)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration
    from transformers import get_constant_schedule, get_linear_schedule_with_warmup

    from .backbone import encoder_config, load_tokenizer
    from .data.batching import loader
    from .peft import build_model

    cfg = cfg.resolved()
    if resume and overwrite:
        raise UserError("--resume continues a run and --overwrite replaces it: give one of them")
    if cfg.routing != "none" and cfg.warmup_epochs >= cfg.epochs:
        log(f"warning: --warmup-epochs {cfg.warmup_epochs} >= --epochs {cfg.epochs}: CleaR will never route "
            "by clean probability (every epoch is warm-up)")
    config = asdict(cfg)
    # One process per device under `accelerate launch` / torchrun. split_batches: --batch-size stays the
    # global batch (each process takes its share), so a run means the same on any number of processes.
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision="bf16" if cfg.bf16 else "no",
        log_with=None if cfg.log_with == "none" else cfg.log_with,
        project_config=ProjectConfiguration(project_dir=str(cfg.out), logging_dir=str(Path(cfg.out) / "logs")),
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    if cfg.batch_size % world:
        raise UserError(f"--batch-size {cfg.batch_size} must be divisible by the {world} processes")
    if not main:  # only the main process writes the run folder and talks to the user
        progress, log = False, (lambda *args, **kwargs: None)
    out = runs.check_run_dir(cfg.out, config, resume=resume, overwrite=overwrite, defaults=config_defaults())
    encoder_config(cfg.model)  # bad model, data or noise fail here, before anything is written
    tokenizer = load_tokenizer(cfg.model)
    data = prepare_data(cfg, tokenizer)
    model = build_model(cfg.peft, data.bundle.num_labels, cfg.model, seed=cfg.seed, rank=cfg.lora_rank,
                        alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, length=cfg.prompt_length,
                        bottleneck=cfg.adapter_size)
    accelerator.wait_for_everyone()  # every process has checked the folder before the main one touches it
    if main:
        runs.open_run_dir(out, overwrite=overwrite and not resume)
    n_train, num_labels = len(data.train), data.bundle.num_labels
    if main and not (out / runs.CONFIG).exists():
        runs.atomic_write_text(out / "noisy_labels.csv", noisy_labels_csv(data))
        runs.atomic_write_json(out / runs.CONFIG, {**config, "realized_noise_rate": data.noisy.realized_rate,
                                                   "label_names": list(data.bundle.label_names),
                                                   "versions": library_versions()})
    accelerator.wait_for_everyone()

    def status(epoch: int, phase: str) -> None:
        if main:
            write_status(out, epoch, phase)

    core = model
    routed = cfg.routing != "none"
    train_loader = loader(data.train, cfg.batch_size, shuffle=True, pad_id=data.pad_id, seed=cfg.seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * len(train_loader)
    scheduler = get_constant_schedule(optimizer) if cfg.lr_schedule == "constant" else \
        get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    _register_trainable_only(accelerator)
    if cfg.log_with != "none":
        accelerator.init_trackers("clearpeft", config={k: v for k, v in config.items() if v is not None})

    estimator = CleanProbability(ema=cfg.loss_ema or None, seed=cfg.seed)
    p = np.ones(n_train)                     # clean probability in use (1 until warm-up ends)
    ens_logits: np.ndarray | None = None      # f_ens, stored per sample
    start_epoch, train_seconds = 0, 0.0
    if resume:
        restored = load_latest_checkpoint(out, accelerator, log)
        if restored is not None:
            start_epoch, p, ens_logits, estimator.smoothed, train_seconds = restored
    history = [m for m in runs.read_jsonl(out / runs.METRICS) if m["epoch"] < start_epoch]
    accelerator.wait_for_everyone()
    if main:
        runs.atomic_write_text(out / runs.METRICS, "".join(json.dumps(m) + "\n" for m in history))

    true_labels, given = data.bundle.train.labels, data.noisy.noisy
    guarded = cfg.routing == "clean-auto"
    # clean-auto's decision for the coming epoch, made at the end of the last (kept in metrics.jsonl, so a resumed
    # run picks it up): it trains as plain PEFT until the losses show a separate noisy mode.
    stood_down = bool(history[-1].get("routing_stood_down", True)) if guarded and history else guarded
    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        status(epoch, "train")
        torch.manual_seed(cfg.seed * 1009 + epoch + 100_003 * rank)  # dropout
        train_loader.set_epoch(epoch)  # Accelerate's loader passes it on to our length-bucket sampler
        # Uniform draws per sample (and layer, and pass), the same on every process: gates do not depend on
        # the batch or process a sample lands in.
        step_draws = torch.rand((n_train, core.num_layers), generator=_generator(cfg.seed, epoch, 0))
        after_warmup = routed and epoch >= cfg.warmup_epochs
        strategy = cfg.routing if after_warmup else "random"   # warm-up: every module on w.p. γ
        plain_epoch = not routed or (guarded and (stood_down or not after_warmup))
        p_tensor = torch.as_tensor(p, dtype=torch.float32)
        teacher = torch.as_tensor(ens_logits) if after_warmup and not plain_epoch and cfg.reg_weight > 0 \
            and ens_logits is not None else None
        gates_for = (lambda index: None) if plain_epoch else \
            (lambda index: gates_from_draws(strategy, p_tensor[index], cfg.gamma, step_draws[index]))
        bar = _progress(progress, len(train_loader), f"epoch {epoch + 1}/{cfg.epochs}")
        steps = train_steps(model, core, train_loader, optimizer, scheduler, accelerator, gates_for, teacher, cfg,
                            n_train, bar, weight_by_gates=cfg.gate_weighted_loss and after_warmup)
        step_seconds = time.perf_counter() - started

        # Per-sample pass: losses -> p, mean logits -> f_ens, predictions -> dynamics. Its gates are Bernoulli(γ)
        # for every sample, whatever p is, as in the reference code (its pass runs with routing by p switched
        # off). Gating the pass by p (--pass-gates routed) measures a routed-off sample without its modules, so
        # its loss stays high and its p low: the estimate feeds on itself.
        next_after_warmup = routed and epoch + 1 >= cfg.warmup_epochs
        passes = cfg.ensemble if routed else 1
        pass_draws = torch.rand((passes, n_train, core.num_layers), generator=_generator(cfg.seed, epoch, 1))
        pass_strategy = strategy if cfg.pass_gates == "routed" else "random"

        def train_gates(index, k):
            return gates_from_draws(pass_strategy, p_tensor[index], cfg.gamma, pass_draws[k, index]) \
                if routed else None

        # CleaR uses the pass before every routed epoch (the adapter's loss EMA starts with the first of them, as
        # in the reference code); the other passes only measure the training dynamics (for plain PEFT too),
        # which --no-dynamics skips.
        used = next_after_warmup and epoch + 1 < cfg.epochs
        pass_started = time.perf_counter()
        status(epoch, "pass")
        row = {"epoch": epoch, "train_loss": steps["loss"], "train_acc_given": steps["accuracy"]}
        if cfg.estimate_from == "train":  # no extra pass: what the steps saw (train mode, mid-epoch weights)
            ens, losses = steps["logits"], steps["losses"]
        elif used or not cfg.no_dynamics:
            ens, losses = routed_logits(core, data.train, cfg.eval_batch_size, data.pad_id, passes,
                                        train_gates, accelerator)
        else:
            ens = losses = None
        if losses is not None:
            estimate = estimator.fit(losses, smooth=next_after_warmup)
            if world > 1:  # every process must route by the same p: the losses were gathered, the GMM is seeded
                from accelerate.utils import gather_object

                if len(set(gather_object([float(np.sum(estimate))]))) != 1:
                    raise RuntimeError("clean probabilities differ between processes")
            # clean-auto: no separate high-loss mode means no evidence of noise, so the next epoch is plain PEFT.
            stood_down = guarded and not estimator.separated()
            if next_after_warmup:
                p, ens_logits = estimate, ens
            row.update(training_dynamics(ens.argmax(-1), true_labels, given))
            row.update(detection_quality(estimate, data.noisy.corrupted))
            row.update({k: estimator.fit_stats.get(k) for k in FIT_FIELDS})
            row["clean_prob_fallback"] = estimator.fallback
            row["routing_stood_down"] = stood_down if guarded else None
        else:
            row.update(dict.fromkeys(DYNAMICS_FIELDS + FIT_FIELDS + ("clean_prob_fallback",)))
            row["routing_stood_down"] = stood_down if guarded else None  # no new fit: the decision stands
        pass_seconds = time.perf_counter() - pass_started
        corrupted = data.noisy.corrupted
        gate_mean = steps["gate_mean"]
        row["gate_mean_clean"] = float(gate_mean[~corrupted].mean()) if routed and (~corrupted).any() else None
        row["gate_mean_corrupted"] = float(gate_mean[corrupted].mean()) if routed and corrupted.any() else None
        row["routing_active"] = bool(after_warmup and not plain_epoch)
        eval_started = time.perf_counter()
        status(epoch, "eval")
        row.update(evaluate(core, data, cfg, epoch, accelerator))
        row["step_seconds"], row["pass_seconds"] = step_seconds, pass_seconds
        row["eval_seconds"] = time.perf_counter() - eval_started
        row["epoch_seconds"] = time.perf_counter() - started
        train_seconds += row["epoch_seconds"]
        history.append(row)
        # metrics line first, then the checkpoint: a crash in between redoes this epoch on resume.
        if main:
            with open(out / runs.METRICS, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
        if cfg.log_with != "none":
            accelerator.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=epoch)
        status(epoch, "checkpoint")
        save_checkpoint(out, accelerator, epoch, p, ens_logits, estimator.smoothed, train_seconds)
        if progress:
            dynamics = "" if row["detect_auc"] is None else (
                f"  clean-learn {row['clean_learning']:.3f}  memorize {row['noisy_memorization']:.3f}"
                f"  AUC {row['detect_auc']:.3f}  est. noise {row['estimated_noise_rate']:.3f}"
                + ("  (routing stood down)" if row["routing_stood_down"] else ""))
            routed_acc = "" if row["test_acc_routed"] is None else f" (routed {row['test_acc_routed']:.4f})"
            log(f"epoch {epoch + 1}: test {row['test_acc']:.4f}{routed_acc}{dynamics}  {row['epoch_seconds']:.0f}s")

    if cfg.log_with != "none":
        accelerator.end_training()
    # The review list comes from the final model with every module on, as a user would deploy it.
    final_logits, final_losses = routed_logits(core, data.train, cfg.eval_batch_size, data.pad_id, 1,
                                               lambda i, k: None, accelerator)
    summary = summarize(cfg, data, history, core, train_seconds)
    if main:
        core.save_trained(out / "weights")
        final_p = CleanProbability(seed=cfg.seed).fit(final_losses)
        runs.atomic_write_text(out / "clean_probs.csv", clean_probs_csv(data, final_p, final_logits.argmax(-1)))
        runs.atomic_write_json(out / runs.SUMMARY, summary)
    status(cfg.epochs - 1, "done")
    return summary


def train_steps(model, core, train_loader, optimizer, scheduler, accelerator, gates_for, teacher, cfg: TrainConfig,
                n_train: int, bar, weight_by_gates: bool = False) -> dict:
    """One epoch of gated training steps (SPEC.md steps 3-5). ``gates_for(index)`` draws the gate matrix of a
    batch (None: plain PEFT); ``teacher`` holds f_ens per sample once the consistency loss is on;
    ``weight_by_gates`` is the --gate-weighted-loss diagnosis."""
    model.train()
    # Per sample, at its step of this epoch: share of layers routed on; CE and logits (--estimate-from train).
    rows, gate_rows, loss_rows, logit_rows = [], [], [], []
    seen = correct = 0
    loss_sum = 0.0
    started = time.perf_counter()
    for batch in train_loader:
        index = batch["index"].cpu()
        r = gates_for(index)
        with core.routing(r):
            logits = model(batch["input_ids"], batch["attention_mask"]).float()
        per_sample = F.cross_entropy(logits, batch["labels"], reduction="none")
        rows.append(index.numpy())
        gate_rows.append(r.mean(0).numpy() if r is not None else np.ones(len(index)))  # None: every module on
        loss_rows.append(per_sample.detach().cpu().numpy())
        logit_rows.append(logits.detach().cpu().numpy())
        consistency = soft_cross_entropy(logits, teacher[index].to(logits.device), cfg.temperature) \
            if teacher is not None else None
        if weight_by_gates and r is not None:
            # The classifier head is never routed: a sample whose modules are off still trains it, on frozen
            # features. Weighting by the share of routed layers tests whether that is what costs accuracy.
            weight = r.mean(0).to(per_sample.device)
            loss_i = per_sample if consistency is None else per_sample + cfg.reg_weight * consistency
            loss = (weight * loss_i).sum() / weight.sum().clamp_min(1e-8)
        else:
            loss = per_sample.mean()
            if consistency is not None:
                loss = loss + cfg.reg_weight * consistency.mean()
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seen += len(index)
        correct += int((logits.argmax(-1) == batch["labels"]).sum())
        loss_sum += float(loss.detach()) * len(index)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                            rate=f"{seen / (time.perf_counter() - started):.0f}/s")
    if bar is not None:
        bar.close()
    totals = accelerator.reduce(torch.tensor([loss_sum, correct, seen], dtype=torch.float64,
                                             device=accelerator.device), "sum").tolist()
    gate_mean, losses, logits = gather_by_index(accelerator, n_train, np.concatenate(rows),
                                                np.concatenate(gate_rows), np.concatenate(loss_rows),
                                                np.concatenate(logit_rows))
    return {"loss": totals[0] / max(totals[2], 1), "accuracy": totals[1] / max(totals[2], 1),
            "gate_mean": gate_mean, "losses": losses, "logits": logits}


def write_status(out: Path, epoch: int, phase: str) -> None:
    """status.json says where a run is (epoch and phase: train, pass, eval, checkpoint, done), for a user
    watching a long run and for the tests that kill a run at a chosen moment."""
    runs.atomic_write_json(out / "status.json", {"epoch": epoch, "phase": phase, "time": time.time()})


def evaluate(core, data: Prepared, cfg: TrainConfig, epoch: int, accelerator) -> dict:
    """Test accuracy with every module on, and with the mean of routed passes (gates ~ Bernoulli(γ): test
    samples have no clean probability); dev accuracy (for model selection) with every module on."""
    def all_on(index, _k):
        return None

    out = {}
    logits, _ = routed_logits(core, data.test, cfg.eval_batch_size, data.pad_id, 1, all_on, accelerator)
    out["test_acc"] = accuracy(logits.argmax(-1), data.test.labels)
    routed_started = time.perf_counter()
    if cfg.routing == "none":
        out["test_acc_routed"] = out["test_acc"]
    elif cfg.eval_passes == 0:
        out["test_acc_routed"] = None
    else:
        draws = torch.rand((cfg.eval_passes, len(data.test), core.num_layers), generator=_generator(cfg.seed, epoch, 2))
        ones = torch.ones(1)

        def random_gates(index, k):
            return gates_from_draws("random", ones.expand(len(index)), cfg.gamma, draws[k, index])

        logits, _ = routed_logits(core, data.test, cfg.eval_batch_size, data.pad_id, cfg.eval_passes,
                                  random_gates, accelerator)
        out["test_acc_routed"] = accuracy(logits.argmax(-1), data.test.labels)
    out["eval_routed_seconds"] = time.perf_counter() - routed_started  # of eval_seconds: the routed test passes
    if data.dev is not None:
        logits, _ = routed_logits(core, data.dev, cfg.eval_batch_size, data.pad_id, 1, all_on, accelerator)
        out["dev_acc"] = accuracy(logits.argmax(-1), data.dev.labels)
    return out


def summarize(cfg: TrainConfig, data: Prepared, history: list[dict], core, train_seconds: float) -> dict:
    summary = summarize_curve([m["test_acc"] for m in history])
    routed_curve = [m["test_acc_routed"] for m in history]
    routed = summarize_curve(routed_curve) if None not in routed_curve else dict.fromkeys(summary)
    summary.update({f"{k}_routed": v for k, v in routed.items()})
    if "dev_acc" in history[0]:
        summary.update({f"dev_{k}": v for k, v in summarize_curve([m["dev_acc"] for m in history]).items()})
    summary.update({
        "method": cfg.peft, "routing": cfg.routing, "noise": cfg.noise, "seed": cfg.seed,
        "dataset": cfg.dataset, "model": cfg.model, "reg_weight": cfg.reg_weight, "gamma": cfg.gamma,
        "epochs": len(history), "realized_noise_rate": data.noisy.realized_rate,
        # of the last epoch whose pass was made (the last fit of the clean probability)
        "estimated_noise_rate": next((m.get("estimated_noise_rate") for m in reversed(history)
                                      if m.get("estimated_noise_rate") is not None), None),
        "trainable_params": core.num_trainable(), "train_seconds": train_seconds,
    })
    return summary


def noisy_labels_csv(data: Prepared) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["index", "text", "label", "noisy_label"])
    for i, (text, y, z) in enumerate(zip(data.texts, data.bundle.train.labels, data.noisy.noisy)):
        writer.writerow([i, text, int(y), int(z)])
    return buf.getvalue()


def clean_probs_csv(data: Prepared, p: np.ndarray, predictions: np.ndarray) -> str:
    """Training samples, most suspicious (lowest clean probability) first: the label errors to review."""
    names = data.bundle.label_names
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["index", "text", "given_label", "given_label_name", "clean_prob", "predicted_label",
                     "predicted_label_name"])
    for i in np.argsort(p, kind="stable"):
        z, y_hat = int(data.noisy.noisy[i]), int(predictions[i])
        writer.writerow([int(i), data.texts[i], z, names[z], f"{p[i]:.6f}", y_hat, names[y_hat]])
    return buf.getvalue()


def _progress(enabled: bool, total: int, desc: str):
    """A per-batch bar on a terminal; none when stderr is a file or pipe (`> run.log 2>&1` would collect a
    redraw per batch), where the per-epoch line is the progress."""
    import sys

    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)


ROUTING_STATE = "routing_state.safetensors"


def save_checkpoint(out: Path, accelerator, epoch: int, p: np.ndarray, ens_logits: np.ndarray | None,
                    smoothed: np.ndarray | None, train_seconds: float) -> None:
    """Write checkpoints/epoch-E atomically (temporary folder, hashes, rename); keep the previous one as a
    fallback in case the newest turns out damaged."""
    from safetensors.numpy import save_file

    folder = out / runs.CHECKPOINTS
    tmp = folder / f".tmp-epoch-{epoch}"
    main = accelerator.is_main_process
    if main:
        folder.mkdir(exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # trainable weights only (_register_trainable_only); RNG state per process
    accelerator.wait_for_everyone()
    if not main:
        accelerator.wait_for_everyone()
        return
    tensors = {"p": np.ascontiguousarray(p, dtype=np.float64)}
    if ens_logits is not None:
        tensors["ens_logits"] = np.ascontiguousarray(ens_logits, dtype=np.float32)
    if smoothed is not None:
        tensors["smoothed_losses"] = np.ascontiguousarray(smoothed, dtype=np.float64)
    save_file(tensors, str(tmp / ROUTING_STATE))
    runs.atomic_write_json(tmp / "progress.json", {"epoch": epoch, "train_seconds": train_seconds})
    runs.commit_checkpoint(tmp, folder / f"epoch-{epoch}")
    for old in folder.glob("epoch-*"):
        if int(old.name.split("-")[1]) < epoch - 1:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()  # nobody goes on (or resumes) before the checkpoint is committed


def load_latest_checkpoint(out: Path, accelerator, log):
    """Restore the newest intact checkpoint; returns (next epoch, p, f_ens, smoothed losses, seconds)."""
    from safetensors.numpy import load_file

    folder = out / runs.CHECKPOINTS
    candidates = sorted(folder.glob("epoch-*"), key=lambda f: int(f.name.split("-")[1]), reverse=True) \
        if folder.exists() else []
    for checkpoint in candidates:
        if not runs.checkpoint_is_intact(checkpoint):
            log(f"warning: checkpoint {checkpoint.name} is damaged (hash mismatch); trying the previous one")
            continue
        accelerator.load_state(str(checkpoint), strict=False)  # frozen weights come from the backbone
        state = load_file(str(checkpoint / ROUTING_STATE))
        progress = json.loads((checkpoint / "progress.json").read_text())
        log(f"resuming after epoch {progress['epoch'] + 1} from {checkpoint}")
        return (progress["epoch"] + 1, state["p"], state.get("ens_logits"), state.get("smoothed_losses"),
                progress["train_seconds"])
    return None


def _register_trainable_only(accelerator) -> None:
    """Checkpoints hold the trained pieces, not the frozen backbone (MBs instead of the whole model)."""

    def keep_trainable(models, weights, output_dir):
        for model, state in zip(models, weights):
            trainable = {n for n, p in model.named_parameters() if p.requires_grad}
            for name in [n for n in state if n not in trainable]:
                del state[name]

    accelerator.register_save_state_pre_hook(keep_trainable)
