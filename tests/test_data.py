"""Data loading: the real SST-5 and BANKING77 files, local csv/tsv/jsonl files, and every bad input."""

import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearpeft.data import REGISTERED, DataBundle, Split, load_data
from clearpeft.data.loaders import parse_ptb_tree
from clearpeft.errors import UserError

FIRST_SST_TRAIN = ("The Rock is destined to be the 21st Century 's new `` Conan '' and that he 's going to make a "
                   "splash even greater than Arnold Schwarzenegger , Jean-Claud Van Damme or Steven Segal .")


def write(path: Path, content) -> str:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def write_csv(path: Path, rows, delimiter=",") -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter=delimiter).writerows(rows)
    return str(path)


def write_jsonl(path: Path, objects) -> str:
    return write(path, "".join(json.dumps(o) + "\n" for o in objects))


# ---------------------------------------------------------------- SST-5

def test_sst5_split_sizes_and_labels(sst5):
    assert (len(sst5.train), len(sst5.dev), len(sst5.test)) == (8544, 1101, 2210)
    assert sst5.name == "sst5"
    assert sst5.label_names == ["very negative", "negative", "neutral", "positive", "very positive"]
    assert sst5.num_labels == 5
    for split in (sst5.train, sst5.dev, sst5.test):
        assert split.labels.dtype == np.int64
        assert set(np.unique(split.labels)) == {0, 1, 2, 3, 4}


def test_sst5_first_train_sentence(sst5):
    assert sst5.train.texts[0] == FIRST_SST_TRAIN
    assert sst5.train.labels[0] == 3


def test_sst5_ptb_escapes_are_undone(sst5):
    texts = sst5.train.texts + sst5.dev.texts + sst5.test.texts
    assert not any("-LRB-" in t or "-RRB-" in t or "\\/" in t for t in texts)
    assert "co-writer/director" in sst5.train.texts[1]
    assert sum("(" in t for t in texts) > 100  # the files hold ~500 escaped brackets


def test_parse_ptb_tree_unescapes_and_reads_root():
    assert parse_ptb_tree(r"(1 (2 -LRB-) (0 (2 1\/2) (2 -RRB-)))") == (1, "( 1/2 )")
    assert parse_ptb_tree("(4 (2 a) (3 (2 b) (2 c)))\n") == (4, "a b c")


@pytest.mark.parametrize("line", ["(2 (2 a) (2 b)", "(2 (2 a)))", "(x (2 a))", "(2 (2 a)) (3 b)", "(2)", "a (2 b)", ""])
def test_parse_ptb_tree_rejects_malformed(line):
    with pytest.raises(ValueError):
        parse_ptb_tree(line)


def sst_dir(tmp_path, train="(3 (2 good) (3 fun))\n", dev="(1 (1 bad))\n", test="(2 (2 ok))\n"):
    folder = tmp_path / "sst5"
    folder.mkdir()
    for name, content in (("train.txt", train), ("dev.txt", dev), ("test.txt", test)):
        if content is not None:
            write(folder / name, content)
    return str(tmp_path)


def test_sst5_from_a_small_folder(tmp_path):
    bundle = load_data("SST5", sst_dir(tmp_path, train="(3 (2 good) (3 fun))\n\n(0 (0 awful\\/bad))\n"))
    assert bundle.train.texts == ["good fun", "awful/bad"]
    assert bundle.train.labels.tolist() == [3, 0]


def test_sst5_malformed_tree_names_the_line(tmp_path):
    with pytest.raises(UserError, match=r"train\.txt line 2 is not a PTB tree"):
        load_data("sst5", sst_dir(tmp_path, train="(3 (2 good))\n(3 (2 broken)\n"))


def test_sst5_root_label_out_of_range(tmp_path):
    with pytest.raises(UserError, match="labels are 0..4"):
        load_data("sst5", sst_dir(tmp_path, train="(7 (2 good))\n"))


def test_sst5_missing_file_is_named(tmp_path):
    with pytest.raises(UserError, match=r"missing data file .*dev\.txt"):
        load_data("sst5", sst_dir(tmp_path, dev=None))


def test_registered_missing_folder_and_dir(tmp_path):
    with pytest.raises(UserError, match=r"banking77.categories\.json"):
        load_data("banking77", str(tmp_path))
    with pytest.raises(UserError, match="does not exist"):
        load_data("sst5", str(tmp_path / "nowhere"))


def test_data_dir_from_environment(monkeypatch, data_dir):
    monkeypatch.setenv("CLEARPEFT_DATA", str(data_dir))
    assert len(load_data("sst5").dev) == 1101


def test_hub_fallback_offline_fails_fast(monkeypatch, tmp_path):
    import datasets
    import huggingface_hub.constants

    monkeypatch.delenv("CLEARPEFT_DATA", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Both libraries read the offline flag and cache folder at import; an empty cache means no cached copy.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path))
    for name in REGISTERED:
        start = time.monotonic()
        with pytest.raises(UserError, match=r"could not be loaded from the hub.*--data-dir or CLEARPEFT_DATA") as err:
            load_data(name)
        assert time.monotonic() - start < 30
        assert "\n" not in str(err.value)


# ---------------------------------------------------------------- BANKING77

def test_banking77_sizes_and_label_order(banking77):
    assert (len(banking77.train), len(banking77.test)) == (10003, 3080)
    assert banking77.dev is None
    assert banking77.num_labels == 77
    names = banking77.label_names
    assert names == sorted(names, key=str.lower)
    assert names[0] == "activate_my_card"
    assert names[51] == "Refund_not_showing_up"
    assert names[76] == "wrong_exchange_rate_for_cash_withdrawal"
    assert set(np.unique(banking77.train.labels)) == set(range(77))
    assert banking77.train.texts[0] == "I am still waiting on my card?"
    assert names[banking77.train.labels[0]] == "card_arrival"


def test_holdout_dev_is_seeded_disjoint_and_per_class(banking77):
    split = banking77.with_holdout_dev(0.1, seed=0)
    assert split is not banking77 and banking77.dev is None
    assert len(split.train) + len(split.dev) == len(banking77.train)
    assert len(split.dev) == round(0.1 * len(banking77.train))
    assert sorted(split.train.texts + split.dev.texts) == sorted(banking77.train.texts)
    total = np.bincount(banking77.train.labels, minlength=77)
    held = np.bincount(split.dev.labels, minlength=77)
    assert np.all(np.abs(held - 0.1 * total) <= 1)
    again = banking77.with_holdout_dev(0.1, seed=0)
    other = banking77.with_holdout_dev(0.1, seed=1)
    assert again.dev.texts == split.dev.texts
    assert other.dev.texts != split.dev.texts
    assert split.test is banking77.test


def test_holdout_dev_keeps_one_sample_per_class():
    bundle = DataBundle("x", ["a", "b"], Split(["a1", "b1", "b2"], np.array([0, 1, 1])), Split(["t"], [0]))
    split = bundle.with_holdout_dev(0.5, seed=0)
    assert sorted(split.train.labels.tolist()) == [0, 1]
    with pytest.raises(UserError):
        bundle.with_holdout_dev(1.5)


def test_split_subset_is_seeded_and_keeps_order():
    split = Split([f"t{i}" for i in range(100)], np.arange(100) % 3)
    sub = split.subset(10, seed=0)
    assert len(sub) == 10
    positions = [int(t[1:]) for t in sub.texts]
    assert positions == sorted(positions)
    assert sub.labels.tolist() == [p % 3 for p in positions]
    assert split.subset(10, seed=0).texts == sub.texts
    assert split.subset(10, seed=1).texts != sub.texts
    assert split.subset(None, 0) is split and split.subset(100, 0) is split and split.subset(500, 0) is split


# ---------------------------------------------------------------- local files

def test_local_csv_string_labels_use_python_sorted_order(tmp_path):
    train = write_csv(tmp_path / "train.csv", [["text", "label"], ["nice", "pos"], ["meh", "Neutral"],
                                               ["bad", "neg"], ["great", "pos"]])
    test = write_csv(tmp_path / "test.csv", [["text", "label"], ["fine", "Neutral"], ["awful", "neg"]])
    bundle = load_data(train, test_file=test)
    assert bundle.label_names == ["Neutral", "neg", "pos"]  # Python sorted: capitals first
    assert bundle.train.labels.tolist() == [2, 0, 1, 2]
    assert bundle.test.texts == ["fine", "awful"] and bundle.test.labels.tolist() == [0, 1]
    assert bundle.name == "train" and bundle.dev is None


def test_local_tsv_int_labels_keep_their_ids(tmp_path):
    train = write_csv(tmp_path / "a.TSV", [["sentence", "y"], ["x, with comma", "2"], ["b", "0"], ["c", "1"]], "\t")
    bundle = load_data(train, text_column="sentence", label_column="y", test_file=train)
    assert bundle.label_names == ["0", "1", "2"]
    assert bundle.train.labels.tolist() == [2, 0, 1]
    assert bundle.train.texts[0] == "x, with comma"


def test_local_int_labels_not_zero_based_are_remapped_numerically(tmp_path):
    train = write_csv(tmp_path / "t.csv", [["text", "label"], ["a", "10"], ["b", "9"], ["c", "-1"], ["d", "10"]])
    test = write_csv(tmp_path / "u.csv", [["text", "label"], ["e", "09"]])
    bundle = load_data(train, test_file=test)
    assert bundle.label_names == ["-1", "9", "10"]
    assert bundle.train.labels.tolist() == [2, 1, 0, 2]
    assert bundle.test.labels.tolist() == [1]


def test_local_jsonl_int_and_string_labels(tmp_path):
    ints = write_jsonl(tmp_path / "i.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": 0.0, "extra": [1]},
                                              {"text": "c\u2028d", "label": "2"}])
    bundle = load_data(ints, test_file=ints)
    assert bundle.label_names == ["0", "1", "2"]
    assert bundle.train.labels.tolist() == [1, 0, 2]
    assert bundle.train.texts[2] == "c\u2028d"
    strings = write_jsonl(tmp_path / "s.jsonl", [{"q": "x", "intent": "b"}, {"q": "y", "intent": "a"}])
    bundle = load_data(strings, text_column="q", label_column="intent", test_file=strings)
    assert bundle.label_names == ["a", "b"] and bundle.train.labels.tolist() == [1, 0]


def test_local_csv_quoting_bom_crlf_and_blank_lines(tmp_path):
    content = '\ufefftext,label\r\n"multi\nline, quoted",a\r\n\r\n"say ""hi""",b\r\n'
    path = write(tmp_path / "q.csv", content)
    bundle = load_data(path, test_file=path)
    assert bundle.train.texts == ["multi\nline, quoted", 'say "hi"']
    assert bundle.train.labels.tolist() == [0, 1]


def test_local_without_test_file_holds_out_20_percent(tmp_path):
    rows = [["text", "label"]] + [[f"text {i}", "ab"[i % 2]] for i in range(50)]
    path = write_csv(tmp_path / "d.csv", rows)
    bundle = load_data(path)
    assert (len(bundle.train), len(bundle.test)) == (40, 10)
    assert np.bincount(bundle.test.labels).tolist() == [5, 5]
    assert sorted(bundle.train.texts + bundle.test.texts) == sorted(r[0] for r in rows[1:])
    assert load_data(Path(path)).test.texts == bundle.test.texts  # seeded; path-like accepted


BAD_INPUTS = {
    # name: (files to write {filename: content}, load_data kwargs, message pattern)
    "missing file": ({}, {}, "file not found"),
    "binary": ({"train.csv": b"text,label\n\x00\x01\x02,a\n"}, {}, "binary"),
    "latin-1": ({"train.csv": "text,label\ncafé,a\nthé,b\n".encode("latin-1")}, {}, "not UTF-8"),
    "empty file": ({"train.csv": ""}, {}, "is empty"),
    "header only": ({"train.csv": "text,label\n"}, {}, "no data rows"),
    "ragged row": ({"train.csv": "text,label\na,x\nb,y,z\n"}, {}, r"data row 2 \(line 3\) has 3 field\(s\)"),
    "wrong delimiter": ({"train.csv": "text\tlabel\na\tx\nb\ty\n"}, {}, r"columns found: 'text\\tlabel'.*separated"),
    "missing column": ({"train.csv": "sentence,label\na,x\n"}, {}, r"no column 'text' \(columns found: 'sentence', 'label'\)"),
    "duplicate column": ({"train.csv": "text,label,text\na,x,b\n"}, {}, "twice"),
    "empty text": ({"train.csv": "text,label\na,x\n  ,y\n"}, {}, r"data row 2 .*text is empty"),
    "empty label": ({"train.csv": "text,label\na,x\nb, \n"}, {}, r"data row 2 .*label is empty"),
    "unclosed quote": ({"train.csv": 'text,label\na,x\n"b,y\n'}, {}, "."),
    "single class": ({"train.csv": "text,label\na,x\nb,x\nc,x\n"}, {}, "single class"),
    "too few rows": ({"train.csv": "text,label\na,x\nb,y\n"}, {}, "too few rows"),
    "unknown test label": ({"train.csv": "text,label\na,x\nb,y\n", "test.csv": "text,label\nc,z\n"},
                           {"test_file": "test.csv"}, "labels the training file lacks: 'z'"),
    "unknown int test label": ({"train.csv": "text,label\na,0\nb,1\n", "test.csv": "text,label\nc,5\n"},
                               {"test_file": "test.csv"}, "lacks: 5"),
    "test file suffix": ({"train.csv": "text,label\na,x\nb,y\n"}, {"test_file": "test.txt"}, "must end"),
    "bad json": ({"train.jsonl": '{"text": "a", "label": 0}\n{"text": "b", "label": \n'}, {}, r"line 2 is not valid JSON"),
    "json not object": ({"train.jsonl": '{"text": "a", "label": 0}\n[1, 2]\n'}, {}, r"line 2 is a JSON list"),
    "json missing key": ({"train.jsonl": '{"text": "a", "y": 0}\n'}, {}, r"line 1 has no key 'label' \(keys found: 'text', 'y'\)"),
    "json bad label": ({"train.jsonl": '{"text": "a", "label": [0]}\n'}, {}, "string or an integer"),
    "json bool label": ({"train.jsonl": '{"text": "a", "label": true}\n'}, {}, "string or an integer"),
    "json text not string": ({"train.jsonl": '{"text": 5, "label": 0}\n'}, {}, "must be a JSON string"),
    "json empty text": ({"train.jsonl": '{"text": "a", "label": 0}\n\n{"text": "", "label": 1}\n'}, {},
                        r"data row 2 \(line 3\).*text is empty"),
    "deep json": ({"train.jsonl": "[" * 100000 + "]" * 100000 + "\n"}, {}, "."),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_local_input_raises_user_error(tmp_path, case):
    files, kwargs, pattern = BAD_INPUTS[case]
    for name, content in files.items():
        write(tmp_path / name, content)
    kwargs = {k: str(tmp_path / v) for k, v in kwargs.items()}
    main = next((n for n in files if n.startswith("train")), "train.csv")
    with pytest.raises(UserError, match=pattern) as err:
        load_data(str(tmp_path / main), **kwargs)
    assert "\n" not in str(err.value)


def test_folder_named_like_a_csv_is_a_user_error(tmp_path):
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(UserError, match="folder"):
        load_data(str(tmp_path / "dir.csv"))


def test_unknown_name_lists_registered_names():
    with pytest.raises(UserError, match=r"sst5, banking77.*\.csv, \.tsv or \.jsonl"):
        load_data("imdb")


def test_test_file_with_registered_name_is_rejected(data_dir):
    with pytest.raises(UserError, match="--test-file"):
        load_data("sst5", str(data_dir), test_file="x.csv")


# ---------------------------------------------------------------- fuzzing: load or UserError, nothing else

def load_or_user_error(path: str, **kwargs):
    try:
        bundle = load_data(path, **kwargs)
    except UserError as exc:
        assert str(exc) and "\n" not in str(exc)
        return None
    assert bundle.num_labels >= 2
    for split in (bundle.train, bundle.test):
        assert len(split.texts) == len(split.labels) > 0
        assert split.labels.min() >= 0 and split.labels.max() < bundle.num_labels
    return bundle


# database=None: no .hypothesis/ folder left in the repo.
FUZZ = settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".csv", ".tsv", ".jsonl"]))
def test_fuzz_random_bytes(data, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        load_or_user_error(write(Path(tmp) / f"f{suffix}", data))


cells = st.text(alphabet=st.sampled_from(list("ab ,\t\"'\n\r;0123-é")), max_size=6)


@FUZZ
@given(header=st.lists(st.sampled_from(["text", "label", "x", " text", "", "label "]), min_size=0, max_size=4),
       rows=st.lists(st.lists(cells, min_size=0, max_size=4), max_size=12),
       quoted=st.booleans(), suffix=st.sampled_from([".csv", ".tsv"]))
def test_fuzz_random_csv_shapes(header, rows, quoted, suffix):
    delimiter = "\t" if suffix == ".tsv" else ","
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"f{suffix}"
        if quoted:
            write_csv(path, [header] + rows, delimiter)
        else:  # raw joins: ragged rows, stray quotes and line breaks inside fields
            write(path, "\n".join(delimiter.join(r) for r in [header] + rows))
        bundle = load_or_user_error(str(path))
        if bundle is not None and quoted and header:
            assert len(bundle.train) + len(bundle.test) == sum(1 for r in rows if r)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                       max_size=3), max_leaves=6)


@FUZZ
@given(objects=st.lists(st.dictionaries(st.sampled_from(["text", "label", "x"]), json_values, max_size=3)
                        | json_values, max_size=10))
def test_fuzz_random_jsonl(objects):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.jsonl"
        items = objects if isinstance(objects, list) else [objects]
        write(path, "\n".join(json.dumps(o) for o in items))
        load_or_user_error(str(path))
