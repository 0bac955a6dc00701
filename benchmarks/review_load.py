"""How fast the label-review page opens and filters with a large report, in headless Chromium.

    python benchmarks/review_load.py                          # 100,000 rows, 5 labels, 5 repeats
    python benchmarks/review_load.py --rows 100000 --labels 77

A synthetic finished run folder (config.json, summary.json, metrics.jsonl, clean_probs.csv with ``--rows``
samples of random words, ~19 words each like SST-5, a third of them flagged; an empty weights/, which the page
does not read) goes through ``clearpeft.load_run(...).review()``, as a real run would. The page is then opened
``--repeat`` times from disk and filtered through its own controls (the given-label select, a text search, a
matrix cell, a sort by text), and the script prints the times:

- open, from navigation start (the page records these in ``window.clearpeftReview``): ``html`` to its script's
  start (the file read and parsed, the report's JSON block included), then ``json`` (JSON.parse), ``controls``,
  ``matrix`` and ``table`` (the first page of 100 rows); ``ready`` when the script is done, ``painted`` when the
  next frame after it is painted (the page is there and usable), ``fcp`` the browser's first contentful paint
  (the header, before the script ran); ``wall`` is WebDriver's get() to ready, seen from Python;
- each filter: the control's event to the table re-rendered (``render``) and to the next frame painted
  (``paint``), and the round trip seen from Python through WebDriver (``wall``).

Needs Debian's ``chromium`` and ``chromium-driver`` (``make setup`` installs them as root) and selenium (the
``test`` extra). tests/test_review.py and tests/test_review_browser.py import ``synthetic_run``,
``browser_problem``, ``chromium`` and ``click_cell`` from here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DRIVER_NAMES = ("chromedriver", "chromium-driver")


def browser_problem() -> str | None:
    """Why no headless browser can run here (None: one can)."""
    if not any(shutil.which(n) for n in CHROMIUM_NAMES):
        return "no Chromium here and none could be installed: make setup installs Debian's chromium and " \
               "chromium-driver with apt-get, which needs apt-get and root"
    if not any(shutil.which(n) for n in DRIVER_NAMES):
        return "Chromium is here but chromedriver is not, and it could not be installed: make setup installs " \
               "Debian's chromium-driver with apt-get, which needs apt-get and root"
    return None


def chromium(download_dir: str | Path | None = None, width: int = 1400, height: int = 1000):
    """A headless Chromium under WebDriver (Debian's chromedriver: selenium is never left to fetch one)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = next(shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n))
    # --no-sandbox: Chromium refuses to start as root with its sandbox (CI runs as root)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-extensions", "--no-first-run", f"--window-size={width},{height}",
                "--allow-file-access-from-files"):
        options.add_argument(arg)
    if download_dir is not None:
        options.add_experimental_option("prefs", {
            "download.default_directory": str(download_dir), "download.prompt_for_download": False,
            "download.directory_upgrade": True, "safebrowsing.enabled": False})
    driver_path = next(shutil.which(n) for n in DRIVER_NAMES if shutil.which(n))
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    if download_dir is not None:  # headless Chromium keeps downloads off unless told through CDP as well
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    return driver


def synthetic_run(folder: str | Path, rows: int, num_labels: int = 5, seed: int = 0) -> Path:
    """A finished run folder with a ``rows``-sample report of random words (see the module docstring)."""
    import pandas as pd

    from clearpeft.runs import LABEL_ISSUE_COLUMNS

    rng = np.random.default_rng(seed)
    folder = Path(folder)
    (folder / "weights").mkdir(parents=True, exist_ok=True)
    names = (["very negative", "negative", "neutral", "positive", "very positive"] if num_labels == 5
             else [f"intent_{k:02d}" for k in range(num_labels)])
    syllables = ["ka", "lo", "mi", "ter", "san", "do", "ve", "ri", "pa", "nu", "el", "shi", "gor", "at", "fi", "um"]
    vocabulary = ["".join(rng.choice(syllables, size=rng.integers(1, 4))) for _ in range(3000)]
    lengths = np.clip(rng.normal(19, 9, rows).astype(int), 2, 60)
    words = rng.choice(vocabulary, size=int(lengths.sum()))
    cut = np.concatenate([[0], np.cumsum(lengths)])
    texts = [" ".join(words[cut[i]:cut[i + 1]]) for i in range(rows)]
    given = rng.integers(0, num_labels, rows)
    predicted = np.where(rng.random(rows) < 0.6, given, rng.integers(0, num_labels, rows))
    score = np.sort(rng.beta(2, 2, rows))
    p = np.clip(score + rng.normal(0, 0.2, rows), 0, 1)
    flag = (p < 0.5) & (rng.random(rows) < 0.7)
    order = rng.permutation(rows)  # sample indices in the report's (most suspicious first) order
    frame = pd.DataFrame({"index": order, "text": texts, "given_label": [names[k] for k in given],
                          "predicted_label": [names[k] for k in predicted], "label_score": score,
                          "is_label_issue": flag, "clean_prob": p, "given_label_id": given,
                          "predicted_label_id": predicted})[list(LABEL_ISSUE_COLUMNS)]
    frame.to_csv(folder / "clean_probs.csv", index=False)
    config = {"label_names": names, "model": "default", "max_length": 32, "peft": "lora", "dataset": "synthetic",
              "noise": "symmetric:0.4", "routing": "clean", "epochs": 10}
    (folder / "config.json").write_text(json.dumps(config))
    history = [{"epoch": e, "test_acc": 0.3 + 0.02 * e, "test_acc_routed": 0.29 + 0.02 * e,
                "clean_learning": 0.4 + 0.04 * e, "noisy_memorization": 0.2 + 0.01 * e,
                "noisy_correction": 0.25, "gate_mean_clean": 0.8 if e >= 3 else None,
                "gate_mean_corrupted": 0.5 if e >= 3 else None, "estimated_noise_rate": 0.35,
                "flagged_rate": 0.33} for e in range(10)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in history))
    summary = {"dataset": "synthetic", "method": "lora", "routing": "clean", "noise": "symmetric:0.4",
               "realized_noise_rate": 0.32, "estimated_noise_rate": 0.35, "epochs": 10, "peak_acc": 0.48,
               "avg_acc": 0.39, "last_acc": 0.48}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def click_cell(driver, g: int, p: int) -> None:
    """Click the matrix cell given ``g`` × predicted ``p``: a table cell, or the point of the canvas that pages
    with more than 12 labels draw instead (scrolled into view first, then clicked at viewport coordinates)."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.by import By

    canvases = driver.find_elements(By.ID, "matrix-canvas")
    if not canvases:
        driver.find_element(By.CSS_SELECTOR, f'#matrix-table td[data-g="{g}"][data-p="{p}"]').click()
        return
    x, y = driver.execute_script("""
        var c = arguments[0], g = arguments[1], p = arguments[2], box = document.getElementById('matrix');
        var left = +c.dataset.left, top = +c.dataset.top, cell = +c.dataset.cell;
        box.scrollTop = Math.max(0, top + g * cell - box.clientHeight / 2);
        box.scrollLeft = Math.max(0, left + p * cell - box.clientWidth / 2);
        var r = c.getBoundingClientRect();
        window.scrollBy(0, r.top + top + (g + 0.5) * cell - window.innerHeight / 2);
        r = c.getBoundingClientRect();
        return [r.left + left + (p + 0.5) * cell, r.top + top + (g + 0.5) * cell];""", canvases[0], g, p)
    actions = ActionBuilder(driver)
    actions.pointer_action.move_to_location(int(x), int(y))
    actions.pointer_action.click()
    actions.perform()


def _wait(driver, script: str, timeout: float = 60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.01)
    raise TimeoutError(script)


def _last_timing(driver, count_before: int) -> dict:
    """The newest action timing the page recorded, once its paint time is in."""
    return _wait(driver, f"var t = window.clearpeftReview.timings; return t.length > {count_before} && "
                         f"t[t.length - 1].paintMs !== undefined ? t[t.length - 1] : null")


def measure(driver, page: Path) -> dict:
    """One open of ``page`` and one of each filter, in ms (see the module docstring)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    started = time.perf_counter()
    driver.get(page.resolve().as_uri())
    _wait(driver, "return document.body && document.body.getAttribute('data-ready') === '1'")
    out = {"open_wall": 1000 * (time.perf_counter() - started)}
    nav = driver.execute_script(
        "var n = performance.getEntriesByType('navigation')[0]; var p = performance.getEntriesByType('paint');"
        "var f = p.filter(function (e) { return e.name === 'first-contentful-paint'; })[0];"
        "var r = window.clearpeftReview;"
        "return {ready: r.readyMs, fcp: f ? f.startTime : null, phases: r.phases};")
    painted = _wait(driver, "return window.clearpeftReview.paintedMs")
    out.update({f"open_{k}": v for k, v in nav["phases"].items()})  # html, json, controls, matrix, table
    out.update({"open_ready": nav["ready"], "open_painted": painted, "open_fcp": nav["fcp"]})

    def action(name: str, act) -> None:
        count = driver.execute_script("return window.clearpeftReview.timings.length")
        t = time.perf_counter()
        act()
        timing = _last_timing(driver, count)
        out[f"{name}_render"], out[f"{name}_paint"] = timing["ms"], timing["paintMs"]
        out[f"{name}_wall"] = 1000 * (time.perf_counter() - t)

    action("filter_given", lambda: Select(driver.find_element(By.ID, "f-given")).select_by_value("1"))
    word = driver.execute_script("return document.querySelector('#rows td.text').textContent.split(' ')[0]")
    search = driver.find_element(By.ID, "f-search")
    driver.execute_script("arguments[0].value = arguments[1].slice(0, -1)", search, word)
    action("search", lambda: search.send_keys(word[-1]))  # one key: the whole word is in the box then
    driver.find_element(By.ID, "f-clear").click()
    action("matrix_cell", lambda: click_cell(driver, 2, 3))
    action("sort_text", lambda: driver.find_element(By.CSS_SELECTOR, '#table th[data-sort="text"]').click())
    out["rows_shown"] = driver.execute_script("return document.querySelectorAll('#rows tr').length")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--labels", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", help="keep the run folder and page here")
    args = parser.parse_args(argv)
    problem = browser_problem()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    import clearpeft

    where = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="review-bench-"))
    folder = synthetic_run(where / "run", args.rows, args.labels)
    started = time.perf_counter()
    page = clearpeft.load_run(folder).review(where / "review.html")
    build = time.perf_counter() - started
    print(f"{args.rows:,} rows, {args.labels} labels: page built in {build:.2f} s, "
          f"{page.stat().st_size / 1e6:.1f} MB")
    driver = chromium()
    try:
        version = driver.capabilities.get("browserVersion", "?")
        runs = [measure(driver, page) for _ in range(args.repeat)]
    finally:
        driver.quit()
        if not args.keep:
            shutil.rmtree(where, ignore_errors=True)
    print(f"headless Chromium {version}, {args.repeat} opens; ms, median (max):")
    for key in runs[0]:
        values = [r[key] for r in runs if r[key] is not None]
        if values:
            print(f"  {key:<20} {statistics.median(values):>8.0f}  ({max(values):.0f})")
    worst_open = max(r["open_painted"] for r in runs)
    worst_filter = max(max(r[k] for k in r if k.endswith("_paint")) for r in runs)
    print(f"worst open to painted {worst_open:.0f} ms, worst filter to painted {worst_filter:.0f} ms: "
          f"open and filter {'within' if worst_open + worst_filter < 2000 else 'NOT within'} 2 s together")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
