"""The errors a user can cause, each a list of one-line problems, and the exit codes they map to."""

from __future__ import annotations

import difflib
import errno
import os
import re
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_INVALID = 2
MAX_FIELD_CHARS = 1000  # a problem line stays readable whatever the input was


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the user's input: where, what, and how to fix it."""

    source: str  # a file path, "command line", or "cluster"
    key: str  # dotted config key, or "row 12" / "line 3" for data
    message: str  # what is wrong, with the bad value
    fix: str = ""  # how to fix it
    warning: bool = False  # worth saying before the run, but the run can go on

    def __str__(self) -> str:
        source, key, message, fix = (_one_line(str(x)) for x in (self.source, self.key, self.message, self.fix))
        where = f"{source}: {key}" if key else source
        text = f"{where}: {message}"
        if fix:
            text = f"{text}. {fix}"
        return text


def _one_line(text: str) -> str:
    """Text from the user's input as one printable line: newlines and control characters (terminal escapes
    included) shown escaped, cut to MAX_FIELD_CHARS."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= MAX_FIELD_CHARS else f"{text[: MAX_FIELD_CHARS - 3]}..."


def short_repr(value: Any) -> str:
    """repr of a value from the user's input, cut short: long strings and big or deeply nested (or
    self-referencing) structures are abbreviated rather than expanded."""
    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother, r.maxlong = 3, 80, 80, 40
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = r.maxfrozenset = r.maxdeque = r.maxarray = 8
    return r.repr(value)


class UserInputError(Exception):
    """Bad configuration or data. Carries every problem found, printed one per line, exit code 2."""

    def __init__(self, problems: list[Problem] | Problem):
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __reduce__(self):  # crosses Ray process boundaries
        return (type(self), (self.problems,))


class ConfigError(UserInputError):
    """A sweep file, cluster profile or override is invalid."""


class DataError(UserInputError):
    """The company data cannot be used as configured."""


def missing_path_hint(path: str) -> str:
    """How to fix a path that does not exist: the closest name beside it, and what is there."""
    p = Path(path).expanduser()
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        return f"{parent} does not exist either; check the path"
    names = sorted(x.name for x in parent.iterdir() if not x.name.startswith("."))
    close = difflib.get_close_matches(p.name, names, n=1)
    seen = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return (f"Did you mean {parent / close[0]}? " if close else "") + f"{parent} has: {seen or 'nothing'}"


class StorageError(RuntimeError):
    """The storage path filled up or stopped being writable while a run was writing to it."""


NEARLY_FULL_BYTES = 64 * 2**20


def storage_failure(e: BaseException, storage: str, resume: str = "") -> StorageError | None:
    """A StorageError naming `storage` when `e` (or what it wraps: Ray passes worker errors on as text) failed
    on a full, read-only or unwritable filesystem and the storage path's filesystem is in that state now (a
    full /tmp elsewhere is not blamed on storage); None for any other failure."""
    seen, texts = set(), []
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        texts.append(f"[Errno {e.errno}] {e}" if isinstance(e, OSError) else str(e))
        e = e.__cause__ or e.__context__ or getattr(e, "cause", None)
    text = "\n".join(texts)
    codes = {int(c) for c in re.findall(r"\[errno (\d+)\]", text, flags=re.IGNORECASE)}
    probe = Path(os.path.expanduser(storage)).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except OSError:
        return None
    free = st.f_bavail * st.f_frsize
    if errno.ENOSPC in codes and free < NEARLY_FULL_BYTES:
        size = st.f_blocks * st.f_frsize / 2**20
        what = f"is full (No space left on device; {free / 2**20:.1f} MiB of {size:.0f} MiB free)"
        fix = "Free space there, or give storage_path a larger volume"
    elif errno.EDQUOT in codes and str(probe) in text:
        what, fix = "is over its disk quota", "Raise the quota or free space there"
    elif errno.EROFS in codes and st.f_flag & os.ST_RDONLY:
        what, fix = "became read-only (Read-only file system)", "Remount it read-write, or give a writable storage_path"
    elif errno.EACCES in codes and str(probe) in text:
        what, fix = "is not writable (Permission denied)", "Fix its permissions, or give a writable storage_path"
    else:
        return None
    return StorageError(f"storage {probe} {what}. {fix}; checkpoints committed before this are kept{resume}")
