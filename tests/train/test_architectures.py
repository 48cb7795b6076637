"""Architectures: logits, penultimate features and named layers for mlp, cnn and a factory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from memeval.errors import UsageError
from memeval.train.architectures import (
    CNNArchitecture,
    FactoryArchitecture,
    MLPArchitecture,
    architecture_identity,
    build_model,
    layer_parameters,
    penultimate,
)

X = torch.rand(5, 1, 8, 8)

FACTORY = '''
from torch import nn

def plain(input_shape, num_classes, width=7):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, num_classes))

def not_a_module(input_shape, num_classes):
    return 3
'''


def test_mlp_features_head_and_layers():
    model = build_model(MLPArchitecture(hidden=[20, 12]), (1, 8, 8), 10)
    assert model(X).shape == (5, 10) and penultimate(model, X).shape == (5, 12)
    assert torch.allclose(model.head(penultimate(model, X)), model(X))
    assert list(layer_parameters(model)) == ["body.fc1", "body.fc2", "head"]
    assert list(layer_parameters(model)["head"]) == ["weight", "bias"]


def test_cnn_on_8x8_and_28x28_images():
    for shape in [(1, 8, 8), (1, 28, 28), (3, 5, 5)]:
        model = build_model(CNNArchitecture(channels=[4, 6], hidden=16), shape, 3)
        x = torch.rand(2, *shape)
        assert model(x).shape == (2, 3) and penultimate(model, x).shape == (2, 16)
    assert [k for k in layer_parameters(model)] == ["body.conv1", "body.conv2", "body.fc", "head"]
    with pytest.raises(UsageError, match="image inputs"):
        build_model(CNNArchitecture(), (64,), 10)


def test_factory_module_features_are_the_last_linear_input(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    params = FactoryArchitecture(factory="my_nets:plain", kwargs={"width": 9})
    model = build_model(params, (1, 8, 8), 10)
    assert isinstance(model, nn.Sequential) and model(X).shape == (5, 10)
    assert torch.allclose(penultimate(model, X), model[:3](X))
    assert len(architecture_identity(params)["source_sha256"]) == 16
    with pytest.raises(UsageError, match="not a torch.nn.Module"):
        build_model(FactoryArchitecture(factory="my_nets:not_a_module"), (1, 8, 8), 10)
    with pytest.raises(UsageError, match="has no 'nothing'"):
        build_model(FactoryArchitecture(factory="my_nets:nothing"), (1, 8, 8), 10)
    with pytest.raises(UsageError, match="cannot import"):
        build_model(FactoryArchitecture(factory="no_such_module_xyz:f"), (1, 8, 8), 10)
