"""Files written so that an interrupted or failed write never damages an earlier result."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from rwkvprobe.errors import InputError


def ensure_writable_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and check that files can be created in it; InputError otherwise."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"{p}: exists and is not a directory") from None
    except OSError as e:
        raise InputError(f"{p}: cannot create the output directory: {e.strerror or e}") from None
    if not p.is_dir():
        raise InputError(f"{p}: exists and is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=p, prefix=".rwkvprobe-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(f"{p}: cannot write in the output directory: {e.strerror or e}") from None
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, then rename it over ``path``."""
    p = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=p.parent or ".", prefix=f".{p.name}.", suffix=".tmp")
    except OSError as e:
        raise InputError(f"{p}: cannot write: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def read_input_text(path: str | Path, what: str) -> str:
    """The text of a file the user named; a missing or unreadable file is one InputError line."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{p}: no such {what}") from None
    except IsADirectoryError:
        raise InputError(f"{p}: is a directory, expected a {what}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: cannot read the {what}: {e}") from None


def run_json_worker(argv: list[str], request: dict, env: dict | None = None) -> tuple[dict | None, str]:
    """Run ``argv + [REQUEST.json, RESPONSE.json]`` in a temporary working folder (workers that drop files
    into their cwd leave nothing behind); returns (the response, or None when the worker wrote none or
    failed, and the last line of its output for the caller's one-line error)."""
    with tempfile.TemporaryDirectory(prefix="rwkvprobe-worker-") as tmp:
        req, resp = Path(tmp) / "request.json", Path(tmp) / "response.json"
        req.write_text(json.dumps(request))
        proc = subprocess.run([*argv, str(req), str(resp)], capture_output=True, text=True, cwd=tmp, env=env)
        tail = ((proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"])[0]
        if proc.returncode != 0 or not resp.is_file():
            return None, tail
        return json.loads(resp.read_text()), tail
