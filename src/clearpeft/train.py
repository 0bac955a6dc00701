"""The training loop on Hugging Face Accelerate; what CleaR decides (each epoch's mode, gates, loss, p) is in clear.py.

One epoch, in order:
  1. training steps: gates r ~ the epoch's plan (Bernoulli(γ) in warm-up, Bernoulli(γ·p) after it, none for
     plain PEFT, nor for clean-auto until a fit shows a mode of wrong labels); loss = CE(f(x; δ_r), ỹ) +
     λ·CE_soft(f(x; δ_r)/T, f_ens(x)/T) once f_ens exists;
  2. the per-sample pass over the training set (eval mode, no gradient, N routed passes): per-sample loss,
     f_ens = mean logits, predictions for the training dynamics (--no-dynamics: only where CleaR uses it);
  3. clean probability p from those losses (EMA, GMM), used from the first epoch after warm-up on;
  4. evaluation on test (and dev): all modules on, and the mean of routed passes;
  5. one line of metrics.jsonl and an atomic checkpoint (runs.RunFolder).
Step 2 at the end of epoch e is the estimate "at the start of epoch e+1" of docs/method.md: the weights are the same.
Every random draw of an epoch (shuffle, dropout, gates) is seeded from (seed, epoch), so a resumed run
continues exactly.
"""

from __future__ import annotations

import csv
import errno
import io
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import clear, runs
from .config import COMPILE_BREAK_EVEN_BATCHES, TrainConfig, config_defaults
from .errors import RunStopped, UserError, WriteError
from .label_issues import (confident_joint_noise_rate, confusion_floor_noise_rate, label_issue_flags,
                           noise_rate_estimate, one_way_noise_rate)
from .metrics import accuracy, detection_quality, summarize_curve, training_dynamics
from .routing import CleanProbability, gates_from_draws

# The dev split's noise is drawn from numpy's seed [seed, DEV_NOISE_STREAM], apart from the training labels'.
DEV_NOISE_STREAM = 1
FIRST_STAGE_SUMMARY = "first_stage_summary.json"  # a --refit run's first stage, until the second one ends
# Fields of a metrics.jsonl line that differ between identical runs (wall-clock times).
TIMING_FIELDS = frozenset({"epoch_seconds", "step_seconds", "pass_seconds", "eval_seconds", "eval_routed_seconds"})
# Metrics of the per-sample pass; null in the epochs that --no-dynamics skips it.
DYNAMICS_FIELDS = ("clean_learning", "noisy_memorization", "noisy_correction", "detect_precision", "detect_recall",
                   "detect_auc")
# What each epoch's clean-probability fit says about the noise (routing.CleanProbability.fit_stats).
FIT_FIELDS = ("estimated_noise_rate", "high_loss_weight", "flagged_rate", "loss_separation", "bic_gain",
              "noisy_component_loss")


@dataclass
class Prepared:
    """Everything a run needs that comes from the data: splits, noisy labels, encodings."""

    bundle: object
    noisy: object
    train: object  # EncodedSplit with the noisy labels
    test: object | None
    dev: object | None
    pad_id: int
    texts: list[str] = field(repr=False, default_factory=list)
    dev_noisy: object | None = None  # NoisyLabels of the dev split when its labels carry the injected noise


def prepare_data(cfg: TrainConfig, tokenizer, bundle=None) -> Prepared:
    """Load (or take ``bundle``, the Python API's in-memory data), subset, corrupt by --noise, tokenize."""
    from .backbone import embed_texts
    from .data import load_data
    from .data.batching import encode
    from .noise import NoiseSpec, apply_noise

    spec = NoiseSpec.parse(cfg.noise)
    if bundle is None:
        bundle = load_data(cfg.dataset, cfg.data_dir, text_column=cfg.text_column, label_column=cfg.label_column,
                           test_file=cfg.test_file)
    if bundle.dev is None and cfg.dev_holdout > 0:
        bundle = bundle.with_holdout_dev(cfg.dev_holdout, cfg.seed)
    bundle.train = bundle.train.subset(cfg.max_train_samples, cfg.seed)
    if bundle.test is not None:  # the API's data may have none: then there are no test metrics
        bundle.test = bundle.test.subset(cfg.max_eval_samples, cfg.seed)
    if bundle.dev is not None:
        bundle.dev = bundle.dev.subset(cfg.max_eval_samples, cfg.seed)
    features = embed_texts(bundle.train.texts) if spec.kind == "instance" else None
    noisy = apply_noise(bundle.train.labels, bundle.num_labels, spec, cfg.seed, features=features)
    train = encode(tokenizer, bundle.train.texts, noisy.noisy, cfg.max_length)
    test = encode(tokenizer, bundle.test.texts, bundle.test.labels, cfg.max_length) if bundle.test is not None else None
    dev = dev_noisy = None
    if bundle.dev is not None:
        dev_labels = np.asarray(bundle.dev.labels)
        if spec.kind != "clean" and cfg.dev_labels == "noisy":
            # A user's dev data is as noisy as the training data: the same noise, the same function of the text
            # for instance noise, from a stream of its own (the training labels do not change).
            dev_features = embed_texts(bundle.dev.texts) if spec.kind == "instance" else None
            dev_noisy = apply_noise(dev_labels, bundle.num_labels, spec, [cfg.seed, DEV_NOISE_STREAM],
                                    features=dev_features, projection=noisy.projection)
            dev_labels = dev_noisy.noisy
        dev = encode(tokenizer, bundle.dev.texts, dev_labels, cfg.max_length)
    return Prepared(bundle, noisy, train, test, dev, tokenizer.pad_token_id or 0, list(bundle.train.texts),
                    dev_noisy)


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


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("clearpeft", "torch", "transformers", "peft", "accelerate", "scikit-learn", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


@dataclass
class Session:
    """A started run: the accelerator, the run folder, the data, and the prepared model, optimizer, loader and
    schedule. ``core`` is the model itself (RoutedClassifier), ``model`` what Accelerate wrapped around it (for
    the training steps; the no-gradient passes call ``core``)."""

    cfg: TrainConfig
    accelerator: object
    folder: runs.RunFolder
    data: Prepared
    core: object
    model: object
    optimizer: object
    loader: object
    scheduler: object
    compiled: bool
    checkpoint: Path | None = None  # the vetted checkpoint a resume restores (runs.resumable_checkpoint)


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
          log=print, data=None) -> dict:
    """Train one run into ``cfg.out``; returns the summary (also written to summary.json). ``data``: a
    DataBundle to train on instead of loading ``cfg.dataset`` (the Python API's in-memory data)."""
    cfg = cfg.resolved()
    if resume and overwrite:
        raise UserError("--resume continues a run and --overwrite replaces it: give one of them")
    if cfg.routing != "none" and cfg.warmup_epochs >= cfg.epochs:
        log(f"warning: --warmup-epochs {cfg.warmup_epochs} >= --epochs {cfg.epochs}: CleaR will never route "
            "by clean probability (every epoch is warm-up)")
    # One run per folder (runs.RunLock); SIGTERM and Ctrl-C end the run with the lock released and the newest
    # checkpoint intact (it is committed by one rename), as one RunStopped.
    lock = runs.RunLock(cfg.out, log)
    restore = _raise_on_sigterm()
    try:
        lock.acquire()
        summary, prepared, predicted_prob, is_main = _train(cfg, resume, overwrite, progress, log, data)
        if cfg.refit == "none":
            return summary
        from .refit import second_stage

        return second_stage(cfg, prepared, summary, predicted_prob, is_main, train, resume, progress, log)
    except KeyboardInterrupt as exc:  # RunStopped from the SIGTERM handler too
        done = _epochs_done(cfg.out)
        _status_stopped(cfg.out, done)
        raise RunStopped(getattr(exc, "signal_name", "SIGINT"), done, cfg.out) from None
    except WriteError as exc:
        exc.hint = exc.hint or _resume_hint(cfg.out)
        raise
    except OSError as exc:  # a write that no writer in runs.py wrapped (a tracker's log, say)
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG):
            raise
        raise WriteError(exc.filename or cfg.out, os.strerror(exc.errno), exc.errno, _resume_hint(cfg.out)) from exc
    finally:
        restore()
        lock.release()


def _epochs_done(out) -> int | None:
    """Epochs a resume would not redo (the newest intact checkpoint's), read from the folder itself, so the
    line of a stopped run is right whatever moment the signal came; None: the run never started."""
    if not (Path(out) / runs.CONFIG).exists():
        return None
    newest = runs.newest_intact_checkpoint(out)
    return 0 if newest is None else int(newest.name.split("-")[1]) + 1


def _resume_hint(out) -> str:
    newest = runs.newest_intact_checkpoint(out) if (Path(out) / runs.CONFIG).exists() else None
    kept = "no checkpoint yet" if newest is None else f"{newest} is intact"
    return f"{kept}; --resume continues once the write can succeed"


def _raise_on_sigterm():
    """Make SIGTERM raise RunStopped in the main thread (a second SIGTERM ends the process at once); returns
    what puts the previous handler back. Outside the main thread signals cannot be set: nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise RunStopped("SIGTERM", None, "")

    previous = signal.signal(signal.SIGTERM, stop)
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _status_stopped(out, done: int | None) -> None:
    """status.json says the run stopped (best effort: the disk may be full, the folder gone)."""
    if runs.is_main_launch_process() and (Path(out) / runs.CONFIG).exists():
        try:
            runs.atomic_write_json(Path(out) / "status.json", {"epoch": done, "phase": "stopped", "time": time.time()})
        except Exception:
            pass


def _train(cfg: TrainConfig, resume: bool, overwrite: bool, progress: bool, log, data) -> dict:
    s = start(cfg, resume, overwrite, data, log)
    if not s.accelerator.is_main_process:  # only the main process talks to the user
        progress, log = False, (lambda *args, **kwargs: None)
    start_epoch, arrays, train_seconds = 0, None, 0.0
    restored = s.folder.load_checkpoint(s.checkpoint, log) if resume else None
    if restored is not None:
        start_epoch, arrays, train_seconds = restored
    history = s.folder.history(start_epoch)
    estimator = CleanProbability(ema=cfg.loss_ema or None, seed=cfg.seed, chance_loss=math.log(s.data.bundle.num_labels))
    state = clear.start_state(len(s.data.train), cfg.routing, estimator, history, arrays)

    for epoch in range(start_epoch, cfg.epochs):
        # Phase 1: the gated training steps of the epoch's plan.
        started = time.perf_counter()
        plan = clear.plan_epoch(cfg.routing, epoch, cfg.warmup_epochs, state.stood_down)
        s.folder.status(epoch, "train")
        steps = train_steps(s, state, plan, epoch, _progress(progress, len(s.loader), f"epoch {epoch + 1}/{cfg.epochs}"))
        row = {"epoch": epoch, "train_loss": steps["loss"], "train_acc_given": steps["accuracy"]}
        step_seconds = time.perf_counter() - started
        # Phase 2: the per-sample pass, and from it p and f_ens for the next epoch.
        pass_started = time.perf_counter()
        s.folder.status(epoch, "pass")
        row.update(estimate(s, state, plan, epoch, steps))
        pass_seconds = time.perf_counter() - pass_started
        # Phase 3: evaluation.
        eval_started = time.perf_counter()
        s.folder.status(epoch, "eval")
        row.update(evaluate(s.core, s.data, cfg, epoch, s.accelerator))
        row["step_seconds"], row["pass_seconds"] = step_seconds, pass_seconds
        row["eval_seconds"] = time.perf_counter() - eval_started
        row["epoch_seconds"] = time.perf_counter() - started
        train_seconds += row["epoch_seconds"]
        # Phase 4: the metrics line first, then the checkpoint: a crash in between redoes this epoch on resume.
        history.append(row)
        s.folder.append_metrics(row)
        if keeps_best(cfg, s.data) and kept_epoch(history) == epoch:  # a new best dev accuracy
            s.folder.status(epoch, "best")
            s.folder.save_best(s.core, epoch)
        if cfg.log_with != "none":
            s.accelerator.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=epoch)
        s.folder.status(epoch, "checkpoint")
        s.folder.save_checkpoint(epoch, {"p": np.ascontiguousarray(state.p, dtype=np.float64),
                                         "ens_logits": _contiguous(state.ens_logits, np.float32),
                                         "smoothed_losses": _contiguous(state.estimator.smoothed, np.float64)},
                                 train_seconds)
        if progress:
            log(epoch_line(row, cfg.epochs))
    summary, predicted_prob = finish(s, history, train_seconds)
    return summary, s.data, predicted_prob, s.accelerator.is_main_process


def _forget_other_precision(precision: str) -> None:
    """Accelerate keeps one precision per process and refuses another; in one process (fit() twice in a
    notebook, once with bf16) the earlier run's state is dropped so the next run gets the precision it asks for.
    Launched processes keep theirs: all of them run the same configuration."""
    from accelerate.state import AcceleratorState, PartialState

    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != precision \
            and PartialState().num_processes == 1:
        AcceleratorState._reset_state()


def start(cfg: TrainConfig, resume: bool, overwrite: bool, bundle=None, log=print) -> Session:
    """Check the run folder, load data and model (bad input fails here, before anything is written), write the
    run's first files, and prepare model, optimizer, loader and schedule with Accelerate."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration
    from transformers import get_constant_schedule, get_linear_schedule_with_warmup

    from .backbone import encoder_config, load_tokenizer
    from .data.batching import loader
    from .noise import noisy_labels_csv
    from .peft import build_model

    config = asdict(cfg)
    out = runs.check_run_dir(cfg.out, config, resume=resume, overwrite=overwrite, defaults=config_defaults())
    # before any data is loaded: a checkpoint whose files would run code is refused here, untouched
    checkpoint = runs.resumable_checkpoint(out, log if runs.is_main_launch_process() else (lambda *a: None)) \
        if resume else None
    encoder_config(cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    data = prepare_data(cfg, tokenizer, bundle)
    if cfg.bf16 and not torch.cuda.is_available() and not native_bf16_cpu():
        # Warn rather than fall back: --bf16 was asked for, and a silent fp32 run would change the numbers.
        log("warning: --bf16 on a CPU without native bf16 (no AVX-512 BF16 or AMX): bf16 is emulated here, and "
            "a training step ran about 10x slower than fp32 on such a CPU (benchmarks/bf16_cpu.py); leave --bf16 off")
    compiled = compile_decision(cfg, planned_batches(cfg, len(data.train)))
    # One process per device under `accelerate launch` / torchrun. split_batches: --batch-size stays the
    # global batch (each process takes its share), so a run means the same on any number of processes.
    precision = "bf16" if cfg.bf16 else "no"
    _forget_other_precision(precision)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision=precision,
        log_with=None if cfg.log_with == "none" else cfg.log_with,
        project_config=ProjectConfiguration(project_dir=str(cfg.out), logging_dir=str(Path(cfg.out) / "logs")),
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    if cfg.batch_size % accelerator.num_processes:
        raise UserError(f"--batch-size {cfg.batch_size} must be divisible by the {accelerator.num_processes} processes")
    core = build_model(cfg.peft, data.bundle.num_labels, cfg.model, seed=cfg.seed, rank=cfg.lora_rank,
                       alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, length=cfg.prompt_length,
                       bottleneck=cfg.adapter_size)
    accelerator.wait_for_everyone()  # every process has checked the folder before the main one touches it
    if accelerator.is_main_process:
        runs.open_run_dir(out, overwrite=overwrite and not resume)
    folder = runs.RunFolder(out, accelerator)
    folder.start({**config, "realized_noise_rate": data.noisy.realized_rate,
                  "label_names": list(data.bundle.label_names), "versions": library_versions()},
                 noisy_labels_csv(data.texts, data.bundle.train.labels, data.noisy.noisy))
    train_loader = loader(data.train, cfg.batch_size, shuffle=True, pad_id=data.pad_id, seed=cfg.seed)
    optimizer = torch.optim.AdamW([p for p in core.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * len(train_loader)
    scheduler = get_constant_schedule(optimizer) if cfg.lr_schedule == "constant" else \
        get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    model, optimizer, train_loader, scheduler = accelerator.prepare(core, optimizer, train_loader, scheduler)
    runs.keep_trainable_only(accelerator)
    if cfg.log_with != "none":
        accelerator.init_trackers("clearpeft", config={k: v for k, v in config.items() if v is not None})
    if compiled:
        compile_inner_model(core)
    return Session(cfg, accelerator, folder, data, core, model, optimizer, train_loader, scheduler, compiled,
                   checkpoint)


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX). Without it oneDNN and ATen emulate bf16,
    and a bf16 autocast step runs many times slower than fp32 (benchmarks/README.md, "bf16_cpu.py")."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: oneDNN's own check (AVX-512 at least)
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return "avx512_bf16" in flags or "amx_bf16" in flags


def compile_inner_model(core) -> None:
    """--compile: compile the encoder with its PEFT modules and gate hooks (``core.model``) in place, so parameter
    names, checkpoints and the 2-process wrapper stay as they are.

    Not through Accelerate's TorchDynamoPlugin: that compiles the model around the autocast wrapper Accelerate
    puts on ``forward``, so every graph holds an ``_enter_autocast`` call, and AOTAutograd's on-disk cache
    refuses such graphs ("Unsupported call_function target _enter_autocast"): with a warm cache every run
    would still redo AOTAutograd's tracing and partitioning (benchmarks/README.md, "compile").
    Compiled one level down, autocast is the ambient state the graphs are guarded on. Training steps, the
    no-gradient passes and evaluation call the same module and get graphs of their own (grad mode and
    train/eval mode are guarded). Dynamic shapes: one graph serves every length bucket."""
    from torch._dynamo import config as dynamo_config
    from torch._inductor import config as inductor_config

    # Both settings below are process-wide: they stay for whatever else the process compiles.
    # A float Dynamo would otherwise trace as a symbol fails Inductor's tensorify pass and restarts the trace
    # of two graphs; the model's floats (dropout p, LoRA scaling) are constants, so specializing them costs no
    # recompiles, and saves most of the warm-cache compile time (benchmarks/README.md).
    dynamo_config.specialize_float = True
    # Inductor draws dropout masks with its own generator; falling back to torch's keeps the same seed's draws,
    # so a compiled run reproduces the eager run's metrics (within bf16 rounding).
    inductor_config.fallback_random = True
    core.model.compile(backend="inductor", dynamic=True)


def planned_batches(cfg: TrainConfig, n_train: int) -> int:
    """Training batches a run of ``n_train`` training samples plans (what --compile auto weighs)."""
    return cfg.epochs * math.ceil(n_train / cfg.batch_size)


def compile_decision(cfg: TrainConfig, planned_batches: int) -> bool:
    """Whether the run compiles (--compile; auto: see COMPILE_BREAK_EVEN_BATCHES)."""
    if cfg.compile != "auto":
        return cfg.compile == "on"
    return not torch.cuda.is_available() and cfg.bf16 and planned_batches > COMPILE_BREAK_EVEN_BATCHES


def train_steps(s: Session, state: clear.CleaRState, plan: clear.EpochPlan, epoch: int, bar) -> dict:
    """One epoch of gated training steps: per batch, the gates of the plan, the routed
    loss with its consistency term, one optimizer step."""
    cfg, accelerator, core = s.cfg, s.accelerator, s.core
    s.model.train()
    torch.manual_seed(cfg.seed * 1009 + epoch + 100_003 * accelerator.process_index)  # dropout
    s.loader.set_epoch(epoch)  # Accelerate's loader passes it on to our length-bucket sampler
    # Uniform draws per sample and layer, the same on every process: gates do not depend on the batch or
    # process a sample lands in.
    draws = torch.rand((len(s.data.train), core.num_layers), generator=clear.generator(cfg.seed, epoch, "step_gates"))
    gates_for = clear.step_gates(plan, state.p, cfg.gamma, draws)
    teacher = clear.teacher(plan, state, cfg.reg_weight)
    weigh = cfg.gate_weighted_loss and plan.after_warmup
    # Per sample, at its step of this epoch: share of layers routed on; CE and logits (--estimate-from train).
    rows, gate_rows, loss_rows, logit_rows = [], [], [], []
    seen = correct = 0
    loss_sum, started = 0.0, time.perf_counter()
    for batch in s.loader:
        index = batch["index"].cpu()
        r = gates_for(index)
        with core.routing(r):
            logits = s.model(batch["input_ids"], batch["attention_mask"]).float()
        loss, per_sample = clear.routed_loss(
            logits, batch["labels"], teacher[index].to(logits.device) if teacher is not None else None,
            cfg.reg_weight, cfg.temperature, r.mean(0).to(logits.device) if weigh and r is not None else None)
        accelerator.backward(loss)
        s.optimizer.step()
        s.scheduler.step()
        s.optimizer.zero_grad(set_to_none=True)
        rows.append(index.numpy())
        gate_rows.append(r.mean(0).numpy() if r is not None else np.ones(len(index)))  # None: every module on
        loss_rows.append(per_sample.detach().cpu().numpy())
        logit_rows.append(logits.detach().cpu().numpy())
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
    gate_mean, losses, logits = gather_by_index(accelerator, len(s.data.train), np.concatenate(rows),
                                                np.concatenate(gate_rows), np.concatenate(loss_rows),
                                                np.concatenate(logit_rows))
    return {"loss": totals[0] / max(totals[2], 1), "accuracy": totals[1] / max(totals[2], 1),
            "gate_mean": gate_mean, "losses": losses, "logits": logits}


def estimate(s: Session, state: clear.CleaRState, plan: clear.EpochPlan, epoch: int, steps: dict) -> dict:
    """The per-sample pass over the training set and the fit of p on its losses;
    returns the metrics of the pass: training dynamics, detection quality, what the fit says, gate means.
    CleaR uses the pass before every routed epoch; the other passes only measure (--no-dynamics skips them)."""
    cfg, data = s.cfg, s.data
    routes_next, used = clear.pass_use(plan, epoch, cfg.warmup_epochs, cfg.epochs)
    guarded = cfg.routing == "clean-auto"
    if cfg.estimate_from == "train":  # no extra pass: what the steps saw (train mode, mid-epoch weights)
        ens, losses = steps["logits"], steps["losses"]
    elif used or not cfg.no_dynamics:
        passes = cfg.ensemble if plan.routed else 1
        draws = torch.rand((passes, len(data.train), s.core.num_layers), generator=clear.generator(cfg.seed, epoch, "pass_gates"))
        ens, losses = routed_logits(s.core, data.train, cfg.eval_batch_size, data.pad_id, passes,
                                    clear.pass_gates(plan, state.p, cfg.gamma, draws, cfg.pass_gates), s.accelerator)
    else:
        ens = losses = None
    if losses is None:  # no new fit: clean-auto's decision stands
        row = dict.fromkeys(DYNAMICS_FIELDS + FIT_FIELDS + ("clean_prob_fallback",))
    else:
        p = clear.update_estimate(state, losses, ens, routes_next, guarded)
        if s.accelerator.num_processes > 1:  # every process must route by the same p (gathered losses, seeded GMM)
            from accelerate.utils import gather_object

            if len(set(gather_object([float(np.sum(p))]))) != 1:
                raise RuntimeError("clean probabilities differ between processes")
        row = training_dynamics(ens.argmax(-1), data.bundle.train.labels, data.noisy.noisy)
        row.update(detection_quality(p, data.noisy.corrupted))
        row.update({k: state.estimator.fit_stats.get(k) for k in FIT_FIELDS})
        row["clean_prob_fallback"] = state.estimator.fallback
    row["routing_stood_down"] = state.stood_down if guarded else None
    corrupted, gate_mean = data.noisy.corrupted, steps["gate_mean"]
    row["gate_mean_clean"] = float(gate_mean[~corrupted].mean()) if plan.routed and (~corrupted).any() else None
    row["gate_mean_corrupted"] = float(gate_mean[corrupted].mean()) if plan.routed and corrupted.any() else None
    row["routing_active"] = bool(plan.after_warmup and not plan.plain)
    return row


def keeps_best(cfg: TrainConfig, data: Prepared) -> bool:
    return cfg.keep == "best-dev" and data.dev is not None


def kept_epoch(history: list[dict]) -> int:
    """The epoch of the best dev accuracy (the first of equals)."""
    return max(range(len(history)), key=lambda e: (history[e]["dev_acc"], -e))


def finish(s: Session, history: list[dict], train_seconds: float) -> dict:
    """The weights the run hands over (--keep), the review list from them with every module on (as a user
    would deploy them), and the summary."""
    cfg, data = s.cfg, s.data
    if cfg.log_with != "none":
        s.accelerator.end_training()
    kept = len(history) - 1
    if keeps_best(cfg, data):
        best = s.folder.best_folder()
        if best is None:
            raise UserError(f"the best-dev weights in {Path(cfg.out) / runs.CHECKPOINTS / runs.BEST} are missing "
                            "or damaged: run again with --overwrite, or with --keep last")
        folder, kept = best
        if kept != len(history) - 1:
            s.core.load_trained(folder)
    report, probs = label_issue_report(s.core, data, cfg, s.accelerator)
    # How many labels look wrong, beside the loss fit's estimate: the confusion floor of the training samples
    # (in-sample) and its one-way flows, and confident learning's count there and, where there is one, on the
    # dev split (held out)
    noise_rates = {"floor_noise_rate": confusion_floor_noise_rate(probs, data.noisy.noisy),
                   "one_way_noise_rate": one_way_noise_rate(probs, data.noisy.noisy),
                   "cl_noise_rate": confident_joint_noise_rate(probs, data.noisy.noisy), "cl_noise_rate_dev": None}
    if data.dev is not None:
        dev_logits, _ = routed_logits(s.core, data.dev, cfg.eval_batch_size, data.pad_id, 1, lambda i, k: None,
                                      s.accelerator)
        dev_probs = torch.softmax(torch.from_numpy(dev_logits).double(), -1).numpy()
        noise_rates["cl_noise_rate_dev"] = confident_joint_noise_rate(dev_probs, data.dev.labels)
    summary = summarize(cfg, data, history, s.core, train_seconds)
    estimate, source = noise_rate_estimate(summary["fit_noise_rate"], noise_rates["floor_noise_rate"],
                                           noise_rates["one_way_noise_rate"])
    summary = {**summary, "estimated_noise_rate": estimate, "noise_rate_source": source, **noise_rates,
               "compiled": s.compiled,
               "keep": "best-dev" if keeps_best(cfg, data) else "last", "kept_epoch": kept,
               "delivered_acc": history[kept]["test_acc"],
               "dev_labels": None if data.dev is None else ("noisy" if data.dev_noisy is not None else "clean")}
    # every process: it ends on a barrier, so all may read the run. With --refit the run's summary.json is
    # written after the second stage: until then the run is not finished.
    s.folder.finish(s.core, summary, report, runs.SUMMARY if cfg.refit == "none" else FIRST_STAGE_SUMMARY)
    s.folder.status(cfg.epochs - 1, "done")
    return summary, probs.max(1)


def epoch_line(row: dict, epochs: int) -> str:
    """The one progress line per epoch."""
    test = "test -" if row["test_acc"] is None else f"test {row['test_acc']:.4f}"
    routed = "" if row["test_acc_routed"] is None else f" (routed {row['test_acc_routed']:.4f})"
    dynamics = "" if row["detect_auc"] is None else (
        f"  clean-learn {row['clean_learning']:.3f}  memorize {row['noisy_memorization']:.3f}"
        f"  AUC {row['detect_auc']:.3f}  est. noise {row['estimated_noise_rate']:.3f}"
        + ("  (routing stood down)" if row["routing_stood_down"] else ""))
    return f"epoch {row['epoch'] + 1}: {test}{routed}{dynamics}  {row['epoch_seconds']:.0f}s"


def _contiguous(array: np.ndarray | None, dtype) -> np.ndarray | None:
    return None if array is None else np.ascontiguousarray(array, dtype=dtype)


def evaluate(core, data: Prepared, cfg: TrainConfig, epoch: int, accelerator) -> dict:
    """Test accuracy with every module on, and with the mean of routed passes (gates ~ Bernoulli(γ): test
    samples have no clean probability); dev accuracy (for model selection) with every module on."""
    def all_on(index, _k):
        return None

    out = {"test_acc": None, "test_acc_routed": None}  # None: the API's data may come without a test split
    routed_started = time.perf_counter()
    if data.test is not None:
        logits, _ = routed_logits(core, data.test, cfg.eval_batch_size, data.pad_id, 1, all_on, accelerator)
        out["test_acc"] = accuracy(logits.argmax(-1), data.test.labels)
        routed_started = time.perf_counter()
        if cfg.routing == "none":
            out["test_acc_routed"] = out["test_acc"]
        elif cfg.eval_passes > 0:
            draws = torch.rand((cfg.eval_passes, len(data.test), core.num_layers),
                               generator=clear.generator(cfg.seed, epoch, "eval_gates"))
            ones = torch.ones(1)

            def random_gates(index, k):
                return gates_from_draws("random", ones.expand(len(index)), cfg.gamma, draws[k, index])

            logits, _ = routed_logits(core, data.test, cfg.eval_batch_size, data.pad_id, cfg.eval_passes,
                                      random_gates, accelerator)
            out["test_acc_routed"] = accuracy(logits.argmax(-1), data.test.labels)
    out["eval_routed_seconds"] = time.perf_counter() - routed_started  # of eval_seconds: the routed test passes
    if data.dev is not None:
        logits, _ = routed_logits(core, data.dev, cfg.eval_batch_size, data.pad_id, 1, all_on, accelerator)
        out["dev_acc"] = accuracy(logits.argmax(-1), data.dev.labels)  # on the labels the run selects by
        # on the dev split's true labels (what a noisy dev accuracy stands for); measured, never used
        out["dev_acc_clean"] = accuracy(logits.argmax(-1), data.bundle.dev.labels)
    return out


def summarize(cfg: TrainConfig, data: Prepared, history: list[dict], core, train_seconds: float) -> dict:
    curve = [m["test_acc"] for m in history]
    summary = summarize_curve(curve) if None not in curve else dict.fromkeys(("peak_acc", "avg_acc", "last_acc"))
    routed_curve = [m["test_acc_routed"] for m in history]
    routed = summarize_curve(routed_curve) if None not in routed_curve else dict.fromkeys(summary)
    summary.update({f"{k}_routed": v for k, v in routed.items()})
    if "dev_acc" in history[0]:
        summary.update({f"dev_{k}": v for k, v in summarize_curve([m["dev_acc"] for m in history]).items()})
    summary.update({
        "method": cfg.peft, "routing": cfg.routing, "noise": cfg.noise, "seed": cfg.seed,
        "dataset": cfg.dataset, "model": cfg.model, "reg_weight": cfg.reg_weight, "gamma": cfg.gamma,
        "epochs": len(history), "realized_noise_rate": data.noisy.realized_rate,
        # the fit's estimate of the last epoch whose pass was made (the last fit of the clean probability)
        "fit_noise_rate": next((m.get("estimated_noise_rate") for m in reversed(history)
                                if m.get("estimated_noise_rate") is not None), None),
        "trainable_params": core.num_trainable(), "train_seconds": train_seconds,
    })
    return summary


def label_issue_report(core, data: Prepared, cfg: TrainConfig, accelerator) -> str:
    """clean_probs.csv of a trained model: its pass over the training set with every module on (as a user
    would deploy it) and a fresh fit of p to those losses ("" on all but the main process), and the
    model's class probabilities [n, K] of the training samples."""
    logits, losses = routed_logits(core, data.train, cfg.eval_batch_size, data.pad_id, 1, lambda i, k: None,
                                   accelerator)
    probs = torch.softmax(torch.from_numpy(logits).double(), -1).numpy()
    if not accelerator.is_main_process:
        return "", probs
    return clean_probs_csv(data, CleanProbability(seed=cfg.seed).fit(losses), logits), probs


def clean_probs_csv(data: Prepared, p: np.ndarray, logits: np.ndarray) -> str:
    """The label-issue report: training samples, most suspicious first, by the final model (every module on).
    Columns named as cleanlab's where they mean the same: label_score is the model's probability of the given
    label (cleanlab's self-confidence; the ranking), is_label_issue the flag (p < 0.5 or confident learning
    finds another label: label_issues.py), clean_prob is p; given_label and predicted_label are label names
    (the ids beside them). The ranking is by label_score, not p: p is a function of the same loss through a
    2-component GMM, which reorders and ties samples (with unequal variances it is not monotone in the loss)
    and ranked the corrupted labels worse on every setting of benchmarks/label_issues.py."""
    names, given = data.bundle.label_names, data.noisy.noisy
    shifted = logits - logits.max(-1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
    score = probs[np.arange(len(given)), given]
    flags = label_issue_flags(p, probs, given)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(runs.LABEL_ISSUE_COLUMNS)
    for i in np.argsort(score, kind="stable"):
        z, y_hat = int(given[i]), int(logits[i].argmax())
        writer.writerow([int(i), data.texts[i], names[z], names[y_hat], repr(float(score[i])), bool(flags[i]),
                         repr(float(p[i])), z, y_hat])
    return buf.getvalue()


def _progress(enabled: bool, total: int, desc: str):
    """A per-batch bar on a terminal; none when stderr is a file or pipe (`> run.log 2>&1` would collect a
    redraw per batch), where the per-epoch line is the progress."""
    import sys

    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
