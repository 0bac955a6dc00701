"""The paper's numbers ship with the package (clearpeft/study/paper_tables.json): `clearpeft report` compares
with them wherever it is installed, reading nothing beside the repository."""

import csv
import importlib.resources
import os
import shutil
import sys
from pathlib import Path

import pytest

from clearpeft import cli
from clearpeft.study.report import PAPER_TABLES, load_paper

REPO = Path(__file__).resolve().parents[1]
SMALL = ("sst5", "symmetric:0.6")  # the results/cpu runs the report test copies: one per paper row

_opened: list | None = None  # the paths opened while a test records them (audit hooks cannot be removed)


def _audit(event, args):
    if _opened is not None and event in ("open", "os.listdir", "os.scandir") and args and args[0] is not None:
        _opened.append(args[0])


sys.addaudithook(_audit)


def test_the_packaged_tables_hold_the_papers_numbers():
    """Cells checked by hand against the paper (Tables 1, 2, 3 and 5, BERT-base, in %)."""
    tables, note = load_paper()
    assert note is None and set(tables) == {"Table 1", "Table 2", "Table 3", "Table 5"}
    t1, t2, t3, t5 = (tables[f"Table {n}"] for n in (1, 2, 3, 5))
    assert "SST-5" in t1.caption and "BANKING77" in t2.caption and "instance-dependent" in t5.caption
    assert len(t1.columns) == 13 and t1.columns[0] == ("clean", "Peak") and t1.columns[-1] == ("asymmetric:0.4", "Avg")
    assert t1.value(("full", "none"), "clean", "Peak") == 53.4
    assert t1.value(("full", "none"), "symmetric:0.6", "Avg") == 35.5
    assert t1.value(("bitfit", "clean"), "symmetric:0.6", "Avg") == 51.1
    assert t1.value(("bitfit", "none"), "symmetric:0.6", "Avg") == 43.5
    assert t1.value(("prompt", "clean"), "asymmetric:0.4", "Avg") == 46.5
    assert t2.value(("full", "none"), "clean", "Peak") == 92.9
    assert t2.value(("lora", "clean"), "asymmetric:0.4", "Peak") == 68.9
    assert t2.value(("adapter", "none"), "symmetric:0.4", "Avg") == 78.4
    assert t5.columns == [("clean", "Peak"), ("instance:0.4", "Peak"), ("instance:0.4", "Avg"),
                          ("instance:0.6", "Peak"), ("instance:0.6", "Avg")]
    assert t5.value(("adapter", "clean"), "instance:0.6", "Avg") == 43.4
    assert t5.value(("lora", "none"), "instance:0.4", "Peak") == 49.1
    assert t3.columns == [(None, "Peak"), (None, "Avg")]
    rows = dict(t3.rows)
    assert rows["CleaR _{Adapter} (ours)"] == [50.4, 49.7]
    assert rows["CleaR w/ Deterministic Routing"] == [48.1, 44.2]
    assert rows["CleaR w/ Noisy Routing"] == [46.9, 34.3]
    assert rows["Components in CleaR"] is None  # a heading row
    for table in tables.values():
        assert all(values is None or len(values) == len(table.columns) for _, values in table.rows)


def test_the_table_is_package_data():
    tomllib = pytest.importorskip("tomllib")
    assert importlib.resources.files("clearpeft.study").joinpath(PAPER_TABLES).is_file()
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert PAPER_TABLES in config["tool"]["setuptools"]["package-data"]["clearpeft.study"]
    for path in (REPO / "src").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "clear_paper_excerpt" not in text and '"shared"' not in text, path


def test_report_on_a_copy_of_the_results_reads_nothing_beside_the_repository(tmp_path, monkeypatch, capsys):
    """`clearpeft report` on a few of results/cpu's runs, copied into a folder with no ../shared beside it:
    the paper's columns have its numbers, and no file outside the copy and the installed package is read
    from the repository's surroundings."""
    source = REPO / "results" / "cpu"
    with open(source / "results.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames
        rows = [r for r in reader if (r["dataset"], r["noise"]) == SMALL
                and (r["routing"] == "none" or (r["routing"] == "clean" and float(r["reg_weight"]) > 0))]
    assert len(rows) == 9  # full fine-tuning, 4 PEFT methods, 4 CleaR
    copy = tmp_path / "repo"
    results = copy / "results" / "cpu"
    for row in rows:
        shutil.copytree(source / row["run_dir"], results / row["run_dir"])
    with open(results / "results.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fields)
        writer.writeheader()
        writer.writerows(rows)
    assert not (tmp_path / "shared").exists()
    monkeypatch.chdir(copy)

    global _opened
    _opened = []
    try:
        code = cli.main(["report", "results/cpu", "--out", "docs/results.md", "--figures", "docs/figures"])
    finally:
        opened, _opened = _opened, None
    assert code == 0, capsys.readouterr().err

    outside = REPO.parent / "shared"
    paths = [Path(os.fsdecode(p)).resolve() for p in opened if isinstance(p, (str, bytes, os.PathLike))]
    assert not [p for p in paths if p.is_relative_to(outside) or "excerpt" in p.name]
    assert any(p.name == PAPER_TABLES for p in paths)

    text = (copy / "docs" / "results.md").read_text(encoding="utf-8")
    assert "left out" not in text
    assert "Paper, Table 1 (BERT-base):" in text and "Paper, Table 2 (BERT-base):" in text
    assert "| Full fine-tuning | 53.4 | 51.3 | 47.0 |" in text  # Table 1
    assert "| CleaR-BitFit | 53.1 | 51.9 | 51.1 |" in text  # Table 1
    assert "| Full fine-tuning | 92.9 | 88.8 |" in text  # Table 2
    assert "| Full fine-tuning | 53.4 | 49.0 | 43.9 |" in text  # Table 5
    assert "| CleaR w/ Noisy Routing | noisy | 0 | — | — | 46.9 | 34.3 |" in text  # Table 3, no ablation runs
    assert "| SST-5 | Sym 60% | Avg | BitFit |" in text and "| +7.6 |" in text  # Δ paper, CleaR's gain
