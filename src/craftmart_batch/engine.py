"""Where a run's partitions are computed: in this process, or as Ray tasks.

The coordinator (the ``craftmart-batch`` process) keeps the lock, the plan, the run's
timestamp and its one transaction; an engine only computes partitions
(``stages.compute_partition``: pull from the sources, validate, reduce) and hands the
results back in partition order, for the coordinator to write. Nothing a task computes
reaches the warehouse except through the coordinator's transaction, so a task, a node
or the coordinator lost at any instant leaves nothing visible.

- ``local``: one partition after the other, here.
- ``ray``: each partition is a Ray task (``ray.remote``) that pulls its own rows from
  the sources with connectorx. A task lost with its worker or node is retried by Ray
  (``run.ray_task_retries``); one that still fails stops the run with one line naming
  the partition. At most as many tasks as the cluster has CPUs run ahead of the one
  the coordinator is writing, so finished results wait in Ray's object store, not here.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections import deque
from collections.abc import Generator, Sequence
from typing import Any, Protocol

from .config import RAY, Settings
from .errors import CraftmartError
from .stages import PartitionResult, PartitionWork, compute_partition

logger = logging.getLogger(__name__)

#: The Ray release the ``ray`` extra pins (pyproject.toml).
RAY_VERSION = "2.60.0"


class Engine(Protocol):
    name: str

    def map(self, works: Sequence[PartitionWork]) -> Generator[PartitionResult, None, None]:
        """Each partition's result, in the order of ``works``."""
        ...

    def close(self) -> None: ...


class LocalEngine:
    """Every partition in this process, one after the other."""

    name = "local"

    def map(self, works: Sequence[PartitionWork]) -> Generator[PartitionResult, None, None]:
        for work in works:
            yield compute_partition(work)

    def close(self) -> None:
        pass


def open_engine(settings: Settings) -> Engine:
    if settings.engine == RAY:
        return RayEngine.connect(settings.ray_address, settings.ray_task_retries)
    return LocalEngine()


class RayEngine:
    """Partitions as Ray tasks on a cluster (``address``), or on a Ray started here."""

    name = RAY

    def __init__(self, ray: Any, task: Any, started_here: bool, window: int) -> None:
        self._ray = ray
        self._task = task
        self._started_here = started_here
        self._window = window

    @classmethod
    def connect(cls, address: str, retries: int) -> RayEngine:
        try:
            import ray
        except ImportError:
            raise CraftmartError(
                "run.engine = \"ray\" needs Ray: pip install 'craftmart-batch[ray]'") from None
        started_here = False
        if not ray.is_initialized():
            _probe(address)
            # Ray notes on stderr that the Ray it starts authenticates callers with a
            # token (its default): true, and not the user's concern mid-run
            logging.getLogger("ray._private.authentication.authentication_token_setup"
                              ).setLevel(logging.ERROR)
            # The run's own handlers of the stop signals (``_signals``: cancel, roll
            # back, one line) stay in charge. Ray's core would install a native one of
            # SIGTERM (a stack dump, then an abort) over them: it is not installed in
            # this process (Ray reads this flag as it connects; its workers keep
            # theirs). ``ray.init`` also sets a Python handler of SIGTERM (exit at
            # once): the previous ones are put back.
            from ray._private import ray_constants

            ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
            saved = _stop_handlers()
            try:
                # the workers log to files of their own, not to this terminal. No
                # address: a Ray of the run's own ("local"), never one that happens to
                # run on this machine (which Ray would otherwise join: the last one
                # `ray start` or a test cluster recorded in /tmp/ray)
                ray.init(address=address or "local", include_dashboard=False,
                         log_to_driver=False, logging_level=logging.ERROR,
                         configure_logging=False)
            except Exception as exc:  # ConnectionError, a version mismatch...
                where = f"at {address}" if address else "here"
                raise CraftmartError(f"cannot start or reach a Ray cluster {where}:"
                                     f" {_first_line(exc)}") from None
            finally:
                _restore(saved)
            started_here = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        task = ray.remote(max_retries=retries, num_cpus=1)(compute_partition)
        return cls(ray, task, started_here, window=max(1, cpus))

    def map(self, works: Sequence[PartitionWork]) -> Generator[PartitionResult, None, None]:
        pending: deque[tuple[PartitionWork, Any]] = deque()
        queue = list(works)
        try:
            while queue or pending:
                while queue and len(pending) < self._window:
                    work = queue.pop(0)
                    pending.append((work, self._task.remote(work)))
                work, ref = pending.popleft()
                try:
                    result = self._ray.get(ref)
                except self._ray.exceptions.RayError as exc:
                    raise _task_error(work, exc) from None
                yield result
        finally:  # the run failed or stopped: the tasks ahead of it are not wanted
            for _, other in pending:
                self._ray.cancel(other, force=True)

    def close(self) -> None:
        if self._started_here:
            self._ray.shutdown()


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _stop_handlers() -> dict[signal.Signals, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.getsignal(signum) for signum in _STOP_SIGNALS}


def _restore(saved: dict[signal.Signals, Any]) -> None:
    for signum, handler in saved.items():
        if handler is not None:
            signal.signal(signum, handler)


def _probe(address: str) -> None:
    """Refuse at once a cluster address (``host:port`` of its head) that nothing
    answers at, which Ray would otherwise retry for minutes."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return  # "", "auto", "ray://...": Ray's own checks are quick
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise CraftmartError(f"cannot reach the Ray cluster at {address}:"
                             f" {exc.strerror or exc}") from None


def _task_error(work: PartitionWork, exc: BaseException) -> CraftmartError:
    """One line naming the partition and the cause: the task's own error (a source
    that cannot be read...) as it raised it, or what Ray says of a lost worker."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, CraftmartError):
        what = str(cause)
    elif cause is not None:
        what = f"{type(cause).__name__}: {_first_line(cause)}"
    else:
        what = f"{type(exc).__name__}: {_first_line(exc)}"
    return CraftmartError(
        f"partition {work.partition + 1}/{work.partitions} failed on Ray: {what};"
        " nothing was published")


def _first_line(exc: BaseException) -> str:
    from ._database import first_line, redact

    return first_line(redact(str(exc))) or type(exc).__name__
