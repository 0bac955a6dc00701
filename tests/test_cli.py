"""The data and noise commands, and bad input through the CLI: exit 2, one line, no traceback."""

import json
import subprocess
import sys

import pytest


def run(*args, env=None):  # the limit catches a hang: far above any measured command
    return subprocess.run([sys.executable, "-m", "clearpeft", *args], capture_output=True, text=True, timeout=1800,
                          env=env)


def test_data_sst5_json():
    done = run("data", "sst5", "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert (info["train"], info["dev"], info["test"], info["num_labels"]) == (8544, 1101, 2210, 5)
    assert sum(info["train_histogram"].values()) == 8544


def test_data_banking77_text():
    done = run("data", "banking77")
    assert done.returncode == 0, done.stderr
    assert "train 10003" in done.stdout and "test 3080" in done.stdout and "77 classes" in done.stdout
    assert any(line.split()[:2] == ["51", "Refund_not_showing_up"] for line in done.stdout.splitlines())


def test_noise_command_rates_and_identical_files(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    first = run("noise", "sst5", "--noise", "symmetric:0.6", "--seed", "0", "--out", str(a), "--json")
    second = run("noise", "sst5", "--noise", "symmetric:0.6", "--seed", "0", "--out", str(b), "--json")
    assert first.returncode == 0, first.stderr
    assert abs(json.loads(first.stdout)["realized_noise_rate"] - 0.48) < 0.02
    assert a.read_bytes() == b.read_bytes()
    assert a.read_text().splitlines()[0] == "index,text,label,noisy_label"  # the same writer as a run's noisy_labels.csv
    asym = json.loads(run("noise", "sst5", "--noise", "asymmetric:0.4", "--json").stdout)
    assert abs(asym["realized_noise_rate"] - 0.40) < 0.02
    matrix = asym["transition_matrix"]
    for i, row in enumerate(matrix):  # only the diagonal and c -> c-1 mod K are non-zero
        assert all(v == 0 for j, v in enumerate(row) if j not in (i, (i - 1) % 5))
    text = run("noise", "sst5", "--noise", "asymmetric:0.4").stdout
    assert "realized noise rate" in text and "transition matrix" in text


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "good.csv").write_text("text,label\nnice,pos\nbad,neg\nok,pos\n")
    (d / "empty.csv").write_text("")
    (d / "header_only.csv").write_text("text,label\n")
    (d / "ragged.csv").write_text("text,label\nnice,pos,extra\nbad\n")
    (d / "no_label.csv").write_text("text,category\nnice,pos\nbad,neg\n")
    (d / "semicolon.csv").write_text("text;label\nnice;pos\nbad;neg\n")
    (d / "binary.csv").write_bytes(bytes(range(256)) * 4)
    (d / "latin1.csv").write_bytes("text,label\ncaf\xe9,pos\nbad,neg\n".encode("latin-1"))
    (d / "empty_text.csv").write_text("text,label\n,pos\nbad,neg\n")
    (d / "test_new_label.csv").write_text("text,label\nfine,neutral\n")
    (d / "broken.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b", "label"\n')
    (d / "one_class.csv").write_text("text,label\na,pos\nb,pos\n")
    (d / "data.txt").write_text("x")
    from transformers import GPT2Config

    GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100).save_pretrained(d / "gpt2")  # a decoder
    return d


BAD = [
    ("unknown data set", ["data", "imdb"], "unknown"),
    ("missing file", ["data", "{d}/missing.csv"], "missing.csv"),
    ("empty file", ["data", "{d}/empty.csv"], "empty"),
    ("header only", ["data", "{d}/header_only.csv"], ""),
    ("ragged rows", ["data", "{d}/ragged.csv"], ""),
    ("missing column", ["data", "{d}/no_label.csv"], "label"),
    ("wrong delimiter", ["data", "{d}/semicolon.csv"], ""),
    ("binary file", ["data", "{d}/binary.csv"], ""),
    ("bad encoding", ["data", "{d}/latin1.csv"], "UTF-8"),
    ("empty text", ["data", "{d}/empty_text.csv"], ""),
    ("unknown test label", ["data", "{d}/good.csv", "--test-file", "{d}/test_new_label.csv"], "neutral"),
    ("malformed json line", ["data", "{d}/broken.jsonl"], "line 2"),
    ("one class", ["data", "{d}/one_class.csv"], "class"),
    ("unsupported suffix", ["data", "{d}/data.txt"], ""),
    ("missing data dir", ["data", "sst5", "--data-dir", "{d}/nowhere"], ""),
    ("rate above 1", ["noise", "sst5", "--noise", "symmetric:1.5"], "[0, 1]"),
    ("rate below 0", ["noise", "sst5", "--noise", "asymmetric:-0.1"], "[0, 1]"),
    ("rate not a number", ["noise", "sst5", "--noise", "symmetric:lots"], ""),
    ("unknown noise kind", ["noise", "sst5", "--noise", "pairflip:0.2"], "pairflip"),
    ("noise out not writable", ["noise", "{d}/good.csv", "--noise", "symmetric:0.2", "--out", "/proc/x/y.csv"], ""),
    ("unknown command", ["fly"], ""),
    ("unknown flag", ["data", "sst5", "--colour"], "--colour"),
    ("unknown method", ["train", "--peft", "ia3", "--out", "{d}/run"], "ia3"),
    ("unknown routing", ["train", "--routing", "greedy", "--out", "{d}/run"], "greedy"),
    ("full with routing", ["train", "--peft", "full", "--routing", "clean", "--out", "{d}/run"], "full"),
    ("unknown estimate source", ["train", "--estimate-from", "magic", "--out", "{d}/run"], "estimate-from"),
    ("gamma above 1", ["train", "--gamma", "1.5", "--out", "{d}/run"], "gamma"),
    ("epochs zero", ["train", "--epochs", "0", "--out", "{d}/run"], "epochs"),
    ("batch size zero", ["train", "--batch-size", "0", "--out", "{d}/run"], "batch-size"),
    ("negative eval passes", ["train", "--eval-passes", "-1", "--out", "{d}/run"], "eval-passes"),
    ("model folder without config", ["train", "--model", "{d}", "--out", "{d}/run"], "config.json"),
    ("model that is not an encoder", ["train", "--model", "{d}/gpt2", "--max-train-samples", "8",
                                      "--out", "{d}/run"], "not an encoder"),
    ("predict on a non-run", ["predict", "{d}", "--text", "hi"], "not a finished"),
    ("resume and overwrite", ["train", "--resume", "--overwrite", "--out", "{d}/run"], "--resume"),
    ("config file missing", ["train", "--config", "{d}/none.yaml", "--out", "{d}/run"], "none.yaml"),
]


@pytest.mark.parametrize("case,args,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_input_exits_2_with_one_line(bad_files, case, args, expected):
    done = run(*[a.format(d=bad_files) for a in args])
    assert done.returncode == 2, (case, done.stdout, done.stderr[-1500:])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, (case, done.stderr)
    assert lines[0].startswith("clearpeft: error:") and "Traceback" not in done.stderr
    assert expected in lines[0], (case, lines[0])
    assert not (bad_files / "run").exists()  # nothing written half-way


def test_help_lists_commands(capsys):
    from clearpeft.cli import main

    done = run("--help")
    assert done.returncode == 0
    for command in ("data", "noise", "methods", "train", "predict"):
        assert command in done.stdout
    for command in ("data", "noise", "methods", "train", "predict"):  # in this process: the same parser
        with pytest.raises(SystemExit) as exited:
            main([command, "--help"])
        assert exited.value.code == 0 and "--json" in capsys.readouterr().out


def test_warmup_not_shorter_than_epochs_is_a_warning(tmp_path):
    done = run("train", "--peft", "bitfit", "--epochs", "1", "--warmup-epochs", "3", "--max-train-samples", "32",
               "--max-eval-samples", "16", "--max-length", "16", "--out", str(tmp_path / "w"), "--json")
    assert done.returncode == 0, done.stderr[-1500:]
    assert "CleaR will never route" in done.stderr


@pytest.mark.slow
def test_instance_noise_command(sst5, tmp_path):
    """On a user's file (1,875 SST-5 sentences, so the embedding pass stays short; 1,500 are the training split
    after the file's 20% test hold-out)."""
    import csv

    path = tmp_path / "reviews.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(zip(sst5.train.texts[:1875], sst5.train.labels[:1875].tolist()))
    done = run("noise", str(path), "--noise", "instance:0.4", "--seed", "0", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert abs(result["realized_noise_rate"] - 0.40) < 0.03
    assert min(result["flip_probability_std_within_class"].values()) > 0.05  # not uniform inside a class


def test_no_per_batch_bar_when_stderr_is_a_file(monkeypatch):
    """`clearpeft train ... > run.log 2>&1` gets the per-epoch lines, not a redraw of a bar per batch."""
    import io

    from clearpeft.train import _progress

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert _progress(True, 10, "epoch 1/3") is None

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = _progress(True, 10, "epoch 1/3")
    assert bar is not None
    bar.close()
