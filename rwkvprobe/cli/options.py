"""Option parsing and number formatting shared by the commands."""

from __future__ import annotations

from rwkvprobe.errors import InputError


def si(value: float, unit: str = "", digits: int = 3) -> str:
    """1234567 -> '1.23 M' (SI prefixes, powers of 1000)."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.{digits}g} {prefix}{unit}".rstrip()
    return f"{value:.{digits}g} {unit}".rstrip()


def parse_int_list(text: str, option: str) -> list[int]:
    """'1,64' -> [1, 64]; positive integers only."""
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) <= 0:
            raise InputError(f"{option} {text!r}: expected positive integers separated by commas, e.g. 1,64")
        values.append(int(part))
    return list(dict.fromkeys(values))


def parse_choice_list(text: str, option: str, allowed: tuple[str, ...]) -> list[str]:
    values = [p.strip() for p in text.split(",") if p.strip()]
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise InputError(f"{option} {text!r}: expected one or more of {', '.join(allowed)}, separated by commas")
    return list(dict.fromkeys(values))
