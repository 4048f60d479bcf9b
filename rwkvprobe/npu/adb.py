"""The board over adb: the toolkit's own adb, the boards it lists, and the adb server it starts stopped again."""

from __future__ import annotations

import glob
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

from rwkvprobe.errors import InputError
from rwkvprobe.npu import toolkit

NO_BOARD = ("no RK3588 board found over adb: connect one (USB, or 'adb connect IP:PORT' for a network board) "
            "so that 'adb devices' lists it, or use --device rk3588 for the modelled verdict")


def adb_path() -> str | None:
    """The adb that rknn-toolkit2 bundles in the toolkit environment (the one it starts), else PATH's."""

    machine = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(
        platform.machine().lower(), platform.machine().lower())
    pattern = str(toolkit.toolkit_dir() / "lib" / "python*" / "site-packages" / "rknn" / "3rdparty" /
                  "platform-tools" / "adb" / "*" / "adb")
    found = sorted(glob.glob(pattern))
    for p in found:
        if machine in Path(p).parent.name:
            return p
    return found[0] if found else shutil.which("adb")


def adb_servers() -> set[int]:
    """PIDs of running adb servers (``adb ... fork-server server``), zombies left out."""
    import psutil

    pids = set()
    for p in psutil.process_iter(["name", "cmdline", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmd = p.info["cmdline"] or []
            if (p.info["name"] == "adb" or (cmd and os.path.basename(cmd[0]) == "adb")) and "fork-server" in cmd:
                pids.add(p.pid)
        except (psutil.Error, TypeError):
            continue
    return pids


def stop_adb(adb: str | None, before: set[int], wait: float = 5.0) -> dict:
    """Stop an adb server started since ``before`` was taken (``adb kill-server``); leave one that was there."""
    import psutil

    ours = adb_servers() - before
    note = {"started": sorted(ours), "stopped": False, "kept_running": sorted(before & adb_servers())}
    if not ours:
        note["stopped"] = True
        return note
    if adb:
        try:
            subprocess.run([adb, "kill-server"], capture_output=True, timeout=15)
        except (OSError, subprocess.SubprocessError):
            pass
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and adb_servers() & ours:
        time.sleep(0.1)
    for pid in adb_servers() & ours:  # kill-server did not take: end the servers we started, by their id
        try:
            psutil.Process(pid).terminate()
        except psutil.Error:
            pass
    note["stopped"] = not (adb_servers() & ours)
    return note


DEVICE_TREE = "/proc/device-tree/compatible"


def on_board() -> bool:
    """Is this machine itself an RK3588 (the full toolkit run on the board)?"""
    try:
        return platform.machine() == "aarch64" and b"rockchip,rk3588" in Path(DEVICE_TREE).read_bytes()
    except OSError:
        return False


def adb_devices(adb: str) -> tuple[list[str], dict[str, str]]:
    """(serials ready for use, {serial: state} of those that are not: unauthorized, offline, ...)."""
    proc = subprocess.run([adb, "devices"], capture_output=True, text=True, timeout=60)
    ready, other = [], {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) < 2 or line.startswith(("List of devices", "*")):
            continue
        if parts[1] == "device":
            ready.append(parts[0])
        else:
            other[parts[0]] = parts[1]
    return ready, other


_PROBED: dict[tuple, list[str]] = {}


def probe_board(device_id: str | None) -> list[str]:
    """The boards adb lists (the wheel's adb; the server it starts is stopped again); InputError if none fits.

    On an RK3588 itself (the full toolkit on the board) adb may have nothing to list: init_runtime decides.
    """
    key = (device_id, str(adb_path()))
    if key in _PROBED:
        return _PROBED[key]
    if on_board():
        return []
    adb = adb_path()
    if adb is None:
        raise InputError("no adb found: the rknn-toolkit2 wheel in the toolkit environment has none and none is on "
                         "PATH (reinstall it: 'rwkvprobe toolkit install')")
    before = adb_servers()
    try:
        ready, other = adb_devices(adb)
    except (OSError, subprocess.SubprocessError) as e:
        raise InputError(f"{adb} devices failed ({e}): {NO_BOARD}") from None
    finally:
        stop_adb(adb, before)
    if device_id is not None and device_id not in ready:
        if device_id in other:
            raise InputError(f"board {device_id} is {other[device_id]} over adb: accept the USB debugging prompt "
                             "on the board or reconnect it")
        raise InputError(f"no board with ID {device_id!r} over adb (ready: {', '.join(ready) or 'none'}): "
                         "use an ID that 'adb devices' lists")
    if not ready:
        if other:
            raise InputError(f"no usable board over adb ({', '.join(f'{k} is {v}' for k, v in other.items())}): "
                             "accept the USB debugging prompt on the board or reconnect it")
        raise InputError(NO_BOARD)
    if device_id is None and len(ready) > 1:
        raise InputError(f"{len(ready)} boards over adb ({', '.join(ready)}): choose one with --device-id")
    _PROBED[key] = ready
    return ready
