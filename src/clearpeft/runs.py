"""The run folder: atomic writes, the config that identifies a run, per-epoch checkpoints and resume."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import socket
import tempfile
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import RunLocked, UserError, WriteError, first_line

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
BEST = "best"  # checkpoints/best: the weights --keep best-dev hands over
# pid and host of the process that has the folder (RunLock); not part of the run
LOCK = "run.lock"
# clean_probs.csv, the label-issue report (train.clean_probs_csv; cleanlab's names where they mean the same)
LABEL_ISSUE_COLUMNS = ("index", "text", "given_label", "predicted_label", "label_score", "is_label_issue",
                       "clean_prob", "given_label_id", "predicted_label_id")
# Fields that may differ between a run and its resumption without making it a different run: where it is, how
# it was started, and how fast it runs (compiling changes the speed; the numbers only within rounding).
NON_IDENTITY = {"out", "resume", "overwrite", "progress", "json", "config", "realized_noise_rate", "label_names",
                "versions", "compile"}


_UMASK = os.umask(0)
os.umask(_UMASK)


def _write_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a failed write rather than a bug: an OSError, safetensors' I/O error, or torch's file
    writer failing (a full disk makes torch.save raise RuntimeError "unexpected pos ..." with no errno)."""
    if isinstance(exc, OSError):
        return True
    text = str(exc)
    if type(exc).__name__ == "SafetensorError":
        return "I/O error" in text or "os error" in text
    return isinstance(exc, RuntimeError) and any(
        m in text for m in ("PytorchStreamWriter", "inline_container", "file write failed", "unexpected pos"))


def _cause(exc: BaseException, path: Path) -> tuple[str, int | None]:
    """The cause of a failed write in words, and its errno where one is known or the disk is found full."""
    number = exc.errno if isinstance(exc, OSError) and exc.errno else None
    if number is None:
        found = re.search(r"os error (\d+)", str(exc))  # safetensors' Rust I/O errors carry the errno in text
        number = int(found.group(1)) if found else None
    if number is None:
        try:
            stat = os.statvfs(next(p for p in [path, *path.parents] if p.exists()))
            if stat.f_bavail * stat.f_frsize < 1 << 20:
                number = errno.ENOSPC
        except (OSError, StopIteration):
            pass
    if number:
        return os.strerror(number), number
    text = re.sub(r"^\[enforce fail at [^\]]*\][ .]*", "", first_line(exc))  # torch's C++ assertion prefix
    return (f"torch could not write the file ({text})" if isinstance(exc, RuntimeError) else text), None


@contextmanager
def writing(path: str | Path):
    """Turn a failed write inside the block into one WriteError naming ``path`` and the cause."""
    try:
        yield
    except WriteError:
        raise
    except Exception as exc:
        if not _write_failure(exc):
            raise
        cause, number = _cause(exc, Path(path))
        raise WriteError(path, cause, number) from exc


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    with writing(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results are meant to be shared
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


def metric_rows(path: Path) -> list[dict]:
    """metrics.jsonl's rows, leaving out a line that is not whole (a write cut short by a full disk in an older
    version, or by the machine going down): its epoch is redone on resume anyway."""
    rows = []
    for line in (path.read_text(encoding="utf-8", errors="replace").splitlines() if path.exists() else []):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int):
            rows.append(row)
    return rows


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
    elif not existing.exists() and out.exists() and any(p.name != LOCK for p in out.iterdir()) and not overwrite:
        raise UserError(f"{out} is not empty and holds no run: choose an empty or new folder, or --overwrite")
    parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to output folder {out}: permission denied in {parent}")
    return out


def open_run_dir(out: Path, overwrite: bool) -> Path:
    """Create the checked folder (emptied first with --overwrite; the lock this run holds stays)."""
    if overwrite and out.exists():
        for item in out.iterdir():
            if item.name == LOCK:
                continue
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item)
            else:
                item.unlink()
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
        """status.json says where a run is (epoch and phase: train, pass, eval, checkpoint, done; stopped after
        SIGTERM or Ctrl-C), for a user watching a long run and for the tests that kill a run at a chosen moment."""
        if self.main:
            atomic_write_json(self.out / "status.json", {"epoch": epoch, "phase": phase, "time": time.time()})

    def history(self, before_epoch: int) -> list[dict]:
        """The metrics of the epochs before ``before_epoch``; metrics.jsonl is cut back to them (a run killed
        after its metrics line but before the checkpoint redoes that epoch)."""
        rows = [m for m in metric_rows(self.out / METRICS) if m["epoch"] < before_epoch]
        self.accelerator.wait_for_everyone()
        if self.main:
            atomic_write_text(self.out / METRICS, "".join(json.dumps(m) + "\n" for m in rows))
        return rows

    def append_metrics(self, row: dict) -> None:
        """One line, written whole or not at all: a failed or interrupted write is cut back off the file."""
        if not self.main:
            return
        path, data = self.out / METRICS, (json.dumps(row) + "\n").encode()
        with writing(path):
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                size = os.lseek(fd, 0, os.SEEK_END)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                except BaseException:
                    os.ftruncate(fd, size)  # frees, so it works on a full disk
                    raise
            finally:
                os.close(fd)

    def save_checkpoint(self, epoch: int, arrays: dict, train_seconds: float) -> None:
        """checkpoints/epoch-E, atomically (temporary folder, hashes, rename): Accelerate's state (trainable
        weights, optimizer, scheduler, every process's random states) and the routing state ``arrays``
        (None values are left out). The previous checkpoint stays as a fallback in case the newest is damaged."""
        from safetensors.numpy import save_file

        folder = self.out / CHECKPOINTS
        tmp, final = folder / f".tmp-epoch-{epoch}", folder / f"epoch-{epoch}"
        try:
            with writing(final):  # a failed write names the checkpoint, whichever of its files it was
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
                    commit_checkpoint(tmp, final)
        except WriteError as exc:
            raise WriteError(final, exc.cause, exc.errno) from exc
        finally:
            if self.main:  # a half-written checkpoint is never used; removing it gives the space back
                shutil.rmtree(tmp, ignore_errors=True)
        if self.main:
            for old in _checkpoints(folder):
                if int(old.name.split("-")[1]) < epoch - 1:
                    shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()  # nobody goes on (or resumes) before the checkpoint is committed

    def load_checkpoint(self, checkpoint: Path | None, log) -> tuple[int, dict, float] | None:
        """Restore ``checkpoint`` (resumable_checkpoint's choice, vetted before any data was loaded) into the
        prepared objects; returns (next epoch, routing arrays, train seconds so far), or None for no checkpoint."""
        from safetensors.numpy import load_file

        if checkpoint is None:
            return None
        try:
            self.accelerator.load_state(str(checkpoint), strict=False)  # frozen weights come from the backbone
            arrays = load_file(str(checkpoint / ROUTING_STATE))
        except Exception as exc:  # sealed and vetted, yet not this run's shapes: written by something else
            raise UserError(f"checkpoint {checkpoint.name} of {self.out} does not fit this run "
                            f"({first_line(exc)}): refusing to resume from it") from exc
        progress = json.loads((checkpoint / "progress.json").read_text())
        log(f"resuming after epoch {progress['epoch'] + 1} from {checkpoint}")
        return progress["epoch"] + 1, arrays, progress["train_seconds"]

    def save_best(self, core, epoch: int) -> None:
        """checkpoints/best: the trained pieces of the best epoch by dev accuracy so far (--keep best-dev),
        sealed like a checkpoint. The previous best is moved aside before the new one moves in, so a crash
        in between leaves one of them (best_folder finds it)."""
        if self.main:
            folder = self.out / CHECKPOINTS
            tmp, final, old = folder / ".tmp-best", folder / BEST, folder / ".old-best"
            try:
                with writing(final):
                    folder.mkdir(exist_ok=True)
                    shutil.rmtree(tmp, ignore_errors=True)
                    core.save_trained(tmp)
                    atomic_write_json(tmp / "kept.json", {"epoch": epoch})
                    atomic_write_json(tmp / "digest.json", folder_digests(tmp))
                    if final.exists():
                        shutil.rmtree(old, ignore_errors=True)
                        os.replace(final, old)
                    os.replace(tmp, final)
                    shutil.rmtree(old, ignore_errors=True)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def best_folder(self) -> tuple[Path, int] | None:
        """(folder, epoch) of the intact best-dev weights, or None."""
        for candidate in (self.out / CHECKPOINTS / BEST, self.out / CHECKPOINTS / ".old-best"):
            if candidate.is_dir() and checkpoint_is_intact(candidate):
                return candidate, int(json.loads((candidate / "kept.json").read_text())["epoch"])
        return None

    def finish(self, core, summary: dict, clean_probs_csv: str, summary_file: str = SUMMARY) -> None:
        """Called by every process; the main one writes (``clean_probs_csv`` is only needed there)."""
        if self.main:
            core.save_trained(self.out / "weights")
            from .modelcard import write_model_card

            write_model_card(self.out, summary)  # weights/README.md, the Hugging Face model card
            atomic_write_text(self.out / "clean_probs.csv", clean_probs_csv)
            atomic_write_json(self.out / summary_file, summary)
        self.accelerator.wait_for_everyone()  # the run is whole before any process reads it back


def keep_trainable_only(accelerator) -> None:
    """Checkpoints hold the trained pieces, not the frozen backbone (MBs instead of the whole model)."""

    def keep_trainable(models, weights, output_dir):
        for model, state in zip(models, weights):
            trainable = {n for n, p in model.named_parameters() if p.requires_grad}
            for name in [n for n in state if n not in trainable]:
                del state[name]

    accelerator.register_save_state_pre_hook(keep_trainable)


# ---------------------------------------------------------------- resuming: which checkpoint, and is it safe

_CHECKPOINT_NAME = re.compile(r"epoch-(\d+)")
PICKLE_SUFFIXES = (".bin", ".pkl", ".pt", ".pth")
# Every global the pickles of a checkpoint may name: what torch.save writes for tensors, and numpy's pieces of
# the random states. Accelerate reads these files with torch's weights-only unpickler; this list is a subset of
# what that unpickler allows, checked first without running anything from the file.
_TENSOR_GLOBALS = {
    "collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
    "torch._tensor._rebuild_from_type_v2", "torch.Tensor", "torch.nn.parameter.Parameter", "torch.Size",
    "torch.device", "_codecs.encode", "codecs.encode", "numpy.dtype", "numpy.ndarray",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
}
_TENSOR_GLOBAL = re.compile(r"torch\.[A-Za-z0-9]*Storage|torch\.storage\.UntypedStorage|numpy\.dtypes\.\w+DType|"
                            r"torch\.(u?int(8|16|32|64)|float(16|32|64)|bfloat16|bool|complex(64|128))")


class _Inert:
    """What the scan builds in place of every object the pickle makes: it takes any call and does nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


class _GlobalScan(pickle.Unpickler):
    """Walks a pickle and lists the globals it names (GLOBAL, STACK_GLOBAL, INST, OBJ, extension codes all
    come through find_class); each is replaced by _Inert, so nothing the file names is imported or called."""

    def __init__(self, file):
        super().__init__(file)
        self.names: list[str] = []

    def find_class(self, module, name):
        self.names.append(f"{module}.{name}")
        return _Inert

    def persistent_load(self, pid):  # torch's zip format: a tensor's storage, kept outside the pickle
        return _Inert()


def _pickle_names(data: bytes) -> list[str]:
    scan = _GlobalScan(io.BytesIO(data))
    scan.load()
    return scan.names


def vet_pickle(path: Path, where: str) -> None:
    """Refuse (UserError) a pickle that names anything but tensors and numbers, or that torch.save did not
    write (torch's zip format), before anything reads it for real."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                entries = [i for i in archive.infolist() if i.filename.endswith("data.pkl")]
                if len(entries) != 1 or entries[0].file_size > 1 << 28:
                    raise ValueError("no single data.pkl of a reasonable size")
                names = _pickle_names(archive.read(entries[0]))
            torch_zip = True
        else:
            names, torch_zip = _pickle_names(path.read_bytes()), False
    except Exception as exc:  # not a pickle at all, truncated, a broken archive
        raise UserError(f"{where}: {path.name} is damaged ({first_line(exc)}): refusing to load it") from None
    foreign = [n for n in names if n not in _TENSOR_GLOBALS and not _TENSOR_GLOBAL.fullmatch(n)]
    if foreign:
        raise UserError(f"{where}: {path.name} holds more than tensors (it names {foreign[0]}): refusing to load it")
    if not torch_zip:
        raise UserError(f"{where}: {path.name} is not a file torch.save wrote: refusing to load it")


def vet_checkpoint(checkpoint: Path, out: Path) -> None:
    """What a resume reads from ``checkpoint``, checked before the run loads any data: progress.json, the
    safetensors headers, and every pickle (vet_pickle). A sealed checkpoint that fails is refused, not skipped:
    its digest was rewritten to match, so something other than clearpeft wrote it."""
    from safetensors import safe_open

    where = f"checkpoint {checkpoint.name} of {out}"
    try:
        progress = json.loads((checkpoint / "progress.json").read_text())
        epoch, seconds = progress["epoch"], progress["train_seconds"]
        if type(epoch) is not int or f"epoch-{epoch}" != checkpoint.name or not isinstance(seconds, (int, float)) \
                or isinstance(seconds, bool) or not 0 <= seconds < float("inf"):
            raise ValueError(f"epoch {epoch!r}, train_seconds {seconds!r}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{where}: progress.json is damaged ({first_line(exc)}): refusing to load it") from None
    for path in sorted(checkpoint.iterdir()):
        if path.suffix in PICKLE_SUFFIXES:
            vet_pickle(path, where)
        elif path.suffix == ".safetensors":
            try:
                with safe_open(str(path), "np") as handle:
                    handle.keys()
            except Exception as exc:
                raise UserError(f"{where}: {path.name} is damaged ({first_line(exc)}): refusing to load it") from None
    if not (checkpoint / ROUTING_STATE).is_file():
        raise UserError(f"{where}: {ROUTING_STATE} is missing: refusing to load it")


def _checkpoints(folder: Path) -> list[Path]:
    """The checkpoint folders epoch-N under ``folder``, newest first."""
    found = [p for p in folder.iterdir() if _CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir()] \
        if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]), reverse=True)


def newest_intact_checkpoint(out: str | Path) -> Path | None:
    checkpoints = Path(out) / CHECKPOINTS
    return next((c for c in _checkpoints(checkpoints) if checkpoint_is_intact(c)), None)


def resumable_checkpoint(out: str | Path, log) -> Path | None:
    """The newest intact checkpoint of the run in ``out``, vetted (vet_checkpoint); a damaged one (hash
    mismatch: a crash, a bad disk) is passed over for the one before it. None: nothing to resume from."""
    out = Path(out)
    for checkpoint in _checkpoints(out / CHECKPOINTS):
        if not checkpoint_is_intact(checkpoint):
            log(f"warning: checkpoint {checkpoint.name} is damaged (hash mismatch); trying the previous one")
            continue
        vet_checkpoint(checkpoint, out)
        return checkpoint
    return None


# ---------------------------------------------------------------- one run per folder at a time

def is_main_launch_process() -> bool:
    """Rank 0, or no launcher: under `accelerate launch` / torchrun only the main process takes the lock."""
    try:
        return int(os.environ.get("RANK") or 0) == 0
    except ValueError:
        return True


class RunLock:
    """``out/run.lock``: an exclusive flock on a file holding the owner's pid and host. The kernel drops the
    flock when its process dies (kill -9 too), so a lock file whose flock can be taken is stale: taken over with
    a warning. Re-entrant within a process (a grid holds a cell's lock around train()). Where the file system
    has no flock, the file's pid is checked instead (on this host; a lock from another host is left alone).
    Only the main process of a launch takes it; the others get a lock that does nothing."""

    _held: dict[str, "RunLock"] = {}

    def __init__(self, out: str | Path, log=print):
        self.out, self.log = Path(out), log
        self.path = self.out / LOCK
        self.fd: int | None = None
        self._outer: RunLock | None = None  # the lock this process already holds on the folder, if any
        self.made: list[Path] = []  # the folders acquire() created, removed again if the run left them empty

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _key(self) -> str:
        return os.path.realpath(self.out)

    def acquire(self) -> None:
        if not is_main_launch_process():
            return
        held = RunLock._held.get(self._key())
        if held is not None:
            self._outer = held
            return
        if self.out.exists() and not self.out.is_dir():
            raise UserError(f"--out {self.out} is a file, not a folder")
        self.made = [p for p in [self.out, *self.out.parents] if not p.exists()][::-1]
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self.made = []
            raise UserError(f"cannot write to output folder {self.out}: {exc.strerror or exc}") from exc
        try:
            self._take()
        except BaseException:
            self._let_go()
            raise
        RunLock._held[self._key()] = self

    def _take(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX
            fcntl = None
        while True:
            fd, flock = self._open(os.O_RDWR | os.O_CREAT), "ok"
            try:
                try:
                    if fcntl is None:
                        raise OSError(errno.ENOLCK, "no flock")
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise self._locked(self._owner(fd, wait=True)) from None
                except OSError as exc:
                    if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                        raise
                    flock = "unsupported"
                if flock == "ok":  # its owner may have removed the file between our open and our flock
                    try:
                        flock = "ok" if os.fstat(fd).st_ino == os.stat(self.path).st_ino else "moved"
                    except FileNotFoundError:
                        flock = "moved"
            except BaseException:  # refused, or stopped (Ctrl-C) right here: no descriptor stays open
                os.close(fd)
                raise
            if flock == "ok":
                break
            os.close(fd)
            if flock == "unsupported":
                self._take_without_flock()
                return
        self.fd = fd
        self._claim(self._owner(fd))

    def _take_without_flock(self) -> None:
        while True:
            try:
                self.fd = self._open(os.O_RDWR | os.O_CREAT | os.O_EXCL)
                break
            except FileExistsError:
                fd = os.open(self.path, os.O_RDONLY)
                owner = self._owner(fd, wait=True)
                os.close(fd)
                pid = owner.get("pid")
                if owner.get("host") != socket.gethostname() or not isinstance(pid, int) or _alive(pid):
                    raise self._locked(owner) from None
                self.path.unlink(missing_ok=True)
                self.log(f"warning: {self.path}: the run of pid {pid} is gone; taking its lock over")
        self._claim({})

    def _open(self, flags: int) -> int:
        """The lock file, opened; a folder one may not write to is bad input (exit 2), a full one a failed
        write (exit 1)."""
        try:
            return os.open(self.path, flags, 0o666)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise WriteError(self.path, os.strerror(exc.errno), exc.errno) from exc
            raise UserError(f"cannot write to output folder {self.out}: {exc.strerror or exc}") from exc

    def _claim(self, previous: dict) -> None:
        if previous.get("pid") is not None and previous.get("pid") != os.getpid():
            self.log(f"warning: {self.path}: taking over the stale lock of pid {previous.get('pid')} on "
                     f"{previous.get('host', 'an unknown host')} (its process is gone)")
        data = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode()
        with writing(self.path):
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, data, 0)
            os.fsync(self.fd)

    @staticmethod
    def _owner(fd: int, wait: bool = False) -> dict:
        """The lock file's pid and host; ``wait``: a moment for an owner that has the flock but has not
        written them yet."""
        for _ in range(20 if wait else 1):
            try:
                owner = json.loads(os.pread(fd, 4096, 0) or b"{}")
                if isinstance(owner, dict) and (owner or not wait):
                    return owner
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        return {}

    def _locked(self, owner: dict) -> RunLocked:
        pid, host = owner.get("pid"), owner.get("host")
        since = owner.get("since")
        when = f" since {time.strftime('%H:%M:%S', time.localtime(since))}" if isinstance(since, (int, float)) \
            else ""
        return RunLocked(f"{self.out} is in use by another run (pid {pid if pid is not None else 'unknown'} on "
                         f"{host or 'an unknown host'}{when}): wait for it to end, or stop it", pid, host)

    def release(self) -> None:
        if self._outer is not None:  # the outer holder releases it
            self._outer = None
            return
        if self.fd is None:
            return
        RunLock._held.pop(self._key(), None)
        self._let_go()

    def _let_go(self) -> None:
        if self.fd is not None:
            try:
                self.path.unlink(missing_ok=True)  # before the flock goes: nobody takes a file about to go
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None
        self._remove_made()

    def _remove_made(self) -> None:
        """A run that failed before writing anything leaves no folder behind (as before there was a lock)."""
        for folder in reversed(self.made):
            try:
                folder.rmdir()
            except OSError:
                break
        self.made = []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
