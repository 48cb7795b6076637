"""files.py: a directory memeval builds is built once, whole, and never used damaged."""

from __future__ import annotations

import json
import threading
import time

import pytest

from memeval.files import MANIFEST, build_once, intact, sha256_file


def weights_builder(calls: list[str], pause: float = 0.0):
    def build(work):
        calls.append(work.name)
        time.sleep(pause)
        (work / "weights.bin").write_bytes(b"\x00\x01" * 1000)
        (work / "checkpoints").mkdir()
        (work / "checkpoints" / "epoch-1.bin").write_bytes(b"ckpt")

    return build


def test_a_directory_is_built_once_with_the_checksum_of_every_file(tmp_path):
    calls, messages = [], []
    final = tmp_path / "models" / "abc"
    assert build_once(final, weights_builder(calls), messages.append) is True
    assert build_once(final, weights_builder(calls), messages.append) is False
    assert len(calls) == 1 and messages == []
    stored = json.loads((final / MANIFEST).read_text())
    assert stored == {name: sha256_file(final / name) for name in ("checkpoints/epoch-1.bin", "weights.bin")}
    assert sorted(p.name for p in final.parent.iterdir()) == [".abc.lock", "abc"]


@pytest.mark.parametrize("damage", ["flip a byte", "delete a file", "delete the checksums"])
def test_a_damaged_directory_is_built_again_never_used(tmp_path, damage):
    calls, messages = [], []
    final = tmp_path / "abc"
    build_once(final, weights_builder(calls), messages.append)
    if damage == "flip a byte":
        data = bytearray((final / "checkpoints" / "epoch-1.bin").read_bytes())
        data[0] ^= 0xFF
        (final / "checkpoints" / "epoch-1.bin").write_bytes(bytes(data))
    elif damage == "delete a file":
        (final / "weights.bin").unlink()
    else:
        (final / MANIFEST).unlink()
    assert not intact(final, lambda message: None)
    assert build_once(final, weights_builder(calls), messages.append) is True
    assert len(calls) == 2 and intact(final, lambda message: None)
    assert (final / "checkpoints" / "epoch-1.bin").read_bytes() == b"ckpt"
    assert str(final) in messages[0] and "building it again" in messages[0]


def test_a_failed_build_leaves_nothing_and_a_killed_ones_leftovers_are_removed(tmp_path):
    final = tmp_path / "abc"

    def fails(work):
        (work / "half.bin").write_bytes(b"half")
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        build_once(final, fails, print)
    assert not final.exists() and not list(tmp_path.glob(".abc-*"))
    (tmp_path / ".abc-killed").mkdir()  # what a SIGKILL mid-build leaves
    (tmp_path / ".abc-killed" / "half.bin").write_bytes(b"half")
    build_once(final, weights_builder([]), print)
    assert not (tmp_path / ".abc-killed").exists() and intact(final, print)


def test_two_builders_at_once_build_it_once(tmp_path):
    calls, results = [], []
    final = tmp_path / "abc"
    threads = [threading.Thread(target=lambda: results.append(build_once(final, weights_builder(calls, 0.3), print)))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and sorted(results) == [False, False, True]
