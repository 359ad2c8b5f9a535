"""Ray processes for tests: `ray start` with token auth, stopping nodes and everything under them, and asking
Ray's state API which actors are alive."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def ray_env(**extra: str) -> dict[str, str]:
    """Environment for `ray start` and its clients: token auth on, as on a production cluster. `ray start`
    refuses token auth until a token exists (a local `ray.init()` creates one, `ray start` does not), so make
    ~/.ray/auth_token the way the Ray docs say to if this machine has none yet."""
    subprocess.run([RAY, "get-auth-token", "--generate"], check=True, capture_output=True, timeout=120)
    return {**os.environ, "RAY_AUTH_MODE": "token", **extra}


def stop_ray(*nodes: subprocess.Popen, address: str) -> None:
    """Stop `ray start --block` processes and every process under them (GCS, raylet, agents, workers, job
    drivers), and return only once all are gone: a Ray process left behind stalls the next Ray on this host.
    Like `ray stop`, drop the machine's record of the cluster at `address` (/tmp/ray/ray_current_cluster).

    SIGTERM asks every `ray start --block` to stop its node; the family is listed before that, since a worker
    whose raylet has exited is re-parented and no longer found under it. A node that has run Ray Train keeps
    `ray start` waiting about 30 s after SIGTERM (measured), so after a few seconds the whole family is
    terminated, then killed.
    """
    import psutil

    family: list[psutil.Process] = []
    for node in nodes:
        try:
            root = psutil.Process(node.pid)
            family += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for node in nodes:
        node.send_signal(signal.SIGTERM)
    # What outlives this (a node still waiting on its processes, a worker re-parented when its raylet exited
    # waiting for a connection that is gone) is asked to stop, then killed.
    _, alive = psutil.wait_procs(family, timeout=5)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(alive, timeout=20)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    _, alive = psutil.wait_procs(alive, timeout=30)
    assert not alive, f"Ray processes survived SIGKILL: {alive}"
    for node in nodes:
        node.wait(10)  # reap
    from ray._private.utils import get_ray_address_file

    record = Path(get_ray_address_file(None))
    if record.exists() and record.read_text().strip().endswith(f":{address.rsplit(':', 1)[-1]}"):
        record.unlink()


def alive_actors(class_name: str) -> list[int]:
    """Process ids of the live Ray actors of a class on the cluster RAY_ADDRESS names (Ray's state API).

    Asked from a fresh process: Ray reads RAY_AUTH_MODE once per process, and this one may have used Ray
    before the shared cluster set it."""
    query = (
        "import json; from ray.util.state import list_actors; "
        f"print(json.dumps([a.pid for a in list_actors(filters=[('class_name', '=', {class_name!r}), "
        "('state', '=', 'ALIVE')], timeout=60)]))"
    )
    r = subprocess.run([sys.executable, "-c", query], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])
