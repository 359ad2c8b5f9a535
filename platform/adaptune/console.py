"""The user's terminal during a run: adaptune's own lines, a live progress display when it is a terminal
(plain lines when it is not: `ray job logs`, a pipe, a CI log), then the results.

Everything else the run's processes print (Ray's workers and core, DeepSpeed, transformers, torch, their
warnings and progress bars) goes to a log file under the run's storage, named at the start: from `capture` on,
this process's file descriptors 1 and 2 point at that file, so whatever writes there (Python, C++, a child
process, Ray's output forwarded from the workers) lands in it, and adaptune writes to the terminal through
descriptors it kept. `--verbose` shows the log live as well.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console as RichConsole
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from adaptune.redaction import RedactingFilter

log = logging.getLogger("adaptune")
LOG_FORMAT = "adaptune: %(message)s"
TEE_CHUNK = 65536
DRAIN_S = 2.0  # at exit, how long the tee may take to copy what is left in its pipe


class Console:
    """Where adaptune's lines go: the terminal (or whatever stdout/stderr were at the start)."""

    def __init__(self) -> None:
        self.verbose = False
        self.log_path: Path | None = None
        self._out: TextIO | None = None  # the terminal's stdout and stderr, once the run's output is captured
        self._err: TextIO | None = None
        self._progress: Any = None  # the rich Progress while a display is live

    def __reduce__(self) -> tuple[Callable[[], Console], tuple[()]]:
        """Pickled (in a callback Tune saves, a closure cloudpickle ships) as a reference to the process's one
        console, never with the terminal's file objects: unpickled, it is the console of that process."""
        return _process_console, ()

    @property
    def out(self) -> TextIO:
        return self._out or sys.stdout

    @property
    def err(self) -> TextIO:
        return self._err or sys.stderr

    def live(self) -> bool:
        """Whether a live display can be drawn: captured output, not --verbose, stderr a terminal."""
        return self._err is not None and not self.verbose and self._err.isatty()

    def say(self, text: str, err: bool = False) -> None:
        """A line for the user (already masked); in the log file too once output is captured."""
        if self._out is None or not self.verbose:
            self._show(text, self.err if err else self.out)
        if self._out is not None:  # descriptors 1 and 2: the log file (and with --verbose, the terminal too)
            try:
                print(text, file=sys.stderr if err else sys.stdout, flush=True)
            except OSError:  # the log's disk is full: the terminal has the line, and the run says why
                pass

    def _show(self, text: str, stream: TextIO) -> None:
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=stream, flush=True)

    def capture(self, log_path: Path) -> None:
        """From now on, for the rest of the process, descriptors 1 and 2 write to `log_path` (appended: a
        resumed sweep continues its log) and adaptune's lines go to the terminal. Not undone: Ray's processes
        print as they shut down, after the run. A second call (a retrain's sweep) keeps the first log."""
        if self._out is not None:
            return
        log_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        self._out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
        self._err = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
        if self.verbose:  # each descriptor through a pipe into the log file and the terminal's same stream
            tees = []
            for target, terminal in ((1, self._out), (2, self._err)):
                read, write = os.pipe()
                tee = threading.Thread(target=_tee, args=(read, fd, terminal.fileno()), name="log-tee", daemon=True)
                tee.start()
                os.dup2(write, target)
                os.close(write)
                tees.append(tee)
            atexit.register(_drain, tees)
        else:
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
            # adaptune's log lines to the terminal; the root handler (on descriptor 2) puts them in the log too
            log.addHandler(_TerminalHandler(self))
        self.log_path = log_path
        log.info("log %s: Ray's, DeepSpeed's and the libraries' output (--verbose shows it here too)", log_path)

    @contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Callable[..., None]]:
        """A live progress line for a long step (spinner, bar and estimate when `total` is known, elapsed
        time) on a terminal; yields `update(**fields)` (rich's: completed=, advance=, description=). Off a
        terminal it shows nothing: the caller's own log lines say what happens."""
        if not self.live() or self._progress is not None:
            yield lambda **_: None
            return
        columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}", markup=False)]
        if total:
            columns += [BarColumn(bar_width=20), MofNCompleteColumn(), TextColumn("left"), TimeRemainingColumn()]
        columns += [TextColumn("elapsed"), TimeElapsedColumn()]
        progress = Progress(*columns, console=RichConsole(file=self._err), transient=True)
        task = progress.add_task(description, total=total)
        self._progress = progress
        try:
            with progress:
                yield lambda **fields: progress.update(task, **fields)
        finally:
            self._progress = None


class _TerminalHandler(logging.Handler):
    """adaptune's log records, as one line each on the terminal (above a live display)."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console
        self.setFormatter(logging.Formatter(LOG_FORMAT))
        self.addFilter(RedactingFilter())  # a URI's password, a credential's value

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console._show(self.format(record), self.console.err)
        except Exception:  # a display problem must not end the run
            self.handleError(record)


def _drain(tees: list[threading.Thread]) -> None:
    """At exit: let the tees copy what is still in their pipes (this process's ends closed; a child process that
    inherited one may keep it open, hence the timeout)."""
    sys.stdout.flush()
    sys.stderr.flush()
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)
    deadline = time.monotonic() + DRAIN_S
    for tee in tees:
        tee.join(timeout=max(0.0, deadline - time.monotonic()))


def _tee(read: int, *targets: int) -> None:
    """Copy a pipe into each target descriptor until the pipe closes."""
    while chunk := os.read(read, TEE_CHUNK):
        for fd in targets:
            try:
                os.write(fd, chunk)
            except OSError:
                continue


def _process_console() -> Console:
    return console


console = Console()  # the process's one terminal
