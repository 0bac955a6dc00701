"""A run folder under stress: tampered checkpoints and run folders, a full disk, two processes on one folder,
SIGTERM and Ctrl-C. Each ends in one line and a known exit code; nothing in a tampered file runs; the newest
intact checkpoint survives; --resume then gives the metrics of an uninterrupted run.

Runs are tiny (32 SST-5 samples, 16 tokens, 3 epochs) and in-process where the test allows (cli.main): a
subprocess pays ~10 s of imports and model loading, a run in this process ~1 s of setup."""

import errno
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import clearpeft
from clearpeft import runs
from clearpeft.cli import main
from clearpeft.errors import RunStopped
from clearpeft.train import TIMING_FIELDS

TINY = ["--dataset", "sst5", "--peft", "bitfit", "--noise", "symmetric:0.6", "--routing", "clean", "--epochs", "3",
        "--warmup-epochs", "1", "--max-train-samples", "32", "--max-eval-samples", "16", "--batch-size", "8",
        "--eval-batch-size", "4", "--max-length", "16", "--eval-passes", "0", "--seed", "5"]
# the same run through clearpeft.fit
TINY_FIT = dict(peft="bitfit", noise="symmetric:0.6", routing="clean", epochs=3, warmup_epochs=1, max_train_samples=32,
                max_eval_samples=16, batch_size=8, eval_batch_size=4, max_length=16, eval_passes=0, seed=5)
SPACE = "No space left on device"


def train(capsys, out, *extra):
    """One in-process `clearpeft train` of the tiny run: (exit code, stderr lines)."""
    code = main(["train", *TINY, "--out", str(out), "--json", *extra])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def ours(lines):
    """clearpeft's own lines of stderr (a library may warn there too)."""
    return [line for line in lines if line.startswith("clearpeft:")]


def rows(run):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def checkpoints_intact(run):
    """Every checkpoint left is whole (its hashes match) and no half-written one lies about."""
    folder = run / "checkpoints"
    names = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    assert not [n for n in names if n.startswith(".tmp")], names
    assert all(runs.checkpoint_is_intact(folder / n) for n in names), names
    return [n for n in names if n != runs.BEST]  # the epochs' checkpoints (best/ is checked above too)


def status(run):
    try:
        return json.loads((run / "status.json").read_text())
    except (OSError, ValueError):
        return {}


class When:
    """A watcher thread: once status.json reports ``phase`` of ``epoch``, wait ``delay`` and call ``act``.
    Stopped by the with-block's end, so it never acts after the run it watches."""

    def __init__(self, run, epoch, phase, act, delay=0.0):
        self.run, self.epoch, self.phase, self.act, self.delay = run, epoch, phase, act, delay
        self.done, self.stop = threading.Event(), threading.Event()

    def __enter__(self):
        threading.Thread(target=self._watch, daemon=True).start()
        return self

    def _watch(self):
        while not self.stop.is_set():
            now = status(self.run)
            if now.get("epoch") == self.epoch and now.get("phase") == self.phase:
                time.sleep(self.delay)
                if not self.stop.is_set():
                    self.act()
                    self.done.set()
                return
            time.sleep(0.003)

    def __exit__(self, *exc):
        self.stop.set()


def send(signum):
    return lambda: os.kill(os.getpid(), signum)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, in this process: what every interrupted and resumed run must end with."""
    run = tmp_path_factory.mktemp("reliability") / "whole"
    assert main(["train", *TINY, "--out", str(run), "--json"]) == 0
    assert not (run / runs.LOCK).exists()  # released at the end of a run
    return run, rows(run), json.loads((run / "summary.json").read_text())


class Payload:
    """Unpickled by anything but a weights-only reader, it writes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious(path, marker, kind):
    """Replace ``path`` with a pickle that runs code: torch.save's zip format or a bare pickle."""
    if kind == "zip":
        torch.save({"state": Payload(marker), "param_groups": []}, path)
    else:
        path.write_bytes(pickle.dumps({"state": Payload(marker)}))


def reseal(checkpoint):
    """Rewrite digest.json to match the tampered files, as an attacker who knows the format would."""
    (checkpoint / "digest.json").write_text(json.dumps(runs.folder_digests(checkpoint)))
    assert runs.checkpoint_is_intact(checkpoint)


# ---------------------------------------------------------------- tampered files

@pytest.mark.slow
def test_the_payload_is_live(tmp_path):
    """The payload of the tests below does write its marker when something unpickles it for real."""
    for kind in ("zip", "raw"):
        marker = tmp_path / f"ran-{kind}"
        malicious(tmp_path / "x.bin", marker, kind)
        if kind == "zip":
            torch.load(tmp_path / "x.bin", weights_only=False)
        else:
            pickle.loads((tmp_path / "x.bin").read_bytes())
        assert marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["zip", "raw"])
@pytest.mark.parametrize("name", ["optimizer.bin", "scheduler.bin", "random_states_0.pkl"])
def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys, reference, name, kind):
    run, marker = tmp_path / "run", tmp_path / "marker"
    shutil.copytree(reference[0], run)
    newest = run / "checkpoints" / "epoch-2"
    malicious(newest / name, marker, kind)
    reseal(newest)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, err = train(capsys, run, "--resume")
    assert code == 2 and len(ours(err)) == 1 and "Traceback" not in "".join(err), err
    line = ours(err)[0]
    assert line.startswith("clearpeft: error: checkpoint epoch-2 of ") and name in line, line
    assert f"{name} holds more than tensors (it names posix.system): refusing to load it" in line, line
    assert not marker.exists()
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # and nothing was touched


@pytest.mark.slow
@pytest.mark.parametrize("case", ["progress.json", "model.safetensors", "routing_state.safetensors"])
def test_a_checkpoint_with_other_files_tampered_is_refused(tmp_path, capsys, reference, case):
    run, marker = tmp_path / "run", tmp_path / "marker"
    shutil.copytree(reference[0], run)
    newest = run / "checkpoints" / "epoch-2"
    if case == "progress.json":
        (newest / case).write_text(json.dumps({"epoch": "2; rm -rf /", "train_seconds": 1.0}))
    else:  # a pickle under a safetensors name: safetensors never unpickles
        malicious(newest / case, marker, "zip")
    reseal(newest)
    code, err = train(capsys, run, "--resume")
    assert code == 2 and len(ours(err)) == 1, err
    assert case in ours(err)[0] and "damaged" in ours(err)[0] and not marker.exists(), err


def weights_tampering(run, marker):
    """case -> what it does to a finished run folder."""
    import numpy as np
    from safetensors.torch import load_file, save_file

    config, method = run / "config.json", run / "weights" / "method.json"

    def edit(path, **changes):
        data = json.loads(path.read_text())
        data.update(changes)
        path.write_text(json.dumps(data))

    def wrong_shape():
        state = load_file(run / "weights" / "trained.safetensors")
        name = sorted(state)[0]
        state[name] = torch.zeros(3, 3)
        save_file(state, run / "weights" / "trained.safetensors")

    return {
        "config not JSON": lambda: config.write_text("{"),
        "config a list": lambda: config.write_text("[]"),
        "no label names": lambda: edit(config, label_names="ab"),
        "max_length text": lambda: edit(config, max_length="16; touch x"),
        "model a number": lambda: edit(config, model=5),
        "unknown method": lambda: edit(config, peft="evil"),
        "method differs": lambda: edit(method, method="lora"),
        "a trillion labels": lambda: edit(method, num_labels=10**12),
        "unknown option": lambda: edit(method, config={"include_layernorm": True, "hook": "os.system"}),
        "weights a pickle": lambda: malicious(run / "weights" / "trained.safetensors", marker, "zip"),
        "weights truncated": lambda: (run / "weights" / "trained.safetensors").write_bytes(
            (run / "weights" / "trained.safetensors").read_bytes()[:50]),
        "weights of another shape": wrong_shape,
        "report garbage": lambda: (run / "clean_probs.csv").write_bytes(np.random.default_rng(0).bytes(300)),
    }


CASES = list(weights_tampering(Path("."), None))


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_predict_and_label_issues_refuse_a_tampered_run(tmp_path, capsys, reference, case):
    run, marker = tmp_path / "run", tmp_path / "marker"
    shutil.copytree(reference[0], run)
    weights_tampering(run, marker)[case]()
    command = ["label-issues", str(run)] if case == "report garbage" else ["predict", str(run), "--text", "fine ."]
    code = main(command)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(ours(err)) == 1 and ours(err)[0].startswith("clearpeft: error: "), (case, err)
    assert "damaged" in ours(err)[0], (case, err)
    assert not marker.exists()


@pytest.mark.slow
def test_pickles_beside_the_weights_are_never_read(tmp_path, capsys, reference):
    run, marker = tmp_path / "run", tmp_path / "marker"
    shutil.copytree(reference[0], run)
    (run / "weights" / "peft").mkdir(exist_ok=True)
    for path in (run / "weights" / "pytorch_model.bin", run / "weights" / "trained.bin",
                 run / "weights" / "peft" / "adapter_model.bin"):
        malicious(path, marker, "zip")
    assert main(["predict", str(run), "--text", "a fine film .", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1 and not marker.exists()


# ---------------------------------------------------------------- one run per folder

HOLD = """
import sys, time
from clearpeft.runs import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_folder_in_use_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys, reference):
    run = tmp_path / "run"
    shutil.copytree(reference[0], run)
    (run / "summary.json").unlink()  # as if stopped after its last checkpoint: a resume only writes the report
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        owner = json.loads((run / runs.LOCK).read_text())
        assert owner["pid"] == holder.pid and owner["host"] == socket.gethostname()
        before = sorted(p.relative_to(run) for p in run.rglob("*"))
        for extra in ([], ["--resume"], ["--overwrite"]):
            code, err = train(capsys, run, *extra)
            assert code == 2 and len(ours(err)) == 1, (extra, err)
            assert f"is in use by another run (pid {holder.pid} on {socket.gethostname()}" in ours(err)[0], err
        assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # --overwrite deleted nothing
    finally:
        holder.kill()  # SIGKILL: its lock file stays, its flock goes with the process
        holder.wait()
    assert json.loads((run / runs.LOCK).read_text())["pid"] == holder.pid
    code, err = train(capsys, run, "--resume")
    assert code == 0, err
    assert any(f"taking over the stale lock of pid {holder.pid}" in line for line in err), err
    assert (run / "summary.json").exists() and not (run / runs.LOCK).exists()


@pytest.mark.slow
def test_the_lock_goes_with_an_error(tmp_path, capsys, reference):
    run = tmp_path / "run"
    shutil.copytree(reference[0], run)
    code, err = train(capsys, run, "--resume", "--lr", "0.5")  # another run's config
    assert code == 2 and "different config" in ours(err)[0] and not (run / runs.LOCK).exists()
    fresh = tmp_path / "fresh"  # fails loading the data: no folder is left behind, as before the lock
    assert main(["train", "--dataset", str(tmp_path / "none.csv"), "--out", str(fresh)]) == 2
    assert not fresh.exists()


def test_the_lock_in_one_process_and_under_a_launcher(tmp_path, monkeypatch):
    out = tmp_path / "run"
    with runs.RunLock(out) as outer:  # a grid holds a cell's lock around train(), which takes it again
        with runs.RunLock(out):
            assert (out / runs.LOCK).exists()
        assert (out / runs.LOCK).exists() and outer.fd is not None
    assert not (out / runs.LOCK).exists() and not out.exists()  # it made the folder, and it was left empty
    monkeypatch.setenv("RANK", "1")  # a launched process other than the main one takes no lock
    with runs.RunLock(out):
        assert not out.exists()


# ---------------------------------------------------------------- SIGTERM and Ctrl-C

def after_epoch_two(reference, run):
    """A copy of the reference run as a run stopped after its second epoch's checkpoint leaves it (what an
    interrupted run leaves is the test of the others; this saves two epochs)."""
    shutil.copytree(reference[0], run)
    shutil.rmtree(run / "checkpoints" / "epoch-2")
    shutil.rmtree(run / "weights")
    for name in ("summary.json", "clean_probs.csv", "status.json"):
        (run / name).unlink()
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(lines[:2]))
    return run


@pytest.mark.slow
def test_sigterm_in_a_training_step_then_resume_gives_the_same_metrics(tmp_path, capsys, reference):
    """SIGTERM in the pass: test_two_grids_share_a_folder_sigterm_stops_one_and_the_cell_resumes."""
    run, before = after_epoch_two(reference, tmp_path / "run"), signal.getsignal(signal.SIGTERM)
    with When(run, 2, "train", send(signal.SIGTERM), delay=0.3) as when:  # a training step of epoch 3
        code, err = train(capsys, run, "--resume")
    assert when.done.is_set() and code == 143, err
    assert ours(err) == ["clearpeft: stopped by SIGTERM after epoch 2; resume with --resume"]
    assert checkpoints_intact(run) == ["epoch-1"] and not (run / runs.LOCK).exists()
    assert status(run)["phase"] == "stopped" and signal.getsignal(signal.SIGTERM) is before  # handler put back
    code, err = train(capsys, run, "--resume")
    assert code == 0 and "resuming after epoch 2" in "\n".join(err), err
    assert rows(run) == reference[1]
    assert json.loads((run / "summary.json").read_text())["avg_acc"] == reference[2]["avg_acc"]


@pytest.mark.slow
def test_ctrl_c_in_a_notebook_cleans_up_then_raises_keyboard_interrupt(tmp_path, reference):
    run = after_epoch_two(reference, tmp_path / "run")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a notebook's kernel
    try:
        with When(run, 2, "pass", send(signal.SIGINT)) as when, pytest.raises(KeyboardInterrupt) as info:
            clearpeft.fit("sst5", out=run, resume=True, progress=False, log=lambda *a: None, **TINY_FIT)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert when.done.is_set() and isinstance(info.value, RunStopped)
    assert str(info.value) == f"stopped by SIGINT after epoch 2; fit(..., resume=True) continues the run in {run}"
    assert checkpoints_intact(run) == ["epoch-1"] and not (run / runs.LOCK).exists()
    assert status(run)["phase"] == "stopped"
    again = clearpeft.fit("sst5", out=run, resume=True, progress=False, log=lambda *a: None, **TINY_FIT)
    assert again.summary["avg_acc"] == reference[2]["avg_acc"] and rows(run) == reference[1]


# ---------------------------------------------------------------- a full disk

def fail_fsync(monkeypatch, name, atomic=True):
    """os.fsync of the file ``name`` (``atomic``: of the temporary file an atomic write of it makes) fails as on
    a full disk (with a quota or on NFS the error shows at fsync). Injected at the system call, under
    clearpeft's writers."""
    real = os.fsync

    def fsync(fd):
        base = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if base.startswith(f".{name}.") and base.endswith(".tmp") if atomic else base == name:
            raise OSError(errno.ENOSPC, SPACE)
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def fail_torch_save(monkeypatch, part):
    """torch.save to a path holding ``part`` fails as it does on a full disk: a RuntimeError with no errno,
    after part of the file is written."""
    real = torch.save

    def save(obj, f, *args, **kwargs):
        if part in str(f):
            Path(f).write_bytes(b"PK\x03\x04 partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def fail_safetensors(monkeypatch):
    """safetensors' own writer (the trained weights) fails as on a full disk."""
    import safetensors.torch
    from safetensors import SafetensorError

    def save_file(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)


@pytest.mark.slow
def test_a_failed_write_at_each_site_then_resume(tmp_path, capsys, reference):
    """A run meets a failed write at each place it writes: a metrics line (of a new run), then a checkpoint, the
    weights and the report (summary.json and status.json are atomic writes like the report); each ends in one
    line naming the file and exit 1, the checkpoints left are intact, and the last --resume ends with the
    uninterrupted run's metrics."""
    fresh = tmp_path / "fresh"
    with pytest.MonkeyPatch.context() as patch:
        fail_fsync(patch, "metrics.jsonl", atomic=False)  # the append, not the rewrite at the start
        code, err = train(capsys, fresh)
    assert code == 1 and ours(err) == [f"clearpeft: error: cannot write {fresh / 'metrics.jsonl'}: {SPACE} (no "
                                       "checkpoint yet; --resume continues once the write can succeed)"], err
    assert (fresh / "metrics.jsonl").read_text() == "" and checkpoints_intact(fresh) == []  # no half line

    run = after_epoch_two(reference, tmp_path / "run")
    faults = [  # (inject, the path the line names, its cause, the checkpoints left)
        (lambda m: fail_torch_save(m, f"{os.sep}.tmp-epoch-2{os.sep}optimizer.bin"), run / "checkpoints" / "epoch-2",
         "torch could not write the file (unexpected pos 576 vs 534)", ["epoch-1"]),
        (fail_safetensors, run / "weights" / "trained.safetensors", SPACE, ["epoch-1", "epoch-2"]),
        (lambda m: fail_fsync(m, "clean_probs.csv"), run / "clean_probs.csv", SPACE, ["epoch-1", "epoch-2"]),
    ]
    for i, (inject, path, cause, left) in enumerate(faults):
        with pytest.MonkeyPatch.context() as patch:
            inject(patch)
            code, err = train(capsys, run, "--resume")
        assert code == 1 and len(ours(err)) == 1 and "Traceback" not in "".join(err), (i, err)
        kept = f"{run / 'checkpoints' / left[-1]} is intact"
        assert ours(err)[0] == f"clearpeft: error: cannot write {path}: {cause} ({kept}; --resume continues once " \
                               "the write can succeed)", (i, err)
        assert checkpoints_intact(run) == left and not (run / runs.LOCK).exists(), i
        assert not (run / "summary.json").exists()
        assert all(line.endswith("}") for line in (run / "metrics.jsonl").read_text().splitlines())
    code, err = train(capsys, run, "--resume")
    assert code == 0, err
    assert rows(run) == reference[1]


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs, for a disk that really fills up (root only; skipped where mounting is impossible)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True,
                             text=True) if shutil.which("mount") else None
    if mounted is None or mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() if mounted else 'no mount command'}): "
                    "test_a_failed_write_at_each_site_then_resume injects the same faults")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk, leave=32 << 10):
    """Fill ``disk`` up to ``leave`` bytes: room for status.json and a metrics line, none for a checkpoint."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * (64 << 10))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    os.close(fd)


@pytest.mark.slow
def test_a_real_full_disk_then_resume_once_there_is_space(small_disk, capsys, reference):
    run = after_epoch_two(reference, small_disk / "run")
    with When(run, 2, "pass", lambda: fill(small_disk)) as when:  # full before the third epoch's checkpoint
        code, err = train(capsys, run, "--resume")
    assert when.done.is_set() and code == 1 and len(ours(err)) == 1, err
    line = ours(err)[0]
    assert line.startswith(f"clearpeft: error: cannot write {run}") and SPACE in line, line
    assert line.endswith(f"({run / 'checkpoints' / 'epoch-1'} is intact; --resume continues once the write can "
                         "succeed)"), line
    assert checkpoints_intact(run) == ["epoch-1"] and not (run / runs.LOCK).exists()
    (small_disk / "filler").unlink()
    code, err = train(capsys, run, "--resume")
    assert code == 0 and "resuming after epoch 2" in "\n".join(err), err
    assert rows(run) == reference[1]


# ---------------------------------------------------------------- two grids on one folder, and SIGTERM

# Two cells; the first is the tiny run itself (TINY's options), so it must end with the reference's metrics.
GRID = """base: {max_train_samples: 32, max_eval_samples: 16, epochs: 3, warmup_epochs: 1, batch_size: 8,
       eval_batch_size: 4, max_length: 16, eval_passes: 0}
datasets: [sst5]
noises: [symmetric:0.6]
methods: [bitfit]
routings: [clean, none]
seeds: [5]
overrides: [{match: {routing: none}, set: {epochs: 1, warmup_epochs: 0}}]
"""


@pytest.mark.slow
def test_two_grids_share_a_folder_sigterm_stops_one_and_the_cell_resumes(tmp_path, reference):
    """A `clearpeft grid` (another process) has the first cell; a second grid on the same --out leaves that
    cell to it and runs the second. SIGTERM in the first cell's per-sample pass ends the other grid within
    seconds, in one line, exit 143, lock released; a third grid resumes the cell to the reference's metrics."""
    from clearpeft.study.grid import load_grid, run_grid

    config, out = tmp_path / "grid.yaml", tmp_path / "out"
    config.write_text(GRID)
    first, second = (out / r.cell.folder for r in load_grid(config))
    other = subprocess.Popen([sys.executable, "-m", "clearpeft", "grid", str(config), "--out", str(out), "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while status(first).get("phase") != "train":  # the other grid trains its first cell
        assert other.poll() is None and time.time() < deadline, other.stderr.read()[-2000:]
        time.sleep(0.01)
    log, result = [], {}
    ours_grid = threading.Thread(target=lambda: result.update(run_grid(config, out, log=log.append)))
    ours_grid.start()
    while not any(line.startswith("skipped ") for line in log):
        assert ours_grid.is_alive() and time.time() < deadline, log
        time.sleep(0.01)
    assert any(f"in use by pid {other.pid} on {socket.gethostname()}; left to that run" in x for x in log), log

    while status(first).get("epoch") != 2 or status(first).get("phase") != "pass":
        assert other.poll() is None and time.time() < deadline, other.stderr.read()[-2000:]
        time.sleep(0.002)
    sent = time.time()
    other.send_signal(signal.SIGTERM)
    _, stderr = other.communicate(timeout=120)
    took = time.time() - sent
    assert other.returncode == 143 and took < 10, (other.returncode, took, stderr[-2000:])
    assert stderr.strip().splitlines()[-1] == "clearpeft: stopped by SIGTERM after epoch 2; resume with --resume"
    assert "Traceback" not in stderr and not (first / runs.LOCK).exists() and status(first)["phase"] == "stopped"
    assert checkpoints_intact(first) == ["epoch-0", "epoch-1"]
    ours_grid.join(timeout=600)
    assert result["ran_now"] == 1 and [r["epoch"] for r in rows(second)] == [0]

    log = []
    again = run_grid(config, out, log=log.append)
    assert again["ran_now"] == 1 and again["finished"] == 2
    assert any("resuming after epoch 2" in line for line in log), log
    assert rows(first) == reference[1] and not (first / runs.LOCK).exists()
    assert (out / "results.csv").read_text().count("\n") == 3
