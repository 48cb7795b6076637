"""`memeval list`, `validate`, `--help` and `python -m memeval`."""

from __future__ import annotations

import json
import subprocess
import sys


def test_list_shows_methods_params_metrics_and_providers(run_cli):
    code, out, _ = run_cli("list")
    assert code == 0
    assert "lm.loss  [lm: memeval " in out
    assert "param max_tokens: int | None (default None)" in out
    assert "metric loss_mean (lower = more memorization)" in out
    for name in ("hf-causal", "recipe", "jsonl", "parquet", "csv", "hub", "terminal", "json"):
        assert f"  {name}  [" in out


def test_list_json(run_cli):
    code, out, _ = run_cli("list", "--json")
    info = json.loads(out)
    assert code == 0 and set(info) == {"methods", "adapters", "loaders", "reporters"}
    recipe = next(a for a in info["adapters"] if a["name"] == "recipe")
    assert "train" in recipe["capabilities"]


def test_no_command_prints_help_and_is_a_usage_error(run_cli):
    code, out, _ = run_cli()
    assert code == 4 and "run" in out and "validate" in out


def test_help_exits_0(run_cli):
    assert run_cli("run", "--help")[0] == 0


def test_python_dash_m():
    proc = subprocess.run([sys.executable, "-m", "memeval", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("memeval ")


def test_report_rerenders_a_saved_run_without_a_model(tiny_suite, run_cli, tmp_path):
    suite = tiny_suite(extra="report: {json: true, html: true, markdown: true, junit: true}\n")
    assert run_cli("run", suite, "--out", tmp_path / "run")[0] == 0
    written = {n: (tmp_path / "run" / n).read_text() for n in ("report.html", "summary.md", "junit.xml")}
    code, out, _ = run_cli("report", tmp_path / "run", "--out", tmp_path / "again", "-p", "no:adapters")
    assert code == 0 and "html:" in out
    for name, text in written.items():
        assert (tmp_path / "again" / name).read_text() == text  # the same inputs give the same report
    code, _, _ = run_cli("report", tmp_path / "run" / "run.json", "--format", "markdown", "--redact",
                         "--out", tmp_path / "redacted")
    assert code == 0 and [p.name for p in (tmp_path / "redacted").iterdir()] == ["summary.md"]


def test_report_of_something_else_is_a_usage_error(run_cli, tmp_path):
    code, _, err = run_cli("report", tmp_path)
    assert code == 4 and "no run.json" in err
    (tmp_path / "run.json").write_text("[1, 2]")
    code, _, err = run_cli("report", tmp_path)
    assert code == 4 and "not a readable memeval run" in err
