"""Durations and sizes with an optional unit, as the spool's options take them."""

from __future__ import annotations

from typing import Dict

DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_quantity(text: str, units: Dict[str, int]) -> int:
    """An integer with an optional unit: durations 90, 90s, 30m, 12h, 1d; sizes 500K, 64M, 1G."""
    value = text.strip().lower()
    digits = value.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = value[len(digits):]
    if not digits.isdigit() or unit not in units:
        raise ValueError(f"{text!r}: expected a number with an optional unit ({', '.join(u for u in units if u)})")
    return int(digits) * units[unit]


def format_quantity(value: int, units: Dict[str, int]) -> str:
    """The shortest text ``parse_quantity`` reads back as ``value``: 86400 -> 1d, 67108864 -> 64M."""
    for unit, size in sorted(units.items(), key=lambda u: -u[1]):
        if unit and value and value % size == 0:
            return f"{value // size}{unit.upper() if units is SIZE_UNITS else unit}"
    return str(value)
