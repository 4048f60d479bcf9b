"""Core-mask series: ``--npu-cores`` parsed, each mask's series label (``rknnlite[core0]``), and the
labels split back into backend and mask."""

from __future__ import annotations

from rwkvprobe.errors import InputError

#: the host-driven series' backend name (rknn-toolkit2's ``RKNN`` API, beside rknn-toolkit-lite2's RKNNLite)
BACKEND = "rknn"


#: backends whose series are expanded per core mask
NPU_BACKENDS = ("rknnlite", BACKEND)


TARGET = "rk3588"


#: --npu-cores value -> the RKNN / RKNNLite constant (the two libraries use the same names and values)
CORE_MASKS = {"auto": "NPU_CORE_AUTO", "0": "NPU_CORE_0", "1": "NPU_CORE_1", "2": "NPU_CORE_2",
              "0_1": "NPU_CORE_0_1", "0_1_2": "NPU_CORE_0_1_2", "all": "NPU_CORE_ALL"}


#: --npu-cores value -> the series label's suffix; auto keeps the plain backend name
MASK_LABELS = {"auto": None, "0": "core0", "1": "core1", "2": "core2", "0_1": "cores0-1", "0_1_2": "cores0-2",
               "all": "all"}


def parse_core_masks(text: str | None) -> list[str]:
    """'0,1,0_1_2' -> ['0', '1', '0_1_2']; one value (the old form) still works. InputError otherwise."""
    values = [p.strip().lower() for p in ("auto" if text is None else text).split(",") if p.strip()]
    bad = [v for v in values if v not in CORE_MASKS]
    if bad or not values:
        raise InputError(f"--npu-cores {text!r}: {'unknown core mask ' + repr(bad[0]) if bad else 'no core mask'}; "
                         f"expected one or more of {', '.join(CORE_MASKS)}, separated by commas (e.g. 0,1,0_1_2)")
    return list(dict.fromkeys(values))


def series_label(backend: str, mask: str) -> str:
    """``rknnlite`` (auto), ``rknnlite[core0]``, ``rknn[cores0-2]``, ..."""
    suffix = MASK_LABELS[mask]
    return f"{backend}[{suffix}]" if suffix else backend


def split_label(label: str) -> tuple[str, str | None]:
    """A series label -> (backend, core mask); the mask is None for a backend without core masks."""
    base, _, rest = label.partition("[")
    if base not in NPU_BACKENDS:
        return label, None
    if not rest:
        return base, "auto"
    suffix = rest.rstrip("]")
    for mask, s in MASK_LABELS.items():
        if s == suffix:
            return base, mask
    raise InputError(f"series label {label!r}: unknown core mask {suffix!r}")


def series_labels(backend: str, masks: list[str]) -> list[str]:
    """One series per core mask for the NPU backends, the backend itself otherwise."""
    if backend not in NPU_BACKENDS:
        return [backend]
    return [series_label(backend, m) for m in masks]


def split_board(pairs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(in-process pairs, host-driven board pairs)."""
    board = [p for p in pairs if split_label(p[0])[0] == BACKEND]
    return [p for p in pairs if p not in board], board
