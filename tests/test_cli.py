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
