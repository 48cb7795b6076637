"""The classifier recipe: trained once and cached by hash, safe under concurrent builds, loadable
(logits, features, layers, checkpoints, log, labels), and the `classifier` adapter on top."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from miniature import tiny

from memeval.cache import OutputCache
from memeval.errors import CacheMiss, UsageError
from memeval.models.base import AdapterContext
from memeval.models.classifier import Classifier
from memeval.train.classifier import (
    TrainedClassifier,
    build_classifier,
    recipe_hash,
    resolve_trainer,
)
from memeval.train.sources import load_source
from memeval.train.trainers import BUILTIN_TRAINERS, Standard


class Counting(Standard):
    """`standard`, counting its trainings (and slow enough for two builds to overlap)."""

    calls = 0
    lock = threading.Lock()

    def train(self, job):
        with Counting.lock:
            Counting.calls += 1
        return super().train(job)


@pytest.fixture
def counting():
    Counting.calls = 0
    return {**BUILTIN_TRAINERS, "standard": Counting}


def test_second_build_trains_nothing(tmp_path, counting):
    first = build_classifier(tiny(), tmp_path, seed=0, trainers=counting)
    stamp = (first.directory / "summary.json").stat().st_mtime_ns
    again = build_classifier(tiny(), tmp_path, seed=0, trainers=counting)
    assert first.trained and not again.trained and Counting.calls == 1
    assert again.directory == first.directory and (first.directory / "summary.json").stat().st_mtime_ns == stamp
    assert not [p for p in first.directory.parent.iterdir() if p.name.startswith(f".{first.directory.name}-")]


def test_concurrent_builds_train_once(tmp_path, counting):
    with ThreadPoolExecutor(3) as pool:
        built = list(pool.map(lambda _: build_classifier(tiny(), tmp_path, 0, trainers=counting), range(3)))
    assert Counting.calls == 1 and sum(b.trained for b in built) == 1
    assert len({b.directory for b in built}) == 1


def test_hash_covers_what_shapes_training_and_nothing_else():
    data = load_source(tiny().source)
    trainer = resolve_trainer(tiny(), BUILTIN_TRAINERS)
    key = recipe_hash(tiny(), trainer, data, 0)
    assert recipe_hash(tiny(), trainer, data, 1) != key
    for changed in (tiny(noise={"rate": 0.2}), tiny(optimizer={"lr": 0.02}), tiny(threads=2),
                    tiny(architecture={"hidden": [33]}), tiny(source={"train_limit": 200})):
        assert recipe_hash(changed, resolve_trainer(changed, BUILTIN_TRAINERS),
                           load_source(changed.source), 0) != key
    # trainer settings of a trainer not chosen do not matter; explicit defaults equal omitted ones
    other = tiny(trainer_params={"coteaching": {"num_gradual": 3}})
    assert recipe_hash(other, resolve_trainer(other, BUILTIN_TRAINERS), data, 0) == key
    cs = tiny(trainer="crosssplit", trainer_params={})
    explicit = tiny(trainer="crosssplit", trainer_params={"crosssplit": {"warmup_epochs": 10}})
    assert (recipe_hash(cs, resolve_trainer(cs, BUILTIN_TRAINERS), data, 0)
            == recipe_hash(explicit, resolve_trainer(explicit, BUILTIN_TRAINERS), data, 0))


def test_unknown_trainer_and_bad_settings_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="did you mean 'crosssplit'"):
        build_classifier(tiny(trainer="crossplit"), tmp_path, 0)
    with pytest.raises(UsageError, match="settings of trainer 'crosssplit'"):
        build_classifier(tiny(trainer_params={"crosssplit": {"warmup": 3}}), tmp_path, 0)
    with pytest.raises(UsageError, match="unknown trainer 'fixmatch'"):
        build_classifier(tiny(trainer_params={"fixmatch": {}}), tmp_path, 0)


@pytest.mark.parametrize("trainer", ["standard", "crosssplit"])
def test_loader_gives_logits_features_layers_checkpoints_log_and_labels(tmp_path, trainer):
    built = build_classifier(tiny(trainer=trainer), tmp_path, seed=0)
    model = TrainedClassifier(built.directory)
    data = model.data()
    logits = model.logits(data.x_test)
    assert logits.shape == (120, 10)
    assert np.array_equal(model.predict(data.x_train), model.log.final_pred)
    assert np.array_equal(logits.argmax(1), model.log.final_test_pred)
    assert model.features(data.x_test).shape == (120, 32)
    layers = model.parameters_by_layer()
    assert list(layers) == ["body.fc1", "head"] and layers["head"]["weight"].shape == (10, 32)
    assert model.checkpoint_epochs == list(range(7))
    init = model.parameters_by_layer(epoch=0)
    assert not np.array_equal(init["head"]["weight"], layers["head"]["weight"])
    for name in model.network_names:
        net = model.model_at(6, name)
        for key, value in net.state_dict().items():
            assert torch.equal(value, model.networks[name].state_dict()[key])
    with pytest.raises(UsageError, match="no checkpoint at epoch 9"):
        model.checkpoint(9)
    labels = model.labels
    assert labels.mask.sum() == round(0.4 * 240) == model.summary["noisy"]
    assert np.array_equal(labels.clean, data.y_train) and np.array_equal(labels.test, data.y_test)
    assert model.log.loss.shape == (6, 240)
    summary = json.loads((built.directory / "summary.json").read_text())
    assert summary["trainer"]["name"] == trainer and 0 <= summary["final"]["memorization_rate"] <= 1


def test_test_every_logs_the_test_set_at_those_epochs(tmp_path):
    model = TrainedClassifier(build_classifier(tiny(test_every=4), tmp_path, 0).directory)
    logged = (model.log.test_pred >= 0).all(axis=1)
    assert logged.tolist() == [False, False, False, True, False, True]


def context(tmp_path, mode="use", seed=0):
    cache = OutputCache(tmp_path / "cache", mode=mode)
    return AdapterContext(base_dir=tmp_path, seed=seed, cache=cache, cache_dir=tmp_path / "cache",
                          load_dataset=lambda name: [])


def test_adapter_trains_once_and_exposes_the_model(tmp_path):
    first = Classifier(tiny(), context(tmp_path))
    again = Classifier(tiny(), context(tmp_path))
    assert first.trained_now and not again.trained_now
    assert first.identity() == again.identity() and first.identity_key == again.identity_key
    assert Classifier.dataset_refs(tiny()) == [] and Classifier.capabilities == {"classify", "train"}
    x = first.data().x_test
    assert np.allclose(first.logits(x), again.logits(x))
    assert first.training_log.pred.shape == (6, 240) and first.labels.mask.any()
    other = Classifier(tiny(), context(tmp_path, seed=1))
    assert other.identity() != first.identity()
    pinned = Classifier(tiny(seed=1), context(tmp_path, seed=5))
    assert pinned.identity() == other.identity()  # the recipe's own seed wins over the suite's


def test_adapter_with_cache_only_refuses_to_train(tmp_path):
    with pytest.raises(CacheMiss, match="trained classifier"):
        Classifier(tiny(), context(tmp_path, mode="only"))


def test_training_reports_its_progress_and_the_report_changes_nothing(tmp_path):
    from memeval.train.classifier import TrainedClassifier

    said: list[str] = []
    loud = build_classifier(tiny(), tmp_path / "a", seed=0, log=said.append)
    quiet = build_classifier(tiny(), tmp_path / "b", seed=0)
    progress = [line for line in said if "epoch" in line and "training loss" in line]
    assert [line.split(":")[0].strip() for line in progress] == [f"epoch {e}/6" for e in range(1, 7)]
    loss = TrainedClassifier(loud.directory).log.loss
    assert progress[-1].startswith(f"  epoch 6/6: training loss {float(np.nanmean(loss[-1])):.4f}")
    assert (loud.directory / "weights.pt").read_bytes() == (quiet.directory / "weights.pt").read_bytes()
