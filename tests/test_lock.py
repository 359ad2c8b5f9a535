"""requirements.lock against pyproject.toml: every requirement of adaptune and of its tests is pinned there,
at a version its floor allows, so `scripts/setup.sh` (which installs the lock without resolving) gets a
complete, consistent stack; torch stays out of the lock (setup.sh picks the CPU or CUDA build first)."""

from __future__ import annotations

import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .support import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

pytestmark = pytest.mark.unit


def _lock() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not an exact pin (name==version)"
            pins[canonicalize_name(name)] = Version(version.strip())
    return pins


def test_every_requirement_is_pinned_in_the_lock_within_its_floor():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    wanted = [r for r in wanted if r.name != "torch"]
    pins = _lock()
    assert "torch" not in pins
    missing = [str(r) for r in wanted if canonicalize_name(r.name) not in pins]
    assert not missing, f"not in requirements.lock: {missing}; run scripts/lock.sh"
    below = [
        f"{r} (locked {pins[canonicalize_name(r.name)]})"
        for r in wanted
        if not r.specifier.contains(pins[canonicalize_name(r.name)], prereleases=True)
    ]
    assert not below, f"locked versions outside pyproject's floors: {below}; run scripts/lock.sh"
    # the extras adaptune asks for bring their packages too (ray[default,tune,train], mlflow[auth])
    assert {"aiohttp", "pyarrow", "flask-wtf"} <= set(pins)
