"""The Python API: what the command line does, for notebooks and scripts (the CLI stands on it).

    import clearpeft
    run = clearpeft.fit(texts, labels, peft="lora", routing="clean", epochs=10, out="runs/x")
    run.predict(["a great movie"])          # label names; run.predict_proba(...) -> array [n, K]
    run.label_issues()                      # DataFrame of training samples, most suspicious first
    run = clearpeft.load_run("runs/x")      # the same object from a finished run folder

``fit`` takes texts and labels as lists, arrays or pandas Series; or one pandas DataFrame or
``datasets.Dataset`` (columns ``text_column`` and ``label_column``); or the name of a registered data set or a
local file, as ``clearpeft train --dataset``. Labels may be strings or integers; their names come back in
predictions. Every other keyword is a ``TrainConfig`` field (``clearpeft train --help``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from . import runs
from .errors import UserError, first_line


class Run:
    """A finished run folder: its config, summary, per-epoch metrics, label-issue report and trained model."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        config_file = self.folder / runs.CONFIG
        if not config_file.exists() or not (self.folder / "weights").is_dir():
            raise UserError(f"{self.folder} is not a finished clearpeft run (no config.json or weights/)")
        try:
            self.config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"{config_file} is not valid JSON: the run folder is damaged") from exc
        _check_run_config(self.config, config_file)
        self.label_names: list[str] = list(self.config["label_names"])
        self._model = self._tokenizer = None

    def __repr__(self) -> str:
        return f"Run({str(self.folder)!r}, peft={self.config['peft']!r}, routing={self.config['routing']!r})"

    @property
    def summary(self) -> dict:
        """summary.json: Peak / Avg / Last test accuracy, the estimated noise rate, ... (``clearpeft train``)."""
        return json.loads((self.folder / runs.SUMMARY).read_text())

    @property
    def history(self) -> list[dict]:
        """metrics.jsonl: one dict per epoch."""
        return runs.read_jsonl(self.folder / runs.METRICS)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64):
        """Class probabilities [len(texts), K] of the trained model with every module on."""
        if isinstance(texts, str):
            raise UserError("texts: give a list of texts, not one string")
        out = [probs for _, probs in self.predict_proba_batches(texts, batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.label_names)), np.float32)

    def predict_proba_batches(self, texts: Iterable[str], batch_size: int = 64,
                              chunk: int = 2048) -> Iterator[tuple[list[str], np.ndarray]]:
        """(texts, probabilities [len, K]) batch by batch, in input order, over any iterable of texts (a file
        read line by line): memory stays that of ``chunk`` texts however long the stream. Within a chunk the
        texts run sorted by length, so a batch pads to its own longest text only."""
        if isinstance(texts, str):
            raise UserError("texts: give a list of texts, not one string")
        model, tokenizer = self._loaded()
        buffer: list[str] = []
        for text in texts:
            if not isinstance(text, str):
                raise UserError(f"texts: every text must be a string, found {type(text).__name__} {text!r:.40}")
            buffer.append(text)
            if len(buffer) == chunk:
                yield from self._chunk_probs(buffer, batch_size, model, tokenizer)
                buffer = []
        if buffer:
            yield from self._chunk_probs(buffer, batch_size, model, tokenizer)

    def _chunk_probs(self, texts: list[str], batch_size: int, model, tokenizer):
        import torch

        ids = tokenizer(texts, truncation=True, max_length=self.config["max_length"])["input_ids"]
        order = np.argsort([len(x) for x in ids], kind="stable")
        probs = np.zeros((len(texts), len(self.label_names)), np.float32)
        pad = tokenizer.pad_token_id or 0
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                rows = order[start:start + batch_size]
                width = max(len(ids[i]) for i in rows)
                input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for j, i in enumerate(rows):
                    input_ids[j, :len(ids[i])] = torch.tensor(ids[i])
                    mask[j, :len(ids[i])] = 1
                probs[rows] = torch.softmax(model(input_ids, mask).float(), -1).numpy()
        for start in range(0, len(texts), batch_size):
            yield texts[start:start + batch_size], probs[start:start + batch_size]

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The predicted label name of each text."""
        return [self.label_names[k] for k in self.predict_proba(texts).argmax(-1)]

    def label_issues(self, top: int | None = None):
        """The label-issue report of the training samples as a pandas DataFrame, most suspicious first: index,
        text, given_label, predicted_label, label_score (the final model's probability of the given label: the
        ranking), is_label_issue (the flag: p < 0.5 or confident learning finds another label; older reports
        flag p < 0.5 only), clean_prob (p), and the label ids."""
        import pandas as pd

        path = self.folder / "clean_probs.csv"
        try:
            frame = _report_frame(pd.read_csv(path, keep_default_na=False))
        except (OSError, ValueError, KeyError, TypeError, pd.errors.ParserError) as exc:
            raise UserError(f"{path} is damaged ({first_line(exc)}): the run folder's report cannot be read") \
                from None
        return frame if top is None else frame.head(top)

    def review(self, path: str | Path | None = None) -> Path:
        """Write the label-review page (one self-contained HTML file: header, curves, the given x predicted
        matrix and the sortable table with keep / relabel / drop and the corrected CSV; study/review.py) to
        ``path``, default review.html in the run folder, and return its path."""
        from .study.review import write_review

        return write_review(self, path)

    def _loaded(self):
        if self._model is None:
            from .backbone import load_tokenizer
            from .peft import load_model

            weights = self.folder / "weights"
            _check_weights(weights, self.config)  # before the backbone loads: a damaged folder fails at once
            try:
                model = load_model(weights, self.config["model"]).eval()
            except UserError:
                raise
            except Exception as exc:  # shapes, names or options that are not the run's own
                raise UserError(f"{weights} cannot be loaded ({first_line(exc)}): the run folder is damaged") \
                    from None
            self._tokenizer = load_tokenizer(self.config["model"])
            self._model = model
        return self._model, self._tokenizer


def _report_frame(frame):
    """clean_probs.csv as label_issues returns it, whichever version of clearpeft wrote it."""
    if "given_label_name" in frame:  # reports of older runs (ids, names, p only)
        frame = frame.rename(columns={"given_label": "given_label_id", "predicted_label": "predicted_label_id",
                                      "given_label_name": "given_label", "predicted_label_name": "predicted_label"})
        frame["label_score"] = frame["clean_prob"]
    if "clean_prob" not in frame:  # reports of that day that ranked by p
        frame["clean_prob"] = frame["label_score"]
    if "is_label_issue" not in frame:
        frame["is_label_issue"] = frame["clean_prob"] < 0.5
    frame = frame[list(runs.LABEL_ISSUE_COLUMNS)]
    frame["given_label"] = frame["given_label"].astype(str)
    frame["predicted_label"] = frame["predicted_label"].astype(str)
    return frame


def _check_run_config(config, path: Path) -> None:
    """What predict and label-issues read from a run's config.json, checked: a hand-edited or foreign file
    is one UserError, not a KeyError or a backbone loaded from a number."""
    from .config import AT_LEAST_1
    from .peft import METHODS

    def bad(what: str):
        raise UserError(f"{path}: {what}: the run folder is damaged")

    if not isinstance(config, dict):
        bad(f"a JSON {type(config).__name__}, not an object")
    names = config.get("label_names")
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        bad("label_names must be a list of at least two names")
    if not isinstance(config.get("model"), str) or "\x00" in config["model"]:
        bad("model must be the name or folder of the backbone")
    length = config.get("max_length")
    if type(length) is not int or not AT_LEAST_1.holds(length):
        bad(f"max_length must be a whole number of tokens, got {length!r}")
    if config.get("peft") not in METHODS:
        bad(f"peft must be one of {', '.join(METHODS)}, got {config.get('peft')!r}")


def _check_weights(weights: Path, config: dict) -> None:
    """weights/ as a run writes it: method.json naming the run's method and number of labels, and
    trained.safetensors with a readable header. Only safetensors are read from weights/, never a pickle
    (a .bin beside them is ignored), so nothing in the folder can run code."""
    from dataclasses import fields as dataclass_fields

    from safetensors import safe_open

    from .peft import METHOD_FILE, METHODS, WEIGHTS_FILE

    def bad(what: str):
        raise UserError(f"{weights}: {what}: the run folder is damaged")

    try:
        meta = json.loads((weights / METHOD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        bad(f"{METHOD_FILE} is unreadable ({first_line(exc)})")
    if not isinstance(meta, dict) or meta.get("method") not in METHODS or not isinstance(meta.get("config"), dict):
        bad(f"{METHOD_FILE} does not name a PEFT method and its options")
    if meta["method"] != config["peft"]:
        bad(f"{METHOD_FILE} says {meta['method']}, config.json says {config['peft']}")
    if type(meta.get("num_labels")) is not int or meta["num_labels"] != len(config["label_names"]):
        bad(f"{METHOD_FILE} has {meta.get('num_labels')!r} labels, config.json {len(config['label_names'])}")
    known = {f.name: f for f in dataclass_fields(METHODS[meta["method"]][0])}
    for key, value in meta["config"].items():
        simple = value is None or isinstance(value, (bool, str)) or (
            isinstance(value, (int, float)) and abs(value) < 1 << 20) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value))
        if key not in known or not simple:
            bad(f"{METHOD_FILE} has the option {key}: {value!r:.40}, which no {meta['method']} run writes")
    try:
        with safe_open(str(weights / WEIGHTS_FILE), "pt") as handle:
            handle.keys()
    except Exception as exc:  # missing, truncated, or not safetensors at all (a pickle under that name)
        bad(f"{WEIGHTS_FILE} is not readable safetensors ({first_line(exc)})")


def load_run(folder: str | Path) -> Run:
    """The Run of a finished run folder (``clearpeft train --out`` or ``fit(out=...)``)."""
    return Run(folder)


def fit(data: Any, labels: Any = None, *, test: Any = None, text_column: str = "text", label_column: str = "label",
        out: str | Path = "runs/fit", resume: bool = False, overwrite: bool = False, progress: bool = True,
        log=print, **options: Any) -> Run:
    """Train a run (a PEFT method, with CleaR's guarded variant ``clean-auto`` unless ``routing`` says otherwise)
    and return it.

    ``data``: texts (with ``labels``), a DataFrame or datasets.Dataset (with ``text_column``/``label_column``),
    or a data set name or file path. ``test``: optional held-out data in the same forms ((texts, labels) for
    lists); without it an in-memory run has no test metrics. ``options``: TrainConfig fields, e.g. peft="lora",
    routing="clean", noise="symmetric:0.4", epochs=10. Bad input raises a one-line ``UserError``.
    """
    from .config import TrainConfig
    from .train import train

    known = {f.name for f in fields(TrainConfig)} - {"out", "dataset", "text_column", "label_column"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(f"fit() got unknown option(s) {', '.join(unknown)}: see clearpeft train --help")
    if not isinstance(out, (str, os.PathLike)):
        raise UserError(f"fit(): out must be a folder name or Path, got {out!r:.60}")
    for name, flag_value in (("resume", resume), ("overwrite", overwrite), ("progress", progress)):
        if not isinstance(flag_value, (bool, np.bool_)):
            raise UserError(f"fit(): {name} must be True or False, got {flag_value!r:.60}")
    TrainConfig.from_mapping(options, "fit()").resolved()  # bad options fail here, before any data is read
    bundle = None
    if isinstance(data, (str, Path)):  # a registered name or a local file, as --dataset (and --test-file)
        if labels is not None:
            raise UserError("fit(): labels go with a list of texts; a data set name or file brings its own")
        dataset = str(data)
        if test is not None:
            options["test_file"] = str(test)
    else:
        bundle = in_memory_bundle(data, labels, test, text_column, label_column)
        dataset = f"in-memory:{bundle_digest(bundle)}"  # a resume with other data is refused (config differs)
    cfg = TrainConfig.from_mapping({**options, "dataset": dataset, "text_column": text_column,
                                    "label_column": label_column, "out": str(out)}, "fit()")
    train(cfg, resume=resume, overwrite=overwrite, progress=progress, log=log, data=bundle)
    return Run(out)


def in_memory_bundle(data: Any, labels: Any, test: Any, text_column: str, label_column: str):
    """A DataBundle from Python objects, by the label rules of local files (clearpeft.data.from_records)."""
    from .data import from_records

    texts, raw = _columns(data, labels, text_column, label_column, "data")
    test_texts = test_labels = None
    if test is not None:
        if isinstance(test, tuple) and len(test) == 2:
            test_texts, test_labels = _columns(test[0], test[1], text_column, label_column, "test")
        else:
            test_texts, test_labels = _columns(test, None, text_column, label_column, "test")
    return from_records(texts, raw, test_texts, test_labels)


def bundle_digest(bundle) -> str:
    h = hashlib.sha256()
    for split in (bundle.train, bundle.test):
        if split is not None:
            h.update(json.dumps([split.texts, split.labels.tolist()]).encode())
    h.update(json.dumps(bundle.label_names).encode())
    return h.hexdigest()[:16]


def _columns(data: Any, labels: Any, text_column: str, label_column: str, what: str) -> tuple[list[str], list]:
    if labels is None:
        if hasattr(data, "column_names") or hasattr(data, "columns"):  # datasets.Dataset, pandas.DataFrame
            columns = list(data.column_names if hasattr(data, "column_names") else data.columns)
            for column in (text_column, label_column):
                if column not in columns:
                    raise UserError(f"{what} has no column {column!r} (columns: {', '.join(map(str, columns[:20]))})"
                                    f": pass text_column=/label_column=")
            return _texts(data[text_column], what), list(data[label_column])
        raise UserError(f"{what}: give texts and labels, a DataFrame or datasets.Dataset, or a data set name")
    texts, labels = _texts(data, what), list(labels)
    if len(texts) != len(labels):
        raise UserError(f"{what}: {len(texts)} texts but {len(labels)} labels")
    return texts, labels


def _texts(values: Any, what: str) -> list[str]:
    if isinstance(values, str):
        raise UserError(f"{what}: give a list of texts, not one string")
    texts = list(values)
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:
        raise UserError(f"{what}: every text must be a string, found {type(bad).__name__} {bad!r:.40}")
    return texts
