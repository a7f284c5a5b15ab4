"""The partitions as Ray tasks (`run --engine ray`): the same warehouse as the local
engine, row for row; a lost worker is retried by Ray, and a run that still cannot
finish, or whose coordinator is killed, publishes nothing.

Tasks run on a Ray started in this process with two CPUs, and on a two-node cluster
simulated with ``ray.cluster_utils.Cluster`` (reached by `craftmart-batch` run in a
subprocess, as a user would). Workers are found by the title Ray gives a process
while it runs a task (``ray::compute_partition``); a partition's pull is held on a
lock of a table source2 joins (which only pulls read on a first load or `--full`, not
the run's plan) so that the kill lands mid-task.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import add_order, create_sources, query, run, warehouse_state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_incremental import (
    STEPS,
    _apply,
    assert_incremental_is_full,
    copy_sources,
    new_orders,
)
from test_partitions import assert_same, sync_sources, twins
from test_reliability import CliRun, change_sources, generate_orders

from craftmart_batch._database import Database, connect
from craftmart_batch._sql import execute
from craftmart_batch.engine import RayEngine
from craftmart_batch.errors import CraftmartError

ray = pytest.importorskip("ray")

# one test process runs them all (make test's -n): a Ray of their own at a time, and
# the tasks they kill are found among every process of the machine
pytestmark = pytest.mark.xdist_group("ray")

TASK_TITLE = b"ray::compute_partition"


@pytest.fixture(scope="module")
def ray_here() -> Iterator[None]:
    """A Ray with two CPUs in this process, which every in-process run then uses: a new
    one ("local"), whatever other Ray this machine runs or last recorded."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()


def task_pids(under: int | None = None) -> list[int]:
    """The processes running a partition's task right now (descendants of the process
    ``under`` only, when given: not a task of another Ray still ending)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read().startswith(TASK_TITLE):
                        found.append(int(entry))
            except OSError:
                continue
    return [pid for pid in found if under is None or under in _ancestors(pid)]


def _ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat") as f:
                # the parent is the 2nd field after the command's closing parenthesis
                pid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            break
        chain.append(pid)
    return chain


def wait_for(what: Callable[[], Any], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := what()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return found


@contextmanager
def source_locked(db: Database) -> Iterator[Callable[[], None]]:
    """source2's products locked by another session: a pull of every row waits (the
    plan of a first load or `--full` does not read them). Yields the release."""
    conn = connect(db)
    execute(conn, "lock table source2.craft_market_masters_products in access exclusive mode")
    released = threading.Event()

    def release() -> None:
        if not released.is_set():
            released.set()
            conn.rollback()

    try:
        yield release
    finally:
        release()
        conn.close()


class TaskKiller(threading.Thread):
    """In the background: with the source locked, SIGKILL the first task process found
    (``killed``), then release the lock. Made once the lock is held: a run started
    after it cannot read the source before the task is killed."""

    def __init__(self, db: Database) -> None:
        super().__init__(daemon=True)
        self.db = db
        self.killed: list[int] = []
        self.locked = threading.Event()
        self.start()
        assert self.locked.wait(timeout=60), "the source was not locked"

    def run(self) -> None:
        with source_locked(self.db) as release:
            self.locked.set()
            victim = wait_for(task_pids)[0]
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: victim not in task_pids())
            self.killed.append(victim)
            release()

    def done(self) -> list[int]:
        self.join(timeout=60)
        assert not self.is_alive()
        return self.killed


# --------------------------------------------------------------------------- same answer


def test_ray_tasks_give_the_warehouse_of_the_local_engine(
    ray_here: None, make_db: Callable[[], Database],
) -> None:
    """Generated sources (every kind of invalid row planted) loaded, changed in rounds
    (the last one falling back to pulling everything) and rebuilt with `--full`: after
    every run, three Ray partitions equal the local engine's, counts and rows."""
    local = make_db()
    generate_orders(local, 6_000, seed=21)
    (by_ray,) = twins(make_db, local, 1)

    def both(when: str, **options: Any) -> None:
        expected = run(local, partitions=3, **options)
        report = run(by_ray, partitions=3, engine="ray", **options)
        assert (expected.engine, report.engine) == ("local", "ray")
        assert report.partitions == 3
        assert report.task_peak_rss_mb > 0
        assert (report.pull, report.dwh, report.sources, report.quarantine) == (
            expected.pull, expected.dwh, expected.sources, expected.quarantine), when
        assert_same(by_ray, local, when)

    both("first load")
    for round_, changes in enumerate((40, 600, 7_000), start=1):
        for db in (local, by_ray):
            change_sources(db, changes, seed=200 + round_)
        both(f"after {changes} changes")
    both("run --full", full=True)


@pytest.mark.slow
@settings(max_examples=3, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(initial=st.lists(new_orders(), min_size=2, max_size=8),
       steps=st.lists(STEPS, min_size=3, max_size=6),
       partitions=st.sampled_from([1, 2, 3]))
def test_any_sequence_of_changes_on_ray_equals_the_local_engine_and_the_oracle(
    ray_here: None, make_db: Callable[[], Database],
    initial: list[tuple[str, dict[str, Any]]], steps: list[tuple[Any, ...]], partitions: int,
) -> None:
    """Random sources and change rounds (inserts, deletes, updates, rows turning
    invalid or valid, repeated keys, `--full`): Ray tasks equal the local engine after
    every run; the local one equals the SQL oracle and a full rebuild."""
    local, by_ray = make_db(), make_db()
    create_sources(local)
    orders = [(source, add_order(local, source, **fields)) for source, fields in initial]
    copy_sources(local, by_ray)
    run(local)
    run(by_ray, engine="ray", partitions=partitions)
    for step in steps:
        _apply(local, orders, step)
        sync_sources(local, by_ray)
        full = step[0] == "full run"
        run(local, full=full)
        run(by_ray, engine="ray", partitions=partitions, full=full)
        assert_same(by_ray, local, str(step))
    assert_incremental_is_full(local, make_db)


# --------------------------------------------------------------------------- lost workers


def test_a_worker_killed_mid_task_is_retried_and_the_run_finishes(
    ray_here: None, make_db: Callable[[], Database],
) -> None:
    local = make_db()
    generate_orders(local, 2_000, seed=5)
    (by_ray,) = twins(make_db, local, 1)
    run(local, partitions=2)
    killer = TaskKiller(by_ray)
    report = run(by_ray, partitions=2, engine="ray")
    assert len(killer.done()) == 1
    assert report.engine == "ray"
    assert_same(by_ray, local, "after a worker was killed")


def test_a_task_that_cannot_finish_publishes_nothing_and_the_next_run_succeeds(
    ray_here: None, make_db: Callable[[], Database], tmp_path: Path,
) -> None:
    """Without retries, a killed worker ends the run: one line naming the partition,
    the warehouse as it was; the next run loads everything."""
    local = make_db()
    generate_orders(local, 2_000, seed=6)
    (by_ray,) = twins(make_db, local, 1)
    run(local)
    run(by_ray, engine="ray")
    for db in (local, by_ray):
        change_sources(db, 30, seed=7)
    before = warehouse_state(by_ray)
    no_retries = tmp_path / "config.toml"
    no_retries.write_text('[run]\nengine = "ray"\nray_task_retries = 0\n')
    killer = TaskKiller(by_ray)
    with pytest.raises(CraftmartError) as failed:
        run(by_ray, config=no_retries, partitions=1, full=True)
    assert len(killer.done()) == 1
    message = str(failed.value)
    assert message.startswith("partition 1/1 failed on Ray:"), message
    assert "\n" not in message and "nothing was published" in message
    assert warehouse_state(by_ray) == before
    recorded = query(by_ray, "select stats->>'error' from craftmart.runs"
                             " where outcome = 'failed'").item()
    assert recorded == message
    run(local)
    run(by_ray, engine="ray")
    assert_same(by_ray, local, "the run after")


# --------------------------------------------------------------------------- the coordinator


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_the_coordinator_killed_while_its_tasks_run_leaves_nothing_visible(
    make_db: Callable[[], Database], tmp_path: Path, signum: int,
) -> None:
    """`craftmart-batch run --engine ray --full` (a Ray of its own) SIGKILLed or
    SIGTERMed while a task pulls: the warehouse is as it was, no task of it is left
    running, and the next run succeeds. SIGTERM ends it as on the local engine (Ray's
    own handler of it is not left in place): one line, exit 143."""
    db = make_db()
    generate_orders(db, 2_000, seed=8)
    run(db)
    change_sources(db, 30, seed=9)
    before = warehouse_state(db)
    with source_locked(db) as release:
        coordinator = CliRun(db, "--engine", "ray", "--full", cwd=tmp_path)
        wait_for(lambda: task_pids(under=coordinator.proc.pid))
        coordinator.signal(signum)
        if signum == signal.SIGKILL:
            assert coordinator.finish() == -signal.SIGKILL
        else:
            assert coordinator.finish() == 143, coordinator.stderr
            assert coordinator.stderr.rstrip().splitlines()[-1] == (
                "craftmart-batch: interrupted by SIGTERM; nothing was committed")
        release()
    assert warehouse_state(db) == before
    # the Ray the coordinator started goes with it, its tasks too
    wait_for(lambda: not task_pids(), timeout=60)
    report = run(db)
    assert report.dwh["f_order"]["inserted"] + report.dwh["f_order"]["updated"] > 0


#: Connects the engine to a Ray of its own, then prints the native handlers of SIGTERM
#: and SIGTRAP before and after, as the kernel holds them.
NATIVE_HANDLERS = """
import ctypes, signal
from craftmart_batch.engine import RayEngine

libc = ctypes.CDLL(None)
def native(signum):
    action = ctypes.create_string_buffer(256)  # struct sigaction: the handler comes first
    libc.sigaction(signum, None, action)
    return int.from_bytes(action.raw[:8], "little")

signal.signal(signal.SIGTERM, lambda *_: None)
before = native(signal.SIGTERM), native(signal.SIGTRAP)
engine = RayEngine.connect("", 0)
after = native(signal.SIGTERM), native(signal.SIGTRAP)
engine.close()
print(before == after, before[1] == 0)
"""


def test_the_coordinator_keeps_its_own_native_signal_handlers() -> None:
    """The engine's Ray installs no native failure handler in the coordinator: Ray's
    would dump a stack and abort on SIGTERM (exit -6), where the run ends with its one
    line and 143. SIGTRAP shows it: Ray's handler takes it, and nothing else here does
    (Python's fault handler, which Ray enables, takes SIGABRT and SIGSEGV)."""
    proc = subprocess.run([sys.executable, "-c", NATIVE_HANDLERS], capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["True", "True"]


# --------------------------------------------------------------------------- two nodes


@pytest.fixture
def two_nodes() -> Iterator[Any]:
    """A Ray cluster of two nodes with a CPU each, on this machine (no Ray in this
    process: the runs reach it by address, from a subprocess)."""
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        yield cluster
    finally:
        cluster.shutdown()


def _cli_run(db: Database, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "craftmart_batch.cli", "run", "--dsn", db.libpq_uri(),
         "--json", *args],
        capture_output=True, text=True, cwd=cwd, timeout=600, check=False)


def test_a_two_node_cluster_gives_the_warehouse_of_the_local_engine_and_survives_a_node(
    two_nodes: Any, make_db: Callable[[], Database], tmp_path: Path,
) -> None:
    """Four partitions on two nodes, reached with --ray-address: the local engine's
    warehouse. Then, in a `--full` run, a node lost while its task runs: Ray runs the
    task again on the node left, and the run finishes with the same answer."""
    import json

    local = make_db()
    generate_orders(local, 6_000, seed=12)
    (by_ray,) = twins(make_db, local, 1)
    address = two_nodes.address
    run(local, partitions=4)
    done = _cli_run(by_ray, tmp_path, "--engine", "ray", "--ray-address", address,
                    "--partitions", "4")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["engine"] == "ray"
    assert_same(by_ray, local, "first load on two nodes")

    for db in (local, by_ray):
        change_sources(db, 200, seed=13)
    run(local, partitions=4, full=True)
    workers = [node for node in two_nodes.list_all_nodes() if not node.head]
    with source_locked(by_ray) as release:
        proc = subprocess.Popen(
            [sys.executable, "-m", "craftmart_batch.cli", "run", "--dsn", by_ray.libpq_uri(),
             "--engine", "ray", "--ray-address", address, "--partitions", "4", "--full"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: len(task_pids()) == 2)  # one task on each node, both waiting
        two_nodes.remove_node(workers[0])
        release()
        _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert_same(by_ray, local, "after a node was lost")

    # the cluster runs and is recorded in /tmp/ray as this machine's latest: a run
    # with no address still starts a Ray of its own (one node), not joins it
    engine = RayEngine.connect("", retries=0)
    try:
        assert [node["Alive"] for node in ray.nodes()] == [True]
    finally:
        engine.close()
    assert not ray.is_initialized()


# --------------------------------------------------------------------------- refusals


def test_an_unknown_engine_or_an_unreachable_cluster_is_one_line_and_exit_2(
    make_db: Callable[[], Database], tmp_path: Path,
) -> None:
    db = make_db()
    create_sources(db)
    add_order(db, "source1")
    run(db)
    add_order(db, "source2")
    before = warehouse_state(db)
    unknown = _cli_run(db, tmp_path, "--engine", "spark")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines()[-1] == (
        "craftmart-batch: error: run.engine must be one of 'local', 'ray', not 'spark'")
    nobody = _cli_run(db, tmp_path, "--engine", "ray", "--ray-address", "127.0.0.1:1")
    assert nobody.returncode == 2, nobody.stderr
    assert nobody.stderr.strip().splitlines()[-1] == (
        "craftmart-batch: error: cannot reach the Ray cluster at 127.0.0.1:1:"
        " Connection refused")
    assert "Traceback" not in nobody.stderr
    assert warehouse_state(db) == before
