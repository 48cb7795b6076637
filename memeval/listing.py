"""`memeval list`: what the installed plugins provide (methods, model adapters, dataset loaders,
reporters) as text, as JSON, or as the Markdown method reference checked in as `docs/methods.md`."""

from __future__ import annotations

import inspect
import json
import textwrap
import types
from collections.abc import Iterator
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from memeval.config import Config
from memeval.errors import UsageError
from memeval.plugins import distributions
from memeval.registry import Registry, UnknownName

REGENERATE = "memeval list --markdown -o docs/methods.md"  # also `make docs`
DIRECTIONS = {True: "higher = more memorization", False: "lower = more memorization", None: "no direction"}


def describe_registry(config: Config, method: str | None = None) -> dict[str, Any]:
    """Everything `memeval list` shows, as JSON-ready data; with `method`, only that method."""
    registry, dists = config.registry, distributions(config.pluginmanager)

    def origin(kind: str, name: str) -> dict[str, Any]:
        plugin = registry.entry(kind, name).plugin
        return {"plugin": plugin, "distribution": dists.get(plugin, "memeval (builtin)")}

    if method is not None:
        _check_method_name(registry, method)
        return {"methods": [{**describe_method(registry.get("method", method)), **origin("method", method)}]}
    return {
        "methods": [{**describe_method(registry.get("method", n)), **origin("method", n)}
                    for n in registry.names("method")],
        "adapters": [{**describe_adapter(registry.get("adapter", n)), **origin("adapter", n)}
                     for n in registry.names("adapter")],
        "loaders": [{"name": n, "summary": _first_paragraph(registry.get("loader", n)), **origin("loader", n)}
                    for n in registry.names("loader")],
        "reporters": [{"name": n, "summary": _first_paragraph(registry.get("reporter", n)), **origin("reporter", n)}
                      for n in registry.names("reporter")],
    }


def _check_method_name(registry: Registry, name: str) -> None:
    try:
        registry.get("method", name)
    except UnknownName as exc:
        raise UsageError(f"memeval list: {exc}") from None


def describe_method(cls: Any) -> dict[str, Any]:
    return {"name": cls.name, "summary": cls.summary, "requires": sorted(cls.requires),
            "needs_dataset": cls.needs_dataset, "params": describe_params(cls.Params),
            "metrics": [{"name": m.name, "higher_is_worse": m.higher_is_worse, "per_sample": m.per_sample,
                         "statistic": m.statistic, "description": m.description} for m in cls.metrics],
            "records": [{"field": k, "description": v} for k, v in cls.records.items()],
            "doc": inspect.cleandoc(cls.__doc__ or "")}


def describe_adapter(cls: Any) -> dict[str, Any]:
    return {"name": cls.name, "summary": cls.summary, "capabilities": sorted(cls.capabilities),
            "params": describe_params(cls.Params)}


def describe_params(model: type[BaseModel], within: dict[type, str] | None = None,
                    prefix: str = "") -> list[dict[str, Any]]:
    """One entry per field. A field holding a nested model lists that model's fields under
    `fields`. A model nested in itself (a recipe's `init_from`) names the enclosing field under
    `same_as` (`""`: the top level) and lists only the fields it adds."""
    within = {**(within or {}), model: prefix.rstrip(".")}
    return [_describe_field(info.alias or name, info, within, prefix) for name, info in model.model_fields.items()]


def _describe_field(name: str, info: Any, within: dict[type, Any], prefix: str) -> dict[str, Any]:
    default = None if info.is_required() else info.get_default(call_default_factory=True)
    entry = {"name": name, "type": type_text(info.annotation), "required": info.is_required(),
             "default": default.model_dump() if isinstance(default, BaseModel) else default,
             "description": info.description or ""}
    nested = _nested_model(info.annotation)
    enclosing = next((m for m in within if nested is not None and issubclass(nested, m)), None)
    if enclosing is not None:
        entry["same_as"] = within[enclosing]
        entry["fields"] = [_describe_field(info.alias or f, info, within, f"{prefix}{name}.")
                           for f, info in nested.model_fields.items() if f not in enclosing.model_fields]
    elif nested is not None:
        entry["fields"] = describe_params(nested, within, f"{prefix}{name}.")
    return entry


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, map(_nested_model, get_args(annotation))), None)


def type_text(annotation: Any) -> str:
    """A param's type as a suite author reads it: `int | None`, `"greedy" | "sample"`, `map` for
    a nested model (its fields are listed), never a Python class path."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin is Union or origin is types.UnionType:
        return " | ".join(type_text(a) for a in args)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "map"
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_text(a) for a in args)}]"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def flat_params(params: list[dict[str, Any]], prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(dotted name, entry) for every param, nested fields after the field that holds them."""
    for p in params:
        yield prefix + p["name"], p
        yield from flat_params(p.get("fields", []), f"{prefix}{p['name']}.")


def _first_paragraph(obj: Any) -> str:
    return inspect.cleandoc(obj.__doc__ or "").split("\n\n")[0].replace("\n", " ")


def print_text(info: dict[str, Any]) -> None:
    print("methods:")
    for m in info["methods"]:
        print(f"  {m['name']}  [{m['plugin']}: {m['distribution']}]  needs {', '.join(m['requires']) or 'nothing'}")
        print(f"      {m['summary']}")
        if "adapters" not in info and m["doc"]:  # `memeval list METHOD`: the whole story
            print(textwrap.indent(m["doc"], "      "))
        _print_params(m["params"])
        for metric in m["metrics"]:
            print(f"      metric {metric['name']} ({DIRECTIONS[metric['higher_is_worse']]}): {metric['description']}")
        for record in m["records"]:
            print(f"      record {record['field']}: {record['description']}")
    for kind in ("adapters", "loaders", "reporters"):
        if kind not in info:
            continue
        print(f"{kind}:")
        for entry in info[kind]:
            extra = f"  capabilities: {', '.join(entry['capabilities'])}" if "capabilities" in entry else ""
            print(f"  {entry['name']}  [{entry['plugin']}: {entry['distribution']}]  {entry['summary']}{extra}")
            _print_params(entry.get("params", []))


def _print_params(params: list[dict[str, Any]]) -> None:
    for name, p in flat_params(params):
        default = "required" if p["required"] else "see its fields" if p.get("fields") and p["default"] \
            else f"default {p['default']!r}"
        same = f", the fields of {p['same_as'] or 'this model'} and" if "same_as" in p else ""
        print(f"      param {name}: {p['type']}{same} ({default}) {p['description']}".rstrip())
