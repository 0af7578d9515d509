"""Progress of a long loop: a live tqdm bar on a terminal, and off a terminal (a log file,
CI, a pipe) a plain logged line every so often. Messages logged to the `cganraw` logger
while the bar is live are printed above it instead of breaking it."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import sys

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

log = logging.getLogger(__name__)


def format_eta(seconds) -> str:
    """'1:02:03' or '02:03'; '?' while unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    return tqdm.format_interval(int(round(seconds)))


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _bar_size(stream) -> dict:
    """Follow the terminal's width; a terminal that reports no size (0 x 0, as some CI and
    editor terminals do) would hide tqdm's bar, so it gets a fixed one."""
    try:
        size = os.get_terminal_size(stream.fileno())
        if size.columns > 0 and size.lines > 0:
            return {"dynamic_ncols": True}
    except (AttributeError, OSError, ValueError):
        pass
    return {"ncols": 120, "nrows": 24}


class Progress:
    """update(n, text) after each unit of work: n of `total` done, `text` the state to show
    (losses, rates, ETA). On a terminal a bar shows it live; elsewhere a line
    `<unit> n/total text` is logged every `every` units, at the last one, and when forced.
    enabled=False shows nothing. A context manager: closing ends the bar."""

    def __init__(self, total: int, initial: int = 0, *, every: int = 1, unit: str = "step",
                 enabled: bool = True, stream=None):
        self.total, self.every, self.unit, self.enabled = int(total), max(1, int(every)), unit, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.live = enabled and _isatty(self.stream)
        self._bar = None
        self._exit = contextlib.ExitStack()
        if self.live:
            self._exit.enter_context(logging_redirect_tqdm([logging.getLogger("cganraw")]))
            self._bar = tqdm(total=self.total, initial=int(initial), file=self.stream, unit=unit,
                             **_bar_size(self.stream), leave=True, mininterval=0.2,
                             bar_format="{percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} {unit}s{postfix}")

    def update(self, n: int, text: str = "", force: bool = False) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.update(int(n) - self._bar.n)
            if force:
                self._bar.refresh()
        elif force or n % self.every == 0 or n == self.total:
            log.info("%s %d/%d %s", self.unit, n, self.total, text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._exit.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
