"""summary.md: gates and metrics in Markdown, appended to $GITHUB_STEP_SUMMARY in CI."""

from __future__ import annotations

from memeval.report.markdown import md_escape


def test_md_escape_neutralises_markup():
    text = md_escape("<b>x</b> | [a](http://e) **y** `z`\nnext")
    assert "<" not in text and ">" not in text and "\n" not in text
    assert "\\|" in text and "\\[a\\]" in text and "\\*\\*y\\*\\*" in text and "\\`z\\`" in text


def test_summary_and_step_summary(tiny_suite, run_cli, tmp_path, monkeypatch):
    step = tmp_path / "step-summary.md"
    step.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    suite = tiny_suite(extra="report: {markdown: true}\n")
    assert run_cli("run", suite, "--out", tmp_path / "run")[0] == 0
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert "PASSED: memeval tiny, 1 of 1 gates passed" in summary
    assert "| train\\-loss | loss\\_mean |" in summary and "✅ pass" in summary
    assert step.read_text() == "earlier step\n" + summary + "\n"  # appended, not overwritten
