"""Errors that end a command with one line on stderr: exit code 2 for bad usage or bad input (InputError,
MissingExtra), 130 for a run the user stopped (Interrupted)."""


class InputError(Exception):
    """Bad input from the user: a malformed profile, an impossible request, a missing extra.

    The CLI prints ``rwkvprobe: error: <message>`` on one line and exits with code 2.
    """


class MissingExtra(InputError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, module: str, extra: str, what: str):
        super().__init__(
            f"{what} needs the '{module}' package, which is not installed: "
            f"pip install 'rwkvprobe[{extra}]'"
        )
        self.module = module
        self.extra = extra


class Interrupted(Exception):
    """The user stopped a run (Ctrl-C); what was measured is kept. The CLI exits with 130."""
