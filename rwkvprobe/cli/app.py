"""The ``rwkvprobe`` typer app: registers the commands of cli/*.py and turns every failure into one line
on stderr (the traceback only with RWKVPROBE_DEBUG=1). Exit codes: 0 ok, 1 a measurement failed, 2 bad usage or bad input, 130 interrupted."""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer

try:  # newer typer releases carry their own copy of click
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_exc

from rwkvprobe import __version__, process
from rwkvprobe.cli import analyze, bandwidth, compare, models, profile, sweep, validate
from rwkvprobe.cli.console import err_console
from rwkvprobe.errors import InputError, Interrupted

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Is each RWKV layer compute-, bandwidth- or overhead-bound on this machine?",
)
profile_app = typer.Typer(no_args_is_help=True, help="List the shipped model profiles or show one's layers.")
app.add_typer(profile_app, name="profile")

def _version(value: bool):
    if value:
        print(f"rwkvprobe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
):
    pass


# ------------------------------------------------------------------------------------------------
# The commands: one module per command group (cli/*.py), registered here in the order --help lists them

app.command("onnx")(models.onnx_cmd)
app.command("bandwidth")(bandwidth.bandwidth_cmd)
app.command("analyze")(analyze.analyze_cmd)
app.command("report")(analyze.report_cmd)
app.command("convert")(models.convert_cmd)
app.command("compare")(compare.compare_command)
app.command("sweep")(sweep.sweep_command)
app.command("validate")(validate.validate_command)
profile_app.command("list")(profile.profile_list)
profile_app.command("show")(profile.profile_show)
profile_app.command("from")(profile.profile_from_command)
toolkit_app = typer.Typer(no_args_is_help=True, help="The RKNN toolkit (rknn-toolkit2) in an environment of its own.")
app.add_typer(toolkit_app, name="toolkit")
toolkit_app.command("install")(models.toolkit_install)
toolkit_app.command("status")(models.toolkit_status)


# ------------------------------------------------------------------------------------------------
# Entry point: bad input ends in one line on stderr and exit code 2


def _error(message: str, code: int = 2) -> None:
    err_console.print(f"rwkvprobe: error: {message}", markup=False, soft_wrap=True)
    sys.exit(code)


_NO_ARGS_HELP = getattr(click_exc, "NoArgsIsHelpError", ())


def main(argv: Optional[list[str]] = None) -> None:
    if argv is None:  # the process's entry point: analyze's --budget counts from the process's start
        process.enter()
        process.settle()  # the command-line modules
    try:
        code = app(args=argv, prog_name="rwkvprobe", standalone_mode=False)
        if isinstance(code, int) and code:  # click hands typer.Exit(n) back as a return value here
            sys.exit(code)
    except InputError as e:
        _error(str(e))
    except Interrupted as e:
        _error(str(e), 130)
    except _NO_ARGS_HELP:
        sys.exit(0)  # help was printed
    except click_exc.UsageError as e:
        hint = f" (see: rwkvprobe {e.ctx.command_path.split(' ', 1)[1] + ' ' if e.ctx and ' ' in e.ctx.command_path else ''}--help)"
        _error(e.format_message() + hint)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        _error("interrupted", 130)
    except KeyboardInterrupt:
        _error("interrupted", 130)
    except MemoryError:
        _error("out of memory: try a smaller profile or fewer tokens", 1)
    except OSError as e:
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        _error(f"{where}{e.strerror or e}", 2)
    except Exception as e:  # a bug or an unforeseen failure: one line, the traceback on request
        if os.environ.get("RWKVPROBE_DEBUG"):
            raise
        # one line: a multi-line message (TorchScript's carries its own traceback) ends with what failed
        lines = [x.strip() for x in str(e).splitlines() if x.strip()]
        _error(f"internal error: {type(e).__name__}: {lines[-1] if lines else ''} "
               "(set RWKVPROBE_DEBUG=1 for the traceback)", 1)
    finally:
        process.settle()  # what the command made: the interpreter's exit does not collect it (0.4 s with torch)
