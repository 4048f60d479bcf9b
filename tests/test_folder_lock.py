"""One run per output folder (fsutil.lock_folder): a second analyze or sweep into a folder another run
holds is refused with one line naming that process and when it started; a lock left by a process that
no longer exists is taken over with a warning. Tested with real processes: the holder is a separate
Python process, the refused run a separate ``python -m rwkvprobe``."""

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import run_module

from rwkvprobe.errors import InputError
from rwkvprobe.fsutil import LOCK_NAME, lock_folder

HOLDER = ("import sys, time\n"
          "from rwkvprobe.fsutil import lock_folder\n"
          "lock = lock_folder(sys.argv[1])\n"
          "print('locked', flush=True)\n"
          "time.sleep(300)\n")


@pytest.fixture
def holder(tmp_path):
    """A separate process holding the lock of tmp_path/out; killed (SIGKILL, by its own pid) at the end."""
    folder = tmp_path / "out"
    folder.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ))
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc, folder
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()


def _profile(tmp_path):
    prof = tmp_path / "p.yaml"
    prof.write_text("name: x\nsource: t\nlayers:\n  - {name: a, k: 64, n: 64, count: 1}\n")
    return prof


def _refusal(proc, pid):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    line = lines[0]
    assert line.startswith("rwkvprobe: error: ") and "is in use by another rwkvprobe run: " in line
    # who holds it (its pid and command line), and since when
    assert re.search(rf"process {pid} \([^)]*-c [^)]*\), started 20\d\d-\d\d-\d\d \d\d:\d\d:\d\d", line), line
    return line


def test_second_analyze_into_a_locked_folder_is_refused(holder, tmp_path):
    proc, folder = holder
    done = run_module("analyze", _profile(tmp_path), "--backends", "numpy", "--quick", "--out", folder)
    _refusal(done, proc.pid)
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]  # nothing written
    info = json.loads((folder / LOCK_NAME).read_text())
    assert info["pid"] == proc.pid  # the refused run left the holder's record alone


def test_second_sweep_into_a_locked_folder_is_refused(holder, tmp_path):
    proc, folder = holder
    done = run_module("sweep", "--backends", "numpy", "--sizes", "32,64", "--budget", "5", "--out", folder)
    _refusal(done, proc.pid)
    assert not (folder / "results.json").exists()


def test_resume_into_a_locked_folder_is_refused(holder, tmp_path):
    """--resume of a folder another run is writing: refused before anything is read or written."""
    proc, folder = holder
    results = {"schema": 1, "kind": "analyze", "created": "2026-01-01T00:00:00", "environment": {},
               "settings": {"tokens": [1], "threads": 1, "cold": True}, "profile": {"name": "x"}}
    (folder / "results.json").write_text(json.dumps(results))
    before = (folder / "results.json").read_bytes()
    done = run_module("analyze", _profile(tmp_path), "--backends", "numpy", "--tokens", "1", "--threads", "1",
                      "--resume", folder)
    _refusal(done, proc.pid)
    assert (folder / "results.json").read_bytes() == before


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_warning(holder):
    proc, folder = holder
    proc.kill()  # SIGKILL: no clean-up ran, its record stays in the lock file
    proc.wait(timeout=30)
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == proc.pid
    said = []
    with lock_folder(folder, warn=said.append) as lock:
        assert lock.took_over == said[0]
        assert said[0].startswith(f"{folder}: took over the lock left by process {proc.pid}")
        assert said[0].endswith("which no longer runs") and "started 20" in said[0]
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    # released: emptied, and the next run takes it without a warning
    assert (folder / LOCK_NAME).read_text() == ""
    with lock_folder(folder, warn=said.append) as lock:
        assert lock.took_over is None and len(said) == 1


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    """Two runs in one process (the in-process CLI of the tests) exclude each other as well, until released."""
    with lock_folder(tmp_path):
        with pytest.raises(InputError, match=f"process {os.getpid()}") as e:
            lock_folder(tmp_path)
        assert "\n" not in str(e.value)
    lock_folder(tmp_path).release()


def test_a_finished_run_gives_its_folder_back(cli, tmp_path):
    """analyze in-process, then --resume of the same folder in the same process: not refused."""
    prof = _profile(tmp_path)
    code, out, err = cli("analyze", prof, "--backends", "numpy", "--quick", "--budget", "5", "--out", tmp_path / "r")
    assert code == 0, err
    assert (tmp_path / "r" / LOCK_NAME).read_text() == ""
    code, out, err = cli("analyze", prof, "--backends", "numpy", "--quick", "--budget", "5", "--resume",
                         tmp_path / "r")
    assert code == 0, err and "in use" not in err
