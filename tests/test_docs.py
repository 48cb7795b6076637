"""docs/methods.md is generated from the code (`memeval list --markdown`) and must not go stale."""

from __future__ import annotations

import json

from helpers import REPO

from memeval.listing import REGENERATE

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
