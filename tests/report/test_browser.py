"""The HTML report in a real headless Chromium: complete, offline, inert, fast with many records.

Chromium comes from Debian's `chromium` package (`make browser`, run by `make test`); playwright
drives it. Without either the tests skip and say why.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import pytest
from helpers import TINY_RECIPE, read_run, run_memeval, tiny_texts, write_jsonl

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def browser():
    executable = next((shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n)), None)
    if executable is None:
        pytest.skip("no Chromium on PATH: install Debian's package with `make browser` (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        except Exception as exc:  # e.g. a Chromium too old for this playwright
            pytest.skip(f"cannot start {executable} headless: {exc}")
        yield chromium
        chromium.close()


def open_report(browser, path: Path):
    """Load a report, recording every request the page makes (only its own file is allowed) and
    every dialog (alert) a script would open."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    seen = {"requests": [], "dialogs": [], "errors": []}
    page.on("request", lambda request: seen["requests"].append(request.url))
    page.on("dialog", lambda dialog: (seen["dialogs"].append(dialog.message), dialog.dismiss()))
    page.on("pageerror", lambda error: seen["errors"].append(str(error)))
    started = time.perf_counter()
    page.goto(path.resolve().as_uri(), wait_until="load")
    seen["load_seconds"] = time.perf_counter() - started
    return page, seen


def test_quickstart_report_renders_complete_and_offline(browser, quickstart_run, tmp_path):
    page, seen = open_report(browser, quickstart_run / "report.html")
    run = read_run(quickstart_run)
    assert seen["requests"] == [(quickstart_run / "report.html").resolve().as_uri()]
    assert not seen["errors"] and not seen["dialogs"]
    assert page.inner_text("#run-status") == "completed"
    for evaluation in run["evaluations"]:
        section = page.locator(f'section[data-section="{evaluation["id"]}"]')
        assert section.count() == 1, evaluation["id"]
        assert section.locator(".plugin-section").count() >= 1, evaluation["id"]
        for metric in evaluation["metrics"]:
            assert section.locator(f'tr[data-metric="{metric["name"]}"]').count() == 1
        for gate in evaluation["gates"]:
            row = page.locator(f'tr[data-gate="{evaluation["id"]}/{gate["metric"]}"]')
            assert row.count() == 1
            assert ("pass" if gate["passed"] else "FAIL") in row.inner_text()
    # The pictures are drawn: every SVG has a size on screen and marks inside it.
    svgs = page.locator('svg[role="img"]')  # the plots (legend swatches are small SVGs too)
    assert svgs.count() >= 6
    for i in range(svgs.count()):
        box = svgs.nth(i).bounding_box()
        assert box and box["width"] > 100 and box["height"] > 100
        assert svgs.nth(i).locator("polyline, rect").count() >= 1
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    from PIL import Image

    image = Image.open(io.BytesIO(shot.read_bytes())).convert("L")
    assert image.height > 3000  # the whole report, not one screen
    assert sum(1 for count in image.histogram() if count) > 20  # not a blank page
    page.close()


def test_payloads_stay_text_in_the_browser(browser, payload_suite, cache_dir, tmp_path):
    out = tmp_path / "run"
    run_memeval("run", payload_suite(redact=False), "--out", out, cache=cache_dir)
    page, seen = open_report(browser, out / "report.html")
    assert seen["dialogs"] == [] and not seen["errors"]
    assert len(seen["requests"]) == 1  # the iframe/img payloads fetched nothing
    assert page.evaluate("document.scripts.length") == 0
    handlers = page.evaluate("""[...document.querySelectorAll('*')].flatMap(
        el => [...el.attributes].filter(a => a.name.startsWith('on')).map(a => el.tagName + ' ' + a.name))""")
    assert handlers == []
    assert "<script>aler" in page.inner_text("#eval-extract")  # shown as text
    page.close()


@pytest.mark.slow
def test_ten_thousand_records_stay_small_and_fast(browser, cache_dir, tmp_path):
    texts = tiny_texts()
    write_jsonl(tmp_path / "data" / "train.jsonl", [{"id": f"t{i}", "text": t} for i, t in enumerate(texts)])
    many = [{"id": f"m{i}", "prefix": texts[i % len(texts)][:12], "suffix": f" item {i} of many"}
            for i in range(10_000)]
    write_jsonl(tmp_path / "data" / "many.jsonl", many)
    suite = {"memeval": 1, "suite": "many",
             "datasets": {"train": {"loader": "jsonl", "path": "data/train.jsonl", "id_field": "id"},
                          "many": {"loader": "jsonl", "path": "data/many.jsonl", "id_field": "id",
                                   "prefix_field": "prefix", "suffix_field": "suffix"}},
             "models": {"tiny": {**TINY_RECIPE, "batch_size": 512}},
             "evaluations": [{"id": "loss", "method": "lm.loss", "model": "tiny", "dataset": "many"},
                             {"id": "extract", "method": "extraction.discoverable", "model": "tiny",
                              "dataset": "many", "params": {"prefix_tokens": 8, "suffix_tokens": 8}}],
             "report": {"html": True}, "on_truncate": "warn"}  # 8 of the 12-character prefixes' tokens
    path = tmp_path / "many.yaml"
    path.write_text(json.dumps(suite))
    proc = run_memeval("run", path, "--out", tmp_path / "run", "-q", cache=cache_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = read_run(tmp_path / "run")
    assert [e["n_samples"] for e in run["evaluations"]] == [10_000, 10_000]
    report = tmp_path / "run" / "report.html"
    assert report.stat().st_size < 2_000_000
    page, seen = open_report(browser, report)
    assert seen["load_seconds"] < 2.0, seen["load_seconds"]
    assert page.locator("#eval-extract .sample").count() == 10  # top-N, not every record
    page.close()
