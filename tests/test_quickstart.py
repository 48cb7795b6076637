"""The shipped suites: the quickstart runs offline and gates as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, read_run
from helpers import run_memeval as memeval

SUITES = sorted((REPO / "suites").glob("*.yaml"))


@pytest.mark.parametrize("suite", SUITES, ids=[s.name for s in SUITES])
def test_shipped_suites_validate(suite, run_cli):
    code, out, err = run_cli("validate", suite)
    assert code == 0, err


def test_quickstart_data_is_what_the_generator_writes(tmp_path):
    subprocess.run([sys.executable, str(REPO / "suites/data/make_quickstart.py"), str(tmp_path)], check=True)
    for path in tmp_path.iterdir():
        assert path.read_text() == (REPO / "suites/data/quickstart" / path.name).read_text()


@pytest.mark.slow
def test_quickstart_passes_and_an_impossible_gate_fails(quickstart_run, tmp_path, cache_dir):
    result = read_run(quickstart_run)
    assert result["exit_code"] == 0
    loss = {e["id"]: e["metrics"][0] for e in result["evaluations"]}
    # Members (canaries) are predicted far better than never-seen strings of the same template.
    assert loss["canary-loss"]["ci_high"] < loss["control-loss"]["ci_low"]

    strict = tmp_path / "strict.yaml"
    text = (REPO / "suites/quickstart.yaml").read_text().replace("{metric: loss_mean, max: 1.0}",
                                                                  "{metric: loss_mean, max: 0.0}")
    strict.write_text(text.replace("path: data/", f"path: {REPO}/suites/data/"))
    failed = memeval("run", strict, "--out", tmp_path / "strict", cache=cache_dir)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "gate FAILED: loss_mean" in failed.stdout
    # The warm run reuses the trained model and every cached output.
    calls = read_run(tmp_path / "strict")["evaluations"][0]["model_calls"]
    assert calls["computed"] == 0 and calls["cache_hits"] == 12


def test_no_suite_file_leaks_absolute_paths():
    for suite in SUITES:
        assert "/work/" not in Path(suite).read_text()
