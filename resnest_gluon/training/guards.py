"""What ends a run from outside: stop requests (SIGTERM/SIGINT) and the stall watchdog.

This module owns :class:`StopFlag` and :class:`Watchdog`. Neither acts on its own beyond
recording or aborting: the loop exchanges the stop flag across ranks at its synchronisation
points, so that every rank stops after the same step.
"""
import logging
import os
import signal
import threading
import time

__all__ = ["StopFlag", "Watchdog"]

log = logging.getLogger(__name__)


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop stops at its next synchronisation point, saves a
    checkpoint and exits cleanly. A context manager: the handlers are installed inside
    ``with`` and the previous ones restored after."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def install(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            # A second Ctrl-C: the user does not want to wait (SIGTERM may come twice from a
            # scheduler and its launcher, so only SIGINT escalates).
            log.warning("second SIGINT: stopping now, without a checkpoint")
            raise KeyboardInterrupt
        self.requested = True
        log.warning("received %s: stopping at the next log point (at most train.log_every "
                    "steps), saving a checkpoint, then exiting (Ctrl-C again: at once)",
                    signal.Signals(signum).name)

    def uninstall(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __enter__(self):
        self.install()
        return self

    def __exit__(self, *exc):
        self.uninstall()


class Watchdog(threading.Thread):
    """Abort the process when no step finished for ``timeout`` seconds (a stuck peer or
    input): a job never hangs silently. A context manager: it watches inside ``with``."""

    def __init__(self, timeout: float):
        super().__init__(daemon=True)
        self.timeout = timeout
        self.last = time.monotonic()
        self._halt = threading.Event()

    def beat(self):
        self.last = time.monotonic()

    def run(self):
        while not self._halt.wait(min(10.0, self.timeout / 4)):
            if time.monotonic() - self.last > self.timeout:
                log.error("no training step finished for %.0f s: a worker is stuck or dead; "
                          "aborting the job (resume restarts from the last checkpoint)",
                          self.timeout)
                logging.shutdown()
                os._exit(3)

    def stop(self):
        self._halt.set()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
