import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "profiles"

# the machine's bandwidth history (measure/history.py) is off in tests, so that one test's probes never judge
# another's layers, nor land in the user's cache; the tests of the history name their own file
os.environ["RWKVPROBE_BANDWIDTH_HISTORY"] = "off"


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process: returns (exit code, stdout, stderr)."""
    from rwkvprobe.cli.app import main

    def run(*args):
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def run_module(*args, env=None, cwd=None, timeout=300):
    """Run ``python -m rwkvprobe`` in a subprocess (to see real tracebacks, exit codes, stderr)."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "rwkvprobe", *map(str, args)], capture_output=True, text=True,
                          env=full_env, cwd=cwd or ROOT, timeout=timeout)


@pytest.fixture
def write_yaml(tmp_path):
    def write(text, name="p.yaml"):
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
