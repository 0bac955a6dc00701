"""Grids of training runs from one YAML file: the cells, one run folder per cell, sequential runs that skip
finished cells and resume half-finished ones, and ``results.csv``.

The file (complete examples: ``experiments/cpu.yaml``, ``experiments/paper.yaml``)::

    base: {epochs: 6, warmup_epochs: 3}        # TrainConfig fields shared by every run
    datasets: [sst5, banking77]
    noises: [symmetric:0.6, clean]             # cells run noise by noise: list them in priority order
    methods: [full, adapter, bitfit, prompt, lora]
    routings: [none, clean]
    seeds: [0]
    reg_weights: [1.0]                         # optional, default [1.0]
    overrides:                                 # applied in order to every cell they match
      - match: {dataset: banking77}
        set: {dev_holdout: 0.1}
      - match: {method: [lora, prompt]}        # a list matches any of its values
        set: {lr: 1.0e-3}
    extra:                                     # more cells; a list gives one cell per value
      - {dataset: sst5, noise: symmetric:0.6, method: adapter, routing: [random, noisy], reg_weight: 0}

Rules:

* Cells run seed by seed; within a seed in the order noise, dataset, method, routing, reg_weight (outermost
  first), then the ``extra`` entries in their order. An ``extra`` entry without ``seed`` or ``reg_weight``
  takes the axes' values (without axes: seed 0, reg_weight 1.0). A cell listed twice runs once, at its
  first place.
* ``full`` has no PEFT modules to route: only its routing ``none`` cell runs; its other routings are
  skipped silently, so ``routings: [none, clean]`` gives nine cells for five methods.
* Plain PEFT (routing ``none``) has no regularization (train.py adds it only to routed epochs): its cells
  get reg_weight 0 whatever ``reg_weights`` says, so that axis does not multiply them.
* ``match`` takes the cell keys (dataset, noise, method, routing, reg_weight, seed) and any TrainConfig field
  as set so far (before the per-method defaults of ``TrainConfig.resolved``); ``set`` takes TrainConfig
  fields except those the grid owns (the cell keys and ``out``).
* The whole file is checked before any run starts; every problem is one ``UserError`` line.
"""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
from dataclasses import asdict, dataclass, replace
from itertools import product
from pathlib import Path

from .. import runs
from ..data import REGISTERED
from ..data.loaders import LOCAL_SUFFIXES
from ..errors import RunLocked, UserError
from ..noise import NoiseSpec
from ..peft import METHODS
from ..routing import STRATEGIES
from ..config import TrainConfig, config_defaults
from ..train import train

AXES = {"datasets": "dataset", "noises": "noise", "methods": "method", "routings": "routing", "seeds": "seed",
        "reg_weights": "reg_weight"}
REQUIRED_AXES = ("datasets", "noises", "methods", "routings", "seeds")
TOP_LEVEL = ("base", *AXES, "overrides", "extra")
CELL_KEYS = ("dataset", "noise", "method", "routing", "reg_weight", "seed")
# TrainConfig fields the grid sets itself: from the cell (its method is the field peft) and the run folder.
GRID_OWNED = {"dataset", "noise", "peft", "routing", "reg_weight", "seed", "out"}
RESULTS = "results.csv"
RESULT_COLUMNS = [*CELL_KEYS, "delivered_acc", "peak_acc", "avg_acc", "last_acc", "realized_noise_rate",
                  "estimated_noise_rate", "train_seconds", "run_dir"]


@dataclass(frozen=True)
class Cell:
    """One point of the grid; it names its run folder and its row of results.csv."""

    dataset: str
    noise: str
    method: str
    routing: str
    reg_weight: float
    seed: int

    @property
    def folder(self) -> str:
        """``{dataset}/{noise}/{method}-{routing}-reg{reg_weight}-s{seed}``, safe on every file system."""
        return (f"{_safe(self.dataset)}/{_safe(self.noise)}/"
                f"{self.method}-{self.routing}-reg{self.reg_weight:g}-s{self.seed}")

    def __str__(self) -> str:
        return f"{self.dataset} {self.noise} {self.method}-{self.routing} reg {self.reg_weight:g} seed {self.seed}"


@dataclass(frozen=True)
class PlannedRun:
    cell: Cell
    config: TrainConfig  # resolved; run_grid sets `out`


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "_"


# ---------------------------------------------------------------- reading and checking the file

def load_grid(config_path: str | Path) -> list[PlannedRun]:
    """Every run of the grid file in run order, each config checked by ``TrainConfig.resolved``."""
    where = str(config_path)
    spec = _read_yaml(Path(config_path))
    unknown = sorted(set(spec) - set(TOP_LEVEL))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(TOP_LEVEL)}")
    base = _fields(_mapping(spec.get("base") or {}, f"{where}: base"), f"{where}: base", settable=True)

    present = [a for a in REQUIRED_AXES if a in spec]
    if present and len(present) < len(REQUIRED_AXES):
        missing = [a for a in REQUIRED_AXES if a not in spec]
        raise UserError(f"{where}: missing axis {', '.join(missing)} (a grid needs all of "
                        f"{', '.join(REQUIRED_AXES)}; only `extra` cells need none)")
    axes = {key: _values(AXES[key], spec[key], f"{where}: {key}") for key in AXES if key in spec}
    seeds = axes.get("seeds", [0])
    reg_weights = axes.get("reg_weights", [TrainConfig.reg_weight])

    cells: list[Cell] = []
    if present:
        for seed, noise, dataset, method, routing, reg in product(
                seeds, axes["noises"], axes["datasets"], axes["methods"], axes["routings"], reg_weights):
            cells.append(_cell(dataset, noise, method, routing, reg, seed))
    for i, entry in enumerate(_list(spec.get("extra") or [], f"{where}: extra")):
        cells.extend(_extra_cells(entry, seeds, reg_weights, f"{where}: extra[{i}]"))
    # full runs only unrouted (see the module docstring); duplicates keep their first place; seed by seed.
    cells = list(dict.fromkeys(c for c in cells if c.method != "full" or c.routing == "none"))
    seed_rank = {seed: i for i, seed in enumerate(dict.fromkeys(c.seed for c in cells))}
    cells.sort(key=lambda c: seed_rank[c.seed])
    if not cells:
        raise UserError(f"{where}: the grid has no cells: give the axes {', '.join(REQUIRED_AXES)} or `extra` cells")

    overrides = [_override(o, f"{where}: overrides[{i}]")
                 for i, o in enumerate(_list(spec.get("overrides") or [], f"{where}: overrides"))]
    planned = [PlannedRun(cell, _config(cell, base, overrides, f"{where}: cell {cell}")) for cell in cells]
    folders: dict[str, Cell] = {}
    for run in planned:
        other = folders.setdefault(run.cell.folder, run.cell)
        if other != run.cell:
            raise UserError(f"{where}: cells {other} and {run.cell} would share the run folder {run.cell.folder}")
    return planned


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read grid config {path}: {getattr(exc, 'strerror', None) or exc}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"grid config {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    return _mapping(loaded, f"grid config {path}")


def _mapping(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise UserError(f"{where} must be a mapping of key: value, got {type(value).__name__}")
    return value


def _list(value, where: str) -> list:
    if not isinstance(value, list):
        raise UserError(f"{where} must be a list, got {type(value).__name__}")
    return value


def _values(key: str, value, where: str) -> list:
    """An axis or list-valued cell key: a list (or one value) of checked, normalized values."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise UserError(f"{where} is empty")
    return [_cell_value(key, item, where) for item in items]


def _cell_value(key: str, value, where: str):
    """A cell key's value, checked and in one spelling (noise ``symmetric:0.60`` -> ``symmetric:0.6``)."""
    if key in ("reg_weight", "seed"):
        return _fields({key: value}, where, settable=False)[key]
    if not isinstance(value, str):
        raise UserError(f"{where}: {key} must be text, got {value!r}")
    if key == "noise":
        try:
            return str(NoiseSpec.parse(value))
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
    if key == "dataset":
        if value.strip().lower() in REGISTERED:
            return value.strip().lower()
        if not value.lower().endswith(LOCAL_SUFFIXES) or not Path(value).expanduser().is_file():
            raise UserError(f"{where}: unknown data set {value!r}: use one of {', '.join(REGISTERED)} or an "
                            f"existing .csv, .tsv or .jsonl file")
        return value
    choices = METHODS if key == "method" else STRATEGIES
    if value not in choices:
        raise UserError(f"{where}: unknown {key} {value!r}: choose one of {', '.join(choices)}")
    return value


def _cell(dataset: str, noise: str, method: str, routing: str, reg_weight: float, seed: int) -> Cell:
    return Cell(dataset, noise, method, routing, 0.0 if routing == "none" else float(reg_weight), seed)


def _extra_cells(entry, seeds: list, reg_weights: list, where: str) -> list[Cell]:
    entry = _mapping(entry, where)
    unknown = sorted(set(entry) - set(CELL_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; a cell has {', '.join(CELL_KEYS)}")
    missing = [k for k in ("dataset", "noise", "method", "routing") if k not in entry]
    if missing:
        raise UserError(f"{where}: missing {', '.join(missing)}")
    values = {k: _values(k, entry[k], f"{where}.{k}") for k in entry}
    values.setdefault("seed", seeds)
    values.setdefault("reg_weight", reg_weights)
    return [_cell(*combo) for combo in product(*(values[k] for k in ("dataset", "noise", "method", "routing",
                                                                     "reg_weight", "seed")))]


def _fields(values: dict, where: str, settable: bool) -> dict:
    """TrainConfig fields from the file, converted and checked by TrainConfig.from_mapping; ``settable``
    refuses the fields the grid owns."""
    named = {str(k).replace("-", "_"): v for k, v in values.items()}
    owned = sorted(set(named) & GRID_OWNED) if settable else []
    if owned:
        raise UserError(f"{where}: {owned[0]} is set by the grid (its axes, `extra` cells and run folders), "
                        "not here")
    config = TrainConfig.from_mapping(named, where)
    return {k: getattr(config, k) for k in named}


def _override(entry, where: str) -> tuple[dict, dict]:
    """(match, set): match maps a TrainConfig field to the list of values it accepts."""
    entry = _mapping(entry, where)
    unknown = sorted(set(entry) - {"match", "set"})
    if unknown or "set" not in entry:
        raise UserError(f"{where}: an override is {{match: {{...}}, set: {{...}}}}"
                        + (f"; unknown key(s) {', '.join(unknown)}" if unknown else "; `set` is missing"))
    match = {}
    for key, value in _mapping(entry.get("match") or {}, f"{where}.match").items():
        if key in CELL_KEYS:
            match["peft" if key == "method" else key] = _values(key, value, f"{where}.match")
        else:
            items = value if isinstance(value, list) else [value]
            match[key] = [_fields({key: item}, f"{where}.match", settable=False)[key] for item in items]
    return match, _fields(_mapping(entry["set"], f"{where}.set"), f"{where}.set", settable=True)


def _config(cell: Cell, base: dict, overrides: list[tuple[dict, dict]], where: str) -> TrainConfig:
    values = {**base, "dataset": cell.dataset, "noise": cell.noise, "peft": cell.method, "routing": cell.routing,
              "reg_weight": cell.reg_weight, "seed": cell.seed}
    for match, changes in overrides:
        if all(values.get(k, getattr(TrainConfig, k)) in accepted for k, accepted in match.items()):
            values.update(changes)
    try:
        return TrainConfig(**values).resolved()
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


# ---------------------------------------------------------------- running

def run_grid(config_path: str | Path, out_dir: str | Path, log=print, progress: bool = False,
             workers: int = 1) -> dict:
    """Run every cell of the grid file into ``out_dir``: one after the other, or ``workers`` at a time (in
    processes of their own, for a GPU that one small run leaves mostly idle), taken in cell order.

    A cell whose folder has summary.json is skipped, one with only config.json is resumed. results.csv is
    rebuilt from all finished summaries after every run, so a killed and restarted grid ends the same. Each cell
    runs under its folder's lock (runs.RunLock): two grids on one --out share the cells, each leaving to the
    other the cells it has.
    """
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    planned = load_grid(config_path)
    out_dir = Path(out_dir)
    for run in planned:  # before any work: a finished run must be the run this file asks for
        stale = _stale_fields(out_dir / run.cell.folder, run.config)
        if stale:
            raise UserError(f"{out_dir / run.cell.folder} holds a run with a different config ({', '.join(stale)}):"
                            " choose another --out or delete that folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out_dir}: {exc.strerror or exc}") from None
    results = write_results(out_dir, planned)

    total = len(planned)
    done = sum((out_dir / r.cell.folder / runs.SUMMARY).exists() for r in planned)
    log(f"grid {config_path}: {total} runs, {done} already finished; results in {results}")
    seconds: list[float] = []  # train_seconds of the runs finished by this call, for the ETA
    # Without config.json a folder holds at most leftovers of a run killed while loading: start afresh.
    jobs = [(run.cell, replace(run.config, out=str(out_dir / run.cell.folder)),
             (out_dir / run.cell.folder / runs.CONFIG).exists())
            for run in planned if not (out_dir / run.cell.folder / runs.SUMMARY).exists()]
    for cell, summary in run_configs(jobs, workers, progress=progress, log=log, first=done + 1, total=total,
                                     cells=True):
        if isinstance(summary, str):
            log(f"skipped {cell}: {summary}")
            continue
        seconds.append(summary["train_seconds"])
        done += 1
        write_results(out_dir, planned)
        eta = statistics.mean(seconds) * (total - done) / workers
        log(f"[{done}/{total} done] {cell}: delivered {_share(summary.get('delivered_acc'))} "
            f"peak {summary['peak_acc']:.1%} avg {summary['avg_acc']:.1%} "
            f"in {_duration(summary['train_seconds'])}; ETA {_duration(eta)}")
    write_results(out_dir, planned)  # cells another grid finished meanwhile count too
    done = sum((out_dir / r.cell.folder / runs.SUMMARY).exists() for r in planned)
    return {"config": str(config_path), "out": str(out_dir), "results": str(results), "runs": total,
            "finished": done, "ran_now": len(seconds)}


def run_configs(jobs: list[tuple], workers: int = 1, progress: bool = False, log=print, first: int = 1,
                total: int | None = None, cells: bool = False):
    """Train each (key, TrainConfig, resume) job; yields (key, summary) as runs finish. ``workers`` > 1 runs
    that many at once in spawned processes (each with its share of the CPU threads), in job order. ``cells``:
    grid cells (run_cell), whose resume is decided under the folder's lock; a cell left to another run yields
    the reason (a str) instead of a summary."""
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    total = total or len(jobs)

    def announce(i, key, config, resume):
        log(f"[{first + i}/{total}] {'resuming' if resume else 'starting'} {key} -> {config.out}")

    if workers == 1:
        for i, (key, config, resume) in enumerate(jobs):
            announce(i, key, config, resume)
            yield key, (run_cell(config, progress, log) if cells else
                        train(config, resume=resume, overwrite=not resume, progress=progress, log=log))
        return
    import multiprocessing
    import os
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # each worker's share of the cores, unless OMP_NUM_THREADS says how many (torch's own default reads it too)
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold CUDA or threads
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init, initargs=(threads,)) as pool:
        pending = {}
        for i, (key, config, resume) in enumerate(jobs):
            announce(i, key, config, resume)  # queued: a worker takes it as soon as one is free
            pending[pool.submit(_train_quietly, config, resume, cells)] = key
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                yield pending.pop(future), future.result()


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _train_quietly(config: TrainConfig, resume: bool, cells: bool = False) -> dict | str:
    quiet = lambda *a, **k: None  # noqa: E731
    if cells:
        return run_cell(config, False, quiet)
    return train(config, resume=resume, overwrite=not resume, progress=False, log=quiet)


def run_cell(config: TrainConfig, progress: bool = False, log=print) -> dict | str:
    """One grid cell under its folder's lock, deciding there whether to resume: another grid on the same
    folder may have started or finished the cell since this one planned. Returns the summary, or why the cell
    was left alone (another live run has it, or finished it)."""
    folder = Path(config.out)
    try:
        with runs.RunLock(folder, log):
            if (folder / runs.SUMMARY).exists():
                return "another run finished it meanwhile"
            resume = (folder / runs.CONFIG).exists()
            return train(config, resume=resume, overwrite=not resume, progress=progress, log=log)
    except RunLocked as exc:
        return f"in use by pid {exc.pid} on {exc.host}; left to that run"


def _stale_fields(folder: Path, config: TrainConfig) -> list[str]:
    """Fields in which the run already in ``folder`` differs from ``config`` (none if there is no run)."""
    path = folder / runs.CONFIG
    if not path.exists():
        return []
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return ["config.json unreadable"]
    return runs.config_diff(old, asdict(config), config_defaults())


def write_results(out_dir: Path, planned: list[PlannedRun]) -> Path:
    """results.csv from every finished run of the grid, in cell order, written atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(RESULT_COLUMNS)
    for run in planned:
        path = out_dir / run.cell.folder / runs.SUMMARY
        if not path.exists():
            continue
        summary = json.loads(path.read_text())
        c = run.cell
        writer.writerow([c.dataset, c.noise, c.method, c.routing, c.reg_weight, c.seed,
                         *(summary.get(k) for k in RESULT_COLUMNS[6:-1]), c.folder])  # older runs lack some
    runs.atomic_write_text(out_dir / RESULTS, buf.getvalue())
    return out_dir / RESULTS


def _share(value) -> str:
    return "-" if value is None else f"{value:.1%}"  # runs made before Delivered was recorded lack it


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
