"""The label-review page without a browser: one self-contained file, the report embedded safely, the
header and curves from the run, and bad input as one line (tests/test_review_browser.py drives it)."""

import importlib
import json
import re
import sys
from pathlib import Path

import pytest

import clearpeft
from clearpeft.cli import main
from clearpeft.study.review import embed_json, svg_chart

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
bench = importlib.import_module("review_load")

NASTY = '</script><script>window.pwned = 1</script><!-- "quoted", with a comma & <b>tags</b>\nand a line'


def embedded(page: str) -> dict:
    block = re.search(r'<script type="application/json" id="review-data">(.*?)</script>', page, re.S).group(1)
    return json.loads(block)


@pytest.fixture
def run_folder(tmp_path):
    folder = bench.synthetic_run(tmp_path / "run", 40, seed=1)
    report = (folder / "clean_probs.csv")
    import pandas as pd

    frame = pd.read_csv(report, keep_default_na=False)
    frame.loc[0, "text"] = NASTY
    frame.to_csv(report, index=False)
    return folder


def test_page_is_one_file_that_fetches_nothing_and_embeds_text_safely(run_folder):
    page_path = clearpeft.load_run(run_folder).review()
    assert page_path == run_folder / "review.html"
    page = page_path.read_text(encoding="utf-8")
    assert not re.search(r'(src|href)="https?:', page) and "http://" not in page and "https://" not in page
    assert "<link" not in page and "@import" not in page and "url(" not in page  # no style sheet or font fetched
    # the report's text cannot close the data block: only the page's own two script elements end
    assert page.count("</script>") == 2 and "window.pwned" not in page.split("review-data")[0]
    data = embedded(page)
    assert data["text"][0] == NASTY and len(data["index"]) == 40
    frame = clearpeft.load_run(run_folder).label_issues()  # the same rows, in the same order
    assert data["index"] == frame["index"].tolist() and data["flag"] == frame["is_label_issue"].astype(int).tolist()
    assert data["labels"] == json.loads((run_folder / "config.json").read_text())["label_names"]


def test_header_and_curves_come_from_the_run(run_folder):
    page = clearpeft.load_run(run_folder).review(run_folder / "page.html").read_text(encoding="utf-8")
    assert "48.0% / 39.0% / 48.0%" in page  # Peak / Avg / Last of summary.json
    assert "estimated noise rate" in page and "Trust it where the task is one the model learns" in page
    assert page.count('<svg class="chart"') == 4 and "wrong labels memorized" in page
    assert "<polyline" in page and "not measured" not in page  # every chart has a series in this run


def test_embedded_json_escapes_every_tag_opening():
    text = embed_json({"t": "</script><!--&"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"t": "</script><!--&"}


def test_a_chart_without_values_says_why():
    svg = svg_chart("Mean gate", [("clean", [None, None], "#000")], "no routed epoch")
    assert "not measured: no routed epoch" in svg and "<polyline" not in svg


def test_cli_writes_the_page_and_turns_bad_input_into_one_line(run_folder, tmp_path, capsys):
    out = tmp_path / "page.html"
    assert main(["review", str(run_folder), "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"review": str(out)} and out.stat().st_size > 1000
    cases = [
        (["review", str(tmp_path / "nothing")], "is not a finished clearpeft run"),
        (["review", str(run_folder), "--out", str(tmp_path / "no" / "such" / "dir.html")], "does not exist"),
        (["review", str(run_folder), "--out", str(tmp_path)], "it is a folder"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and err.startswith("clearpeft: error: ")
    (run_folder / "summary.json").unlink()  # killed between weights/ and the summary
    with pytest.raises(clearpeft.UserError, match="no summary.json"):
        clearpeft.load_run(run_folder).review()
    assert not list(tmp_path.glob("**/.page.html.*.tmp"))  # atomic: no temporary file left behind
