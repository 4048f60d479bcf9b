"""The progress protocol that the measuring code types against; the CLI's Reporter (cli/console.py) is one,
``Silent`` another (tests, library use). Nothing here imports rich."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def stage(self, text: str) -> None:
        """A step of the run starts (one line)."""

    def note(self, text: str) -> None:
        """A detail (shown with --verbose)."""

    def begin_points(self, total: int, what: str = "layers") -> None:
        """``total`` points are about to be measured."""

    def advance(self, label: str) -> None:
        """One point is done."""

    def close(self) -> None:
        """The run is over (or interrupted)."""


class Silent:
    """A Progress that shows nothing."""

    def stage(self, text: str) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def begin_points(self, total: int, what: str = "layers") -> None:
        pass

    def advance(self, label: str) -> None:
        pass

    def close(self) -> None:
        pass
