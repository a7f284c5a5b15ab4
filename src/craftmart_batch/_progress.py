"""Progress of long commands on stderr: a rich spinner and bar on a terminal, plain lines
otherwise (logs, cron, pipes)."""

from __future__ import annotations

import atexit
import logging
import sys
import time
from typing import Any, TextIO

logger = logging.getLogger(__name__)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream is no terminal
        return False


def _console(stream: TextIO) -> Any:
    from rich.console import Console

    return Console(file=stream, highlight=False)


class StageProgress:
    """Run stages on stderr, each closed with its duration.

    Not a terminal: one plain line per stage (``  pull ... 1.2s``), the format logs
    and scripts read. A terminal: a spinner on the running stage and a line per
    finished stage. The banner waits for the first stage, so a run that cannot start
    (unreachable database, broken source) prints nothing but its one error line.
    """

    def __init__(
        self, enabled: bool = True, banner: str | None = None, stream: TextIO | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.banner = banner
        self.current: str | None = None
        self.started = 0.0
        self.console = _console(self.stream) if enabled and _is_terminal(self.stream) else None
        self._status: Any = None

    def __call__(self, stage: str) -> None:
        self.done()
        if self.enabled and self.banner is not None:
            # one write per line: an interrupt between a text and its newline would
            # leave the command's last line glued to it
            self._write(f"{self.banner}\n")
            self.banner = None
        self.current, self.started = stage, time.perf_counter()
        if self.console is not None:
            self._status = self.console.status(f"{stage} ...", spinner="dots")
            self._status.start()
        elif self.enabled:
            self._write(f"  {stage} ...")

    def done(self) -> None:
        """Close the current stage (if any) with its duration."""
        if self.current is not None and self.enabled:
            elapsed = time.perf_counter() - self.started
            if self.console is not None:
                self._stop()
                # Called from the command's `finally`: an exception on its way out means
                # this stage failed, and a green tick would say otherwise.
                mark = "[red]✗[/red]" if sys.exc_info()[0] is not None else "[green]✓[/green]"
                self.console.print(f"  {mark} {self.current} [dim]{elapsed:.1f}s[/dim]")
            else:
                self._write(f" {elapsed:.1f}s\n")
        self._stop()
        self.current = None

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


class GenerateProgress:
    """``progress(stage, fraction_done)`` of source generation.

    Not a terminal: a line at each quarter of a stage. A terminal: one progress bar
    whose label is the current stage; it closes when the generator reports ``done``.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.last: dict[str, int] = {}
        self._bar: Any = None
        self._task: Any = None
        if _is_terminal(self.stream):
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeElapsedColumn

            self._bar = Progress(
                "  [progress.description]{task.description}", BarColumn(),
                TaskProgressColumn(), TimeElapsedColumn(),
                console=_console(self.stream), transient=False,
            )
            self._task = self._bar.add_task("generating", total=1.0)
            self._bar.start()
            atexit.register(self.close)  # a failed generation must not leave the bar running

    def __call__(self, stage: str, fraction: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=stage, completed=min(fraction, 1.0))
            if stage == "done":
                self.close()
            return
        step = int(fraction * 4)
        if self.last.get(stage) != step:
            self.last[stage] = step
            print(f"  {stage}: {fraction:.0%}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
