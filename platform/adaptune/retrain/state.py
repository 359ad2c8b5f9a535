"""What a retrain keeps on storage, under `<storage_path>/retrain/<registered model>/`:
lock                      who is retraining now (renewed while it runs; a crashed run's lock expires)
history.jsonl             one line per retrain that trained: its drop, snapshots, scores and decision
snapshots/<digest>/       a copy of each drop, as it was when trained on
training/<key>/           the training set of a retrain (copies of its snapshots, one folder each)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adaptune.config import SweepConfig, resolve_path
from adaptune.data import data_digest, find_data_files, load_records
from adaptune.errors import DataError, Problem

log = logging.getLogger("adaptune")

# --------------------------------------------------------------------------------------------------
# The lock: one retrain per registered model at a time
# --------------------------------------------------------------------------------------------------


class RetrainBusy(RuntimeError):
    """Another retrain of the same registered model holds the lock."""


class RetrainLock:
    """An exclusive lock file (created with O_EXCL, so exactly one process gets it, also on a shared
    filesystem) that its holder renews every `ttl_s / 3` seconds. A lock not renewed for `ttl_s` belongs to a
    retrain that died and is taken over."""

    def __init__(self, path: Path, ttl_s: float, owner: dict[str, Any]):
        self.path, self.ttl_s = path, ttl_s
        self.owner = {**owner, "lock_id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError:  # being written this instant: treat as held and fresh
            return {"renewed_at": time.time()}

    def acquire(self) -> None:
        """Take the lock, or raise RetrainBusy naming the retrain that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            now = time.time()
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = self.holder()
                if held is None:
                    continue  # released meanwhile
                age = now - float(held.get("renewed_at", 0))
                if age < self.ttl_s:
                    raise RetrainBusy(self._busy_message(held, age)) from None
                log.warning(
                    "retrain: taking over the lock of %s (not renewed for %.0f s; its retrain died)",
                    held.get("retrain_id", "?"),
                    age,
                )
                try:  # one process wins the rename; the others see the fresh lock next round
                    os.rename(self.path, self.path.with_name(f"{self.path.name}.expired-{uuid.uuid4().hex[:8]}"))
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({**self.owner, "started_at": now, "renewed_at": now}, f)
            self._renewer = threading.Thread(target=self._renew, name="retrain-lock", daemon=True)
            self._renewer.start()
            return
        raise RetrainBusy(f"could not take the retrain lock {self.path}; another retrain is starting")

    def _busy_message(self, held: dict[str, Any], age: float) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(held.get("started_at", 0))))
        return (
            f"another retrain of {self.owner['registered_model']} is running: {held.get('retrain_id', '?')} "
            f"(pid {held.get('pid', '?')} on {held.get('host', '?')}, started {started}, lock renewed {age:.0f} s "
            f"ago: {self.path}). Wait for it to end; if it crashed, its lock expires {self.ttl_s / 60:g} min after "
            "its last renewal"
        )

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            held = self.holder()
            if not held or held.get("lock_id") != self.owner["lock_id"]:
                log.error("retrain: lost the lock %s to another retrain", self.path)
                return
            tmp = self.path.with_name(f".{self.path.name}.{self.owner['lock_id']}")
            tmp.write_text(json.dumps({**held, "renewed_at": time.time()}), encoding="utf-8")
            os.replace(tmp, self.path)

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        held = self.holder()
        if held and held.get("lock_id") == self.owner["lock_id"]:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RetrainLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


# --------------------------------------------------------------------------------------------------
# Data: drops, snapshots, training sets, history
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """One drop of company data as trained on: its content digest, rows and where the copy is."""

    digest: str
    rows: int
    source: str  # where the drop was read from
    path: str  # the copy under snapshots/


def newest_drop(root: str) -> str:
    """The newest dated drop directory (`YYYY-MM-DD`, or any name that sorts by date) under `root`."""
    base = resolve_path(root)
    drops = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")) if base.is_dir() else []
    if not drops:
        raise DataError(
            Problem(root, "--newest-drop", "no drop directories here", "Put each drop in a dated folder (2026-11-22/)")
        )
    return str(drops[-1])


def read_drop(path: str) -> tuple[list[Path], str]:
    """The drop's data files and their content digest."""
    files = find_data_files(path, "--data")
    return files, data_digest(files)


def snapshot_drop(path: str, files: list[Path], digest: str, cfg: SweepConfig, store: Path) -> Snapshot:
    """Check every row of the drop (`read_drop`) and keep a copy of it under `store/<digest>/` (once per
    digest)."""
    records, problems = load_records(files, cfg.data)
    if problems:
        raise DataError(problems)
    target = store / digest[:16]
    if not target.is_dir():
        store.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:16]}-", dir=store))
        for i, f in enumerate(files):  # numbered: the copy reads back in the drop's order
            shutil.copy2(f, tmp / f"{i:04d}-{f.name}")
        try:
            os.rename(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # the same drop was copied meanwhile; identical
    return Snapshot(digest=digest, rows=len(records), source=str(path), path=str(target))


def training_set(snapshots: list[Snapshot], root: Path) -> Path:
    """A directory holding the snapshots' files, one numbered folder per snapshot, for `data.path`."""
    key = hashlib.sha256("\n".join(s.digest for s in snapshots).encode()).hexdigest()[:16]
    target = root / key
    if not target.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        for i, snap in enumerate(snapshots):
            folder = tmp / f"{i:03d}-{snap.digest[:12]}"
            shutil.copytree(snap.path, folder)
        try:
            os.rename(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass
class Round:
    """One line of history.jsonl: a retrain that trained."""

    retrain_id: str
    drop: Snapshot
    snapshots: list[Snapshot]
    champion_before: str | None
    challenger: str
    decision: str
    champion_after: str
    scores: dict[str, float] = field(default_factory=dict)
    run_id: str = ""
    finished_at: str = ""
    guards: dict[str, dict[str, float]] = field(default_factory=dict)  # guard set path -> scores by name

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Round:
        return cls(
            **{
                **d,
                "drop": Snapshot(**d["drop"]),
                "snapshots": [Snapshot(**s) for s in d["snapshots"]],
            }
        )


def read_history(path: Path) -> list[Round]:
    if not path.is_file():
        return []
    return [Round.from_dict(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line]


def append_history(path: Path, entry: Round) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(asdict(entry)) + "\n")


def champion_snapshots(history: list[Round], champion: str | None) -> list[Snapshot]:
    """The data the champion was trained on, when a retrain made it (else nothing is known to combine with)."""
    for entry in reversed(history):
        if champion is not None and entry.challenger == champion:
            return entry.snapshots
    return []
