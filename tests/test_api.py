"""The Python API as a user calls it: the README example, on 192 real SST-5 samples with string labels."""

import re
from pathlib import Path

import numpy as np
import pytest

import clearpeft
from clearpeft.data import load_data
from clearpeft.label_issues import label_issue_flags

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def sst5_frames():
    import pandas as pd

    bundle = load_data("sst5")
    names = bundle.label_names

    def frame(split, n):
        return pd.DataFrame({"text": split.texts[:n], "label": [names[i] for i in split.labels[:n]]})

    return frame(bundle.train, 192), frame(bundle.test, 96)


def fast(**extra):
    options = dict(peft="lora", routing="clean", noise="symmetric:0.4", epochs=2, warmup_epochs=1, batch_size=16,
                   seed=0, progress=False, log=lambda m: None)
    return {**options, **extra}


@pytest.mark.slow
def test_readme_example_fit_predict_label_issues_and_load_run(sst5_frames, tmp_path):
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    small = block.replace("epochs=10", "epochs=2, warmup_epochs=1, batch_size=16, progress=False")
    small = small.replace('"runs/my-data"', repr(str(tmp_path / "run")))
    assert small.count("epochs=2") == 1 and small.count(str(tmp_path)) == 2  # the substitutions found their targets
    train, test = sst5_frames
    namespace = {"train": train, "test": test}
    exec(compile(small, "README.md", "exec"), namespace)
    run = namespace["run"]  # the one load_run gave back
    assert isinstance(run, clearpeft.Run) and run.summary["epochs"] == 2

    names = sorted(set(train["label"]))
    assert run.label_names == names  # string labels: sorted names, and they come back in predictions
    texts = ["a great movie", "the worst film of the year", "it is a film"]
    proba = run.predict_proba(texts)
    assert proba.shape == (3, 5) and np.allclose(proba.sum(1), 1.0, atol=1e-5)
    assert run.predict(texts) == [names[k] for k in proba.argmax(1)]
    history = run.history  # it had test data: accuracy is a share of the 96 test samples
    assert len(history) == 2 and all(round(h["test_acc"] * 96) == pytest.approx(h["test_acc"] * 96) for h in history)
    assert run.summary["peak_acc"] == max(h["test_acc"] for h in history)

    issues = namespace["issues"]
    assert list(issues.columns[:6]) == ["index", "text", "given_label", "predicted_label", "label_score",
                                        "is_label_issue"]
    assert len(issues) == 192 and issues["label_score"].is_monotonic_increasing
    # the flag: p < 0.5, or confident learning on the final model's probabilities finds another label
    in_sample = run.predict_proba(issues["text"].tolist())
    expected = label_issue_flags(issues["clean_prob"].to_numpy(), in_sample, issues["given_label_id"].to_numpy())
    assert (issues["is_label_issue"] | ~(issues["clean_prob"] < 0.5)).all()
    assert (issues["is_label_issue"].to_numpy() != expected).sum() <= 1  # batch padding moves the last digits
    assert set(issues["given_label"]) <= set(names) and list(run.label_issues(top=5)["index"]) == list(issues["index"][:5])
    # label_score is the final model's probability of the given label: what predict_proba says of the text
    first = issues.iloc[0]
    own = run.predict_proba([first["text"]])[0][first["given_label_id"]]
    assert first["label_score"] == pytest.approx(own, abs=2e-3)  # batch padding moves the last digits
    # The labels it reviews are the ones the run trained on: here the user's own (noise="clean", the default).
    truth = [names.index(x) for x in train["label"]]
    assert issues.sort_values("index")["given_label_id"].tolist() == truth

    fresh = clearpeft.load_run(tmp_path / "run")
    assert np.array_equal(fresh.predict_proba(texts), proba) and fresh.summary == run.summary


@pytest.mark.slow
def test_fit_on_a_datasets_dataset_without_test_data(sst5_frames, tmp_path):
    import datasets

    from clearpeft.api import bundle_digest, in_memory_bundle

    train, test = sst5_frames
    # A Dataset and a DataFrame of the same rows are the same data (and so, by the seed, the same run).
    as_frame = in_memory_bundle(train, None, test, "text", "label")
    as_dataset = in_memory_bundle(datasets.Dataset.from_pandas(train), None, datasets.Dataset.from_pandas(test),
                                  "text", "label")
    assert bundle_digest(as_dataset) == bundle_digest(as_frame)
    run = clearpeft.fit(datasets.Dataset.from_pandas(train), out=tmp_path / "dataset", **fast(epochs=1))
    assert run.label_names == sorted(set(train["label"]))
    assert run.summary["peak_acc"] is None and run.history[0]["test_acc"] is None  # nothing to test on
    issues = run.label_issues()
    assert len(issues) == 192 and run.predict(["fine"])[0] in run.label_names
    again = clearpeft.load_run(tmp_path / "dataset")
    assert again.label_issues().equals(issues) and again.predict(list(issues["text"][:3])) == \
        run.predict(list(issues["text"][:3]))


def test_integer_labels_keep_numeric_order():
    from clearpeft.data import from_records

    bundle = from_records(["a", "b", "c", "d"], [10, 2, np.int64(2), 10.0], ["e"], ["2"])
    assert bundle.label_names == ["2", "10"] and bundle.train.labels.tolist() == [1, 0, 0, 1]
    assert bundle.test.labels.tolist() == [0]


@pytest.mark.parametrize("call, message", [
    (lambda: clearpeft.fit(["a", "b"], ["x"]), "2 texts but 1 labels"),
    (lambda: clearpeft.fit(["a", 3], ["x", "y"]), "every text must be a string"),
    (lambda: clearpeft.fit(["a", "b"], ["x", "x"]), "single class"),
    (lambda: clearpeft.fit(["a", "b"], ["x", None]), "string or an integer"),
    (lambda: clearpeft.fit(["a", "b"], ["x", "y"], epoch=3), "unknown option(s) epoch"),
    (lambda: clearpeft.fit(["a", "b"], ["x", "y"], peft="loRA"), "--peft must be lora, prompt, adapter, bitfit or full, got 'loRA'"),
    (lambda: clearpeft.fit({"txt": ["a"]}), "give texts and labels"),
    (lambda: clearpeft.load_run("/nonexistent/run"), "is not a finished clearpeft run"),
])
def test_bad_input_is_one_line_user_error(call, message):
    with pytest.raises(clearpeft.UserError) as info:
        call()
    assert message in str(info.value) and "\n" not in str(info.value)


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, clearpeft; print('torch' in sys.modules, hasattr(clearpeft, 'fit'))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True"]
