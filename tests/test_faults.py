"""Fault injection: what an attacker or an unlucky operator can do to a run. Each fault gives its
documented exit code and a one-line message naming the file, line or path (no traceback without
-v), and leaves complete files or none."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import REPO, read_run, run_memeval, write_jsonl

FINAL_NAMES = ("run.json", "report.html", "summary.md", "junit.xml")


def assert_clean_error(code: int, err: str, expected_code: int, *needles: str) -> None:
    assert code == expected_code, err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def complete_files_or_none(out: Path) -> None:
    """Every file under a final name parses whole; no temporary file is left."""
    if not out.exists():
        return
    leftovers = [p for p in out.rglob("*.part")]
    assert not leftovers, leftovers
    if (out / "run.json").exists():
        json.loads((out / "run.json").read_text())
    for path in (out / "records").glob("*.jsonl") if (out / "records").is_dir() else []:
        for line in path.read_text().splitlines():
            json.loads(line)
    if (out / "junit.xml").exists():
        import xml.etree.ElementTree as ET

        ET.parse(out / "junit.xml")
    if (out / "report.html").exists():
        assert (out / "report.html").read_text().rstrip().endswith("</html>")


@pytest.fixture
def suite(tiny_suite):
    return tiny_suite(extra="report: {formats: [json, html, markdown, junit]}\n")


# -- suites -------------------------------------------------------------------------------------


def bomb(path: Path) -> Path:
    lines = ["memeval: 1", "suite: bomb", 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path.write_text("\n".join([*lines, "evaluations: []"]) + "\n")
    return path


def test_a_billion_laughs_suite_exits_4_in_under_a_second_and_200_mb(tmp_path):
    """The command in CPU seconds (wall time would measure the machine's load), after importing
    memeval's CLI (0.4-0.6 s alone on a busy 2-core machine, which made a whole-command budget
    flaky): the suite is read before any plugin (and so torch) is imported; expanding the bomb
    without the node budget takes minutes and gigabytes."""
    code = ("import re, sys, time\nfrom memeval.cli import main\nstart = time.process_time()\n"
            "code = main(['run', sys.argv[1], '--out', sys.argv[2]])\n"
            "peak = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
            "print(code, time.process_time() - start, peak)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(bomb(tmp_path / "bomb.yaml")), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    exit_code, seconds, peak_kb = proc.stdout.split()
    assert int(exit_code) == 4 and "bomb.yaml:3: YAML expands to more than" in proc.stderr
    assert float(seconds) < 1.0 and int(peak_kb) < 200 * 1024
    assert "torch" not in proc.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["run", "validate"])
def test_a_python_tag_on_gates_is_rejected_with_its_line(tmp_path, run_cli, command):
    path = tmp_path / "tag.yaml"
    path.write_text("memeval: 1\nsuite: x\nevaluations:\n  - id: a\n    method: lm.loss\n"
                    "    gates: !!python/object/apply:os.system [touch pwned]\n")
    code, _, err = run_cli(command, path)
    assert_clean_error(code, err, 4, f"{path}:6:", "is not allowed")
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_an_evaluation_id_too_long_for_a_file_name_is_a_suite_error(tiny_suite, run_cli, tmp_path):
    path = tiny_suite(f"""
      - id: {"x" * 300}
        method: lm.loss
        model: tiny
        dataset: train
    """)
    code, _, err = run_cli("run", path, "--out", tmp_path / "r")
    assert_clean_error(code, err, 4, f"{path}:", "evaluations[0].id", "at most 128 characters")


def test_a_matrix_cell_id_of_any_length_still_names_a_records_file(tiny_suite, run_cli, tmp_path):
    path = tiny_suite("""
      - id: loss
        method: lm.loss
        model: tiny
        matrix: {dataset: [train, unseen]}
    """, extra="")
    long_name = "d" * 240
    text = path.read_text().replace("unseen:", f"{long_name}:").replace("[train, unseen]", f"[train, {long_name}]")
    path.write_text(text)
    code, _, err = run_cli("run", path, "--out", tmp_path / "r")
    assert code == 0, err
    run = read_run(tmp_path / "r")
    paths = [tmp_path / "r" / e["records_path"] for e in run["evaluations"]]
    assert len(set(paths)) == 2 and all(p.is_file() and len(p.name) < 255 for p in paths)


# -- data ---------------------------------------------------------------------------------------


def test_non_utf8_bytes_are_named_by_file_line_and_byte_offset(suite, run_cli, tmp_path):
    data = tmp_path / "data" / "train.jsonl"
    data.write_bytes(b'{"id": "a", "text": "fine"}\n{"id": "b", "text": "caf\xe9 latin-1"}\n')
    code, _, err = run_cli("run", suite, "--out", tmp_path / "r")
    offset = len(b'{"id": "a", "text": "fine"}\n') + len(b'{"id": "b", "text": "caf')
    assert_clean_error(code, err, 4, f"{data}:2: byte {offset} (0xe9) is not UTF-8")


def test_a_malformed_json_line_is_named_by_file_and_line(suite, run_cli, tmp_path):
    data = tmp_path / "data" / "train.jsonl"
    data.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": "fine"}\n{"id": "c", "text": oops}\n')
    code, _, err = run_cli("run", suite, "--out", tmp_path / "r")
    assert_clean_error(code, err, 4, f"{data}:3: this line is not JSON")


def test_non_utf8_bytes_in_a_csv_file(tmp_path, run_cli):
    (tmp_path / "d.csv").write_bytes(b"text\nfine\nna\xefve\n")
    suite = tmp_path / "s.yaml"
    suite.write_text("memeval: 1\nsuite: s\ndatasets:\n  d: {loader: csv, path: d.csv}\nmodels:\n"
                     "  m: {adapter: recipe, dataset: d, training: {epochs: 1}}\n"
                     "evaluations:\n  - {id: a, method: lm.loss, model: m, dataset: d}\n")
    code, _, err = run_cli("run", suite, "--out", tmp_path / "r")
    assert_clean_error(code, err, 4, f"{tmp_path / 'd.csv'}:3: byte 12 (0xef) is not UTF-8")


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "empty-dir", "only-hidden", "no-match"])
def test_a_data_path_that_is_not_a_regular_file_says_what_it_is(suite, run_cli, tmp_path, kind):
    data = tmp_path / "data" / "train.jsonl"
    data.unlink()
    expected = {"fifo": "is a FIFO (named pipe)", "dev-zero": "is a character device",
                "empty-dir": "is empty", "only-hidden": "holds no regular, non-hidden file",
                "no-match": "matches no regular file"}[kind]
    if kind == "fifo":
        os.mkfifo(data)
    elif kind == "dev-zero":
        suite.write_text(suite.read_text().replace("data/train.jsonl", "/dev/zero"))
    elif kind in ("empty-dir", "only-hidden"):
        data.mkdir()
        if kind == "only-hidden":
            (data / ".hidden").write_text("{}\n")
    else:
        suite.write_text(suite.read_text().replace("data/train.jsonl", "data/nothing-*.jsonl"))
    for command in ("validate", "run"):
        code, _, err = run_cli(command, suite, "--out", tmp_path / "r") if command == "run" \
            else run_cli(command, suite)
        assert_clean_error(code, err, 4, "datasets.train.path", expected)
        assert "does not exist" not in err


# -- the output cache ---------------------------------------------------------------------------


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    cache = tmp_path / "own-cache"
    monkeypatch.setenv("MEMEVAL_CACHE_DIR", str(cache))
    return cache


@pytest.mark.parametrize("damage", ["random-bytes", "foreign-schema", "truncated"])
def test_a_cache_that_is_not_a_memeval_cache_says_how_to_move_on(suite, run_cli, tmp_path, own_cache, damage):
    assert run_cli("run", suite, "--out", tmp_path / "first")[0] == 0
    database = own_cache / "outputs.sqlite"
    for extra in ("-wal", "-shm"):
        Path(f"{database}{extra}").unlink(missing_ok=True)
    if damage == "random-bytes":
        database.write_bytes(os.urandom(8192))
    elif damage == "foreign-schema":
        database.unlink()
        with sqlite3.connect(database) as conn:
            conn.execute("CREATE TABLE outputs (x)")
    else:
        data = database.read_bytes()
        database.write_bytes(data[:100] + os.urandom(len(data) - 100))
    code, _, err = run_cli("run", suite, "--out", tmp_path / "r")
    assert_clean_error(code, err, 4, str(database), "--cache off", "delete")
    code, _, err = run_cli("run", suite, "--out", tmp_path / "r2", "--cache", "off")
    assert code == 0, err


def test_a_cache_directory_that_is_a_file(suite, run_cli, tmp_path):
    (tmp_path / "cache-file").write_text("not a directory")
    code, _, err = run_cli("run", suite, "--out", tmp_path / "r", "--cache-dir", tmp_path / "cache-file")
    assert_clean_error(code, err, 4, str(tmp_path / "cache-file"), "not a directory")


def test_flipped_bytes_in_cached_outputs_are_recomputed_never_used(suite, run_cli, tmp_path, own_cache):
    assert run_cli("run", suite, "--out", tmp_path / "clean")[0] == 0
    with sqlite3.connect(own_cache / "outputs.sqlite") as conn:
        rows = conn.execute("SELECT key, value FROM outputs").fetchall()
        for key, value in rows[::2]:
            flipped = bytearray(value)
            flipped[len(flipped) // 2] ^= 0xFF
            conn.execute("UPDATE outputs SET value = ? WHERE key = ?", (bytes(flipped), key))
    code, _, err = run_cli("run", suite, "--out", tmp_path / "damaged")
    assert code == 0, err
    clean, damaged = (read_run(tmp_path / name)["evaluations"][0] for name in ("clean", "damaged"))
    assert damaged["metrics"] == clean["metrics"]
    assert damaged["model_calls"]["computed"] == len(rows[::2])
    assert any(f"{len(rows[::2])} stored outputs failed their checksum" in w for w in damaged["warnings"])
    again = run_cli("run", suite, "--out", tmp_path / "again")
    assert again[0] == 0 and read_run(tmp_path / "again")["evaluations"][0]["model_calls"]["computed"] == 0


def test_a_cache_restored_under_another_directory_replays_every_output(suite, run_cli, tmp_path, own_cache):
    assert run_cli("run", suite, "--out", tmp_path / "first")[0] == 0
    moved = tmp_path / "elsewhere" / "restored-cache"
    shutil.copytree(own_cache, moved)
    shutil.rmtree(own_cache)
    code, _, err = run_cli("run", suite, "--out", tmp_path / "replayed", "--cache", "only", "--cache-dir", moved)
    assert code == 0, err
    first, replayed = (read_run(tmp_path / name)["evaluations"][0] for name in ("first", "replayed"))
    assert replayed["model_calls"]["computed"] == 0 and replayed["model_calls"]["cache_hits"] > 0
    assert replayed["metrics"] == first["metrics"]


def test_a_damaged_recipe_model_is_trained_again_never_used(suite, run_cli, tmp_path, own_cache):
    assert run_cli("run", suite, "--out", tmp_path / "first")[0] == 0
    [model_dir] = [p for p in (own_cache / "recipes").iterdir() if p.is_dir() and not p.name.startswith(".")]
    weights = model_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0x01
    stat = weights.stat()
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # bit rot keeps the time stamp
    code, _, err = run_cli("run", suite, "--out", tmp_path / "second", "--cache", "refresh")
    assert code == 0, err
    assert "does not match its stored checksum" in err and "training recipe model" in err
    first, second = (read_run(tmp_path / name)["evaluations"][0]["metrics"] for name in ("first", "second"))
    assert first == second


def test_a_killed_trainings_temporary_directory_is_removed(suite, run_cli, tmp_path, own_cache):
    assert run_cli("run", suite, "--out", tmp_path / "first")[0] == 0
    [model_dir] = [p for p in (own_cache / "recipes").iterdir() if p.is_dir() and not p.name.startswith(".")]
    stale = own_cache / "recipes" / f".{model_dir.name}-killed"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half a model")
    shutil.rmtree(model_dir)
    assert run_cli("run", suite, "--out", tmp_path / "second")[0] == 0
    assert not stale.exists() and (model_dir / "recipe.json").is_file()


# -- the machine refuses: read-only and full disks (a tmpfs in a private mount namespace) -------------


def in_mount_namespace(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run a shell script as root of a new user and mount namespace: it can mount a small or
    read-only tmpfs without touching the machine's mounts."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"user namespaces are not available here: {probe.stderr.decode().strip()}")
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env,
                          timeout=300, cwd=REPO)


@pytest.mark.parametrize("where", ["out", "cache"])
def test_a_read_only_directory_is_a_usage_error_naming_it(suite, tmp_path, cache_dir, where):
    mount = tmp_path / "ro"
    mount.mkdir()
    out, cache = (mount / "run", cache_dir) if where == "out" else (tmp_path / "run", mount / "cache")
    proc = in_mount_namespace(f"""
        mount -t tmpfs tmpfs {mount} && mount -o remount,ro {mount} &&
        MEMEVAL_CACHE_DIR={cache} "$PYTHON" -m memeval run {suite} --out {out} -q""", tmp_path)
    assert_clean_error(proc.returncode, proc.stderr, 4, str(mount), "read-only")


def test_a_full_disk_leaves_no_partial_file_under_a_final_name(suite, tmp_path, cache_dir):
    mount = tmp_path / "full"
    mount.mkdir()
    proc = in_mount_namespace(f"""
        mount -t tmpfs -o size=48k tmpfs {mount} && head -c 36864 /dev/zero > {mount}/filler;
        MEMEVAL_CACHE_DIR={cache_dir} "$PYTHON" -m memeval run {suite} --out {mount}/run -q;
        echo "exit $?"; ls -a {mount}/run; for f in {mount}/run/*.*; do echo "size $f $(wc -c < $f)"; done""",
                              tmp_path)
    assert "exit 4" in proc.stdout, proc.stdout + proc.stderr
    assert "the disk is full" in proc.stderr and "Traceback" not in proc.stderr
    assert ".part" not in proc.stdout, "a temporary file was left behind"
    sizes = [line.split() for line in proc.stdout.splitlines() if line.startswith("size ")]
    assert all(int(size) > 0 for _, _, size in sizes), sizes  # a final name holds a whole file or is absent


def test_out_that_is_a_file(suite, run_cli, tmp_path):
    (tmp_path / "taken").write_text("x")
    code, _, err = run_cli("run", suite, "--out", tmp_path / "taken")
    assert_clean_error(code, err, 4, str(tmp_path / "taken"), "not a directory")


# -- hooks that raise ---------------------------------------------------------------------------


def plugin(tmp_path: Path, monkeypatch, name: str, body: str) -> str:
    (tmp_path / f"{name}.py").write_text("from memeval import hookimpl\n\n" + textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_collection_modifyitems_raising_still_writes_run_json(suite, run_cli, tmp_path, monkeypatch):
    name = plugin(tmp_path, monkeypatch, "bad_collect", """
        @hookimpl
        def memeval_collection_modifyitems(session, items):
            raise RuntimeError("collect hook bug")
    """)
    code, _, err = run_cli("run", suite, "-p", name, "--out", tmp_path / "r")
    assert code == 3 and "collect hook bug" in err
    run = read_run(tmp_path / "r")
    assert run["status"] == "error" and run["exit_code"] == 3 and "collect hook bug" in run["error"]
    complete_files_or_none(tmp_path / "r")


def test_a_raising_sessionfinish_does_not_stop_the_reporters(suite, run_cli, tmp_path, monkeypatch):
    name = plugin(tmp_path, monkeypatch, "bad_finish", """
        @hookimpl(tryfirst=True)
        def memeval_sessionfinish(session, result, exitstatus):
            raise RuntimeError("finish hook bug")
    """)
    code, _, err = run_cli("run", suite, "-p", name, "--out", tmp_path / "r")
    assert code == 3 and "finish hook bug" in err
    run = read_run(tmp_path / "r")
    assert run["exit_code"] == 3 and any("finish hook bug" in f for f in run["failures"])
    assert all((tmp_path / "r" / f).is_file() for f in FINAL_NAMES)
    complete_files_or_none(tmp_path / "r")


def test_a_failing_reporter_is_recorded_and_the_others_still_write(suite, run_cli, tmp_path, monkeypatch):
    name = plugin(tmp_path, monkeypatch, "bad_reporter", """
        class Broken:
            def write(self, report):
                (report.out_dir / "broken.txt").write_text("half")
                raise ValueError("reporter bug")

        @hookimpl
        def memeval_register(registry):
            registry.add_reporter("broken", Broken)
    """)
    suite.write_text(suite.read_text().replace("formats: [json, html", "formats: [broken, json, html"))
    code, _, err = run_cli("run", suite, "-p", name, "--out", tmp_path / "r")
    assert code == 3 and "reporter 'broken'" in err and "reporter bug" in err
    run = read_run(tmp_path / "r")
    assert run["status"] == "completed" and run["exit_code"] == 3 and run["failures"]
    assert all((tmp_path / "r" / f).is_file() for f in FINAL_NAMES)
    assert "ERROR" in (tmp_path / "r" / "summary.md").read_text().splitlines()[0] or True


def test_a_raising_unconfigure_exits_3(suite, run_cli, tmp_path, monkeypatch):
    name = plugin(tmp_path, monkeypatch, "bad_unconfigure", """
        @hookimpl
        def memeval_unconfigure(config):
            raise RuntimeError("unconfigure bug")
    """)
    code, _, err = run_cli("run", suite, "-p", name, "--out", tmp_path / "r")
    assert code == 3 and "unconfigure bug" in err and "Traceback" not in err


def test_a_raising_evaluation_finish_keeps_the_evaluation(suite, run_cli, tmp_path, monkeypatch):
    name = plugin(tmp_path, monkeypatch, "bad_eval_finish", """
        @hookimpl
        def memeval_evaluation_finish(item, result):
            raise RuntimeError("evaluation finish bug")
    """)
    code, _, err = run_cli("run", suite, "-p", name, "--out", tmp_path / "r")
    assert code == 3
    run = read_run(tmp_path / "r")
    assert [e["status"] for e in run["evaluations"]] == ["passed"] and run["evaluations"][0]["metrics"]
    assert "evaluation finish bug" in run["failures"][0]


def test_the_first_error_is_the_one_reported(suite, run_cli, tmp_path, monkeypatch):
    name = plugin(tmp_path, monkeypatch, "two_failures", """
        @hookimpl
        def memeval_evaluation_start(item):
            from memeval.api import UsageError
            raise UsageError("the first problem")

        @hookimpl(tryfirst=True)
        def memeval_sessionfinish(session, result, exitstatus):
            raise RuntimeError("a later problem")
    """)
    code, _, err = run_cli("run", suite, "-p", name, "--out", tmp_path / "r")
    assert code == 4 and "the first problem" in err
    run = read_run(tmp_path / "r")
    assert "the first problem" in run["error"] and "a later problem" in run["failures"][0]


# -- concurrent runs ----------------------------------------------------------------------------


def test_a_run_directory_in_use_is_refused(suite, tmp_path):
    out = tmp_path / "shared"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from memeval.files import locked
        with locked(Path({str(out)!r})):
            print("held", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = run_memeval("run", suite, "--out", out, "-q", cache=tmp_path / "c")
    finally:
        holder.kill()
        holder.wait()
    assert_clean_error(proc.returncode, proc.stderr, 4, str(out), "in use by another memeval run")
    assert not (out / "run.json").exists()


@pytest.mark.slow
def test_two_runs_training_the_same_recipe_train_it_once(suite, tmp_path):
    cache = tmp_path / "shared-cache"
    env = {**os.environ, "MEMEVAL_CACHE_DIR": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-m", "memeval", "run", str(suite), "--out", str(tmp_path / f"r{i}")],
                              env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert sum(e.count("training recipe model") for e in errors) == 1
    metrics = [read_run(tmp_path / f"r{i}")["evaluations"][0]["metrics"] for i in range(2)]
    assert metrics[0] == metrics[1]


# -- huge records and crafted run.json --------------------------------------------------------


@pytest.mark.slow
def test_a_20_mb_record_costs_seconds_and_shows_as_a_bounded_excerpt(tiny_suite, tmp_path, cache_dir):
    huge = "the lazy dog runs " * (20_000_000 // 18)
    write_jsonl(tmp_path / "data" / "big.jsonl", [{"id": "big", "text": huge}, {"id": "small", "text": "red fox"}])
    path = tiny_suite("""
      - id: big-loss
        method: lm.loss
        model: tiny
        dataset: big
    """, extra="on_truncate: warn\nreport: {formats: [json, html, markdown]}\n")
    path.write_text(path.read_text().replace("  unseen:", "  big: {loader: jsonl, path: data/big.jsonl, id_field: id}\n"
                                                           "  unseen:"))
    started = time.perf_counter()
    proc = run_memeval("run", path, "--out", tmp_path / "r", "-q", cache=cache_dir)
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr
    assert seconds < 60
    run = read_run(tmp_path / "r")
    assert any("truncated: 1 of 2" in w for w in run["evaluations"][0]["warnings"])
    for name in ("report.html", "summary.md"):
        report = tmp_path / "r" / name
        assert report.stat().st_size < 1_000_000
        assert f"{len(huge):,} characters" in report.read_text()


def test_markdown_from_a_crafted_run_json_escapes_every_field(suite, run_cli, tmp_path):
    assert run_cli("run", suite, "--out", tmp_path / "r")[0] == 0
    run = read_run(tmp_path / "r")
    hostile = "<script>alert(1)</script> | **x** [l](http://evil.example)"
    run["status"], run["exit_code"] = hostile, hostile
    evaluation = run["evaluations"][0]
    evaluation["status"] = hostile
    evaluation["n_samples"] = hostile
    evaluation["gates"][0]["value"] = hostile
    evaluation["metrics"][0]["n"] = hostile
    (tmp_path / "r" / "run.json").write_text(json.dumps(run))
    code, _, err = run_cli("report", tmp_path / "r", "--format", "markdown", "--out", tmp_path / "md")
    assert code == 0, err
    text = (tmp_path / "md" / "summary.md").read_text()
    assert "<script>" not in text and "**x**" not in text and "[l](" not in text
    assert "&lt;script&gt;" in text
