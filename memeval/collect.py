"""Collection: a validated suite becomes evaluation items, checked against the registry.

Every reference is resolved here, before any model or dataset is loaded: adapters and their
params, loaders and data files, methods and their params, gate metrics, baselines. Errors name the
file, the line, the field and what was expected, with a "did you mean" for near-misses.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from memeval.data import FILE_BUILDERS, data_files, no_data_files
from memeval.errors import UsageError, did_you_mean
from memeval.matrix import SEED, combinations, value_text, variant_id, with_path
from memeval.method import Method
from memeval.registry import Registry, UnknownName
from memeval.results import RunDir
from memeval.suite import EvaluationSpec, ModelSpec, SuiteErrors, SuiteFile, validation_errors


@dataclass
class Item:
    """One evaluation to run: the spec, its method class and validated params."""

    suite: SuiteFile
    spec: EvaluationSpec
    index: int
    method_cls: type[Method]
    params: BaseModel
    keywords: set[str] = field(default_factory=set)
    matrix: dict[str, Any] = field(default_factory=dict)  # this cell's values, when the spec has a matrix
    base_id: str | None = None                             # the spec's own id, for a matrix cell
    scored_by_others: frozenset[Hashable] = frozenset()   # memeval.sharing's plan for this item

    @property
    def seed(self) -> int | None:
        """The seed this cell sets (a matrix over `seed`), else None: the run's."""
        return self.matrix.get(SEED)

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def nodeid(self) -> str:
        return f"{self.suite.path}::{self.spec.id}"


@dataclass
class Collector:
    suite: SuiteFile
    registry: Registry
    errors: list[UsageError] = field(default_factory=list)
    model_cells: dict[str, list[tuple[str, dict[str, Any]]]] = field(default_factory=dict)  # matrix models

    def fail(self, loc: tuple[Any, ...], message: str) -> None:
        self.errors.append(self.suite.error(loc, message))

    def lookup(self, kind: str, name: str, loc: tuple[Any, ...]) -> Any:
        try:
            return self.registry.get(kind, name)
        except UnknownName as exc:
            self.fail(loc, str(exc))
            return None

    def validate_params(self, model: type[BaseModel], values: dict[str, Any], loc: tuple[Any, ...]) -> BaseModel | None:
        try:
            return model.model_validate(values)
        except ValidationError as exc:
            self.errors.extend(validation_errors(exc, model, str(self.suite.path), self.suite.lines, loc))
            return None


def apply_model_overrides(suite: SuiteFile, overrides: dict[str, str]) -> None:
    """`--model NAME=PATH`: point a suite's model at another checkpoint (an hf-causal directory)."""
    for name, path in overrides.items():
        models = suite.spec.models
        if name not in models:
            raise UsageError(f"--model {name}={path}: the suite has no model {name!r}"
                             f"{did_you_mean(name, models)} (models: {', '.join(models) or 'none'})",
                             file=str(suite.path))
        keep = {k: v for k, v in models[name].params.items() if k in ("dtype", "device", "batch_size", "threads")}
        resolved = Path(path).expanduser()
        models[name] = ModelSpec(adapter="hf-causal", path=str(resolved.resolve() if resolved.exists() else path), **keep)


def apply_baseline_override(suite: SuiteFile, baseline: str | None) -> None:
    """`--baseline RUN_DIR`: every baseline-relative gate compares against this run instead."""
    if baseline is None:
        return
    path = str(Path(baseline).expanduser().resolve())
    for spec in suite.spec.evaluations:
        for gate in spec.gates:
            if gate.relative:
                gate.baseline = path


def collect(suite: SuiteFile, registry: Registry) -> list[Item]:
    """All evaluation items of a suite (a matrix expanded into one item per cell), or SuiteErrors
    listing every problem found."""
    c = Collector(suite, registry)
    model_adapters = _check_models(c)
    _check_datasets(c)
    _check_reports(c)
    items = []
    seen: dict[str, int] = {}
    for index, spec in enumerate(suite.spec.evaluations):
        loc = ("evaluations", index)
        if spec.id in seen:
            c.fail((*loc, "id"), f"duplicate evaluation id {spec.id!r} (also evaluations[{seen[spec.id]}])")
        seen.setdefault(spec.id, index)
        for cell, assignment in _evaluation_cells(c, spec, loc):
            checked = _check_evaluation(c, cell, loc, model_adapters)
            if checked is not None:
                keywords = {cell.id, spec.id, spec.method, cell.model or "", cell.dataset or "", suite.spec.suite,
                            *(f"{k}={value_text(v)}" for k, v in assignment.items())}
                items.append(Item(suite, cell, index, *checked, keywords=keywords, matrix=assignment,
                                  base_id=spec.id if assignment else None))
    if c.errors:
        raise SuiteErrors(sorted({str(e): e for e in c.errors}.values(), key=lambda e: e.line or 0))
    return items


def _evaluation_cells(c: Collector, spec: EvaluationSpec, loc: tuple[Any, ...]
                      ) -> list[tuple[EvaluationSpec, dict[str, Any]]]:
    """The evaluation itself, or one copy per cell of its matrix crossed with its model's matrix."""
    cells = []
    for own in combinations(spec.matrix):
        fields: dict[str, Any] = {k: v for k, v in own.items() if k in ("model", "dataset")}
        params = spec.params
        for key, value in own.items():
            if key.startswith("params."):
                try:
                    params = with_path(params, key.removeprefix("params."), value)
                except ValueError as exc:
                    c.fail((*loc, "matrix", key), str(exc))
                    return []
        model = fields.get("model", spec.model)
        for model_name, model_cell in c.model_cells.get(model, [(model, {})]):
            clash = own.keys() & model_cell.keys()
            if clash:
                c.fail((*loc, "matrix"), f"{', '.join(sorted(clash))} is set by both this matrix and model "
                                         f"{model!r}'s")
                return []
            assignment = {**model_cell, **own}
            cells.append((spec.model_copy(update={"id": variant_id(spec.id, assignment), "model": model_name,
                                                  "params": params, "matrix": {}, **{k: v for k, v in fields.items()
                                                                                     if k != "model"}}),
                          assignment))
    return cells


def _check_models(c: Collector) -> dict[str, Any]:
    """Adapters by model name, a matrix's cells included (they become models of the suite)."""
    adapters = {}
    for name, spec in list(c.suite.spec.models.items()):
        loc = ("models", name)
        adapter = c.lookup("adapter", spec.adapter, (*loc, "adapter"))
        if adapter is None:
            continue
        if spec.matrix:
            c.model_cells[name] = []
        for cell_name, cell_spec, assignment in _model_cells(c, name, spec, adapter):
            if _check_model(c, loc, adapter, cell_spec):
                adapters[cell_name] = adapter
            if spec.matrix:
                c.suite.spec.models[cell_name] = cell_spec
                c.model_cells[name].append((cell_name, assignment))
    return adapters


def _model_cells(c: Collector, name: str, spec: ModelSpec, adapter: Any) -> list[tuple[str, ModelSpec, dict[str, Any]]]:
    """(name, spec, matrix values) of each model a spec stands for: itself, or its matrix's cells.
    `seed` sets the adapter's own `seed` param if it has one, else the seed the model is built with."""
    if not spec.matrix:
        return [(name, spec, {})]
    cells = []
    for assignment in combinations(spec.matrix):
        params = spec.params
        for key, value in assignment.items():
            if key == SEED and SEED not in adapter.Params.model_fields:
                continue
            try:
                params = with_path(params, key, value)
            except ValueError as exc:
                c.fail(("models", name, "matrix", key), str(exc))
                return []
        cell_name = variant_id(name, assignment)
        if SEED in assignment and SEED not in adapter.Params.model_fields:
            c.suite.model_seeds[cell_name] = int(assignment[SEED])
        cells.append((cell_name, ModelSpec(adapter=spec.adapter, **params), assignment))
    return cells


def _check_model(c: Collector, loc: tuple[Any, ...], adapter: Any, spec: ModelSpec) -> bool:
    params = c.validate_params(adapter.Params, spec.params, loc)
    if params is None:
        return False
    for key, dataset in adapter.dataset_refs(params):
        if dataset not in c.suite.spec.datasets:
            c.fail((*loc, key), f"unknown dataset {dataset!r}{did_you_mean(dataset, c.suite.spec.datasets)}")
    path = getattr(params, "path", None)  # None when a model comes from an installed package
    if isinstance(path, str) and _looks_local(path) and not c.suite.resolve_path(path).exists():
        c.fail((*loc, "path"), f"model path {str(c.suite.resolve_path(path))!r} does not exist")
    return True


def _looks_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or bool(re.match(r"^[A-Za-z]:\\", path))


def _check_reports(c: Collector) -> None:
    reporters = c.registry.names("reporter")
    for index, name in enumerate(c.suite.spec.report.formats):
        loc = ("report", "formats", index)
        if name not in reporters:
            c.fail(loc, f"no reporter {name!r} is installed{did_you_mean(name, reporters)} "
                        f"(reporters: {', '.join(reporters)})")
        elif not callable(getattr(c.registry.get("reporter", name), "write", None)):
            c.fail(loc, f"reporter {name!r} writes no file (it reports on the terminal)")


def _check_datasets(c: Collector) -> None:
    for name, spec in c.suite.spec.datasets.items():
        loc = ("datasets", name)
        if c.lookup("loader", spec.loader, (*loc, "loader")) is None:
            continue
        if spec.loader in FILE_BUILDERS and not data_files(spec, c.suite):
            c.fail((*loc, "path"), no_data_files(spec, c.suite))


def _check_evaluation(c: Collector, spec: EvaluationSpec, loc: tuple[Any, ...],
                      adapters: dict[str, Any]) -> tuple[type[Method], BaseModel] | None:
    suite = c.suite.spec
    method = c.lookup("method", spec.method, (*loc, "method"))
    if spec.model is not None and spec.model not in suite.models:
        c.fail((*loc, "model"), f"unknown model {spec.model!r}{did_you_mean(spec.model, suite.models)}"
                                f" (models: {', '.join(suite.models) or 'none'})")
    if spec.dataset is not None and spec.dataset not in suite.datasets:
        c.fail((*loc, "dataset"), f"unknown dataset {spec.dataset!r}{did_you_mean(spec.dataset, suite.datasets)}"
                                  f" (datasets: {', '.join(suite.datasets) or 'none'})")
    if method is None:
        return None
    if method.requires and spec.model is None:
        c.fail(loc, f"method {method.name!r} needs a model: set 'model'")
    if method.needs_dataset and spec.dataset is None:
        c.fail(loc, f"method {method.name!r} needs a dataset: set 'dataset'")
    adapter = adapters.get(spec.model or "")
    if adapter is not None and not method.requires <= adapter.capabilities:
        missing = ", ".join(sorted(method.requires - adapter.capabilities))
        c.fail((*loc, "model"), f"method {method.name!r} needs {missing}, which adapter {adapter.name!r} "
                                f"does not provide")
    params = c.validate_params(method.Params, spec.params, (*loc, "params"))
    if params is not None:
        _check_param_refs(c, method, params, loc, adapters)
        for where, message in method.check_references(params, c.suite, loc[1]):
            c.fail((*loc, *where), message)
    produced = method.produced_metrics(params) if params is not None else method.metric_names()
    for g, gate in enumerate(spec.gates):
        if gate.metric not in method.metric_names():
            c.fail((*loc, "gates", g, "metric"), f"method {method.name!r} does not produce metric {gate.metric!r}"
                   f"{did_you_mean(gate.metric, method.metric_names())} (metrics: {', '.join(method.metric_names())})")
        elif gate.metric not in produced:
            c.fail((*loc, "gates", g, "metric"), f"metric {gate.metric!r} is not produced with these params "
                                                  f"(produced: {', '.join(produced)})")
        if gate.baseline is not None:
            _check_baseline(c, c.suite.saved_run(gate.baseline), (*loc, "gates", g, "baseline"))
        elif gate.relative:
            c.fail((*loc, "gates", g), "'max_increase'/'max_decrease' compare against a saved run: set 'baseline' "
                                       "or run with --baseline RUN_DIR")
    return (method, params) if params is not None else None


def _check_param_refs(c: Collector, method: type[Method], params: BaseModel, loc: tuple[Any, ...],
                      adapters: dict[str, Any]) -> None:
    """Params that name another dataset or model of the suite must name one that exists."""
    suite = c.suite.spec
    for key in method.dataset_params:
        name = getattr(params, key)
        if name is not None and name not in suite.datasets:
            c.fail((*loc, "params", key), f"unknown dataset {name!r}{did_you_mean(name, suite.datasets)}"
                                          f" (datasets: {', '.join(suite.datasets) or 'none'})")
    for key in method.model_params:
        name = getattr(params, key)
        if name is None:
            continue
        if name not in suite.models:
            c.fail((*loc, "params", key), f"unknown model {name!r}{did_you_mean(name, suite.models)}"
                                          f" (models: {', '.join(suite.models) or 'none'})")
        elif name in adapters and not method.requires <= adapters[name].capabilities:
            c.fail((*loc, "params", key), f"model {name!r} lacks {', '.join(sorted(method.requires))}")


def _check_baseline(c: Collector, run: RunDir, loc: tuple[Any, ...]) -> None:
    if not run.exists():
        c.fail(loc, f"baseline run {str(run.run_json)!r} does not exist")
        return
    try:
        run.read()
    except (ValueError, OSError) as exc:
        c.fail(loc, f"baseline run {str(run.run_json)!r} is not a memeval run.json: {exc}")
