"""Third-party plugins: a real package with a `memeval` entry point, installed with pip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from helpers import write_jsonl

from memeval.errors import UsageError
from memeval.plugins import build_registry, make_plugin_manager

PLUGIN = '''
"""A throwaway third-party memeval plugin."""
from memeval import hookimpl
from memeval.method import Method, MetricSpec, Params
from memeval.stats import mean_metric


class CharsParams(Params):
    lowercase: bool = False


class Chars(Method):
    """Mean number of characters per sample (needs no model)."""

    name = "demo.chars"
    summary = "characters per sample"
    Params = CharsParams
    metrics = (MetricSpec("chars_mean", "mean characters per sample", None),)

    def map(self, batch, context):
        return [{"id": s.id, "chars": len(s.text)} for s in batch]

    def reduce(self, records, context):
        return [mean_metric("chars_mean", [r["chars"] for r in records], seed=context.seed)]


@hookimpl
def memeval_register(registry):
    registry.add_method(Chars)
'''


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin")
    pkg = root / "pkg"
    pkg.mkdir()
    (pkg / "memeval_demo.py").write_text(PLUGIN)
    (pkg / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "memeval-demo-plugin"
        version = "0.3.1"
        [project.entry-points.memeval]
        demo = "memeval_demo"
        [tool.setuptools]
        py-modules = ["memeval_demo"]
    """))
    site = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(pkg)], check=True, capture_output=True)
    return site


def memeval(site, *args):
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-m", "memeval", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)


def test_installed_plugin_is_listed_runs_and_can_be_blocked(plugin_site, tmp_path):
    listing = memeval(plugin_site, "list", "--json")
    assert listing.returncode == 0, listing.stderr
    methods = {m["name"]: m for m in json.loads(listing.stdout)["methods"]}
    assert methods["demo.chars"]["distribution"] == "memeval-demo-plugin 0.3.1"
    assert methods["demo.chars"]["plugin"] == "demo"
    assert [p["name"] for p in methods["demo.chars"]["params"]] == ["lowercase"]
    assert methods["lm.loss"]["distribution"].startswith("memeval ")

    texts = ["a", "abcd", "abcdefg"]
    write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts])
    suite = tmp_path / "s.yaml"
    suite.write_text("""
memeval: 1
suite: demo
datasets:
  d: {loader: jsonl, path: d.jsonl}
evaluations:
  - {id: chars, method: demo.chars, dataset: d, gates: [{metric: chars_mean, max: 10}]}
""")
    run = memeval(plugin_site, "run", suite, "--out", tmp_path / "run")
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads((tmp_path / "run" / "run.json").read_text())
    assert result["evaluations"][0]["metrics"][0]["value"] == pytest.approx(sum(map(len, texts)) / 3)

    blocked = memeval(plugin_site, "run", suite, "-p", "no:demo", "--out", tmp_path / "blocked")
    assert blocked.returncode == 4
    assert "unknown method 'demo.chars'" in blocked.stderr
    assert "demo.chars" not in memeval(plugin_site, "-p", "no:demo", "list").stdout
    without = memeval(plugin_site, "list", "-p", "no:demo")
    assert without.returncode == 0 and "demo.chars" not in without.stdout


def test_unknown_hook_fails_loudly(tmp_path, monkeypatch):
    (tmp_path / "typo_plugin.py").write_text(
        "from memeval import hookimpl\n\n@hookimpl\ndef memeval_regster(registry):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UsageError, match="memeval_regster"):
        make_plugin_manager(["typo_plugin"])


def test_builtin_plugins_can_be_blocked():
    registry = build_registry(make_plugin_manager(["no:lm"]))
    assert "lm.loss" not in registry.names("method")
    assert "hf-causal" in registry.names("adapter")


def test_same_name_twice_is_a_plugin_error(tmp_path, monkeypatch):
    (tmp_path / "dup_plugin.py").write_text(textwrap.dedent("""
        from memeval import hookimpl
        from memeval_plugins.lm import LMLoss

        @hookimpl
        def memeval_register(registry):
            registry.add_method(LMLoss)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    from memeval.errors import RegistryError

    with pytest.raises(RegistryError, match="registered by both"):
        build_registry(make_plugin_manager(["dup_plugin"]))


def test_loading_every_builtin_plugin_leaves_heavy_libraries_unimported():
    """A run loads every plugin; scipy.stats and networkx (~60 MB resident, half a second) are
    imported by the methods that use them, when they run."""
    code = ("import sys; from memeval.plugins import build_registry, make_plugin_manager; "
            "build_registry(make_plugin_manager()); "
            "print(sorted(m for m in ('scipy', 'networkx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
