"""The errors a user can cause, each a list of one-line problems, and the exit codes they map to."""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_INVALID = 2


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the user's input: where, what, and how to fix it."""

    source: str  # a file path, "command line", or "cluster"
    key: str  # dotted config key, or "row 12" / "line 3" for data
    message: str  # what is wrong, with the bad value
    fix: str = ""  # how to fix it

    def __str__(self) -> str:
        where = f"{self.source}: {self.key}" if self.key else self.source
        text = f"{where}: {self.message}"
        if self.fix:
            text = f"{text}. {self.fix}"
        return text


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
    import difflib
    from pathlib import Path

    p = Path(path).expanduser()
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        return f"{parent} does not exist either; check the path"
    names = sorted(x.name for x in parent.iterdir() if not x.name.startswith("."))
    close = difflib.get_close_matches(p.name, names, n=1)
    seen = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return (f"Did you mean {parent / close[0]}? " if close else "") + f"{parent} has: {seen or 'nothing'}"
