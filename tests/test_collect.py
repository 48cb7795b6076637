"""collect() on its own: a suite becomes items, or every problem is reported with its file, line
and field (no model or dataset is loaded)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from helpers import write_jsonl
from pydantic import BaseModel

from memeval.collect import apply_baseline_override, apply_model_overrides, collect
from memeval.errors import UsageError
from memeval.plugins import build_registry, make_plugin_manager
from memeval.registry import Registry
from memeval.suite import SuiteErrors, SuiteFile, load_suite

HEAD = """\
memeval: 1
suite: unit
datasets:
  train: {loader: jsonl, path: data/train.jsonl}
  unseen: {loader: jsonl, path: data/unseen.jsonl}
models:
  tiny: {adapter: recipe, dataset: train}
"""


@pytest.fixture
def registry() -> Registry:
    return build_registry(make_plugin_manager())


@pytest.fixture
def write(tmp_path):
    """Writes a suite (HEAD + `body`) next to two data files; returns the loaded SuiteFile."""
    for name in ("train", "unseen"):
        write_jsonl(tmp_path / "data" / f"{name}.jsonl", [{"text": f"{name} {i}"} for i in range(3)])

    def suite(body: str, head: str = HEAD) -> SuiteFile:
        path = tmp_path / "suite.yaml"
        path.write_text(head + textwrap.dedent(body), encoding="utf-8")
        return load_suite(path)

    return suite


def line_of(suite: SuiteFile, needle: str) -> int:
    """1-based line of the first line of the suite file that contains `needle`."""
    lines = suite.path.read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if needle in line)


def problems(suite: SuiteFile, registry: Registry) -> list[str]:
    with pytest.raises(SuiteErrors) as caught:
        collect(suite, registry)
    return [str(e) for e in caught.value.errors]


def test_items_hold_the_method_class_validated_params_and_keywords(write, registry):
    suite = write("""
        evaluations:
          - {id: loss, method: lm.loss, model: tiny, dataset: train, params: {max_tokens: 8}}
          - {id: members, method: membership.attack, model: tiny, dataset: train, params: {non_members: unseen}}
        """)
    loss, members = collect(suite, registry)
    assert loss.method_cls is registry.get("method", "lm.loss") and isinstance(loss.params, BaseModel)
    assert loss.params.max_tokens == 8 and loss.params.batch_size is None  # defaults filled in
    assert loss.keywords == {"loss", "lm.loss", "tiny", "train", "unit"}
    assert (loss.id, loss.index, loss.nodeid) == ("loss", 0, f"{suite.path}::loss")
    assert members.params.non_members == "unseen" and members.index == 1


def test_an_unknown_method_names_file_line_field_and_the_closest_method(write, registry):
    suite = write("""
        evaluations:
          - id: loss
            method: lm.los
        """)
    assert problems(suite, registry) == [
        f"{suite.path}:{line_of(suite, 'lm.los')}: evaluations[0].method: unknown method 'lm.los'; "
        f"did you mean 'lm.loss'?"]


def test_unknown_model_and_dataset_list_what_the_suite_has(write, registry):
    suite = write("""
        evaluations:
          - {id: loss, method: lm.loss, model: tinny, dataset: trian}
        """)
    line = line_of(suite, "tinny")
    assert problems(suite, registry) == [
        f"{suite.path}:{line}: evaluations[0].model: unknown model 'tinny'; did you mean 'tiny'? (models: tiny)",
        f"{suite.path}:{line}: evaluations[0].dataset: unknown dataset 'trian'; did you mean 'train'? "
        f"(datasets: train, unseen)"]


def test_bad_params_are_reported_at_the_param(write, registry):
    suite = write("""
        evaluations:
          - id: loss
            method: lm.loss
            model: tiny
            dataset: train
            params:
              max_tokens: 1
              batch_sise: 4
        """)
    assert problems(suite, registry) == [
        f"{suite.path}:{line_of(suite, 'max_tokens: 1')}: evaluations[0].params.max_tokens: input should be "
        f"greater than or equal to 2, got 1",
        f"{suite.path}:{line_of(suite, 'batch_sise')}: evaluations[0].params.batch_sise: unknown key 'batch_sise'; "
        f"did you mean 'batch_size'?"]


def test_a_gate_on_a_metric_the_method_lacks_or_these_params_turn_off(write, registry):
    suite = write("""
        evaluations:
          - id: loss
            method: lm.loss
            model: tiny
            dataset: train
            gates: [{metric: loss_men, max: 1}]
          - id: members
            method: membership.attack
            model: tiny
            dataset: train
            params: {non_members: unseen, attacks: [loss]}
            gates: [{metric: zlib_auc, max: 0.6}]
        """)
    first, second = problems(suite, registry)
    assert first.startswith(f"{suite.path}:{line_of(suite, 'loss_men')}: evaluations[0].gates[0].metric: "
                            f"method 'lm.loss' does not produce metric 'loss_men'; did you mean 'loss_mean'?")
    assert second.startswith(f"{suite.path}:{line_of(suite, 'zlib_auc')}: evaluations[1].gates[0].metric: "
                             f"metric 'zlib_auc' is not produced with these params (produced: loss_auc,")


def test_params_that_name_datasets_and_models_must_name_the_suites(write, registry):
    suite = write("""
        evaluations:
          - id: members
            method: membership.attack
            model: tiny
            dataset: train
            params: {non_members: unsen, reference_model: big}
        """)
    line = line_of(suite, "unsen")
    assert problems(suite, registry) == [
        f"{suite.path}:{line}: evaluations[0].params.non_members: unknown dataset 'unsen'; did you mean "
        f"'unseen'? (datasets: train, unseen)",
        f"{suite.path}:{line}: evaluations[0].params.reference_model: unknown model 'big' (models: tiny)"]


def test_a_method_needs_the_capabilities_it_requires(write, registry):
    class ScoreOnly:
        name = "score-only"
        summary = "scores, never generates"
        capabilities = frozenset({"logprobs"})

        class Params(BaseModel):
            path: str

        @staticmethod
        def dataset_refs(params):
            return []

    registry.current_plugin = "test"
    registry.add_adapter(ScoreOnly)
    suite = write("""
        evaluations:
          - {id: extract, method: extraction.discoverable, model: scorer, dataset: train}
          - {id: loss, method: lm.loss, model: scorer, dataset: train}
        """, head=HEAD + "  scorer: {adapter: score-only, path: hub/model}\n")
    assert problems(suite, registry) == [
        f"{suite.path}:{line_of(suite, 'extraction.discoverable')}: evaluations[0].model: method "
        f"'extraction.discoverable' needs generate, which adapter 'score-only' does not provide"]


def test_a_method_without_the_model_or_dataset_it_needs(write, registry):
    suite = write("""
        evaluations:
          - {id: loss, method: lm.loss}
        """)
    line = line_of(suite, "id: loss")
    assert problems(suite, registry) == [
        f"{suite.path}:{line}: evaluations[0]: method 'lm.loss' needs a model: set 'model'",
        f"{suite.path}:{line}: evaluations[0]: method 'lm.loss' needs a dataset: set 'dataset'"]


def test_a_duplicate_evaluation_id_points_at_the_first(write, registry):
    suite = write("""
        evaluations:
          - {id: loss, method: lm.loss, model: tiny, dataset: train}
          - {id: loss, method: lm.loss, model: tiny, dataset: unseen}
        """)
    assert problems(suite, registry) == [
        f"{suite.path}:{line_of(suite, 'dataset: unseen}')}: evaluations[1].id: duplicate evaluation id 'loss' "
        f"(also evaluations[0])"]


def test_missing_files_unknown_loaders_and_model_paths(write, registry, tmp_path):
    head = HEAD.replace("data/unseen.jsonl}", "data/gone.jsonl}").replace("train: {loader: jsonl,", "train: {loader: jsnl,")
    head += "  local: {adapter: hf-causal, path: ./checkpoints/none}\n"
    suite = write("""
        evaluations:
          - {id: loss, method: lm.loss, model: tiny, dataset: train}
        """, head=head)
    assert problems(suite, registry) == [
        f"{suite.path}:{line_of(suite, 'jsnl')}: datasets.train.loader: unknown loader 'jsnl'; did you mean 'jsonl'?",
        f"{suite.path}:{line_of(suite, 'gone.jsonl')}: datasets.unseen.path: data file "
        f"'{tmp_path / 'data' / 'gone.jsonl'}' does not exist",
        f"{suite.path}:{line_of(suite, 'checkpoints')}: models.local.path: model path "
        f"'{tmp_path / 'checkpoints' / 'none'}' does not exist"]


def test_baselines_must_exist_and_be_runs(write, registry, tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "run.json").write_text("[1, 2]")
    suite = write("""
        evaluations:
          - id: loss
            method: lm.loss
            model: tiny
            dataset: train
            gates:
              - {metric: loss_mean, max_increase: 0.1}
              - {metric: loss_mean, baseline: runs/none, max_increase: 0.1}
              - {metric: loss_mean, baseline: junk, max_decrease: 0.1}
        """)
    needs, missing, junk = problems(suite, registry)
    assert needs == (f"{suite.path}:{line_of(suite, 'max_increase: 0.1}')}: evaluations[0].gates[0]: "
                     f"'max_increase'/'max_decrease' compare against a saved run: set 'baseline' or run with "
                     f"--baseline RUN_DIR")
    assert missing == (f"{suite.path}:{line_of(suite, 'runs/none')}: evaluations[0].gates[1].baseline: baseline "
                       f"run '{tmp_path / 'runs' / 'none' / 'run.json'}' does not exist")
    assert junk.startswith(f"{suite.path}:{line_of(suite, 'baseline: junk')}: evaluations[0].gates[2].baseline: "
                           f"baseline run '{tmp_path / 'junk' / 'run.json'}' is not a memeval run.json")


def test_an_unknown_report_format_is_a_suite_error(write, registry):
    suite = write("""
        evaluations:
          - {id: loss, method: lm.loss, model: tiny, dataset: train}
        report: {formats: [json, htlm]}
        """)
    [problem] = problems(suite, registry)
    assert problem.startswith(f"{suite.path}:{line_of(suite, 'htlm')}: report.formats[1]: no reporter 'htlm' is "
                              f"installed; did you mean 'html'? (reporters: ")


def test_every_problem_is_reported_at_once_in_line_order(write, registry):
    suite = write("""
        evaluations:
          - {id: a, method: lm.loss, model: tiny, dataset: nope}
          - {id: b, method: lm.loss, model: tiny, dataset: train, params: {bogus: 1}}
          - {id: c, method: no.such, model: tiny, dataset: train}
        """)
    found = problems(suite, registry)
    assert [p.split(": ")[1] for p in found] == ["evaluations[0].dataset", "evaluations[1].params.bogus",
                                                  "evaluations[2].method"]
    lines = [int(p.split(":")[1]) for p in found]
    assert lines == sorted(lines) and len(set(lines)) == 3


def test_model_override_points_a_model_at_a_checkpoint_and_keeps_its_runtime_params(write, tmp_path):
    suite = write("""
        evaluations:
          - {id: loss, method: lm.loss, model: tiny, dataset: train}
        """, head=HEAD.replace("{adapter: recipe, dataset: train}", "{adapter: recipe, dataset: train, batch_size: 3}"))
    (tmp_path / "ckpt").mkdir()
    apply_model_overrides(suite, {"tiny": str(tmp_path / "ckpt")})
    model = suite.spec.models["tiny"]
    assert model.adapter == "hf-causal" and model.params == {"path": str(tmp_path / "ckpt"), "batch_size": 3}
    with pytest.raises(UsageError, match=r"the suite has no model 'tinny'; did you mean 'tiny'\? \(models: tiny\)"):
        apply_model_overrides(suite, {"tinny": "x"})


def test_baseline_override_replaces_only_relative_gates(write, tmp_path):
    suite = write("""
        evaluations:
          - id: loss
            method: lm.loss
            model: tiny
            dataset: train
            gates: [{metric: loss_mean, max: 5}, {metric: loss_mean, baseline: old, max_increase: 0.1}]
        """)
    apply_baseline_override(suite, str(tmp_path / "new"))
    fixed, relative = suite.spec.evaluations[0].gates
    assert fixed.baseline is None and relative.baseline == str((tmp_path / "new").resolve())


def test_a_run_json_baseline_names_its_directory(write, registry, tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"schema_version": 1, "evaluations": []}))
    suite = write("""
        evaluations:
          - id: loss
            method: lm.loss
            model: tiny
            dataset: train
            gates: [{metric: loss_mean, baseline: old/run.json, max_increase: 0.1}]
        """)
    [item] = collect(suite, registry)
    assert Path(suite.saved_run(item.spec.gates[0].baseline).directory) == run
