"""The terminal during a run (adaptune.console), in a process of its own, on a real pseudo-terminal and on a
pipe: adaptune's lines and its progress display on the terminal; what the libraries, C code and child
processes print in the log file only, unless --verbose."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .support import REPO

pytestmark = pytest.mark.unit

# A run in miniature: the output is captured, adaptune logs and shows a long step, and everything else that
# writes to the process's stdout and stderr does so the ways libraries do.
RUN = r"""
import logging, os, subprocess, sys, time, warnings
from pathlib import Path
from adaptune.console import LOG_FORMAT, console, log
logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
console.verbose = sys.argv[2] == "verbose"
console.capture(Path(sys.argv[1]))
log.info("data: 60 rows prepared")
print("(RayTrainWorker pid=123) TrainingReport(metrics={'loss': 1.0})")  # Ray's forwarded worker output
warnings.warn("`torch_dtype` is deprecated! Use `dtype` instead!", FutureWarning)
os.write(2, b"[2026-12-03 10:00:00,000 E 123 456] core_worker.cc:1: PreemptionWatcher failed\n")  # C++
subprocess.run(["echo", "a child process writes here"], check=True)
with console.task("sweep: 1 running, 2 pending", total=3) as update:
    for i in range(3):
        time.sleep(0.4)
        update(advance=1, description=f"sweep: {i + 1} ended")
        log.info("sweep: trial_%d ended", i)
console.say("winner   trial_2: eval_loss 1.2345")
"""
ENV = {**os.environ, "PYTHONPATH": str(REPO / "platform"), "COLUMNS": "120"}
NOISE = ("TrainingReport", "FutureWarning", "core_worker.cc", "a child process writes here")


def _run(tmp_path: Path, mode: str, terminal: bool) -> tuple[str, str]:
    """(what the terminal or pipe showed, the log file) of RUN."""
    log = tmp_path / "logs" / "sweep-1.log"
    env = ENV
    argv = [sys.executable, "-c", RUN, str(log), mode]
    if terminal:
        leader, follower = pty.openpty()
        proc = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=follower, env=env, close_fds=True)
        os.close(follower)
        chunks, deadline = [], time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            elif proc.poll() is not None:
                break
        proc.wait(timeout=30)
        os.close(leader)
        shown = b"".join(chunks).decode("utf-8", "replace")
    else:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        shown = done.stderr + done.stdout  # adaptune's log lines, then the results
    assert proc.returncode == 0 if terminal else True, shown
    return shown, log.read_text(encoding="utf-8")


def test_a_terminal_shows_adaptunes_lines_and_a_live_display_and_the_log_file_the_rest(tmp_path):
    shown, logged = _run(tmp_path, "quiet", terminal=True)
    assert f"adaptune: log {tmp_path / 'logs' / 'sweep-1.log'}" in shown
    assert "adaptune: data: 60 rows prepared" in shown and "adaptune: sweep: trial_2 ended" in shown
    assert "winner   trial_2: eval_loss 1.2345" in shown
    # the live display: its description, count and time columns, redrawn in place (carriage returns, cursor codes)
    assert "sweep: 1 running, 2 pending" in shown and "0/3" in shown and "elapsed" in shown and "\x1b[" in shown
    assert not [n for n in NOISE if n in shown], shown
    for text in (*NOISE, "adaptune: data: 60 rows prepared", "winner   trial_2"):
        assert text in logged, text


def test_off_a_terminal_the_lines_are_plain_and_the_noise_is_in_the_log(tmp_path):
    shown, logged = _run(tmp_path, "quiet", terminal=False)
    lines = shown.splitlines()
    assert lines[0].startswith("adaptune: log ")
    assert all(line.startswith("adaptune: ") for line in lines if not line.startswith("winner ")), lines
    assert "adaptune: sweep: trial_0 ended" in lines and "\x1b[" not in shown and "\r" not in shown
    assert all(n in logged for n in NOISE)


def test_verbose_shows_the_noise_live_and_still_logs_it(tmp_path):
    shown, logged = _run(tmp_path, "verbose", terminal=False)
    assert all(n in shown for n in NOISE) and all(n in logged for n in NOISE)
    assert shown.count("adaptune: data: 60 rows prepared") == 1  # once, not once per handler
    # what goes to stdout stays on stdout (`adaptune results --verbose > table.txt` keeps the table)
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(tmp_path / "again.log"), "verbose"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )
    assert "winner   trial_2: eval_loss 1.2345" in done.stdout.splitlines(), done.stdout
    assert "winner " not in done.stderr and "adaptune: data: 60 rows prepared" in done.stderr


def test_the_console_pickles_as_the_process_console_not_its_terminal_files(tmp_path):
    """Tune saves its callbacks (the sweep's progress display among them) and cloudpickle ships closures that
    reach the console: once output is captured it holds the terminal's files, which cannot be pickled."""
    script = (
        "import pickle, cloudpickle, sys\n"
        "from adaptune.console import console\n"
        f"console.capture(__import__('pathlib').Path({str(tmp_path / 'run.log')!r}))\n"
        "def uses_console(): return console\n"
        "data = cloudpickle.dumps(uses_console)\n"
        "assert pickle.loads(data)() is console and pickle.loads(pickle.dumps(console)) is console\n"
        "console.say('pickled')\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 0 and r.stdout == "pickled\n", r.stderr
