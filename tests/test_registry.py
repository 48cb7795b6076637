"""Registry on its own: adding, getting, duplicates, unknown names with "did you mean", and who
registered what."""

from __future__ import annotations

import pytest

from memeval.errors import RegistryError
from memeval.method import Method, MetricSpec
from memeval.plugins import build_registry, make_plugin_manager
from memeval.registry import Registry, UnknownName


class Counting(Method):
    name = "demo.count"
    metrics = (MetricSpec("count", "samples", None),)


class Adapter:
    name = "demo-adapter"
    capabilities = frozenset({"logprobs"})


def registry_of(plugin: str, *methods: type) -> Registry:
    registry = Registry(current_plugin=plugin)
    for method in methods:
        registry.add_method(method)
    return registry


def test_a_method_is_found_by_name_with_the_plugin_that_added_it():
    registry = registry_of("mine", Counting)
    assert registry.get("method", "demo.count") is Counting
    assert registry.entry("method", "demo.count").plugin == "mine"
    assert registry.names("method") == ["demo.count"] and registry.names("adapter") == []


def test_names_are_sorted_whatever_the_order_of_registration():
    registry = Registry()
    for name in ("zlib", "csv", "jsonl"):
        registry.add_loader(name, lambda spec: [])
    assert registry.names("loader") == ["csv", "jsonl", "zlib"]


def test_the_same_name_twice_names_both_plugins():
    registry = registry_of("first", Counting)
    registry.current_plugin = "second"
    with pytest.raises(RegistryError, match="method 'demo.count' registered by both 'first' and 'second'"):
        registry.add_method(Counting)
    registry.add_adapter(Adapter)
    with pytest.raises(RegistryError, match="adapter 'demo-adapter' registered by both 'second' and 'second'"):
        registry.add_adapter(Adapter)


def test_one_name_may_be_used_by_different_kinds():
    registry = Registry()
    registry.add_loader("json", lambda spec: [])
    registry.add_reporter("json", object)
    assert registry.get("reporter", "json") is object and callable(registry.get("loader", "json"))


def test_an_unknown_name_suggests_the_closest_one():
    registry = registry_of("mine", Counting)
    with pytest.raises(UnknownName) as caught:
        registry.get("method", "demo.cuont")
    assert caught.value.args[0] == "unknown method 'demo.cuont'; did you mean 'demo.count'?"
    assert (caught.value.kind, caught.value.name, caught.value.known) == ("method", "demo.cuont", ["demo.count"])


def test_an_unknown_name_far_from_any_lists_what_is_known():
    registry = Registry()
    for name in ("parquet", "csv"):
        registry.add_loader(name, lambda spec: [])
    with pytest.raises(UnknownName) as caught:
        registry.get("loader", "spreadsheet")
    assert caught.value.args[0] == "unknown loader 'spreadsheet' (known: csv, parquet)"
    with pytest.raises(UnknownName) as empty:
        Registry().get("trainer", "sgd")
    assert empty.value.args[0] == "unknown trainer 'sgd' (known: none)"


def test_add_trainer():
    registry = Registry(current_plugin="noise")
    trainer = object()
    registry.add_trainer("sgd", trainer)
    assert registry.get("trainer", "sgd") is trainer and registry.names("trainer") == ["sgd"]
    assert registry.entry("trainer", "sgd").plugin == "noise"
    with pytest.raises(RegistryError, match="trainer 'sgd' registered by both 'noise' and 'noise'"):
        registry.add_trainer("sgd", object())


def test_a_nameless_entry_is_a_plugin_error():
    class Nameless(Adapter):
        name = ""

    with pytest.raises(RegistryError, match="plugin 'p' registered a adapter without a name"):
        Registry(current_plugin="p").add_adapter(Nameless)


@pytest.mark.parametrize(("cls", "message"), [
    (object, "is not a memeval.api.Method subclass"),
    (type("NoFamily", (Counting,), {"name": "count"}), "NoFamily.name must be 'family.name', got 'count'"),
    (type("NoMetrics", (Counting,), {"name": "demo.none", "metrics": ()}), "method 'demo.none' declares no metrics"),
])
def test_a_malformed_method_is_refused(cls, message):
    registry = Registry()
    with pytest.raises(RegistryError, match=message.replace(".", r"\.").replace("(", r"\(")):
        registry.add_method(cls)
    assert registry.names("method") == []


def test_build_registry_remembers_which_plugin_provided_what():
    registry = build_registry(make_plugin_manager())
    assert registry.entry("method", "lm.loss").plugin == "lm"
    assert registry.entry("method", "membership.attack").plugin == "membership"
    assert registry.entry("adapter", "recipe").plugin == "adapters"
    assert registry.entry("loader", "jsonl").plugin == "loaders"
    assert registry.entry("reporter", "html").plugin == "html"
    assert registry.current_plugin == "?"  # nothing registered later is blamed on the last plugin
