"""Stopping a training run cleanly on SIGINT (Ctrl-C) or SIGTERM (kill, a scheduler).

Inside `StopSignals()`, while `graceful` is on (the training loop), the first signal only
sets `received`: the loop finishes its step, saves a checkpoint and exits 128 + signum
(130 for SIGINT, 143 for SIGTERM). A second signal, or any signal while `graceful` is off
(setting up, drawing the final samples), raises `Aborted` at once, and the trainer reports
what is saved. Outside the main thread nothing is installed, and a signal that was ignored
when the run started (SIGINT of a shell's background job) stays ignored."""
from __future__ import annotations

import signal
import threading

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Aborted(KeyboardInterrupt):
    """A signal that ends the run at once; `signum` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    def __init__(self):
        self.received: int | None = None   # the first signal while graceful
        self.graceful = False
        self._previous = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""

    @property
    def exit_code(self) -> int:
        return 128 + self.received if self.received else 0

    def _handle(self, signum, frame):
        if self.graceful and self.received is None:
            self.received = signum
            return
        raise Aborted(signum)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in HANDLED:
                if signal.getsignal(sig) is signal.SIG_IGN:
                    continue        # e.g. SIGINT of a background job: the user's choice stands
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        # after a stop signal the run only reports and exits: a late second signal must not
        # kill it between its message and its exit code, so it is ignored from here on
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_IGN if self.received is not None else handler)
        self._previous.clear()
