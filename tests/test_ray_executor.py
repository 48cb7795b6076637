"""`--executor ray` on a local 2-CPU Ray cluster: the same records and metrics as the local
executor, an actor killed mid-run retried with nothing lost or duplicated, and a second run that
is all cache hits."""

from __future__ import annotations

import json
import os
import random
import sys
from types import SimpleNamespace

import pytest
from helpers import write_jsonl

from memeval.ray_executor import pool_size
from memeval.suite import ExecutorSpec

WORDS = ["red", "fox", "jumps", "over", "the", "lazy", "dog", "and", "cat", "runs", "far", "away", "from", "home"]


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module (starting one takes seconds on 2 cores), as memeval starts
    one: workers at the default priority, seeing this process's sys.path (the test plugin imports
    there too)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _system_config={"worker_niceness": 0},
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}})
    yield ray
    ray.shutdown()


def write_suite(path, tiny_model_dir, method: str, extra: dict | None = None, executor: dict | None = None):
    suite = {"memeval": 1, "suite": "ray", "seed": 0,
             "datasets": {"members": {"loader": "jsonl", "path": "members.jsonl", "id_field": "id"},
                          "others": {"loader": "jsonl", "path": "others.jsonl", "id_field": "id"}},
             "models": {"tiny": {"adapter": "hf-causal", "path": str(tiny_model_dir), "batch_size": 64}},
             "evaluations": [
                 {"id": "extract", "method": method, "model": "tiny", "dataset": "members",
                  "params": {"prefix_tokens": 8, "suffix_tokens": 8, "batch_size": 64, **(extra or {})}},
                 {"id": "membership", "method": "membership.attack", "model": "tiny", "dataset": "members",
                  "params": {"non_members": "others", "attacks": ["loss", "zlib", "min_k"], "batch_size": 64,
                             "blind_baseline": False}}]}
    if executor:
        suite["executor"] = executor
    path.write_text(json.dumps(suite))
    return path


def same(a, b) -> bool:
    """Equal JSON values; floats to 1e-4: a decoding step's margin (top-1 minus top-2 logit) can
    differ in its last float32 bits between processes (the matrix library's path depends on thread
    count and memory alignment), while the tokens it picks are the same."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= 1e-4
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def assert_same_records(mine: dict, theirs: dict) -> None:
    """The same evaluations, records in the same order, equal field by field."""
    assert mine.keys() == theirs.keys()
    for evaluation in mine:
        a, b = (list(map(json.loads, r[evaluation].splitlines())) for r in (mine, theirs))
        assert [r["id"] for r in a] == [r["id"] for r in b]
        bad = [x["id"] for x, y in zip(a, b, strict=True) if not same(x, y)]
        assert not bad, f"{evaluation}: {len(bad)} records differ, first {bad[0]}"


def outputs(run_dir):
    run = json.loads((run_dir / "run.json").read_text())
    records = {e["id"]: (run_dir / "records" / f"{e['id']}.jsonl").read_text() for e in run["evaluations"]}
    return run, records


@pytest.mark.slow
def test_ray_gives_the_local_results_survives_a_killed_actor_and_reruns_from_cache(
        cluster, tiny_model_dir, tmp_path, run_cli):
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 9))) for _ in range(2000)]
    write_jsonl(tmp_path / "members.jsonl", [{"id": f"m{i}", "text": t} for i, t in enumerate(texts[:1500])])
    write_jsonl(tmp_path / "others.jsonl", [{"id": f"o{i}", "text": t} for i, t in enumerate(texts[1500:])])
    local = write_suite(tmp_path / "local.yaml", tiny_model_dir, "extraction.discoverable")
    flag = tmp_path / "crashed"
    crashing = write_suite(tmp_path / "ray.yaml", tiny_model_dir, "test.crashing_discoverable",
                           {"crash_flag": str(flag), "driver_pid": os.getpid()})

    code, _, err = run_cli("run", local, "--out", tmp_path / "local", "--cache-dir", tmp_path / "cache-local", "-q")
    assert code == 0, err
    code, _, err = run_cli("run", crashing, "--out", tmp_path / "ray", "--cache-dir", tmp_path / "cache-ray",
                           "--executor", "ray", "-p", "ray_crash_plugin", "-q")
    assert code == 0, err
    assert flag.exists() and int(flag.read_text()) != os.getpid()  # a worker died, not this process

    (local_run, local_records), (ray_run, ray_records) = outputs(tmp_path / "local"), outputs(tmp_path / "ray")
    assert_same_records(local_records, ray_records)  # same order, nothing lost, nothing twice
    ids = [json.loads(line)["id"] for line in ray_records["extract"].splitlines()]
    assert len(ids) == len(set(ids)) == 1500
    for mine, theirs in zip(local_run["evaluations"], ray_run["evaluations"], strict=True):
        assert [(m["name"], m["value"], m["ci_low"], m["ci_high"]) for m in mine["metrics"]] == \
               [(m["name"], m["value"], m["ci_low"], m["ci_high"]) for m in theirs["metrics"]]
        # A sequence in two batches is computed once here, once per actor there.
        assert theirs["model_calls"]["computed"] >= mine["model_calls"]["computed"] > 0

    # The suite's own `executor:` this time; every output is in the cache the first Ray run filled.
    again = write_suite(tmp_path / "again.yaml", tiny_model_dir, "extraction.discoverable", executor={"kind": "ray"})
    code, _, err = run_cli("run", again, "--out", tmp_path / "again", "--cache-dir", tmp_path / "cache-ray")
    assert code == 0, err
    assert "0 sent to Ray" in err and "sent to Ray" in err
    again_run, again_records = outputs(tmp_path / "again")
    # Replayed: a prompt two actors both computed is replayed from either's entry.
    assert_same_records(ray_records, again_records)
    for evaluation in again_run["evaluations"]:
        assert evaluation["model_calls"]["computed"] == 0 and evaluation["model_calls"]["cache_hits"] > 0


def test_actor_pool_leaves_a_cpu_for_ray_data():
    two = SimpleNamespace(cluster_resources=lambda: {"CPU": 2.0})
    assert pool_size(two, ExecutorSpec(kind="ray")) == (2, 0.5)  # 2 actors claim 1 CPU between them
    assert pool_size(two, ExecutorSpec(kind="ray", actors=4)) == (4, 0.25)
    one = SimpleNamespace(cluster_resources=lambda: {"CPU": 1.0})
    assert pool_size(one, ExecutorSpec(kind="ray")) == (1, 0.5)
    assert pool_size(two, ExecutorSpec(kind="ray", cpus_per_actor=1)) == (2, 1)


NOISE_SUITE = {
    "memeval": 1, "suite": "noise-cells",
    "models": {"standard": {"adapter": "classifier", "source": {"kind": "digits", "train_limit": 300},
                            "architecture": {"kind": "mlp", "hidden": [64]},
                            "noise": {"kind": "symmetric", "rate": 0.3}, "trainer": "standard",
                            "optimizer": {"name": "adam", "lr": 0.02, "epochs": 60}, "matrix": {"seed": [0, 1]}}},
    "evaluations": [{"id": "noise", "method": "label_noise.memorization", "model": "standard"}],
}


@pytest.mark.slow
def test_matrix_cells_train_as_ray_tasks_with_the_local_results(cluster, tmp_path, run_cli):
    suite = tmp_path / "noise.yaml"
    suite.write_text(json.dumps(NOISE_SUITE))
    code, _, err = run_cli("run", suite, "--out", tmp_path / "local", "--cache-dir", tmp_path / "cache-local", "-q")
    assert code == 0, err
    code, _, err = run_cli("run", suite, "--out", tmp_path / "ray", "--cache-dir", tmp_path / "cache-ray",
                           "--executor", "ray")
    assert code == 0, err
    assert "2 training experiments sent to Ray" in err
    (local_run, local_records), (ray_run, ray_records) = outputs(tmp_path / "local"), outputs(tmp_path / "ray")
    assert len(local_records) == 2 and ray_records == local_records
    for mine, theirs in zip(local_run["evaluations"], ray_run["evaluations"], strict=True):
        assert mine["id"] == theirs["id"] and mine["metrics"] == theirs["metrics"]
    assert len(list((tmp_path / "cache-ray" / "classifiers").glob("*/summary.json"))) == 2


def test_command_line_overrides_the_suites_executor_and_a_bad_one_is_a_suite_error(tiny_suite, run_cli):
    from argparse import Namespace

    from memeval.ray_executor import executor_spec
    from memeval.suite import load_suite

    path = tiny_suite(extra="executor: {kind: ray, actors: 3, threads: 2}\n")
    session = SimpleNamespace(suite=load_suite(path), config=SimpleNamespace(options=Namespace()))
    assert executor_spec(session) == ExecutorSpec(kind="ray", actors=3, threads=2)
    session.config.options = Namespace(executor="local", address=None, ray_cpus=1.0, ray_gpus=None, ray_actors=None)
    assert executor_spec(session) == ExecutorSpec(kind="local", actors=3, threads=2, num_cpus=1.0)
    code, _, err = run_cli("validate", tiny_suite(extra="executor: {kind: dask}\n", name="bad.yaml"))
    assert code == 4 and "executor" in err and "'local' or 'ray'" in err


def test_a_cluster_memeval_starts_is_shut_down_through_the_api_and_one_it_joined_is_left(monkeypatch):
    """With a stand-in `ray` module: what `ray.init` is asked for, and who calls `ray.shutdown`."""
    import types

    import memeval.ray_executor as executor

    calls = []
    fake = types.ModuleType("ray")
    fake.data = types.ModuleType("ray.data")
    fake.data.DataContext = SimpleNamespace(get_current=lambda: SimpleNamespace())
    fake.is_initialized = lambda: bool(calls and calls[-1][0] == "init")
    fake.init = lambda **kwargs: calls.append(("init", kwargs))
    fake.shutdown = lambda: calls.append(("shutdown", {}))
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setitem(sys.modules, "ray.data", fake.data)
    monkeypatch.setitem(executor._OWNED, "cluster", False)

    executor.connect(ExecutorSpec(kind="ray", num_cpus=2, num_gpus=0), verbosity=0)
    kind, kwargs = calls[0]
    assert kind == "init" and (kwargs["num_cpus"], kwargs["num_gpus"]) == (2, 0) and "address" not in kwargs
    assert kwargs["_system_config"] == {"worker_niceness": 0}
    assert os.path.dirname(__file__) in kwargs["runtime_env"]["env_vars"]["PYTHONPATH"].split(os.pathsep)
    executor.connect(ExecutorSpec(kind="ray"), verbosity=0)  # connected already: no second cluster
    assert len(calls) == 1
    executor.memeval_unconfigure(config=None)
    assert calls[-1][0] == "shutdown" and not executor._OWNED["cluster"]
    executor.memeval_unconfigure(config=None)  # nothing of ours left to shut down
    assert len(calls) == 2

    calls.clear()
    executor.connect(ExecutorSpec(kind="ray", address="auto"), verbosity=0)
    assert calls[0][1]["address"] == "auto" and "num_cpus" not in calls[0][1]
