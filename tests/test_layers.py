"""The import structure the design fixes: layered core, no cycles, plugins on the public API only."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_hold():
    """`lint-imports` with the contracts in pyproject.toml: core layers, no core -> plugins import,
    no reporter -> models import."""
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    proc = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_core_import_graph_has_no_cycle():
    """Counting imports made only for type checking too: a cycle there is still a cycle in the design."""
    grimp = pytest.importorskip("grimp")
    nx = pytest.importorskip("networkx")
    graph = grimp.build_graph("memeval", cache_dir=None)
    edges = nx.DiGraph((m, i) for m in graph.modules for i in graph.find_modules_directly_imported_by(m))
    cycles = [sorted(c) for c in nx.strongly_connected_components(edges) if len(c) > 1]
    assert cycles == []


def memeval_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a memeval module in a file, lazy ones inside functions too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, m) for line, m in found if m == "memeval" or m.startswith("memeval.")]


def test_builtin_plugins_import_only_the_public_api():
    files = sorted((REPO / "plugins").rglob("*.py"))
    assert len(files) >= 4
    offending = [f"{path.relative_to(REPO)}:{line}: {module}" for path in files
                 for line, module in memeval_imports(path) if module != "memeval.api"]
    assert offending == [], "plugins import memeval internals instead of memeval.api:\n" + "\n".join(offending)


def test_the_check_catches_an_internal_import(tmp_path):
    planted = tmp_path / "plugin.py"
    planted.write_text("from memeval.api import Method\n\ndef f():\n    from memeval.runner import Session\n")
    assert memeval_imports(planted) == [(1, "memeval.api"), (4, "memeval.runner")]


def test_public_api_names_all_resolve():
    import memeval.api as api

    missing = [name for name in api.__all__ if not hasattr(api, name)]
    assert missing == []
    assert {"Method", "Context", "MetricSpec", "Params", "Records", "Sensitive", "hookimpl"} <= set(api.__all__)


def test_the_public_api_is_reachable_from_the_package_and_import_memeval_stays_light():
    code = ("import sys, memeval; assert 'torch' not in sys.modules; "
            "from memeval import Method, Context, Records, Sensitive, mean_metric; "
            "from memeval.api import Method as M; assert Method is M; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        import memeval

        memeval.Nope  # noqa: B018
