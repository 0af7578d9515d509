"""What every command line of the package shares: argparse number types that say what
they expected, and one way to end: a one-line error on stderr and an exit code, never a
traceback (unless --debug or CGANRAW_DEBUG=1 asks for it)."""
from __future__ import annotations

import argparse
import math


def number(convert, ok, what):
    """An argparse type: convert(s), then ok(v), else an error that says what was expected."""
    def parse(s):
        try:
            v = convert(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
        if not (math.isfinite(v) and ok(v)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {s}")
        return v
    parse.__name__ = what
    return parse


positive_int = number(int, lambda v: v > 0, "a positive integer")
nonneg_int = number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = number(float, lambda v: v > 0, "a positive number")
nonneg_float = number(float, lambda v: v >= 0, "a number >= 0")
unit_float = number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
unit_interval = number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
open_unit = number(float, lambda v: 0 < v < 1, "a number in (0, 1)")
