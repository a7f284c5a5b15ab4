"""Stop signals as one clean interrupt: SIGTERM acts like Ctrl-C, even mid-statement."""

from __future__ import annotations

import _thread
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from .errors import CraftmartError

if TYPE_CHECKING:
    from ._database import Database

logger = logging.getLogger(__name__)

#: What PostgreSQL says when a statement is stopped by a cancel request.
_CANCELLED_BY_REQUEST = "canceling statement due to user request"

#: The stop signals received while ``stop_signals_interrupt`` was active, in order.
_received: list[int] = []

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: Code an interrupt must never land in: the threading module's bookkeeping, and weak
#: reference callbacks and ``__del__`` methods, where an exception is only printed
#: and lost. (Callbacks of other modules cannot be told from their frames: an
#: interrupt lost there is raised again, see ``on_unraisable``.)
_NEVER_INTERRUPTED = ("threading", "weakref", "_weakrefset")

#: Code an interrupt had better not land in: ADBC's DB-API layer keeps a statement's
#: and a result's state across several bytecodes. Not a crash, so only for so long: a
#: loop of quick statements would otherwise put the interrupt off for as long as it
#: runs (each retry tends to land just as a statement returns).
_BETTER_NOT_INTERRUPTED = ("adbc_driver_manager", "adbc_driver_postgresql")
_PUT_OFF_AT_MOST_SECONDS = 0.05

#: ...except its ``close`` methods, which an interrupt never lands in: one landing in
#: ``Cursor.close`` between the statement's release and ``_closed = True`` leaves a
#: cursor that is released again when collected ("Underflow in closing this
#: AdbcStatement", printed as it is ignored). A close is short and never loops: the
#: interrupt is raised by the ``checkpoint`` after it.
_NEVER_INTERRUPTED_IN_ADBC = ("close",)

#: While the main thread is in such code, the interrupt is retried after this long.
_RETRY_SECONDS = 0.002

#: While a stop is pending and not yet raised, statements are cancelled again this
#: often: a cancel that arrived before its statement started cancels nothing.
_RECANCEL_SECONDS = 0.5


def received() -> signal.Signals | None:
    """The first stop signal received, if any."""
    return signal.Signals(_received[0]) if _received else None


def exit_code(default: signal.Signals = signal.SIGINT) -> int:
    """The conventional exit code of a process stopped by a signal: 128 + its number."""
    return 128 + int(received() or default)


@dataclass(eq=False)
class _Watch:
    """What the active ``stop_signals_interrupt`` knows: the server backends of the
    connections opened inside it, and whether it has raised its interrupt yet."""

    #: (database, backend pid, backend start as text) of each connection opened inside.
    backends: list[tuple[Database, int, str]] = field(default_factory=list)
    #: The stop signals recorded in ``_received`` (by the watcher or the handler,
    #: whichever sees one first).
    seen: set[int] = field(default_factory=set)
    #: Set once ``KeyboardInterrupt`` has been raised (or may no longer be).
    done: bool = False
    #: The ``KeyboardInterrupt`` the handler raised last, and the signal it stands for.
    raised: BaseException | None = None
    raised_for: int = signal.SIGINT
    #: The pending retry of an interrupt put off (see ``_BETTER_NOT_INTERRUPTED``).
    retry: threading.Timer | None = None
    #: When the first stop signal was handled (the interrupt is put off from there).
    first_put_off: float | None = None
    #: ADBC's own ``_blocking_call``, while it is replaced.
    adbc_blocking_call: Any = None


_active: _Watch | None = None


def checkpoint() -> None:
    """Raise the interrupt of a stop signal that was put off while ADBC ran, now that the
    main thread is back in the project's own code (called after each statement)."""
    watch = _active
    if (watch is not None and watch.seen and not watch.done
            and threading.current_thread() is threading.main_thread()):
        watch.done = True
        raise KeyboardInterrupt


def _call_directly(func: Callable[..., Any], args: Any, kwargs: Any, cancel: Any) -> Any:
    """Stands in for ADBC's ``_blocking_call``: run the call, leave SIGINT alone."""
    return func(*args, **kwargs)


def _keep_adbc_off_sigint(watch: _Watch) -> None:
    """Stop adbc_driver_manager from taking SIGINT over around its blocking calls.

    Around every call that may block (execute, fetch, read a batch...) its ``dbapi``
    module swaps Python's SIGINT handler for a native one that wakes a thread of its
    own ("AdbcInterrupt"), which then calls the statement's ``cancel`` bound method
    through a pointer it holds no reference to. When SIGINT lands just as the call
    returns, the call's frame (the only owner of that bound method) is freed before
    the thread gets the GIL, and the thread calls freed memory: a segmentation fault
    (adbc-driver-manager 1.13; reproduced with a plain loop of ``execute`` +
    ``fetchone``). With ADBC's wrapper replaced by a direct call, Python's handler
    stays in place, and the watcher cancels statements itself, on another connection.
    """
    if watch.adbc_blocking_call is not None:
        return
    import adbc_driver_manager.dbapi as dbapi

    watch.adbc_blocking_call = dbapi._blocking_call
    dbapi._blocking_call = _call_directly


def _give_adbc_sigint_back(watch: _Watch) -> None:
    if watch.adbc_blocking_call is None:
        return
    import adbc_driver_manager.dbapi as dbapi

    dbapi._blocking_call = watch.adbc_blocking_call
    watch.adbc_blocking_call = None


def track_connection(db: Database, conn: Any) -> None:
    """Make a new ADBC connection's statements cancellable by a stop signal.

    Called for every connection ``_database.connect`` opens; a no-op outside
    ``stop_signals_interrupt`` or off the main thread.
    """
    watch = _active
    if watch is None or threading.current_thread() is not threading.main_thread():
        return
    _keep_adbc_off_sigint(watch)
    cur = conn.cursor()
    try:
        cur.execute("select pg_backend_pid(), backend_start::text from pg_stat_activity"
                    " where pid = pg_backend_pid()")
        row = cur.fetchone()
    finally:
        cur.close()
    if row is not None:
        watch.backends.append((db, int(row[0]), str(row[1])))


def _cancel_statements(backends: list[tuple[Database, int, str]]) -> None:
    """Ask the server to cancel what each backend is running (a no-op when idle).

    A cancel request from a connection of its own (as ``psql``'s Ctrl-C): nothing the
    main thread is using is touched. The backend start time makes sure a backend that
    has ended is never confused with a new one that got its process id.
    """
    import adbc_driver_postgresql.dbapi as adbc

    from ._database import Database

    by_database: dict[str, list[tuple[Database, int, str]]] = {}
    for backend in backends:
        by_database.setdefault(backend[0].libpq_uri(), []).append(backend)
    for group in by_database.values():
        db = Database({**group[0][0].params, "connect_timeout": "5"})
        try:
            conn = adbc.connect(db.libpq_uri(), autocommit=True)
        except Exception as exc:
            logger.debug("cannot connect to cancel statements: %s", type(exc).__name__)
            continue
        try:
            cur = conn.cursor()
            for _, pid, started in group:
                cur.execute("select pg_cancel_backend(pid) from pg_stat_activity"
                            " where pid = $1 and backend_start::text = $2",
                            parameters=(pid, started))
                cur.fetchall()
            cur.close()
        except Exception as exc:
            logger.debug("cancelling statements failed: %s", type(exc).__name__)
        finally:
            try:
                conn.close()
            except Exception:
                logger.debug("closing the cancelling connection failed", exc_info=True)


def _in_code(frame: FrameType | None, modules: tuple[str, ...], *,
             in_del: bool = False, functions: tuple[str, ...] = ()) -> bool:
    """Whether the main thread is in ``modules`` (in one of their ``functions`` only,
    when given), or in a ``__del__`` when ``in_del``."""
    while frame is not None:
        if in_del and frame.f_code.co_name == "__del__":
            return True
        if (str(frame.f_globals.get("__name__", "")).startswith(modules)
                and (not functions or frame.f_code.co_name in functions)):
            return True
        frame = frame.f_back
    return False


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """While inside, SIGINT and SIGTERM both end the command as ``KeyboardInterrupt``.

    Python runs a signal handler only between two bytecodes of the main thread, so a
    handler alone would let a long statement run to its end. A watcher thread, woken
    through Python's signal wakeup fd even while the main thread waits in native code,
    therefore asks the server to cancel whatever the connections opened inside are
    running (``pg_cancel_backend``, from a connection of its own). The main thread's
    statement then fails, or has already ended; either way the handler raises
    ``KeyboardInterrupt`` as soon as the main thread is back in Python, the run's
    transaction is rolled back when its connection closes, and the command reports
    the interruption in one line. Only the first signal raises; a second one (a
    repeated Ctrl-C) cannot break the cleanup of the first.

    Nothing but Python's handler ever sees SIGINT here: adbc_driver_manager's own
    SIGINT handling can crash the process (see ``_keep_adbc_off_sigint``).

    A ``CraftmartError`` raised because of the interruption (a cancelled statement
    surfaces as a database error) is turned back into ``KeyboardInterrupt``.
    """
    global _active
    if threading.current_thread() is not threading.main_thread() or _active is not None:
        yield
        return
    watch = _Watch()
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)

    def record(signum: int) -> None:
        if signum not in watch.seen:
            watch.seen.add(signum)
            _received.append(signum)

    def on_stop(signum: int, frame: FrameType | None) -> None:
        record(signum)
        if watch.done:
            return
        if watch.first_put_off is None:
            watch.first_put_off = time.monotonic()
        put_off = (
            # the context's own set-up or clean-up (a signal landing in its ``finally``
            # would cut the clean-up short)
            (frame is not None and frame.f_code is _OWN_CODE)
            or _in_code(frame, _NEVER_INTERRUPTED, in_del=True)
            or _in_code(frame, _BETTER_NOT_INTERRUPTED, functions=_NEVER_INTERRUPTED_IN_ADBC)
            or (time.monotonic() - watch.first_put_off < _PUT_OFF_AT_MOST_SECONDS
                and _in_code(frame, _BETTER_NOT_INTERRUPTED)))
        if put_off:
            retry_soon(signum)
            return
        watch.done = True
        watch.raised, watch.raised_for = KeyboardInterrupt(), signum
        raise watch.raised

    def retry_soon(signum: int) -> None:
        """The interrupt again in a moment, from a timer (unless one is pending)."""
        if watch.retry is None or watch.retry.finished.is_set():
            watch.retry = threading.Timer(_RETRY_SECONDS, retry_interrupt, (signum,))
            watch.retry.start()

    def retry_interrupt(signum: int) -> None:
        if not watch.done:
            _thread.interrupt_main(signal.Signals(signum))  # on_stop again, main thread

    def on_unraisable(unraisable: Any) -> None:
        # The interrupt landed where Python can only print an exception and go on (a
        # weak reference callback of any module, a native callback...): it is raised
        # again, at the next place that can take it, instead of being lost (a run
        # that had stopped listening would go on to commit).
        if unraisable.exc_value is not None and unraisable.exc_value is watch.raised:
            watch.raised = None
            if _active is watch:  # from another thread, once out of this hook
                watch.done = False
                retry_soon(watch.raised_for)
            return
        previous_unraisable(unraisable)

    def watcher_loop() -> None:
        # Python's C-level handler writes each handled signal's number to the wakeup
        # fd at once, from whatever thread the kernel picked, even while the main
        # thread is blocked in native code.
        last_cancel = -_RECANCEL_SECONDS
        while True:
            pending = bool(watch.seen) and not watch.done
            try:
                ready, _, _ = select.select([read_fd], [], [],
                                            _RECANCEL_SECONDS if pending else None)
                chunk = os.read(read_fd, 64) if ready else None
            except (OSError, ValueError):  # the fd is gone: the context has ended
                return
            if chunk == b"":  # the write end is closed: the context has ended
                return
            for number in chunk or b"":
                if number in _STOP_SIGNALS:
                    record(number)
            # at most one cancel per interval: retried interrupts trip the wakeup fd too
            due = time.monotonic() - last_cancel >= _RECANCEL_SECONDS * 0.9
            if watch.seen and not watch.done and watch.backends and due:
                last_cancel = time.monotonic()
                _cancel_statements(list(watch.backends))

    # The watcher starts before the handlers are in place: a KeyboardInterrupt inside
    # Thread.start() would leave the threading module's bookkeeping half done.
    watcher = threading.Thread(target=watcher_loop, name="craftmart-signals", daemon=True)
    watcher.start()
    previous_int = signal.getsignal(signal.SIGINT)
    previous_term = signal.getsignal(signal.SIGTERM)
    previous_fd = -1
    previous_unraisable = sys.unraisablehook
    try:
        # Installed inside the ``try``: a signal landing as soon as the first handler is
        # in place raises, and the ``finally`` still takes everything back (else the
        # context would be left active, its spent handler ignoring every later signal).
        previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGTERM, on_stop)
        sys.unraisablehook = on_unraisable
        _active = watch
        if "adbc_driver_manager.dbapi" in sys.modules:  # else as the first connection opens
            _keep_adbc_off_sigint(watch)
        yield
    except CraftmartError as exc:
        if _received or _CANCELLED_BY_REQUEST in str(exc):
            if not _received:
                _received.append(signal.SIGINT)
            raise KeyboardInterrupt from None
        raise
    finally:
        # From here on a signal is only recorded: the command has finished (a run has
        # committed), and the cleanup below must not be interrupted. Python's handlers
        # from before come back last, once nothing is left to clean up.
        watch.done = True
        _active = None
        if watch.retry is not None:
            watch.retry.cancel()
        _give_adbc_sigint_back(watch)
        signal.set_wakeup_fd(previous_fd)
        os.close(write_fd)  # ends the watcher's read
        watcher.join(timeout=6)  # a cancel connects with a 5 s timeout
        if not watcher.is_alive():  # else it may still read: leave the fd to the exit
            os.close(read_fd)
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)
        sys.unraisablehook = previous_unraisable


#: The code of ``stop_signals_interrupt`` itself (its generator's frame).
_OWN_CODE = stop_signals_interrupt.__wrapped__.__code__  # type: ignore[attr-defined]
