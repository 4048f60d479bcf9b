"""One run skeleton for analyze and sweep: start in a new folder (locked, refusing an existing results file),
resume one (locked, its results read again under the lock and checked against the options), save after each
point (atomically), release the folder's lock when the run is over."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, ClassVar

from rwkvprobe.fsutil import FolderLock, ensure_writable_dir, lock_folder, lock_new_run
from rwkvprobe.progress import Progress
from rwkvprobe.results import load_results, save_results

RESULTS = "results.json"
#: a loop's saves after each point at most this often (save_soon): each writes and fsyncs the whole results file,
#: and 99 of them were 4.1 s of a 46 s quick rwkv-1b5 run. Ctrl-C saves what was measured (cli.console), so only a
#: killed run loses the points of its last few seconds
SAVE_INTERVAL_SECONDS = 2.0


class Run:
    """A measuring run writing ``out_dir/results.json``; subclasses set KIND and implement ``run``."""

    KIND: ClassVar[str]

    def __init__(self, settings: Any, out_dir: Path, results: dict | None = None, lock: FolderLock | None = None):
        self.settings = settings
        self.out_dir = out_dir
        self.path = out_dir / RESULTS
        self.results = results
        self.lock = lock  # on out_dir, taken by new_folder() or reopen()
        self._saved_at = -float("inf")

    @staticmethod
    def new_folder(out_dir: Path) -> tuple[Path, FolderLock]:
        """A folder for a new run, locked; one that already holds results is refused."""
        out = ensure_writable_dir(out_dir)
        return out, lock_new_run(out, RESULTS)

    @classmethod
    def reopen(cls, out_dir: Path, check: Callable[[dict, Path], None]) -> tuple[Path, FolderLock, dict]:
        """The folder of a run to complete, locked, with its results read again under the lock (what a run that
        just ended wrote is what is completed) and ``check(results, folder)`` passed."""
        out = ensure_writable_dir(out_dir)
        lock = lock_folder(out)
        try:
            results = load_results(out / RESULTS, kinds=(cls.KIND,))
            check(results, out)
        except BaseException:
            lock.release()
            raise
        return out, lock, results

    def save(self, final: bool = False) -> None:
        """Write the results file: compact while the run goes on (saved after each point), indented at its end
        (``final``)."""
        assert self.results is not None, "nothing to save before the run starts"
        save_results(self.path, self.results, compact=not final)
        self._saved_at = time.perf_counter()

    def save_soon(self) -> None:
        """save(), unless the last save was less than SAVE_INTERVAL_SECONDS ago (a loop's save after each point)."""
        if time.perf_counter() - self._saved_at >= SAVE_INTERVAL_SECONDS:
            self.save()

    def release(self) -> None:
        """Give the output folder's lock back (the run is over)."""
        if self.lock is not None:
            self.lock.release()

    def run(self, progress: Progress) -> dict:
        raise NotImplementedError
