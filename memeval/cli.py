"""The `memeval` command: run, validate, list."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from memeval import __version__
from memeval.config import Config
from memeval.errors import ExitCode, UsageError, most_severe
from memeval.files import environment_problem, write_text
from memeval.hookcall import call_each
from memeval.options import CACHE_MODES, model_override, positive_int, seed
from memeval.plugins import build_registry, make_plugin_manager
from memeval.registry import UnknownName
from memeval.results import run_directories
from memeval.suite import SuiteErrors

EXIT_CODES_HELP = """exit codes: 0 all gates passed, 1 a gate failed, 2 interrupted, 3 internal error,
4 usage or suite error, 5 nothing selected"""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-p", dest="plugins", action="append", default=[], metavar="NAME",
                        help="load plugin module NAME, or block plugin NAME with no:NAME")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="print less")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="print more")


def build_parser(pm: Any) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memeval", description="Measure what machine-learning models memorize.",
                                     epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"memeval {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run suites", epilog=EXIT_CODES_HELP)
    run.add_argument("suites", nargs="+", metavar="SUITE", help="suite YAML files")
    run.add_argument("-k", dest="keyword", metavar="EXPR",
                     help="only evaluations whose id/method/model/dataset/suite name match EXPR (and, or, not, parentheses)")
    run.add_argument("--out", metavar="DIR", help="run directory (default memeval-runs/<suite>-<time>)")
    run.add_argument("--seed", type=seed, help="override the suite's seed")
    run.add_argument("--limit", type=positive_int, metavar="N", help="use only the first N samples of each dataset")
    run.add_argument("--cache", choices=CACHE_MODES, default="use",
                     help="use: read and write; refresh: recompute and write; off; only: replay, a miss is an error")
    run.add_argument("--cache-dir", metavar="DIR", help="cache directory (default $MEMEVAL_CACHE_DIR or ~/.cache/memeval)")
    run.add_argument("--model", action="append", type=model_override, default=[], metavar="NAME=PATH",
                     help="point the suite's model NAME at the hf-causal checkpoint PATH")
    run.add_argument("--json", action="store_true",
                     help="print the run summary (verdict, gates, metrics) as JSON on stdout instead of the "
                          "terminal report")
    run.add_argument("--baseline", metavar="RUN_DIR",
                     help="a saved run of the same suite: baseline-relative gates use it, and the reports show "
                          "every metric's change against it")
    _common(run)
    run.set_defaults(func=cmd_run)

    validate = commands.add_parser("validate", help="check suites (schema and references) without loading models")
    validate.add_argument("suites", nargs="+", metavar="SUITE")
    validate.add_argument("--model", action="append", type=model_override, default=[], metavar="NAME=PATH")
    validate.add_argument("--baseline", metavar="RUN_DIR")
    _common(validate)
    validate.set_defaults(func=cmd_validate)

    report = commands.add_parser("report", help="re-render reports from a saved run directory (no model needed)")
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (or its run.json)")
    report.add_argument("--format", dest="formats", action="append", metavar="FORMAT",
                        help="a reporter (json, html, markdown, junit, or one a plugin registers; repeatable; "
                             "default: the suite's report formats other than json, plus html)")
    report.add_argument("--out", metavar="DIR", help="write the reports here (default: the run directory)")
    redact = report.add_mutually_exclusive_group()
    redact.add_argument("--redact", dest="redact", action="store_true", default=None,
                        help="mask memorized text (default: as the suite said)")
    redact.add_argument("--no-redact", dest="redact", action="store_false")
    _common(report)
    report.set_defaults(func=cmd_report)

    compare = commands.add_parser("compare", help="compare two saved runs of one suite, metric by metric",
                                  epilog=EXIT_CODES_HELP)
    compare.add_argument("base", metavar="BASE_RUN", help="the earlier (reference) run directory")
    compare.add_argument("new", metavar="NEW_RUN", help="the run to judge")
    compare.add_argument("--fail-on-regression", action="store_true",
                         help="exit 1 when a metric moved towards more memorization beyond its tolerance")
    compare.add_argument("--tolerance", type=float, default=0.0, metavar="X",
                         help="allowed worsening for metrics without a baseline gate of their own (default 0)")
    compare.add_argument("--json", action="store_true", help="print the comparison as JSON")
    _common(compare)
    compare.set_defaults(func=cmd_compare)

    listing = commands.add_parser("list", help="list methods, model adapters, dataset loaders and reporters")
    listing.add_argument("method", nargs="?", metavar="METHOD", help="show only this method")
    listing_format = listing.add_mutually_exclusive_group()
    listing_format.add_argument("--json", action="store_true", help="print JSON")
    listing_format.add_argument("--markdown", action="store_true",
                                help="print the method reference in Markdown (docs/methods.md)")
    listing.add_argument("-o", "--output", metavar="FILE", help="with --markdown: write FILE instead of stdout")
    _common(listing)
    listing.set_defaults(func=cmd_list)

    pm.hook.memeval_addoption(parser=run)
    return parser


def _plugin_args(argv: list[str]) -> list[str]:
    """`-p` values, read before the full parse so plugins can add options."""
    found = []
    for i, arg in enumerate(argv):
        if arg == "-p" and i + 1 < len(argv):
            found.append(argv[i + 1])
        elif arg.startswith("-p") and len(arg) > 2 and not arg.startswith("--"):
            found.append(arg[2:])
    return found


def cmd_run(config: Config) -> ExitCode:
    from memeval.runner import run_suite

    options = config.options
    codes, summaries = [], []
    for path, out_dir in zip(options.suites, run_directories(options.suites, options.out), strict=True):
        codes.append(run_suite(config, path, out_dir))
        if options.json:
            summaries.append(run_summary(out_dir))
        if codes[-1] == ExitCode.INTERRUPTED:
            break
    ran = [c for c in codes if c != ExitCode.NO_EVALUATIONS]  # like pytest: 5 only if nothing ran at all
    code = most_severe(*ran) if ran else ExitCode.NO_EVALUATIONS
    if options.json:
        print(json.dumps({"exit_code": int(code), "runs": summaries}, indent=2))
    return code


def run_summary(out_dir: Path) -> dict[str, Any]:
    """What `memeval run --json` prints of one run: verdict, gates, metrics, warnings."""
    from memeval.results import RunDir

    run = RunDir.at(out_dir).load()
    return {"suite": run.suite.get("name"), "run_dir": str(out_dir), "status": run.status,
            "exit_code": run.exit_code, "verdict": run.verdict(), "error": run.error,
            "evaluations": [{"id": e.id, "method": e.method, "status": e.status,
                             "metrics": {m.name: m.value for m in e.metrics},
                             "gates": [{"metric": g.metric, "rule": g.rule, "passed": g.passed, "errored": g.errored,
                                        "value": g.value, "message": g.message} for g in e.gates],
                             "warnings": e.warnings, "error": e.error} for e in run.evaluations]}


def cmd_validate(config: Config) -> ExitCode:
    from memeval.runner import load_and_collect

    errors: list[str] = []
    for path in config.options.suites:
        try:
            suite, items = load_and_collect(config, path)
            print(f"{path}: ok ({len(items)} evaluations, {len(suite.spec.models)} models, "
                  f"{len(suite.spec.datasets)} datasets)")
        except (UsageError, SuiteErrors) as exc:
            errors.append(str(exc))
    if errors:
        raise UsageError("\n".join(errors))
    return ExitCode.OK


def cmd_report(config: Config) -> ExitCode:
    from memeval.report.base import ReportContext, file_reporter
    from memeval.results import RunDir
    from memeval.suite import ReportSpec

    options = config.options
    where = RunDir.at(options.run_dir)
    run = where.load()
    asked = ReportSpec.model_validate(run.config.get("suite", {}).get("report", {}))
    formats = options.formats or [*(f for f in asked.formats if f != "json"), "html"]
    reporters = {}
    for name in formats:
        try:
            reporters[name] = file_reporter(config.registry, name)
        except UnknownName as exc:
            raise UsageError(f"--format {name}: {exc}") from None
    redact = asked.redact if options.redact is None else options.redact
    out_dir = Path(options.out) if options.out else where.directory
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ReportContext(run, where, redact, config.hook, config.registry, out_dir)
    for name, reporter in reporters.items():
        print(f"{name}: {reporter().write(report)}")
    return ExitCode.OK


def cmd_compare(config: Config) -> ExitCode:
    from memeval.compare import SavedRun, compare_runs, comparison_record, format_rows

    options = config.options
    if options.tolerance < 0:
        raise UsageError(f"--tolerance must be >= 0, got {options.tolerance}")
    base, new = SavedRun.load(options.base), SavedRun.load(options.new)
    rows = compare_runs(base, new, config.registry, options.tolerance)
    record = comparison_record(base, rows)
    if options.json:
        print(json.dumps(record, indent=2))
    else:
        print(f"memeval compare: suite {base.run.suite.get('name')!r}, {options.base} -> {options.new}")
        for line in format_rows(rows):
            print("  " + line)
        print(f"{record['regressions']} regression(s) among {len(rows)} metrics")
    failed = options.fail_on_regression and record["regressions"] > 0
    return ExitCode.GATES_FAILED if failed else ExitCode.OK


def cmd_list(config: Config) -> ExitCode:
    from memeval.listing import describe_registry, print_text
    from memeval.reference import render

    options = config.options
    if options.output and not options.markdown:
        raise UsageError("memeval list: -o/--output writes the Markdown reference; add --markdown")
    info = describe_registry(config, options.method)
    if options.markdown:
        text = render(info)
        if options.output:
            write_text(Path(options.output), text)
        else:
            print(text, end="")
    elif options.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        print_text(info)
    return ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    config: Config | None = None
    previous_sigterm = signal.signal(signal.SIGTERM, _interrupt)
    code = ExitCode.INTERNAL_ERROR
    try:
        check_suites_first(argv)
        pm = make_plugin_manager(_plugin_args(argv))
        parser = build_parser(pm)
        options = parser.parse_args(argv)
        if not getattr(options, "command", None):
            parser.print_help()
            return ExitCode.USAGE_ERROR
        config = Config(options=options, pluginmanager=pm, registry=build_registry(pm))
        pm.hook.memeval_configure(config=config)
        code = ExitCode(int(options.func(config)))
    except SystemExit as exc:  # argparse: --help is 0, a bad option is 2 -> usage error 4
        code = ExitCode.OK if exc.code in (0, None) else ExitCode.USAGE_ERROR
    except (UsageError, SuiteErrors) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        code = ExitCode.USAGE_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = ExitCode.INTERRUPTED
    except BrokenPipeError:  # `memeval list | head`: the reader left; that is not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps Python's exit flush quiet
        code = ExitCode.OK
    except OSError as exc:
        code = _os_error(exc)
    except Exception:
        traceback.print_exc()
        print("INTERNAL ERROR: the traceback above is a memeval or plugin bug", file=sys.stderr)
        code = ExitCode.INTERNAL_ERROR
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
    if config is not None:
        code = most_severe(code, _unconfigure(config))
    return int(code)


def check_suites_first(argv: list[str]) -> None:
    """`run` and `validate` read their suite files before any plugin is imported (plugins import
    torch): a broken or hostile suite fails in a fraction of a second and a few MB."""
    if not argv or argv[0] not in ("run", "validate"):
        return
    from memeval.suite import load_suite

    for arg in argv[1:]:
        if arg.endswith((".yaml", ".yml")) and Path(arg).is_file():
            load_suite(arg)


def _unconfigure(config: Config) -> ExitCode:
    """A plugin's `memeval_unconfigure` that raises is a plugin bug: exit 3, the others still run."""
    failed = call_each(config.pluginmanager.hook.memeval_unconfigure, config=config)
    for name, exc in failed:
        print(f"INTERNAL ERROR: memeval_unconfigure of plugin {name!r} raised {type(exc).__name__}: {exc}",
              file=sys.stderr)
    return ExitCode.INTERNAL_ERROR if failed else ExitCode.OK


def _os_error(exc: OSError) -> ExitCode:
    problem = environment_problem(exc)
    if problem is not None:
        print(f"ERROR: {problem}", file=sys.stderr)
        return ExitCode.USAGE_ERROR
    traceback.print_exc()
    print("INTERNAL ERROR: the traceback above is a memeval or plugin bug", file=sys.stderr)
    return ExitCode.INTERNAL_ERROR


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM (a cancelled CI job) ends the run like Ctrl-C: reports written, exit code 2."""
    raise KeyboardInterrupt
