"""Where a command is this process (the console script, ``python -m rwkvprobe``): what it may do to the interpreter
that a program calling rwkvprobe's functions (the tests) must not see done to its own."""

from __future__ import annotations

import gc

#: True where rwkvprobe is the process's entry point (cli.app.main called without arguments)
ENTRY = False


def settle() -> None:
    """Where rwkvprobe is the process: the objects made so far (the imported modules: torch's and onnx's are some
    250 thousand) taken out of the garbage collector's way for the rest of the process (gc.freeze), as they live to
    its end. A full collection over them cost 0.1 s (four while the modules were imported, two in the report's plots:
    0.5 s of a quick run; none fell while the layers were timed in the runs logged, but nothing kept one out), the
    interpreter's collection at exit 0.4 s. Frozen objects are still freed when nothing refers to them; only cycles among them stay. Elsewhere nothing
    is done: the calling program's garbage stays collectable."""
    if ENTRY:
        gc.freeze()
