"""The HTML report: self-contained, escaped, redacted on request, sections from every method."""

from __future__ import annotations

import hashlib
import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

from helpers import DESCRIPTIONS, PAYLOADS, read_run, run_memeval

from memeval.report.html import diff_segments


class Markup(HTMLParser):
    """Every start tag and attribute of a page, as a browser's tokenizer would see them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> Markup:
    parser = Markup()
    parser.feed(page)
    return parser


def records(run_dir: Path) -> list[dict]:
    out = []
    for path in sorted((run_dir / "records").glob("*.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out


def test_diff_segments_rebuild_both_texts_and_mark_the_changed_digit():
    truth, output = "code 123456 for ann", "code 123956 for bob!"
    truth_runs, output_runs = diff_segments(truth, output)
    assert "".join(t for _, t in truth_runs) == truth
    assert "".join(t for _, t in output_runs) == output
    assert ("missing", "4") in truth_runs and ("changed", "9") in output_runs
    assert ("missing", "ann") in truth_runs and ("changed", "bob!") in output_runs or (
        "changed", "bob") in output_runs


def test_no_payload_survives_as_markup(payload_suite, cache_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_memeval("run", payload_suite(redact=False), "--out", out, cache=cache_dir)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the impossible loss gate fails, nothing crashes
    page = (out / "report.html").read_text()
    markup = parse(page)
    tags = {tag for tag, _ in markup.tags}
    assert not tags & {"script", "iframe", "img", "object", "embed", "link", "base", "form"}, tags
    for tag, attrs in markup.tags:
        for name, value in attrs:
            assert not name.startswith("on"), (tag, name, value)
            assert not (value or "").strip().lower().startswith("javascript:"), (tag, name, value)
            if name in ("href", "src"):
                assert (value or "").startswith("#"), (tag, name, value)  # in-page links only
    # The payloads were rendered (as text), not dropped: data, model outputs and descriptions.
    text = "".join(markup.text)
    for payload in DESCRIPTIONS:
        assert payload in text, payload
    for payload in PAYLOADS:  # the true suffixes (12 byte tokens) shown next to the model's output
        assert payload[:12] in text, payload
    assert "{{ 7*7 }}" in text  # data is never evaluated as a template
    generated = [r["generated"] for r in records(out) if "generated" in r]
    assert any("<" in g or ">" in g or "'" in g for g in generated), generated  # the model emits payload chars
    # Only the stylesheet is inline; a strict CSP forbids scripts even if one slipped through.
    assert "default-src 'none'" in page


def test_markdown_and_junit_escape_payloads(payload_suite, cache_dir, tmp_path):
    import xml.etree.ElementTree as ET

    out = tmp_path / "run"
    run_memeval("run", payload_suite(redact=False), "--out", out, cache=cache_dir)
    summary = (out / "summary.md").read_text()
    for raw in ("<script", "<img", "<svg", "<iframe", "](https://evil", "**bold**"):
        assert raw not in summary, raw
    assert "&lt;script&gt;" in summary
    root = ET.parse(out / "junit.xml").getroot()  # well-formed despite the payload ids and messages
    assert {s.get("name") for s in root} == {"payloads.loss", "payloads.extract", "payloads.members"}


def test_redacted_reports_keep_no_memorized_text(payload_suite, cache_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_memeval("run", payload_suite(redact=True), "--out", out, cache=cache_dir)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    files = {name: (out / name).read_text() for name in ("report.html", "summary.md", "junit.xml")}
    secrets = set()
    for record in records(out):
        for key in ("text", "suffix", "generated", "prefix"):
            if len(record.get(key) or "") >= 6:
                secrets.add(record[key])
    assert len(secrets) > 40
    for name, text in files.items():
        for secret in secrets:
            for form in (secret, html.escape(secret), html.escape(secret, quote=False)):
                assert form not in text, (name, secret)
    # What stays: lengths, hashes and scores, so a reviewer can still match and rank samples.
    suffix = next(r["suffix"] for r in records(out) if "suffix" in r)
    assert re.search(rf"\[redacted: {len(suffix)} chars, keyed hash [0-9a-f]{{10}}\]", files["report.html"])
    for secret in secrets:  # no plain hash an attacker could brute-force from candidate texts
        digest = hashlib.sha256(secret.encode()).hexdigest()
        assert not any(digest[:8] in text for text in files.values()), secret
    assert 'id="redaction-note"' in files["report.html"]
    run = read_run(out)
    loss = next(e for e in run["evaluations"] if e["id"] == "loss")
    assert f"{loss['metrics'][0]['value']:.4g}" in files["report.html"]


def test_every_evaluation_and_gate_has_its_place(quickstart_run):
    page = (quickstart_run / "report.html").read_text()
    run = read_run(quickstart_run)
    for evaluation in run["evaluations"]:
        assert f'data-section="{evaluation["id"]}"' in page
        for gate in evaluation["gates"]:
            assert f'data-gate="{evaluation["id"]}/{gate["metric"]}"' in page
    # Each method family contributed its pictures.
    for kind in ('data-block="histogram"', 'data-block="plot"', 'data-block="comparison"'):
        assert kind in page
    assert len(page.encode()) < 2_000_000


def test_a_failing_section_is_a_note_not_a_lost_report(tiny_suite, run_cli, tmp_path):
    suite = tiny_suite(extra="report: {html: true}\n")
    code, _, _ = run_cli("run", suite, "--out", tmp_path / "run", "-p", "broken_sections")
    assert code == 0
    page = (tmp_path / "run" / "report.html").read_text()
    assert "report section of plugin &#39;broken_sections&#39; failed" in page
    assert "this section is broken on purpose" in page
    assert 'data-plugin-section="Loss"' in page  # the other plugins' sections are still there
