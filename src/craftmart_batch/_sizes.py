"""Sizes as people write them in a config file or on the command line."""

from __future__ import annotations

import math


def parse_size(text: str) -> int:
    """``"700MB"``, ``"1.5 GB"``, ``"2GiB"``, ``"512M"`` or a number of bytes -> bytes."""
    units = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20,
             "mib": 2**20, "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40,
             "tib": 2**40}
    cleaned = text.strip().lower().replace(" ", "").replace("_", "")
    number = cleaned.rstrip("kmgtib")
    unit = cleaned[len(number):]
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (expected e.g. 700MB or 1.5GB)") from None
    if unit not in units or value <= 0 or not math.isfinite(value):
        raise ValueError(f"not a size: {text!r} (expected e.g. 700MB or 1.5GB)")
    return int(value * units[unit])


def format_size(size: int) -> str:
    """Bytes as the budget is written, rounded up to a MB: ``"713MB"``, ``"2.1GB"``."""
    mb = math.ceil(size / 2**20)
    return f"{math.ceil(mb / 102.4) / 10:g}GB" if mb >= 1024 else f"{mb}MB"
