"""Stop signals as one clean interrupt: SIGTERM acts like Ctrl-C, even mid-statement."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from .errors import CraftmartError

logger = logging.getLogger(__name__)

#: What PostgreSQL says when a statement is stopped by a cancel request: the database
#: driver sends one when SIGINT arrives while it waits for the server.
_CANCELLED_BY_REQUEST = "canceling statement due to user request"

#: The stop signals received while ``stop_signals_interrupt`` was active, in order.
_received: list[int] = []


def received() -> signal.Signals | None:
    """The first stop signal received, if any."""
    return signal.Signals(_received[0]) if _received else None


def exit_code(default: signal.Signals = signal.SIGINT) -> int:
    """The conventional exit code of a process stopped by a signal: 128 + its number."""
    return 128 + int(received() or default)


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """While inside, SIGINT and SIGTERM both end the command as ``KeyboardInterrupt``.

    Python turns SIGINT into ``KeyboardInterrupt`` only between bytecodes; while the
    main thread waits for the database, the ADBC driver catches SIGINT and cancels the
    statement instead. SIGTERM gets neither by default: it would kill the process
    outright (the server still rolls the run back, but nothing is printed) or, with a
    Python handler, wait for the statement to end. So a watcher thread turns SIGTERM
    into a SIGINT aimed at the main thread: the statement in flight is cancelled, the
    run's transaction is rolled back when its connection closes, and the command
    reports the interruption in one line.

    A ``CraftmartError`` raised because of the interruption (a cancelled statement
    surfaces as a database error) is turned back into ``KeyboardInterrupt``.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    main_thread = threading.main_thread().ident
    assert main_thread is not None

    def watch() -> None:
        # Python's C-level handler writes each handled signal's number to the wakeup
        # fd at once, from whatever thread the kernel picked, even while the main
        # thread is blocked in native code.
        while chunk := os.read(read_fd, 64):
            for number in chunk:
                if number in (signal.SIGINT, signal.SIGTERM):
                    _received.append(number)
                if number == signal.SIGTERM:
                    signal.pthread_kill(main_thread, signal.SIGINT)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        # The watcher has already sent the SIGINT that interrupts the main thread.
        logger.debug("SIGTERM received")

    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    previous_term = signal.signal(signal.SIGTERM, on_sigterm)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    watcher = threading.Thread(target=watch, name="craftmart-signals", daemon=True)
    watcher.start()
    try:
        yield
    except CraftmartError as exc:
        if _received or _CANCELLED_BY_REQUEST in str(exc):
            if not _received:
                _received.append(signal.SIGINT)
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)
        os.close(write_fd)  # ends the watcher's read
        watcher.join(timeout=1)
        os.close(read_fd)
