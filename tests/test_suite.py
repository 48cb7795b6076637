"""Malformed suites: each gives exit code 4 and names the file, the line and the field."""

from __future__ import annotations

import re
import textwrap

import pytest

from memeval.errors import UsageError
from memeval.suite import load_suite

GOOD = """\
memeval: 1
suite: bad
seed: 0
datasets:
  train: {loader: jsonl, path: data/train.jsonl, id_field: id}
models:
  tiny: {adapter: recipe, dataset: train, training: {epochs: 1}}
evaluations:
  - id: loss
    method: lm.loss
    model: tiny
    dataset: train
    params: {max_tokens: 32}
    gates:
      - {metric: loss_mean, max: 10}
"""

# (name, text replaced in GOOD -> replacement, expected line, expected field, words in the message)
CASES = [
    ("bad yaml", ("seed: 0", "seed: [0"), 4, None, "flow sequence started at line 3"),
    ("not a mapping", (GOOD, "- just\n- a list\n"), 1, None, "expected a mapping"),
    ("unknown top-level key", ("seed: 0", "seed: 0\nrepot: {}"), 4, "repot", "did you mean 'report'"),
    ("unknown evaluation key", ("    dataset: train\n    params", "    datset: train\n    params"), 12,
     "evaluations[0].datset", "did you mean 'dataset'"),
    ("wrong type", ("seed: 0", "seed: zero"), 3, "seed", "valid integer"),
    ("missing required field", ("    method: lm.loss\n", ""), 9, "evaluations[0].method", "missing required field"),
    ("schema version", ("memeval: 1", "memeval: 2"), 1, "memeval", "unsupported suite schema version"),
    ("missing model", ("    model: tiny", "    model: tinyy"), 11, "evaluations[0].model", "did you mean 'tiny'"),
    ("missing dataset", ("    dataset: train\n    params", "    dataset: trian\n    params"), 12,
     "evaluations[0].dataset", "did you mean 'train'"),
    ("unknown method near miss", ("method: lm.loss", "method: lm.los"), 10, "evaluations[0].method",
     "did you mean 'lm.loss'"),
    ("unknown param", ("max_tokens: 32", "max_tokns: 32"), 13, "evaluations[0].params.max_tokns",
     "did you mean 'max_tokens'"),
    ("wrong param type", ("max_tokens: 32", "max_tokens: lots"), 13, "evaluations[0].params.max_tokens",
     "valid integer"),
    ("gate on a metric the method lacks", ("metric: loss_mean", "metric: loss_men"), 15,
     "evaluations[0].gates[0].metric", "did you mean 'loss_mean'"),
    ("gate without threshold", ("{metric: loss_mean, max: 10}", "{metric: loss_mean}"), 15,
     "evaluations[0].gates[0]", "a gate needs"),
    ("missing data file", ("path: data/train.jsonl", "path: data/nope.jsonl"), 5, "datasets.train.path",
     "does not exist"),
    ("unknown adapter", ("adapter: recipe", "adapter: recipes"), 7, "models.tiny.adapter", "did you mean 'recipe'"),
    ("unknown loader", ("loader: jsonl", "loader: jsonlines"), 5, "datasets.train.loader", "unknown loader"),
    ("recipe on unknown dataset", ("dataset: train, training", "dataset: tran, training"), 7,
     "models.tiny.dataset", "did you mean 'train'"),
    ("bad recipe param", ("training: {epochs: 1}", "training: {epoch: 1}"), 7, "models.tiny.training.epoch",
     "did you mean 'epochs'"),
    ("duplicate evaluation id", ("      - {metric: loss_mean, max: 10}\n",
                                 "      - {metric: loss_mean, max: 10}\n  - {id: loss, method: lm.loss, model: tiny, "
                                 "dataset: train}\n"), 16, "evaluations[1].id", "duplicate evaluation id"),
    ("unknown dataset key", ("id_field: id}", "id_feld: id}"), 5, "datasets.train.id_feld",
     "did you mean 'id_field'"),
    ("unknown model key", ("training: {epochs: 1}", "training: {epochs: 1}, batchsize: 3"), 7,
     "models.tiny.batchsize", "did you mean 'batch_size'"),
    ("unknown YAML tag", ("suite: bad", "suite: !foo bad"), 2, None, "could not determine a constructor"),
    ("python tag", ("suite: bad", "suite: !!python/object:os.system bad"), 2, None, "invalid YAML"),
    ("bad int tag", ("seed: 0", "seed: !!int abc"), 3, None, "invalid literal"),
    ("recursive alias", ("evaluations:\n", "loop: &e [*e]\nevaluations:\n"), 8, None, "nested too deeply"),
    ("negative seed", ("seed: 0", "seed: -1"), 3, "seed", "greater than or equal to 0"),
    ("NaN gate", ("{metric: loss_mean, max: 10}", "{metric: loss_mean, max: .nan}"), 15, "evaluations[0].gates[0]",
     "finite"),
    ("impossible gate range", ("{metric: loss_mean, max: 10}", "{metric: loss_mean, min: 10, max: 1}"), 15,
     "evaluations[0].gates[0]", "no value can pass"),
    ("boolean schema version", ("memeval: 1", "memeval: true"), 1, "memeval", "unsupported suite schema version"),
    ("duplicate key", ("seed: 0", "seed: 0\nseed: 1"), 4, "seed", "duplicate key"),
    ("bad evaluation id", ("- id: loss", "- id: 'my loss!'"), 9, "evaluations[0].id", "letters, digits"),
    ("baseline without tolerance", ("{metric: loss_mean, max: 10}", "{metric: loss_mean, baseline: runs/x}"), 15,
     "evaluations[0].gates[0]", "needs 'max_increase'"),
    ("relative gate, no baseline", ("{metric: loss_mean, max: 10}", "{metric: loss_mean, max_increase: 0.1}"), 15,
     "evaluations[0].gates[0]", "or run with --baseline RUN_DIR"),
    ("missing baseline run", ("{metric: loss_mean, max: 10}",
                              "{metric: loss_mean, baseline: runs/x, max_increase: 0.1}"), 15,
     "evaluations[0].gates[0].baseline", "does not exist"),
]


def write_case(tmp_path, old_new):
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "train.jsonl").write_text('{"id": "a", "text": "hello"}\n')
    old, new = old_new
    assert old in GOOD
    path = tmp_path / "suite.yaml"
    path.write_text(GOOD.replace(old, new, 1))
    return path


def test_good_suite_validates(tmp_path, run_cli):
    path = write_case(tmp_path, ("seed: 0", "seed: 0"))
    code, out, err = run_cli("validate", path)
    assert code == 0, err
    assert "ok (1 evaluations" in out


@pytest.mark.parametrize("name,change,line,field,words", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_malformed_suite_is_a_usage_error(tmp_path, run_cli, name, change, line, field, words, command):
    path = write_case(tmp_path, change)
    code, out, err = run_cli(command, path, "--out", tmp_path / "out") if command == "run" else run_cli(command, path)
    assert code == 4, (out, err)
    assert f"{path}:{line}:" in err, err
    if field:
        assert re.search(rf":{line}: {re.escape(field)}: ", err), err
    assert words in err


def test_empty_dataset_is_a_usage_error_at_run_time(tmp_path, run_cli):
    path = write_case(tmp_path, ("seed: 0", "seed: 0"))
    (tmp_path / "data" / "train.jsonl").write_text("")
    code, _, err = run_cli("run", path, "--out", tmp_path / "out")
    assert code == 4
    assert f"{path}:5: datasets.train: " in err and "empty" in err


def test_missing_text_column_is_a_usage_error(tmp_path, run_cli):
    path = write_case(tmp_path, ("id_field: id}", "id_field: id, text_field: body}"))
    code, _, err = run_cli("run", path, "--out", tmp_path / "out")
    assert code == 4
    assert f"{path}:5: datasets.train.text_field: column 'body' is not in the data" in err


def test_unreadable_data_is_a_usage_error(tmp_path, run_cli):
    path = write_case(tmp_path, ("seed: 0", "seed: 0"))
    (tmp_path / "data" / "train.jsonl").write_text("{not json\n")
    code, _, err = run_cli("run", path, "--out", tmp_path / "out")
    assert code == 4
    assert f"{tmp_path / 'data' / 'train.jsonl'}:1: this line is not JSON" in err


def test_merge_keys_and_anchors_work(tmp_path, run_cli):
    path = write_case(tmp_path, ("datasets:\n  train: {loader: jsonl, path: data/train.jsonl, id_field: id}",
                                 "common: &data {loader: jsonl, id_field: id}\ndatasets:\n"
                                 "  train:\n    <<: *data\n    path: data/train.jsonl"))
    code, out, err = run_cli("validate", path)
    assert code == 4 and "unknown key 'common'" in err  # the anchor's holder is still a key
    path.write_text(path.read_text().replace("common: &data", "datasets_common_unused: &data", 1))
    text = path.read_text().replace("datasets_common_unused: &data {loader: jsonl, id_field: id}\n", "")
    text = text.replace("  train:\n    <<: *data\n", "  train:\n    <<: &data {loader: jsonl, id_field: id}\n")
    path.write_text(text)
    code, out, err = run_cli("validate", path)
    assert code == 0, err


def test_missing_suite_file(tmp_path, run_cli):
    code, _, err = run_cli("validate", tmp_path / "nope.yaml")
    assert code == 4 and "suite file not found" in err


def test_all_errors_are_reported_at_once(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent("""\
        memeval: 1
        suite: x
        seed: x
        evaluations:
          - {id: a}
        """))
    from memeval.suite import SuiteErrors

    with pytest.raises(SuiteErrors) as info:
        load_suite(path)
    assert [(e.line, e.field) for e in info.value.errors] == [(3, "seed"), (5, "evaluations[0].method")]


def test_unknown_cli_option_is_a_usage_error(run_cli, tmp_path):
    assert run_cli("run", "--bogus")[0] == 4
    assert run_cli("run", tmp_path / "s.yaml", "--limit", "0")[0] == 4
    assert run_cli("run", tmp_path / "s.yaml", "--model", "nopath")[0] == 4


def test_a_blocked_reporter_the_suite_asks_for_is_a_usage_error(tmp_path, run_cli):
    path = write_case(tmp_path, ("seed: 0", "seed: 0\nreport: {html: true, markdown: false}"))
    assert run_cli("validate", path)[0] == 0
    code, _, err = run_cli("validate", path, "-p", "no:html")
    assert code == 4 and f"{path}:4" in err and "no reporter 'html' is installed" in err


def test_an_alias_bomb_is_a_usage_error_in_bounded_time_and_memory(tmp_path):
    """Billion laughs: nine levels of nine aliases would expand to 9^9 strings."""
    import subprocess
    import sys

    levels = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("memeval: 1\nsuite: bomb\n" + "\n".join(levels) + "\nevaluations: []\n")
    # Peak memory from VmHWM: ru_maxrss would carry over the forked pytest process's across exec.
    code = ("import re, time, sys\n"
            "from memeval.suite import load_suite\nfrom memeval.errors import UsageError\n"
            "start = time.perf_counter()\n"
            "try:\n    load_suite(sys.argv[1])\nexcept UsageError as exc:\n    print(exc)\n"
            "peak = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
            "print(time.perf_counter() - start, peak)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True, timeout=60)
    message, numbers = proc.stdout.strip().splitlines()
    seconds, peak_kb = map(float, numbers.split())
    assert f"{bomb}:3: YAML expands to more than 100000 values" in message
    assert seconds < 1.0 and peak_kb < 200 * 1024


@pytest.mark.parametrize("tagged", ["gates: !!python/object/apply:os.system [echo]", "gates: !custom [1]",
                                    "params: !!omap [{a: 1}]"])
def test_a_tag_on_a_list_or_map_is_rejected_with_its_line(tmp_path, tagged):
    path = tmp_path / "tagged.yaml"
    path.write_text(f"memeval: 1\nsuite: x\nevaluations:\n  - id: a\n    method: lm.loss\n    {tagged}\n")
    with pytest.raises(UsageError) as caught:
        load_suite(path)
    assert str(caught.value).startswith(f"{path}:6: evaluations[0].") and "is not allowed" in str(caught.value)
