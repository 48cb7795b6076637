"""collab.bandit: the Metropolis-Hastings walk against its closed form, the bounded memory, and the
simulated dynamics end to end (consensus on both graph families, the isolated baseline, corruption,
metrics recomputed from the records)."""

from __future__ import annotations

import json
import textwrap

import networkx as nx
import numpy as np
import pytest
from scipy import stats

from memeval_plugins.collab.graphs import (
    Adjacency,
    BarabasiAlbert,
    build_graph,
    metropolis_matrix,
    metropolis_step,
)
from memeval_plugins.collab.simulation import Memory, simulate

SUITE = """
memeval: 1
suite: bandit-mini
seed: 3
evaluations:
  - id: er
    method: collab.bandit
    params: &bandit
      graph: {kind: erdos-renyi, agents: 60, p: 0.12}
      rounds: 200
      corruption: [0.0, 0.1, 0.2, 0.3, 0.4]
      repeats: 4
  - id: ba
    method: collab.bandit
    params: {<<: *bandit, graph: {kind: barabasi-albert, agents: 60, m: 2}, corruption: [0.0]}
  - id: file
    method: collab.bandit
    params: {<<: *bandit, graph: {kind: file, path: ring.edges}, corruption: [0.0, 0.3], repeats: 2,
             isolated_baseline: false}
report: {formats: [json, html]}
"""


@pytest.fixture(scope="module")
def bandit_run(tmp_path_factory):
    from memeval.cli import main

    root = tmp_path_factory.mktemp("bandit")
    (root / "suite.yaml").write_text(textwrap.dedent(SUITE))
    ring = nx.circulant_graph(40, [1, 2, 7])
    nx.write_edgelist(ring, root / "ring.edges", data=False)
    code = main(["run", str(root / "suite.yaml"), "--out", str(root / "run"), "--cache-dir", str(root / "c"), "-q"])
    run = json.loads((root / "run" / "run.json").read_text())
    evaluations = {e["id"]: e for e in run["evaluations"]}
    records = {k: [json.loads(line) for line in (root / "run" / e["records_path"]).open()]
               for k, e in evaluations.items()}
    return root, code, evaluations, records


def _metrics(evaluation):
    return {m["name"]: m["value"] for m in evaluation["metrics"]}


def test_metropolis_walk_is_uniform_at_stationarity():
    graph = build_graph(BarabasiAlbert(agents=30, m=2), seed=1)
    matrix = metropolis_matrix(graph)
    n = graph.number_of_nodes()
    assert np.allclose(matrix.sum(axis=1), 1) and (matrix >= 0).all()
    values, vectors = np.linalg.eig(matrix.T)
    stationary = np.real(vectors[:, np.argmax(np.real(values))])
    assert np.allclose(stationary / stationary.sum(), 1 / n)
    # The simple random walk on the same graph is not uniform (its stationary law is deg / 2|E|).
    simple = nx.to_numpy_array(graph) / np.array([graph.degree(i) for i in range(n)])[:, None]
    assert not np.allclose(np.ones(n) / n @ simple, 1 / n)
    # The sampler follows the matrix: one step from a hub and from a leaf, and a long run.
    rng = np.random.default_rng(0)
    for start in (int(np.argmax(matrix.diagonal() == 0)), int(np.argmax(matrix.diagonal()))):
        ends = metropolis_step(Adjacency.of(graph), np.full(200_000, start), rng)
        observed = np.bincount(ends, minlength=n)
        support = matrix[start] > 0
        assert (observed[~support] == 0).all()
        assert stats.chisquare(observed[support], 200_000 * matrix[start, support]).pvalue > 1e-3
    walkers = np.zeros(20_000, dtype=np.int64)
    for _ in range(300):
        walkers = metropolis_step(Adjacency.of(graph), walkers, rng)
    assert stats.chisquare(np.bincount(walkers, minlength=n)).pvalue > 1e-3


def test_memory_is_a_bounded_ring_buffer():
    memory = Memory.empty(3, 2)
    for arm in range(5):
        memory.push(np.array([0, 1]), np.array([arm, 10 + arm]))
        assert (memory.size <= 2).all() and ((memory.slots >= 0).sum(axis=1) <= 2).all()
    assert sorted(memory.slots[0]) == [3, 4] and sorted(memory.slots[1]) == [13, 14]  # the newest kept
    picks = memory.pick(np.random.default_rng(0))
    assert picks[0] in (3, 4) and picks[2] == -1  # agent 2 memorized nothing
    graph = build_graph(BarabasiAlbert(agents=40, m=2), seed=0)
    for bound in (1, 2):
        run = simulate(Adjacency.of(graph), np.array([0.9, 0.5]), np.zeros(40, dtype=bool), bound, 50, 0.05, 1,
                       np.random.default_rng(bound))
        assert run.max_memory == bound


def test_honest_agents_agree_on_the_best_arm_on_both_graph_families(bandit_run):
    _, code, evaluations, _ = bandit_run
    assert code == 0
    for name in ("er", "ba"):
        metrics = _metrics(evaluations[name])
        assert metrics["best_arm_fraction"] >= 0.9, name
        assert metrics["reached_target_rate"] == 1.0
        # The same agents with the same memory but no graph stay far from agreement.
        assert metrics["isolated_best_arm_fraction"] < 0.7, name
        assert metrics["max_memory_used"] == 3


def test_corruption_never_raises_the_final_share(bandit_run):
    _, _, evaluations, records = bandit_run
    graph = [r for r in records["er"] if r["setting"] == "graph"]
    means = [np.mean([r["final_fraction"] for r in graph if r["corruption"] == level])
             for level in (0.0, 0.1, 0.2, 0.3, 0.4)]
    assert all(b <= a for a, b in zip(means, means[1:], strict=False)), means
    assert means[-1] < 0.5 < means[0]
    expected = min(level for level, m in zip((0.0, 0.1, 0.2, 0.3, 0.4), means, strict=False) if m < 0.5)
    assert _metrics(evaluations["er"])["breakdown_corruption"] == expected
    for r in graph:  # shares are over honest agents only
        honest = r["agents"] - r["corrupted_agents"]
        assert r["corrupted_agents"] == round(r["corruption"] * 60)
        assert np.allclose(np.asarray(r["curve"]) * honest, np.round(np.asarray(r["curve"]) * honest), atol=0.01)


def test_metrics_equal_those_recomputed_from_the_records(bandit_run):
    _, _, evaluations, records = bandit_run
    for name, evaluation in evaluations.items():
        metrics = _metrics(evaluation)
        rows = records[name]
        first = [r for r in rows if r["setting"] == "graph" and r["corruption"] == 0.0]
        for r in rows:
            curve = np.asarray(r["curve"])
            assert len(curve) == 200
            assert r["final_fraction"] == pytest.approx(curve[-10:].mean(), abs=1e-3)
            hits = np.flatnonzero(curve >= 0.95)
            assert r["time_to_target"] == (int(hits[0]) + 1 if hits.size else None)
            assert r["max_memory"] <= 3
        assert metrics["best_arm_fraction"] == pytest.approx(np.mean([r["final_fraction"] for r in first]))
        times = [r["time_to_target"] for r in first if r["time_to_target"] is not None]
        assert metrics["time_to_target"] == pytest.approx(np.mean(times))
    assert evaluations["file"]["artifacts"]["curves"]["isolated"] == {}
    assert {r["edges"] for r in records["file"]} == {120}  # the file's graph, 40 nodes of degree 6


def test_report_plots_the_share_over_rounds_and_by_corruption(bandit_run):
    root, *_ = bandit_run
    page = (root / "run" / "report.html").read_text()
    assert 'data-plugin-section="Collaborative bandit"' in page
    assert "Honest agents on the best arm (mean over runs)" in page
    assert "Final share on the best arm by corruption" in page


@pytest.mark.parametrize(("params", "field"), [("{arms: [0.5, 0.5]}", "arms"),
                                               ("{corruption: [0.2, 0.1]}", "corruption"),
                                               ("{graph: {kind: barabasi-albert, agents: 5, m: 5}}", "graph"),
                                               ("{memory: 0}", "memory")])
def test_bad_params_are_usage_errors_naming_the_field(tmp_path, capsys, params, field):
    from memeval.cli import main

    suite = tmp_path / "suite.yaml"
    suite.write_text(f"memeval: 1\nsuite: bad\nevaluations:\n  - id: b\n    method: collab.bandit\n"
                     f"    params: {params}\n")
    assert main(["run", str(suite), "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "c")]) == 4
    assert field in capsys.readouterr().err


def test_a_missing_graph_file_is_a_usage_error(tmp_path, capsys):
    from memeval.cli import main

    suite = tmp_path / "suite.yaml"
    suite.write_text("memeval: 1\nsuite: bad\nevaluations:\n  - id: b\n    method: collab.bandit\n"
                     "    params: {graph: {kind: file, path: nowhere.edges}}\n")
    code = main(["run", str(suite), "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 4 and "nowhere.edges" in err and "graph.path" in err and not (tmp_path / "run").exists()
