"""docs/methods.md is generated from the code (`memeval list --markdown`) and must not go stale."""

from __future__ import annotations

import ast
import json
import re

import numpy as np
import pytest
from helpers import REPO, read_run, tiny_texts

from memeval.listing import REGENERATE
from memeval.reference import anchor

METHODS_MD = REPO / "docs" / "methods.md"


def test_checked_in_method_reference_is_current(run_cli):
    code, generated, err = run_cli("list", "--markdown")
    assert code == 0, err
    assert generated == METHODS_MD.read_text(encoding="utf-8"), (
        f"docs/methods.md is stale: regenerate it with `{REGENERATE}` (or `make docs`) and commit it")


def test_output_option_writes_what_stdout_prints(run_cli, tmp_path):
    assert run_cli("list", "--markdown", "-o", tmp_path / "m.md")[:2] == (0, "")
    assert (tmp_path / "m.md").read_text(encoding="utf-8") == run_cli("list", "--markdown")[1]


def test_reference_lists_every_method_with_params_metrics_and_records(run_cli):
    text = run_cli("list", "--markdown")[1]
    info = json.loads(run_cli("list", "--json")[1])
    for method in info["methods"]:
        assert f"### `{method['name']}`" in text
        assert all(f"| `{m['name']}` |" in text for m in method["metrics"])
    assert "| `loss_median` | lower = more memorization | `loss` (median) |" in text
    for adapter in ("hf-causal", "recipe"):
        assert f"### `{adapter}`" in text
    assert "| `jsonl` |" in text and "| `junit` |" in text


def test_nested_params_list_their_fields_not_class_paths(run_cli):
    text = run_cli("list", "--markdown")[1]
    assert "| `thresholds.bleu` | `float` | `0.75` |" in text
    assert "| `training.epochs` | `int` | `10` |" in text
    assert "| `init_from` | `map \\| None`: the fields of this table, and: | none |" in text
    assert "memeval_plugins." not in text and "memeval.models" not in text and "<class" not in text


def test_declared_record_fields_are_listed(run_cli, tmp_path, monkeypatch):
    (tmp_path / "records_plugin.py").write_text(RECORDS_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    code, text, err = run_cli("list", "demo.words", "--markdown", "-p", "records_plugin")
    assert code == 0, err
    assert text.startswith("### `demo.words`")
    assert "| `words` | whitespace-separated words in the sample |" in text
    assert "### `lm.loss`" not in text  # one method only
    assert "Record fields: not declared" in run_cli("list", "lm.loss", "--markdown")[1]


def test_list_one_method_and_a_misspelt_one(run_cli):
    code, out, _ = run_cli("list", "lm.loss")
    assert code == 0 and "lm.loss  [lm:" in out and "labels=input_ids" in out  # the docstring too
    assert "membership.attack" not in out and "adapters:" not in out
    code, _, err = run_cli("list", "lm.los")
    assert code == 4 and "unknown method 'lm.los'; did you mean 'lm.loss'?" in err
    code, _, err = run_cli("list", "-o", "x.md")
    assert code == 4 and "add --markdown" in err


RECORDS_PLUGIN = '''
from memeval.api import Method, MetricSpec, hookimpl


class Words(Method):
    """Words per sample."""

    name = "demo.words"
    summary = "words per sample"
    metrics = (MetricSpec("words_mean", "mean words per sample", None, "words"),)
    records = {"id": "the sample id", "words": "whitespace-separated words in the sample"}


@hookimpl
def memeval_register(registry):
    registry.add_method(Words)
'''


README = (REPO / "README.md").read_text(encoding="utf-8")


def readme_plugin_example() -> str:
    """The Python block of README's "Writing a plugin" that starts with `# my_module.py`."""
    blocks = re.findall(r"```python\n(.*?)```", README.split("## Writing a plugin", 1)[1], re.S)
    example = [b for b in blocks if b.startswith("# my_module.py")]
    assert len(example) == 1, "README's 'Writing a plugin' lost its '# my_module.py' example"
    return example[0]


def test_readme_plugin_example_imports_only_the_public_api():
    tree = ast.parse(readme_plugin_example())
    modules = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert [m for m in modules if m.startswith("memeval")] == ["memeval.api"]


EXAMPLE_SUITE = """
  - id: top1
    method: mylab.top1
    model: tiny
    dataset: train
    gates:
      - {metric: top1_mean, min: 0}
"""


@pytest.mark.slow
def test_readme_plugin_example_runs(tiny_suite, run_cli, tmp_path, monkeypatch):
    (tmp_path / "readme_plugin.py").write_text(readme_plugin_example(), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    suite = tiny_suite(EXAMPLE_SUITE, extra="report: {formats: [json, html, markdown, metrics-json]}\n")
    out = tmp_path / "run"
    code, stdout, stderr = run_cli("run", suite, "--out", out, "-p", "readme_plugin")
    assert code == 0, stdout + stderr
    records = [json.loads(line) for line in (out / "records" / "top1.jsonl").open()]
    assert len(records) == 40 and all(0 <= r["top1"] <= 1 for r in records)
    assert {r["text"] for r in records} == set(tiny_texts())
    metric = read_run(out)["evaluations"][0]["metrics"][0]
    assert metric["name"] == "top1_mean" and metric["value"] == pytest.approx(np.mean([r["top1"] for r in records]))
    assert json.loads((out / "metrics.json").read_text()) == {"top1": {"top1_mean": metric["value"]}}
    assert "Top-1 agreement" in (out / "report.html").read_text()
    assert "Best predicted" in (out / "summary.md").read_text()
    listed = run_cli("list", "mylab.top1", "--markdown", "-p", "readme_plugin")[1]
    assert "| `top1` | share of predicted tokens that are the top-1 prediction |" in listed


def test_readme_methods_table_links_every_method_to_its_reference_section(run_cli):
    reference = run_cli("list", "--markdown")[1]
    overview = README.split("## Methods", 1)[1].split("\n## ", 1)[0]
    for method in json.loads(run_cli("list", "--json")[1])["methods"]:
        assert f"[`{method['name']}`](docs/methods.md#{anchor(method['name'])})" in overview
        assert f"### `{method['name']}`" in reference


def test_readme_links_stay_inside_the_repository():
    targets = [t for t in re.findall(r"\]\(([^)\s]+)\)", README) if not t.startswith(("http", "#", "mailto:"))]
    assert targets, "expected relative links (docs/methods.md)"
    for target in targets:
        path = (REPO / target.split("#")[0]).resolve()
        assert path.is_relative_to(REPO) and path.exists(), f"README links to {target!r}, which is not in the repository"
    assert "../" not in README


def test_every_param_of_every_method_and_adapter_is_described():
    from memeval.config import Config
    from memeval.listing import describe_registry
    from memeval.plugins import build_registry, make_plugin_manager

    pm = make_plugin_manager()
    info = describe_registry(Config(options=None, pluginmanager=pm, registry=build_registry(pm)))

    def undescribed(params, prefix=""):
        for param in params:
            name = prefix + param["name"]
            if not param.get("description"):
                yield name
            yield from undescribed(param.get("fields") or [], name + ".")

    missing = {f"{kind[:-1]} {entry['name']}": list(undescribed(entry["params"]))
               for kind in ("methods", "adapters") for entry in info[kind]}
    assert {k: v for k, v in missing.items() if v} == {}
