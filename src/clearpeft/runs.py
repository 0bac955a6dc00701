"""The run folder: atomic writes, the config that identifies a run, per-epoch checkpoints and resume."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .errors import UserError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
# clean_probs.csv, the label-issue report (train.clean_probs_csv; cleanlab's names where they mean the same)
LABEL_ISSUE_COLUMNS = ("index", "text", "given_label", "predicted_label", "label_score", "is_label_issue",
                       "clean_prob", "given_label_id", "predicted_label_id")
# Fields that may differ between a run and its resumption without making it a different run: where it is, how
# it was started, and how fast it runs (compiling changes the speed; the numbers only within rounding).
NON_IDENTITY = {"out", "resume", "overwrite", "progress", "json", "config", "realized_noise_rate", "label_names",
                "versions", "compile"}


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results are meant to be shared
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def identity(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in NON_IDENTITY}


def config_diff(old: dict, new: dict, defaults: dict) -> list[str]:
    """Identity fields in which the run ``old`` (a config.json) differs from ``new``. A field the old file lacks
    was added to clearpeft after that run was made, which then ran as the field's default: it counts as that. (A new
    field whose default changes what runs do breaks this; pass_gates did, and the CleaR runs made before it were
    moved to results/cpu_routed_pass and redone.)"""
    old, new = identity({**defaults, **old}), identity(new)
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def check_run_dir(out: str | Path, config: dict, resume: bool, overwrite: bool, defaults: dict) -> Path:
    """Refuse, before any work and without touching anything, a folder that cannot take this run."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    existing = out / CONFIG
    if existing.exists() and not overwrite:
        if not resume:
            raise UserError(f"{out} already holds a run: use --resume to continue it or --overwrite to replace it")
        try:
            old = json.loads(existing.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"--resume {out}: its config.json is unreadable ({exc}); use --overwrite") from exc
        diff = config_diff(old, config, defaults)
        if diff:
            raise UserError(f"--resume {out}: the folder holds a run with a different config ({', '.join(diff)})")
    elif not existing.exists() and out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} is not empty and holds no run: choose an empty or new folder, or --overwrite")
    parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to output folder {out}: permission denied in {parent}")
    return out


def open_run_dir(out: Path, overwrite: bool) -> Path:
    """Create the checked folder (emptied first with --overwrite)."""
    if overwrite and out.exists():
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write to output folder {out}: {exc.strerror or exc}") from exc
    return out


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def folder_digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): file_digest(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "digest.json"}


def commit_checkpoint(tmp: Path, final: Path) -> None:
    """Seal a checkpoint folder with its file hashes, then move it into place in one rename."""
    atomic_write_json(tmp / "digest.json", folder_digests(tmp))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def checkpoint_is_intact(folder: Path) -> bool:
    digest = folder / "digest.json"
    if not digest.exists():
        return False
    try:
        return json.loads(digest.read_text()) == folder_digests(folder)
    except (OSError, ValueError):
        return False


ROUTING_STATE = "routing_state.safetensors"


class RunFolder:
    """A run's folder as the training loop writes it: config.json and noisy_labels.csv at the start,
    status.json (where the run is), a metrics.jsonl line per epoch, an atomic checkpoint per epoch, and at the
    end weights/, clean_probs.csv and summary.json. Only the main process writes; every process reads."""

    def __init__(self, out: Path, accelerator):
        self.out, self.accelerator, self.main = Path(out), accelerator, accelerator.is_main_process

    def start(self, config: dict, noisy_labels_csv: str) -> None:
        """First start only: a resumed run keeps the files of its first start."""
        if self.main and not (self.out / CONFIG).exists():
            atomic_write_text(self.out / "noisy_labels.csv", noisy_labels_csv)
            atomic_write_json(self.out / CONFIG, config)
        self.accelerator.wait_for_everyone()

    def status(self, epoch: int, phase: str) -> None:
        """status.json says where a run is (epoch and phase: train, pass, eval, checkpoint, done), for a user
        watching a long run and for the tests that kill a run at a chosen moment."""
        if self.main:
            atomic_write_json(self.out / "status.json", {"epoch": epoch, "phase": phase, "time": time.time()})

    def history(self, before_epoch: int) -> list[dict]:
        """The metrics of the epochs before ``before_epoch``; metrics.jsonl is cut back to them (a run killed
        after its metrics line but before the checkpoint redoes that epoch)."""
        rows = [m for m in read_jsonl(self.out / METRICS) if m["epoch"] < before_epoch]
        self.accelerator.wait_for_everyone()
        if self.main:
            atomic_write_text(self.out / METRICS, "".join(json.dumps(m) + "\n" for m in rows))
        return rows

    def append_metrics(self, row: dict) -> None:
        if self.main:
            with open(self.out / METRICS, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")

    def save_checkpoint(self, epoch: int, arrays: dict, train_seconds: float) -> None:
        """checkpoints/epoch-E, atomically (temporary folder, hashes, rename): Accelerate's state (trainable
        weights, optimizer, scheduler, every process's random states) and the routing state ``arrays``
        (None values are left out). The previous checkpoint stays as a fallback in case the newest is damaged."""
        from safetensors.numpy import save_file

        folder = self.out / CHECKPOINTS
        tmp = folder / f".tmp-epoch-{epoch}"
        if self.main:
            folder.mkdir(exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(tmp))
        self.accelerator.wait_for_everyone()
        if self.main:
            save_file({k: v for k, v in arrays.items() if v is not None}, str(tmp / ROUTING_STATE))
            atomic_write_json(tmp / "progress.json", {"epoch": epoch, "train_seconds": train_seconds})
            commit_checkpoint(tmp, folder / f"epoch-{epoch}")
            for old in folder.glob("epoch-*"):
                if int(old.name.split("-")[1]) < epoch - 1:
                    shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()  # nobody goes on (or resumes) before the checkpoint is committed

    def load_checkpoint(self, log) -> tuple[int, dict, float] | None:
        """Restore the newest intact checkpoint into the prepared objects; returns (next epoch, routing
        arrays, train seconds so far), or None when there is none."""
        from safetensors.numpy import load_file

        folder = self.out / CHECKPOINTS
        candidates = sorted(folder.glob("epoch-*"), key=lambda f: int(f.name.split("-")[1]), reverse=True) \
            if folder.exists() else []
        for checkpoint in candidates:
            if not checkpoint_is_intact(checkpoint):
                log(f"warning: checkpoint {checkpoint.name} is damaged (hash mismatch); trying the previous one")
                continue
            self.accelerator.load_state(str(checkpoint), strict=False)  # frozen weights come from the backbone
            progress = json.loads((checkpoint / "progress.json").read_text())
            log(f"resuming after epoch {progress['epoch'] + 1} from {checkpoint}")
            return progress["epoch"] + 1, load_file(str(checkpoint / ROUTING_STATE)), progress["train_seconds"]
        return None

    def finish(self, core, summary: dict, clean_probs_csv: str) -> None:
        """Called by every process; the main one writes (``clean_probs_csv`` is only needed there)."""
        if self.main:
            core.save_trained(self.out / "weights")
            atomic_write_text(self.out / "clean_probs.csv", clean_probs_csv)
            atomic_write_json(self.out / SUMMARY, summary)
        self.accelerator.wait_for_everyone()  # the run is whole before any process reads it back


def keep_trainable_only(accelerator) -> None:
    """Checkpoints hold the trained pieces, not the frozen backbone (MBs instead of the whole model)."""

    def keep_trainable(models, weights, output_dir):
        for model, state in zip(models, weights):
            trainable = {n for n, p in model.named_parameters() if p.requires_grad}
            for name in [n for n in state if n not in trainable]:
                del state[name]

    accelerator.register_save_state_pre_hook(keep_trainable)
