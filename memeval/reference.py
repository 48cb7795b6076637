"""The method reference in Markdown (`memeval list --markdown`, checked in as `docs/methods.md`),
rendered from what `memeval.listing.describe_registry` reads off the installed plugins."""

from __future__ import annotations

import json
import re
from typing import Any

from memeval.listing import DIRECTIONS, REGENERATE, flat_params

INTRO = """\
Every method's params (with their types and defaults), metrics and record fields, and the model
adapters, dataset loaders and reporters, as the installed plugins declare them. A metric's
direction says which way is more memorization (`higher_is_worse` in `run.json`); its per-sample
field is the record field it summarises, which lets `memeval compare` pair two runs sample by
sample. Unknown params are errors; nested params are written as maps (`thresholds: {bleu: 0.8}`)."""


def render(info: dict[str, Any]) -> str:
    """The whole reference, or one method's section when `info` holds only that."""
    methods = [method_section(m) for m in info["methods"]]
    if "adapters" not in info:
        return "\n".join(methods)
    parts = ["# Method reference\n",
             f"Generated from the installed plugins by `{REGENERATE}` (or `make docs`); do not edit by hand.\n",
             INTRO + "\n", "## Methods\n", index_table(info["methods"]), *methods,
             "## Model adapters\n", *(adapter_section(a) for a in info["adapters"]),
             "## Dataset loaders\n", named_table(info["loaders"]),
             "## Reporters\n", named_table(info["reporters"])]
    return "\n".join(parts)


def anchor(name: str) -> str:
    """GitHub's anchor for a heading "`name`": lower case, punctuation other than - and _ dropped."""
    return re.sub(r"[^\w\- ]", "", name.lower()).replace(" ", "-")


def index_table(methods: list[dict[str, Any]]) -> str:
    rows = [[f"[`{m['name']}`](#{anchor(m['name'])})", cell(m["summary"]), ", ".join(m["requires"]) or "nothing"]
            for m in methods]
    return table(["method", "what it measures", "requires"], rows)


def method_section(m: dict[str, Any]) -> str:
    needs = ", ".join(f"`{r}`" for r in m["requires"]) or "nothing"
    dataset = "" if m["needs_dataset"] else " Takes no `dataset`."
    parts = [f"### `{m['name']}`\n", f"*{m['summary']}*\n", f"Plugin `{m['plugin']}`; requires {needs}.{dataset}\n"]
    if m["doc"]:
        parts.append(m["doc"] + "\n")
    parts += ["**Params**\n", params_table(m["params"]), "**Metrics**\n", metrics_table(m["metrics"])]
    if m["records"]:
        parts += ["**Record fields**\n", table(["field", "description"],
                                              [[f"`{r['field']}`", cell(r["description"])] for r in m["records"]])]
    else:
        parts.append("Record fields: not declared by the method.\n")
    return "\n".join(parts)


def adapter_section(a: dict[str, Any]) -> str:
    capabilities = ", ".join(f"`{c}`" for c in a["capabilities"]) or "none"
    return "\n".join([f"### `{a['name']}`\n", f"*{a['summary']}*\n",
                      f"Plugin `{a['plugin']}`; capabilities {capabilities}.\n", params_table(a["params"])])


def params_table(params: list[dict[str, Any]]) -> str:
    if not params:
        return "None.\n"
    rows = [[f"`{name}`", type_cell(p), default_text(p), cell(p["description"])] for name, p in flat_params(params)]
    return table(["param", "type", "default", "description"], rows)


def type_cell(p: dict[str, Any]) -> str:
    if "same_as" not in p:
        return code(p["type"])
    same = f"`{p['same_as']}`" if p["same_as"] else "this table"  # a model nested in itself
    return f"{code(p['type'])}: the fields of {same}" + (", and:" if p["fields"] else "")


def default_text(p: dict[str, Any]) -> str:
    if p["required"]:
        return "required"
    if p.get("fields") and p["default"] is not None:
        return "see its fields"
    if p["default"] is None:
        return "none"
    value = p["default"]
    return code(value if isinstance(value, str) and value else json.dumps(value, default=str))


def metrics_table(metrics: list[dict[str, Any]]) -> str:
    rows = []
    for m in metrics:
        field = m["per_sample"] and f"`{m['per_sample']}`" + (" (median)" if m["statistic"] == "median" else "")
        rows.append([f"`{m['name']}`", DIRECTIONS[m["higher_is_worse"]], field or "", cell(m["description"])])
    return table(["metric", "direction", "per-sample field", "description"], rows)


def named_table(entries: list[dict[str, Any]]) -> str:
    return table(["name", "description", "plugin"],
                 [[f"`{e['name']}`", cell(e["summary"]), f"`{e['plugin']}`"] for e in entries])


def table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def cell(text: str) -> str:
    """Prose in a table cell: one line, pipes escaped (Markdown inside is kept)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def code(text: str) -> str:
    return f"`{cell(text)}`"
