"""Load a data set into a `DataBundle` of texts and int64 label ids.

Registered names (`REGISTERED`) are read from a data folder holding `sst5/` and `banking77/` (the
`data_dir` argument, else `$CLEARPEFT_DATA`), else from the Hugging Face hub. Any other name must be a local
`.csv`, `.tsv` or `.jsonl` file. Every problem with the input is raised as a one-line `UserError` that names
the problem and the fix; no csv, json or decoding exception escapes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import UserError, first_line

REGISTERED = ("sst5", "banking77")
LOCAL_SUFFIXES = (".csv", ".tsv", ".jsonl")
SST5_LABELS = ("very negative", "negative", "neutral", "positive", "very positive")
HUB_NAMES = {"sst5": "SetFit/sst5", "banking77": "PolyAI/banking77"}
LOCAL_TEST_FRACTION = 0.2
LOCAL_TEST_SEED = 0

_PTB_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_PTB_ESCAPES = (("\\/", "/"), ("-LRB-", "("), ("-RRB-", ")"))
_INT = re.compile(r"[+-]?[0-9]{1,18}")  # longer digit strings stay strings (int() caps its digits)


@dataclass
class Split:
    """Texts with their int64 label ids, in file order."""

    texts: list[str]
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.texts = list(self.texts)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, indices) -> Split:
        idx = np.asarray(indices, dtype=np.int64)
        return Split([self.texts[i] for i in idx], self.labels[idx])

    def subset(self, n: int | None, seed: int) -> Split:
        """A seeded random subset of ``n`` samples in their original order; ``self`` if n is None or >= len."""
        if n is None or n >= len(self):
            return self
        if n < 0:
            raise UserError(f"cannot take a subset of {n} samples: give a number >= 0")
        rng = np.random.default_rng(seed)
        return self.select(np.sort(rng.choice(len(self), size=n, replace=False)))


@dataclass
class DataBundle:
    name: str
    label_names: list[str]
    train: Split
    test: Split | None  # None only for the API's in-memory data given without a test split
    dev: Split | None = None

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def with_holdout_dev(self, fraction: float = 0.1, seed: int = 0) -> DataBundle:
        """A new bundle whose dev split is a seeded, per-class hold-out of ``fraction`` of train (for data sets
        without a dev split, e.g. banking77); the held-out samples leave train and any old dev is replaced."""
        held = stratified_holdout(self.train.labels, fraction, seed)
        keep = np.setdiff1d(np.arange(len(self.train)), held)
        return replace(self, train=self.train.select(keep), dev=self.train.select(held))


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded hold-out of about ``fraction`` of the samples, drawn class by class.

    Per-class shares are rounded by largest remainder so the total is round(fraction * n), and every class
    keeps at least one sample outside the hold-out.
    """
    if not 0.0 < fraction < 1.0:
        raise UserError(f"hold-out fraction {fraction} is outside (0, 1): give e.g. 0.1")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = fraction * counts
    take = np.floor(exact).astype(np.int64)
    leftover = int(round(fraction * len(labels))) - int(take.sum())
    # Largest remainders first; random tie-break so equal-sized classes are not favoured by id.
    order = np.lexsort((rng.random(len(classes)), -(exact - take)))
    take[order[:leftover]] += 1
    take = np.minimum(take, counts - 1)
    held = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c, k in zip(classes, take) if k > 0]
    return np.sort(np.concatenate(held)).astype(np.int64) if held else np.empty(0, dtype=np.int64)


def load_data(name_or_path: str, data_dir: str | None = None, *, text_column: str = "text",
              label_column: str = "label", test_file: str | None = None) -> DataBundle:
    """Load a registered data set or a local file.

    Registered names: folder ``data_dir``, else ``$CLEARPEFT_DATA``, else the hub (``SetFit/sst5``,
    ``PolyAI/banking77``). Local files (``.csv``/``.tsv`` with a header row, or ``.jsonl`` with one object a
    line) take their texts and labels from ``text_column`` and ``label_column``. Without ``test_file`` a seeded
    (seed 0), per-class 20% hold-out of the file becomes the test split. Labels: if all are integers, ids are
    the distinct integers in numeric order (so 0..K-1 stay as they are); otherwise ids follow Python's
    ``sorted`` order of the distinct training label strings. Label names are the label strings.
    """
    name_or_path = os.fspath(name_or_path)
    test_file = None if test_file is None else os.fspath(test_file)
    key = name_or_path.strip().lower()
    if key in REGISTERED:
        if test_file is not None:
            raise UserError(f"--test-file is for local files; {key} has its own test split: drop --test-file")
        root = data_dir or os.environ.get("CLEARPEFT_DATA")
        if root:
            return _load_registered_dir(key, Path(root).expanduser())
        return _load_from_hub(key)
    if key.endswith(LOCAL_SUFFIXES):
        return _load_local(Path(name_or_path).expanduser(), text_column, label_column, test_file)
    raise UserError(f"unknown data set {name_or_path!r}: use one of {', '.join(REGISTERED)} "
                    f"or a local file ending .csv, .tsv or .jsonl")


# ---------------------------------------------------------------- registered data sets from a folder

def _load_registered_dir(name: str, root: Path) -> DataBundle:
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist: set --data-dir or CLEARPEFT_DATA to the folder "
                        f"holding {name}/")
    folder = root / name
    return _load_sst5_dir(folder) if name == "sst5" else _load_banking77_dir(folder)


def _required(folder: Path, filename: str) -> Path:
    path = folder / filename
    if not path.is_file():
        raise UserError(f"missing data file {path}: the data folder needs {folder.name}/{filename}")
    return path


def _load_sst5_dir(folder: Path) -> DataBundle:
    splits = {s: _read_sst_trees(_required(folder, f"{s}.txt")) for s in ("train", "dev", "test")}
    return DataBundle("sst5", list(SST5_LABELS), splits["train"], splits["test"], splits["dev"])


def parse_ptb_tree(line: str) -> tuple[int, str]:
    """The root label and the sentence (leaves joined by spaces, PTB escapes undone) of one PTB tree.

    Raises ValueError describing the first defect of a malformed tree.
    """
    open_labels: list[int] = []
    root: int | None = None
    words: list[str] = []
    expect_label = closed = False
    for tok in _PTB_TOKEN.findall(line):
        if closed:
            raise ValueError(f"text after the end of the tree: {tok!r}")
        if expect_label:
            if not tok.isascii() or not tok.isdigit():
                raise ValueError(f"expected a label number after '(', got {tok!r}")
            open_labels.append(int(tok))
            root = int(tok) if root is None else root
            expect_label = False
        elif tok == "(":
            expect_label = True
        elif tok == ")":
            if not open_labels:
                raise ValueError("a ')' without its '('")
            open_labels.pop()
            closed = not open_labels
        elif not open_labels:
            raise ValueError(f"word {tok!r} outside the tree")
        else:
            words.append(_unescape_ptb(tok))
    if root is None or expect_label or open_labels:
        raise ValueError("unbalanced parentheses")
    if not words:
        raise ValueError("the tree has no words")
    return root, " ".join(words)


def _unescape_ptb(token: str) -> str:
    for escaped, plain in _PTB_ESCAPES:
        token = token.replace(escaped, plain)
    return token


def _read_sst_trees(path: Path) -> Split:
    texts, labels = [], []
    for lineno, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            label, sentence = parse_ptb_tree(line)
        except ValueError as exc:
            raise UserError(f"{path} line {lineno} is not a PTB tree ({exc}): restore the original file") from exc
        if label >= len(SST5_LABELS):
            raise UserError(f"{path} line {lineno} has root label {label}, SST-5 labels are 0..4: restore the file")
        texts.append(sentence)
        labels.append(label)
    if not texts:
        raise UserError(f"{path} holds no trees: restore the original file")
    return Split(texts, np.array(labels))


def _load_banking77_dir(folder: Path) -> DataBundle:
    names_path = _required(folder, "categories.json")
    try:
        names = json.loads(_read_text(names_path))
    except (ValueError, RecursionError) as exc:
        raise UserError(f"{names_path} is not valid JSON ({first_line(exc)}): restore the original file") from exc
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names) \
            or len(set(names)) != len(names):
        raise UserError(f"{names_path} must be a JSON list of distinct intent names: restore the original file")
    names = sorted(names, key=str.lower)  # the hub's PolyAI/banking77 order
    ids = {n: i for i, n in enumerate(names)}

    def split(filename: str) -> Split:
        path = _required(folder, filename)
        rows = _read_rows(path, "text", "category")
        unknown = sorted({r.label for r in rows} - ids.keys())
        if unknown:
            raise UserError(f"{path} has categories not in categories.json: {_preview(unknown)}: restore the files")
        return Split([r.text for r in rows], np.array([ids[r.label] for r in rows]))

    return DataBundle("banking77", names, split("train.csv"), split("test.csv"), None)


# ---------------------------------------------------------------- the hub

def _load_from_hub(name: str) -> DataBundle:
    try:
        import datasets

        ds = datasets.load_dataset(HUB_NAMES[name])
        if name == "sst5":
            train, dev, test = (_hub_split(ds[s]) for s in ("train", "validation", "test"))
            return DataBundle("sst5", list(SST5_LABELS), train, test, dev)
        names = list(ds["train"].features["label"].names)  # already in sorted order
        return DataBundle("banking77", names, _hub_split(ds["train"]), _hub_split(ds["test"]), None)
    except Exception as exc:  # offline, network, cache or schema: the hub client fails in many ways
        raise UserError(f"the data set {name} could not be loaded from the hub ({first_line(exc)}): "
                        f"set --data-dir or CLEARPEFT_DATA to a folder holding {name}/") from exc


def _hub_split(split) -> Split:
    return Split(list(split["text"]), np.asarray(split["label"], dtype=np.int64))


# ---------------------------------------------------------------- Python objects (the API's fit)

def from_records(texts: list[str], labels: list, test_texts: list[str] | None = None, test_labels: list | None = None,
                 name: str = "in-memory") -> DataBundle:
    """A DataBundle from Python lists, by the label rules of local files (``load_data``): integer labels keep
    their numeric order, string labels sort as strings, and names are the label strings. No test split unless
    given (an in-memory run then has no test metrics)."""
    def rows(texts, labels, what):
        return [_row(f"row {i + 1}", text, _label_text(label, f"{what} row {i + 1}"), what)
                for i, (text, label) in enumerate(zip(texts, labels))]

    train_rows = rows(texts, labels, "data")
    if not train_rows:
        raise UserError("data has no rows: give at least two labelled texts")
    test_rows = rows(test_texts, test_labels, "test") if test_texts is not None else None
    names, ids = _label_map([r.label for r in train_rows], None if test_rows is None else [r.label for r in test_rows],
                            "test")
    if len(names) < 2:
        raise UserError(f"data has a single class ({names[0]!r}): classification needs at least two labels")
    train = Split([r.text for r in train_rows], np.array([ids[r.label] for r in train_rows]))
    test = Split([r.text for r in test_rows], np.array([ids[r.label] for r in test_rows])) if test_rows else None
    return DataBundle(name, names, train, test, None)


# ---------------------------------------------------------------- local files

@dataclass
class _Row:
    text: str
    label: str  # the raw label string, stripped


def _load_local(path: Path, text_column: str, label_column: str, test_file: str | None) -> DataBundle:
    rows = _read_rows(path, text_column, label_column)
    test_rows = None
    if test_file is not None:
        if not test_file.lower().endswith(LOCAL_SUFFIXES):
            raise UserError(f"test file {test_file} must end .csv, .tsv or .jsonl")
        test_path = Path(test_file).expanduser()
        test_rows = _read_rows(test_path, text_column, label_column)
    names, ids = _label_map([r.label for r in rows], None if test_rows is None else [r.label for r in test_rows],
                            test_file)
    if len(names) < 2:
        raise UserError(f"{path} has a single class ({names[0]!r}): classification needs at least two labels")
    train = Split([r.text for r in rows], np.array([ids[r.label] for r in rows]))
    if test_rows is not None:
        test = Split([r.text for r in test_rows], np.array([ids[r.label] for r in test_rows]))
        return DataBundle(path.stem, names, train, test, None)
    held = stratified_holdout(train.labels, LOCAL_TEST_FRACTION, LOCAL_TEST_SEED)
    if len(held) == 0:
        raise UserError(f"{path} has too few rows to hold out a test split: add rows or give --test-file")
    keep = np.setdiff1d(np.arange(len(train)), held)
    return DataBundle(path.stem, names, train.select(keep), train.select(held), None)


def _label_map(train: list[str], test: list[str] | None, test_file: str | None) -> tuple[list[str], dict[str, int]]:
    """Label names in id order, and a map from every raw label string (train and test) to its id."""
    everything = set(train) | set(test or ())
    if all(_INT.fullmatch(label) for label in everything):
        # Integer labels compare by value ("01" is 1) and keep their numeric order.
        values = sorted({int(label) for label in train})
        index = {v: i for i, v in enumerate(values)}
        unknown = sorted({int(label) for label in test or ()} - index.keys())
        if unknown:
            raise UserError(f"test file {test_file} has labels the training file lacks: {_preview(unknown)}: "
                            f"every test label must occur in training")
        return [str(v) for v in values], {label: index[int(label)] for label in everything}
    names = sorted(set(train))
    unknown = sorted(set(test or ()) - set(names))
    if unknown:
        raise UserError(f"test file {test_file} has labels the training file lacks: {_preview(unknown)}: "
                        f"every test label must occur in training")
    return names, {name: i for i, name in enumerate(names)}


def _read_rows(path: Path, text_column: str, label_column: str) -> list[_Row]:
    text = _read_text(path)
    if path.suffix.lower() == ".jsonl":
        rows = _parse_jsonl(text, path, text_column, label_column)
    else:
        rows = _parse_delimited(text, path, text_column, label_column)
    if not rows:
        raise UserError(f"{path} has no data rows: add rows below the header")
    return rows


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise UserError(f"file not found: {path}: check the path") from exc
    except IsADirectoryError as exc:
        raise UserError(f"{path} is a folder, not a file: give the file inside it") from exc
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}: check the permissions") from exc
    if not data.strip():
        raise UserError(f"{path} is empty: give a file with a header and data rows")
    if b"\x00" in data:
        raise UserError(f"{path} looks like a binary file (it contains NUL bytes): give a UTF-8 text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (bad byte at offset {exc.start}): re-save it as UTF-8") from exc


def _parse_delimited(text: str, path: Path, text_column: str, label_column: str) -> list[_Row]:
    tsv = path.suffix.lower() == ".tsv"
    kind, delimiter = ("TSV", "\t") if tsv else ("CSV", ",")
    # newline="" hands line breaks to the csv module, which needs them for quoted multi-line fields.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows: list[_Row] = []
    try:
        header = next((r for r in reader if r), [])
        columns = [c.strip() for c in header]
        positions = [_column(columns, col, path, kind, delimiter) for col in (text_column, label_column)]
        for row in reader:
            if not row:
                continue  # blank line
            where = f"data row {len(rows) + 1} (line {reader.line_num})"
            if len(row) != len(columns):
                raise UserError(f"{path} {where} has {len(row)} field(s) but the header has {len(columns)}: "
                                f"fix the quoting or delimiter of that row")
            rows.append(_row(where, row[positions[0]], row[positions[1]].strip(), path))
    except csv.Error as exc:
        raise UserError(f"{path} is not valid {kind} (line {reader.line_num}: {exc}): fix the file") from exc
    return rows


def _column(columns: list[str], name: str, path: Path, kind: str, delimiter: str) -> int:
    if name not in columns:
        found = ", ".join(repr(c) for c in columns[:20])
        hint = ""
        if len(columns) == 1:
            other = "commas" if delimiter == "\t" else "tabs or semicolons"
            hint = f"; is it separated by {other}? .csv must be comma- and .tsv tab-separated"
        raise UserError(f"{path} has no column {name!r} (columns found: {found}){hint}: "
                        f"set --text-column/--label-column or fix the header")
    if columns.count(name) > 1:
        raise UserError(f"{path} has the column {name!r} twice: rename one of them")
    return columns.index(name)


def _parse_jsonl(text: str, path: Path, text_column: str, label_column: str) -> list[_Row]:
    rows: list[_Row] = []
    # split("\n"), not splitlines(): JSON strings may legally hold U+2028 and other line separators.
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"data row {len(rows) + 1} (line {lineno})"
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise UserError(f"{path} line {lineno} is not valid JSON ({first_line(exc)}): "
                            f"write one JSON object a line") from exc
        if not isinstance(obj, dict):
            raise UserError(f"{path} line {lineno} is a JSON {type(obj).__name__}, not an object: "
                            f"write one JSON object a line")
        for col in (text_column, label_column):
            if col not in obj:
                found = ", ".join(repr(k) for k in list(obj)[:20])
                raise UserError(f"{path} line {lineno} has no key {col!r} (keys found: {found}): "
                                f"set --text-column/--label-column")
        if not isinstance(obj[text_column], str):
            raise UserError(f"{path} line {lineno}: the text must be a JSON string, "
                            f"got {type(obj[text_column]).__name__}")
        rows.append(_row(where, obj[text_column], _json_label(obj[label_column], path, lineno), path))
    return rows


def _json_label(value, path: Path, lineno: int) -> str:
    return _label_text(value, f"{path} line {lineno}")


def _label_text(value, where: str) -> str:
    """A label as the string the label map takes: strings stripped, integers (and integral floats) as digits."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    shown = json.dumps(value)[:40] if isinstance(value, (list, dict, bool, type(None))) else repr(value)[:40]
    raise UserError(f"{where}: the label must be a string or an integer, got {shown}")


def _row(where: str, text: str, label: str, path: Path) -> _Row:
    if not text.strip():
        raise UserError(f"{path} {where}: the text is empty: fill it in or remove the row")
    if not label:
        raise UserError(f"{path} {where}: the label is empty: fill it in or remove the row")
    return _Row(text, label)


def _preview(values: list, limit: int = 5) -> str:
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")
