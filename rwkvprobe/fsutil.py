"""Files written so that an interrupted or failed write never damages an earlier result."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from rwkvprobe.errors import InputError


def cache_dir() -> Path:
    """rwkvprobe's folder in the user's cache: ``$XDG_CACHE_HOME/rwkvprobe``, ``~/.cache/rwkvprobe`` by default."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rwkvprobe"


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


# ------------------------------------------------------------------------------------------------
# One run per output folder

LOCK_NAME = ".rwkvprobe.lock"


class FolderLock:
    """An exclusive ``flock`` on ``DIR/.rwkvprobe.lock``, held until :meth:`release` (or the process ends:
    the kernel drops the lock of a process that dies, however it dies). The file names the holder: its
    process ID, when it took the lock and its command line. The file is emptied, never removed, on
    release (removing it would let two later runs lock two different files)."""

    def __init__(self, folder: Path, fd: int | None, took_over: str | None = None):
        self.folder = folder
        self.fd = fd
        self.took_over = took_over

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        try:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(raw: bytes) -> dict:
    try:
        info = json.loads(raw.decode("utf-8", "replace") or "{}")
        return info if isinstance(info, dict) else {}
    except ValueError:
        return {}


def _describe_holder(info: dict) -> str:
    pid = info.get("pid", "?")
    cmd = f" ({info['command'][:120]})" if info.get("command") else ""
    return f"process {pid}{cmd}, started {info.get('started', 'at an unknown time')}"


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)  # signal 0: nothing is sent, only whether the process exists
    except PermissionError:  # it exists, under another user
        return True
    except (OSError, ValueError, TypeError, OverflowError):
        return False
    return True


def lock_folder(path: str | Path, warn=None) -> FolderLock:
    """Take the folder's lock for this run; InputError (one line naming the process that holds it and when
    it started) when another run has it. A lock file left by a process that no longer runs is taken over,
    with a warning through ``warn`` (default: one line on stderr)."""
    import sys
    import time

    folder = Path(path)
    try:
        import fcntl
    except ImportError:  # no flock on this platform: no lock
        return FolderLock(folder, None)
    lock_path = folder / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise InputError(f"{lock_path}: cannot create the run's lock file: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        info = _holder(os.pread(fd, 4096, 0))
        os.close(fd)
        raise InputError(f"{folder} is in use by another rwkvprobe run: {_describe_holder(info)}; wait for it to end "
                         "or write to another folder") from None
    left = _holder(os.pread(fd, 4096, 0))
    took_over = None
    if left.get("pid") not in (None, os.getpid()):
        why = "which no longer runs" if not _alive(left["pid"]) else "which no longer holds it"
        took_over = f"{folder}: took over the lock left by {_describe_holder(left)}, {why}"
        (warn or (lambda m: print(f"rwkvprobe: warning: {m}", file=sys.stderr, flush=True)))(took_over)
    argv = list(sys.argv or [])
    ours = bool(argv) and (os.path.basename(argv[0]) == "rwkvprobe" or argv[0].endswith(os.path.join("rwkvprobe",
                                                                                                     "__main__.py")))
    command = " ".join(["rwkvprobe", *argv[1:]] if ours else [sys.executable, *argv])
    info = {"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": command}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    return FolderLock(folder, fd, took_over)


def lock_new_run(out: Path, results_name: str) -> FolderLock:
    """The start of a new run into ``out`` (analyze, sweep): take the folder's lock, then refuse a folder
    that already holds a results file (one line pointing at --resume), giving the lock back."""
    lock = lock_folder(out)  # one run per folder: a second one is refused here, before anything is read
    try:
        if (out / results_name).exists():
            raise InputError(f"{out / results_name} exists: use --resume {out} to complete it, or another --out")
    except BaseException:
        lock.release()
        raise
    return lock
