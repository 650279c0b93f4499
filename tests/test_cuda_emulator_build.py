"""cuda_emulator.compile_once under concurrency: pytest-xdist workers that want the same emulator
binary at once compile it once, and none of them ever runs a partial file.

A stand-in "compiler" (a Python one-liner that counts its runs and writes its output slowly)
keeps this test at about a second. Runtime: ~1 s.
"""

import multiprocessing
import subprocess
import sys

import cuda_emulator as emu
import pytest

# Appends a line to the log, then writes its output (the last argument) in two halves with a pause
# between them, so a reader that does not wait for the rename would see half a file.
SLOW_COMPILER = (
    "import sys, time; open(sys.argv[1], 'a').write('run\\n'); out = open(sys.argv[2], 'w'); "
    "out.write('half '); out.flush(); time.sleep(0.5); out.write('done'); out.close()"
)


def _compile(exe, log):
    return emu.compile_once(exe, [sys.executable, "-c", SLOW_COMPILER, str(log)]).read_text()


def test_concurrent_builds_compile_once_and_see_the_whole_file(tmp_path):
    exe, log = tmp_path / "emu-abc", tmp_path / "runs.log"
    # Forked processes, as pytest-xdist's workers are separate processes (each takes its own lock).
    with multiprocessing.get_context("fork").Pool(3) as pool:
        outputs = pool.starmap(_compile, [(exe, log)] * 3)
    assert outputs == ["half done"] * 3
    assert log.read_text() == "run\n", "the compiler ran more than once for one binary"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emu-abc", "emu-abc.lock", "runs.log"]


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    exe = tmp_path / "emu-bad"
    with pytest.raises(subprocess.CalledProcessError):
        emu.compile_once(exe, [sys.executable, "-c", "import sys; open(sys.argv[1], 'w').write('x'); sys.exit(1)"])
    assert not exe.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["emu-bad.lock"]
