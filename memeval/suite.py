"""Suite files: YAML -> a typed, validated `Suite`.

Every error names the file, the line, the field path and what was expected. Structure is checked
by pydantic models here; references to plugins (methods, adapters, loaders, metrics) are checked
by `memeval.collect` against the registry, with the same error format.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from memeval.errors import UsageError, did_you_mean, format_path
from memeval.results import RunDir

SCHEMA_VERSION = 1
Loc = tuple[str | int, ...]


class Strict(BaseModel):
    """A spec model that rejects unknown keys."""

    model_config = ConfigDict(extra="forbid")


class GateSpec(Strict):
    """Turns one metric into a pass/fail verdict."""

    metric: str
    min: float | None = None
    max: float | None = None
    baseline: str | None = Field(None, description="path of a saved run directory or run.json (default: the "
                                                   "run given with --baseline, which also overrides this)")
    max_increase: float | None = None
    max_decrease: float | None = None
    at: Literal["value", "ci_low", "ci_high"] = Field("value", description=(
        "what min/max judge: the metric's value, or a bound of its CI (max at ci_high passes only when the "
        "whole CI is under the maximum)"))

    @model_validator(mode="after")
    def _has_a_threshold(self) -> GateSpec:
        numbers = {k: v for k, v in self.model_dump().items() if isinstance(v, float)}
        for key, value in numbers.items():
            if not math.isfinite(value):
                raise ValueError(f"'{key}' must be a finite number, got {value}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"'min' ({self.min:g}) is above 'max' ({self.max:g}): no value can pass")
        for key in ("max_increase", "max_decrease"):
            if numbers.get(key, 0.0) < 0:
                raise ValueError(f"'{key}' must be >= 0")
        if self.at != "value" and self.relative:
            raise ValueError("'at' applies to min/max; a baseline gate compares values")
        if self.baseline is not None and not self.relative:
            raise ValueError("'baseline' needs 'max_increase' or 'max_decrease'")
        if self.min is None and self.max is None and not self.relative:
            raise ValueError("a gate needs 'min', 'max', or 'baseline' with 'max_increase'/'max_decrease'")
        return self  # a relative gate without 'baseline' uses `--baseline` (checked at collection)

    @property
    def relative(self) -> bool:
        return self.max_increase is not None or self.max_decrease is not None


MATRIX_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def check_matrix(matrix: dict[str, Any]) -> dict[str, list[Any]]:
    """Each key a (dotted) name, each value a non-empty list of distinct scalars."""
    for key, values in matrix.items():
        if not MATRIX_KEY.fullmatch(key):
            raise ValueError(f"matrix key {key!r} is not a name or a dotted path (e.g. noise.rate)")
        if not isinstance(values, list) or not values:
            raise ValueError(f"matrix[{key!r}] must be a non-empty list of values, got {values!r}")
        if any(isinstance(v, dict | list) for v in values):
            raise ValueError(f"matrix[{key!r}] values must be plain values (numbers, strings, booleans)")
        if len({repr(v) for v in values}) != len(values):
            raise ValueError(f"matrix[{key!r}] repeats a value")
    return matrix


EVALUATION_MATRIX_KEYS = ("seed", "model", "dataset")  # and params.<path>
MAX_ID_LENGTH = 128  # file systems allow 255 bytes a name; matrix cells append their values


class EvaluationSpec(Strict):
    id: str
    method: str
    model: str | None = None
    dataset: str | None = None
    description: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    matrix: dict[str, list[Any]] = Field(default_factory=dict, description=(
        "one evaluation per combination of values, as pytest's parametrize: keys seed, model, dataset "
        "or params.<name>"))
    gates: list[GateSpec] = Field(default_factory=list)

    @field_validator("matrix")
    @classmethod
    def _matrix_keys(cls, matrix: dict[str, Any]) -> dict[str, list[Any]]:
        for key in check_matrix(matrix):
            if key not in EVALUATION_MATRIX_KEYS and not key.startswith("params."):
                raise ValueError(f"matrix key {key!r}: expected seed, model, dataset or params.<name> "
                                 f"(did you mean 'params.{key}'?)")
        return matrix

    @field_validator("id")
    @classmethod
    def _id_is_a_file_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
            raise ValueError("expected letters, digits, '_', '.' and '-' (it names records/<id>.jsonl)")
        if len(value) > MAX_ID_LENGTH:
            raise ValueError(f"expected at most {MAX_ID_LENGTH} characters, got {len(value)} "
                             f"(it names records/<id>.jsonl)")
        return value


class DatasetSpec(Strict):
    """A dataset, loaded through Hugging Face `datasets`."""

    loader: str
    path: str = Field(description="file, glob or directory (relative to the suite), or a hub name")
    config: str | None = Field(None, description="hub dataset configuration")
    revision: str | None = None
    split: str = "train"
    text_field: str | None = None
    prefix_field: str | None = None
    suffix_field: str | None = None
    tokens_field: str | None = None
    id_field: str | None = None
    limit: int | None = Field(None, ge=1)
    shuffle: bool = False

    @model_validator(mode="after")
    def _fields_fit_together(self) -> DatasetSpec:
        if (self.prefix_field is None) != (self.suffix_field is None):
            raise ValueError("'prefix_field' and 'suffix_field' go together")
        if self.text_field is None and self.prefix_field is None and self.tokens_field is None:
            self.text_field = "text"
        return self


class ModelSpec(BaseModel):
    """`adapter` picks the adapter; `matrix` makes one model per combination of values (of `seed`
    and of the adapter's params by dotted path); the other keys are that adapter's params."""

    model_config = ConfigDict(extra="allow")
    adapter: str
    matrix: dict[str, list[Any]] = Field(default_factory=dict)

    @field_validator("matrix")
    @classmethod
    def _matrix_keys(cls, matrix: dict[str, Any]) -> dict[str, list[Any]]:
        return check_matrix(matrix)

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ReportSpec(Strict):
    """Which reports a run writes, by reporter name (`memeval list` shows the installed ones)."""

    formats: list[str] = Field(default_factory=lambda: ["json"],
                               description="reporters to run: json (run.json), html (report.html), markdown "
                                           "(summary.md), junit (junit.xml), or any a plugin registers")
    redact: bool = Field(False, description="mask text that may be memorized training data in the reports")

    @model_validator(mode="before")
    @classmethod
    def _switches(cls, data: Any) -> Any:
        """The switches of schema 1's first form (`json: true`, `html: true`, ...) are read as
        entries of `formats`."""
        if not isinstance(data, dict) or not LEGACY_REPORT_SWITCHES & data.keys():
            return data
        data = dict(data)
        formats = list(data.get("formats", ["json"]))
        for name in sorted(LEGACY_REPORT_SWITCHES & data.keys()):
            on = data.pop(name)
            if not isinstance(on, bool):
                raise ValueError(f"'{name}' must be true or false, got {on!r}")
            if on and name not in formats:
                formats.append(name)
            elif not on and name in formats:
                formats.remove(name)
        data["formats"] = formats
        return data


LEGACY_REPORT_SWITCHES = {"json", "html", "markdown", "junit"}


class ExecutorSpec(Strict):
    """Where a suite's evaluations run: in this process (`local`), or on a Ray cluster (`ray`)."""

    kind: Literal["local", "ray"] = Field("local", description="local: in this process; ray: a Ray cluster")
    address: str | None = Field(None, description="ray: an existing cluster ('auto' or ray://host:port); "
                                                  "none: a local cluster is started for the run")
    num_cpus: float | None = Field(None, gt=0, description="ray, local cluster: CPUs it may use (default: all)")
    num_gpus: float | None = Field(None, ge=0, description="ray, local cluster: GPUs it may use")
    actors: int | None = Field(None, ge=1, description="ray: model-holding actors (default: the cluster's CPUs)")
    cpus_per_actor: float | None = Field(None, gt=0, description="ray: CPUs each actor claims (default: a share "
                                                                 "that leaves one CPU's headroom, so Ray Data's "
                                                                 "own tasks never wait on the actors)")
    gpus_per_actor: float = Field(0, ge=0, description="ray: GPUs each actor claims")
    threads: int = Field(1, ge=1, description="ray: torch threads in each actor and training task")


class Suite(Strict):
    memeval: Literal[1] = Field(description="schema version of the suite file")
    suite: str
    description: str | None = None
    seed: int = Field(0, ge=0, lt=2**32)
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    datasets: dict[str, DatasetSpec] = Field(default_factory=dict)
    evaluations: list[EvaluationSpec]
    on_truncate: Literal["error", "warn"] = Field("error", description=(
        "what a cut the suite did not ask for is (a prompt longer than prefix_tokens, a text longer than the "
        "model's context): an error (default: a gate must not pass on a shortened prompt), or a counted warning"))
    report: ReportSpec = Field(default_factory=ReportSpec)
    executor: ExecutorSpec | None = Field(None, description="where evaluations run (default: in this process; "
                                                            "`--executor` overrides)")


@dataclass
class SuiteFile:
    """A parsed suite plus what is needed to point at its lines."""

    path: Path
    spec: Suite
    lines: dict[Loc, int] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    model_seeds: dict[str, int] = field(default_factory=dict)  # matrix cells of a model with their own seed

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def line_of(self, loc: Loc) -> int | None:
        return line_of(self.lines, loc)

    def error(self, loc: Loc, message: str) -> UsageError:
        return UsageError(message, file=str(self.path), line=self.line_of(loc), field=format_path(loc) or None)

    def resolve_path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def saved_run(self, path: str) -> RunDir:
        """A saved run the suite names (a baseline, a forecast's source): a directory or run.json."""
        return RunDir.at(self.resolve_path(path))


class SuiteErrors(Exception):
    """Several usage errors found at once; exit code 4."""

    def __init__(self, errors: list[UsageError]):
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


def line_of(lines: dict[Loc, int], loc: Loc) -> int | None:
    """Line of the deepest part of `loc` the YAML file has (a missing key points at its parent)."""
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get(())


MERGE_TAG = "tag:yaml.org,2002:merge"
MAX_DEPTH = 64


MAX_NODES = 100_000  # after aliases are expanded: a suite is far smaller, an alias bomb far larger
STANDARD_TAGS = frozenset(f"tag:yaml.org,2002:{kind}" for kind in
                          ("map", "seq", "str", "int", "float", "bool", "null", "timestamp", "binary", "merge"))


def _construct(node: yaml.Node, loc: Loc, lines: dict[Loc, int], file: str) -> Any:
    line = node.start_mark.line + 1
    if len(loc) > MAX_DEPTH:
        raise UsageError("YAML nested too deeply (an alias that contains itself?)", file=file, line=line)
    if len(lines) > MAX_NODES:
        raise UsageError(f"YAML expands to more than {MAX_NODES} values once its aliases are followed (an alias "
                         f"bomb?); write the suite out without nested aliases", file=file, line=line)
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.tag not in STANDARD_TAGS:
        raise UsageError(f"YAML tag {node.tag!r} is not allowed: a suite is plain YAML (maps, lists, strings, "
                         f"numbers, booleans, null)", file=file, line=line, field=format_path(loc) or None)
    lines.setdefault(loc, line)
    if isinstance(node, yaml.MappingNode):
        _reject_duplicate_keys(node, loc, file)
        try:
            yaml.constructor.SafeConstructor().flatten_mapping(node)  # `<<: *anchor` merge keys
        except yaml.MarkedYAMLError as exc:
            raise UsageError(f"invalid YAML merge: {exc.problem}", file=file, line=node.start_mark.line + 1) from None
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node, file)
            if not isinstance(key, str):
                raise UsageError(f"keys must be strings, got {key!r}{_yaml11_hint(key_node)}", file=file,
                                 line=key_node.start_mark.line + 1)
            lines[(*loc, key)] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, (*loc, key), lines, file)  # a later key overrides a merged one
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*loc, i), lines, file) for i, item in enumerate(node.value)]
    return _scalar(node, file)


def _yaml11_hint(node: yaml.Node) -> str:
    """YAML 1.1 reads on/off/yes/no/y/n as booleans: say so when a key was one of them."""
    word = getattr(node, "value", "")
    if isinstance(word, str) and word.lower() in ("on", "off", "yes", "no", "y", "n") and not node.tag.endswith(":str"):
        return f" (YAML reads the key {word!r} as a boolean; quote it: '{word}')"
    return ""


def _reject_duplicate_keys(node: yaml.MappingNode, loc: Loc, file: str) -> None:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
            continue
        if key_node.value in seen:
            raise UsageError(f"duplicate key {key_node.value!r}", file=file, line=key_node.start_mark.line + 1,
                             field=format_path((*loc, key_node.value)))
        seen.add(key_node.value)


def _scalar(node: yaml.Node, file: str) -> Any:
    """A YAML scalar through the safe constructor; a bad tag or value is a usage error at its line."""
    try:
        return yaml.constructor.SafeConstructor().construct_object(node, deep=True)
    except yaml.MarkedYAMLError as exc:
        message = exc.problem or str(exc)
    except (ValueError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
        message = f"cannot read value {getattr(node, 'value', '')!r} with tag {node.tag!r}: {exc}"
    raise UsageError(f"invalid YAML: {message}", file=file, line=node.start_mark.line + 1)


def parse_yaml(text: str, file: str) -> tuple[Any, dict[Loc, int]]:
    """Parse YAML, keeping the line of every key and item."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        context = ""
        if exc.context and exc.context_mark and exc.context_mark.line + 1 != line:
            context = f" ({exc.context} started at line {exc.context_mark.line + 1})"
        raise UsageError(f"invalid YAML: {exc.problem or exc}{context}", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise UsageError(f"invalid YAML: {exc}", file=file) from None
    lines: dict[Loc, int] = {}
    if node is None:
        return None, lines
    return _construct(node, (), lines, file), lines


def _describe(error: dict[str, Any], model: type[BaseModel] | None, loc: Loc) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1]) if model else []
        hint = did_you_mean(str(loc[-1]), allowed)
        return f"unknown key {loc[-1]!r}{hint}" + (f" (expected one of: {', '.join(allowed)})" if allowed and not hint else "")
    if kind == "missing":
        return f"missing required field {loc[-1]!r}" if loc else "missing required field"
    message = error["msg"].removeprefix("Value error, ")
    if kind in ("value_error", "assertion_error"):
        return message
    return f"{message[0].lower()}{message[1:]}, got {error.get('input')!r}"


def _allowed_keys(model: type[BaseModel], loc: Loc) -> list[str]:
    """Field names (aliases) of the sub-model that `loc` points at inside `model`.

    A part that is not a field of the current model is a list index or a dict key (a dataset or
    model name): it is stepped over, staying on the container's item model.
    """
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        info = current.model_fields.get(part) if isinstance(part, str) else None
        if info is not None:
            current = _inner_model(info.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(info.alias or name for name, info in current.model_fields.items())
    return []


def _inner_model(annotation: Any) -> Any:
    """The pydantic model inside list[M] / dict[str, M] / M | None, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def validation_errors(exc: ValidationError, model: type[BaseModel], file: str, lines: dict[Loc, int],
                      prefix: Loc = ()) -> list[UsageError]:
    """Turn a pydantic error into usage errors with file, line and field."""
    out = []
    for error in exc.errors():
        loc = tuple(part for part in error["loc"] if not (isinstance(part, str) and "[" in part))
        full = (*prefix, *loc)
        out.append(UsageError(_describe(error, model, loc), file=file, line=line_of(lines, full),
                              field=format_path(full) or None))
    return out


def load_suite(path: str | Path) -> SuiteFile:
    """Read and structurally validate a suite file. Raises UsageError / SuiteErrors."""
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError("suite file not found", file=file) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read suite file: {exc}", file=file) from None
    raw, lines = parse_yaml(text, file)
    if not isinstance(raw, dict):
        raise UsageError(f"expected a mapping with keys memeval, suite, models, datasets, evaluations; "
                         f"got {type(raw).__name__}", file=file, line=1)
    if "memeval" in raw and (raw["memeval"] != SCHEMA_VERSION or isinstance(raw["memeval"], bool)):
        raise UsageError(f"unsupported suite schema version {raw['memeval']!r}; this memeval reads version "
                         f"{SCHEMA_VERSION}", file=file, line=lines.get(("memeval",)), field="memeval")
    try:
        spec = Suite.model_validate(raw)
    except ValidationError as exc:
        errors = validation_errors(exc, Suite, file, lines)
        raise SuiteErrors(sorted(errors, key=lambda e: e.line or 0)) from None
    return SuiteFile(path=path, spec=spec, lines=lines, raw=raw)
