"""The CLI layer's console: the rich consoles, progress reporting, warnings and interrupt handling.

The commands (cli/*.py) use these; the measuring code below takes a ``progress.Progress`` (Reporter here is
one) and never imports rich for it. Imports nothing of the project but its errors.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Protocol

from rich.console import Console

from rwkvprobe.errors import Interrupted


class Job(Protocol):
    """What the commands run: an analyze or sweep run (measure/run.py Run), typed here by its shape so that
    this module imports nothing of the project but its errors."""

    results: dict | None
    path: Path
    out_dir: Path

    def run(self, progress: Any) -> dict: ...

    def save(self) -> None: ...

    def release(self) -> None: ...


def _console(stderr: bool = False) -> Console:
    """Rich console; when not on a terminal (pipes, CI logs) use 120 columns, not rich's 80."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or os.environ.get("COLUMNS") else 120
    return Console(stderr=stderr, highlight=False, width=width)


out_console = _console()
err_console = _console(stderr=True)


class Reporter:
    """Progress on stderr: stage lines, then a rich progress bar with ETA over the layer points."""

    def __init__(self, console: Console, verbose: bool = False):
        self.console = console
        self.verbose = verbose
        self.progress: Any = None  # a rich Progress while the points are measured
        self.task: Any = None

    def stage(self, text: str) -> None:
        self.console.print(f"[bold]{text}[/bold]", highlight=False)

    def note(self, text: str) -> None:
        if self.verbose:
            self.console.print(f"  {text}", markup=False, highlight=False)

    def begin_points(self, total: int, what: str = "layers") -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.console.print(f"[bold]{what}: {total} points to measure[/bold]", highlight=False)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=self.console, transient=False)
        self.progress.start()
        self.task = self.progress.add_task("measuring", total=total)

    def advance(self, label: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, description=label[:40].ljust(40))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def run_keeping_results(job: Job, reporter: Reporter, resume_command: str) -> dict:
    """``job.run(reporter)``; on Ctrl-C save what was measured and say how to resume (exit 130)."""
    try:
        return job.run(reporter)
    except KeyboardInterrupt:
        reporter.close()
        if job.results is not None:
            job.save()
        raise Interrupted(f"interrupted: what was measured is in {job.path}; complete it with: {resume_command}") from None
    finally:
        reporter.close()


def run_and_render(job: Job, reporter: Reporter, resume_command: str,
                   render: Callable[[dict, Path], Path]) -> tuple[dict, Path]:
    """Run ``job`` (run_keeping_results), render its report into its folder, give the folder back."""
    try:
        results = run_keeping_results(job, reporter, resume_command)
        return results, render(results, job.out_dir)
    finally:
        job.release()


def print_lines(lines: list[str]) -> None:
    """Plain lines on stdout (no rich markup or highlighting)."""
    for line in lines:
        out_console.print(line, highlight=False, markup=False)


def print_warnings(results: dict) -> None:
    for w in results.get("warnings", []):
        err_console.print(f"warning: {w}", highlight=False, markup=False, soft_wrap=True)
