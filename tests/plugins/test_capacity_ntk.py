"""capacity.ntk: the NTK Gram matrix against autograd Jacobian products, its smallest eigenvalue
against the rank bound and width, and the sweep end to end (metrics recomputed from records)."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from memeval.api import FactoryArchitecture, MLPArchitecture, build_architecture
from memeval_plugins.capacity.networks import DeepFC, build_network, sphere
from memeval_plugins.capacity.ntk import ntk_gram


def conv_net(input_shape, num_classes, width=4):
    """A factory whose parameters are not all Linear's: its NTK comes from per-sample Jacobians."""
    return nn.Sequential(nn.Unflatten(1, (1, input_shape[0])), nn.Conv1d(1, width, 3), nn.Tanh(), nn.Flatten(),
                         nn.Linear(width * (input_shape[0] - 2), num_classes))


def inplace_relu(input_shape, num_classes, width=4):
    """Its ReLU overwrites the first layer's output: the closed form must not be used there."""
    return nn.Sequential(nn.Linear(input_shape[0], width), nn.ReLU(inplace=True), nn.Linear(width, num_classes))


def three_outputs(input_shape, num_classes, width=4):
    return nn.Sequential(nn.Linear(input_shape[0], width), nn.Tanh(), nn.Linear(width, 3))


def reference_kernel(model, x, names):
    """J Jᵀ with J built row by row from torch.autograd.grad of each sample's output."""
    chosen = [p for n, p in model.named_parameters() if n in names]
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(model(x[i:i + 1]).sum(), chosen)])
            for i in range(x.shape[0])]
    jacobian = torch.stack(rows)
    return jacobian @ jacobian.T


@pytest.mark.slow  # torch.func's first call takes seconds
def test_kernel_equals_the_autograd_jacobian_product():
    x = sphere(9, (6,), seed=0)
    torch.manual_seed(0)
    mlp = build_architecture(MLPArchitecture(hidden=[5, 7]), (6,), 1).double()
    deep = build_network(DeepFC(depth=3, bias=True), 5, (6,), "width", seed=1)
    conv = build_network(conv_net_spec(), 3, (6,), "width", seed=2)
    inplace = build_network(FactoryArchitecture(factory="test_capacity_ntk:inplace_relu"), 5, (6,), "width", 3)
    cases = [(inplace, "full", None), (inplace, "2", ["2.weight"]), (mlp, "full", None), (mlp, "body.fc2", ["body.fc2.weight"]), (mlp, "head.bias", ["head.bias"]),
             (deep, "full", None), (deep, "fc1", ["fc1.weight"]), (conv, "full", None), (conv, "1", ["1.weight"])]
    for model, block, names in cases:
        names = names or [n for n, _ in model.named_parameters()]
        expected = reference_kernel(model, x, names)
        gram = ntk_gram(model, x, block)
        assert gram.method == ("closed-form" if model not in (conv, inplace) or block == "2" else "jacobian")
        assert gram.parameters == sum(p.numel() for n, p in model.named_parameters() if n in names)
        torch.testing.assert_close(gram.kernel, expected, rtol=1e-10, atol=1e-12)
        # The per-sample Jacobian path, whole and in chunks of two rows, gives the same matrix.
        torch.testing.assert_close(ntk_gram(model, x, block, closed_form=False).kernel, expected, rtol=1e-10,
                                   atol=1e-12)
        tiny_budget = 8 * gram.parameters * 2 * 2
        torch.testing.assert_close(ntk_gram(model, x, block, budget=tiny_budget, closed_form=False).kernel,
                                   expected, rtol=1e-10, atol=1e-12)


def conv_net_spec():
    return FactoryArchitecture(factory="test_capacity_ntk:conv_net")


@pytest.mark.parametrize("width", [4, 5, 6, 7])
def test_smallest_eigenvalue_is_zero_below_n_parameters_and_positive_from_2n(width):
    n = 24
    x = sphere(n, (8,), seed=width)
    model = build_network(DeepFC(depth=3), width, (8,), "width", seed=width)
    gram = ntk_gram(model, x, "fc2")  # a width x width block
    eigenvalues = np.linalg.eigvalsh(gram.kernel.numpy())
    normalized = eigenvalues[0] / eigenvalues.mean()
    assert gram.parameters == width * width
    assert np.linalg.matrix_rank(gram.kernel.numpy()) == min(width * width, n)
    if gram.parameters < n:
        assert abs(normalized) < 1e-10
    if gram.parameters >= 2 * n:
        assert normalized > 1e-4


def test_smallest_eigenvalue_grows_with_width_at_fixed_n():
    x = sphere(32, (16,), seed=1)
    means = [np.mean([np.linalg.eigvalsh(ntk_gram(build_network(DeepFC(), w, (16,), "width", s), x).kernel.numpy())[0]
                      for s in range(3)]) for w in (4, 8, 16, 32, 64)]
    assert all(b > a for a, b in zip(means, means[1:], strict=False)), means
    assert means[0] > 0


SUITE = """
memeval: 1
suite: ntk-mini
seed: 1
evaluations:
  - id: fit
    method: capacity.ntk
    params: &ntk
      architecture: {kind: deep-fc, depth: 3}
      input_shape: [8]
      widths: [2, 3, 4, 8, 12]
      samples: [24, 48]
      random_labels: {epochs: 400, lr: 0.02}
  - id: blocks
    method: capacity.ntk
    params: {<<: *ntk, random_labels: null}
    matrix: {params.block: [full, fc2]}
  - id: factory
    method: capacity.ntk
    params: {<<: *ntk, architecture: {kind: factory, factory: "test_capacity_ntk:conv_net"}, widths: [1, 4],
             samples: [12], random_labels: null}
report: {formats: [json, html]}
"""


@pytest.fixture(scope="module")
def ntk_run(tmp_path_factory):
    from memeval.cli import main

    root = tmp_path_factory.mktemp("ntk")
    (root / "suite.yaml").write_text(textwrap.dedent(SUITE))
    code = main(["run", str(root / "suite.yaml"), "--out", str(root / "run"), "--cache-dir", str(root / "c"), "-q"])
    run = json.loads((root / "run" / "run.json").read_text())
    evaluations = {e["id"]: e for e in run["evaluations"]}
    records = {k: [json.loads(line) for line in (root / "run" / e["records_path"]).open()]
               for k, e in evaluations.items()}
    return root, code, evaluations, records


@pytest.mark.slow  # the module's sweep: about 6 s
def test_sweep_metrics_equal_those_recomputed_from_the_records(ntk_run):
    _, code, evaluations, records = ntk_run
    assert code == 0
    assert set(evaluations) == {"fit", "blocks[params.block=full]", "blocks[params.block=fc2]", "factory"}
    for name, evaluation in evaluations.items():
        metrics = {m["name"]: m["value"] for m in evaluation["metrics"]}
        rows = records[name]
        for r in rows:
            w = r["width"]
            if name != "factory":
                assert r["total_parameters"] == 8 * w + w * w + w
                assert r["parameters"] == (w * w if name.endswith("fc2]") else r["total_parameters"])
            assert r["ratio"] == pytest.approx(r["parameters"] / r["n"])
            assert r["lambda_min_normalized"] == pytest.approx(r["lambda_min"] / r["mean_eigenvalue"])
            assert r["rank"] <= min(r["parameters"], r["n"])
            assert r["full_rank"] == (r["lambda_min_normalized"] > 1e-8)
        under = [r["lambda_min_normalized"] for r in rows if r["ratio"] < 1]
        over = [r["lambda_min_normalized"] for r in rows if r["ratio"] >= 2]
        if under:
            assert metrics["lambda_min_under"] == max(under) and abs(max(under)) < 1e-10
        if over:
            assert metrics["lambda_min_over"] == min(over) > 1e-4
        ordered = sorted(rows, key=lambda r: r["ratio"])
        last_deficient = max((i for i, r in enumerate(ordered) if not r["full_rank"]), default=-1)
        assert metrics["transition_ratio"] == ordered[last_deficient + 1]["ratio"]
        if name != "factory":  # its grid has two cells, at P/N 0.92 and 3.42
            assert 1 <= metrics["transition_ratio"] <= 2
    assert {r["kernel"] for r in records["factory"]} == {"jacobian"}


def test_random_labels_are_memorized_only_with_enough_parameters(ntk_run):
    _, _, evaluations, records = ntk_run
    metrics = {m["name"]: m["value"] for m in evaluations["fit"]["metrics"]}
    under = [r["random_label_loss"] for r in records["fit"] if r["total_ratio"] < 1]
    over = [r["random_label_loss"] for r in records["fit"] if r["total_ratio"] >= 2]
    assert metrics["random_label_loss_under"] == pytest.approx(np.mean(under))
    assert metrics["random_label_loss_over"] == pytest.approx(np.mean(over))
    assert max(over) < 1e-3 < min(under)
    assert all(r["random_label_fit"] == 1.0 for r in records["fit"] if r["total_ratio"] >= 2)
    assert "random_label_loss_under" not in {m["name"] for m in evaluations["factory"]["metrics"]}


def test_report_plots_the_transition(ntk_run):
    root, *_ = ntk_run
    page = (root / "run" / "report.html").read_text()
    assert 'data-plugin-section="NTK and memorization capacity"' in page
    assert "Random-label memorization" in page and "Where K becomes full rank" in page


@pytest.mark.parametrize(("params", "message"), [
    ("{block: fc9}", "block 'fc9'"),
    ("{widths: [4, 2]}", "widths"),
    ("{architecture: {kind: factory, factory: 'test_capacity_ntk:three_outputs'}}", "scalar output"),
])
def test_bad_params_are_usage_errors(tmp_path, capsys, params, message):
    from memeval.cli import main

    suite = tmp_path / "suite.yaml"
    suite.write_text(f"memeval: 1\nsuite: bad\nevaluations:\n  - id: b\n    method: capacity.ntk\n"
                     f"    params: {params}\n")
    code = main(["run", str(suite), "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "c")])
    assert code == 4 and message in capsys.readouterr().err
