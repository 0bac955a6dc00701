"""The run folder: atomic writes, the config that identifies a run, per-epoch checkpoints and resume."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import UserError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
# Fields that may differ between a run and its resumption without making it a different run.
NON_IDENTITY = {"out", "resume", "overwrite", "progress", "json", "config", "realized_noise_rate", "label_names",
                "versions"}


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
