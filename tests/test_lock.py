"""requirements.lock: the installed environment is exactly the lock, and the lock fits pyproject.toml.

A fresh machine must get the versions the tests passed with (a newer pyarrow once wrote different
parquet bytes), so every installed distribution is compared with its pin, by name, and every pin with
the ranges that pyproject.toml declares for people who use the package as a library.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")
# pip manages itself; the lock pins what pip installs, not the installer.
NOT_LOCKED = {"pip"}
CUDA_PREFIXES = ("nvidia-", "triton", "cuda-")


def read_lock(path: Path) -> dict[str, str]:
    """The lock's pins as {canonical name: version}; any other non-comment line is an error."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"{path.name}:{number}: expected 'name==version', got {raw!r}; rerun make lock"
        pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def pyproject() -> dict:
    """The parsed pyproject.toml of this checkout."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def installed_versions() -> dict[str, str]:
    """{canonical name: version} of every distribution importable in this interpreter, but the project."""
    project = canonicalize_name(pyproject()["project"]["name"])
    found = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    found.pop(project, None)
    return found


def same_version(locked: str, installed: str) -> bool:
    """True when the installed version satisfies the pin as pip's '==' does: a pin without a local label
    (torch==2.13.0) matches any local build of that release (2.13.0+cpu, or a CUDA build)."""
    pin, have = Version(locked), Version(installed)
    return pin == have if pin.local else pin == Version(have.public)


def unlocked_torch_dependencies(installed: dict[str, str], locked: dict[str, str]) -> set[str]:
    """Installed packages outside the lock that the installed torch pulls in (a CUDA build's nvidia-*
    packages, when one was installed before the lock as the README says); empty for the CPU build."""
    if "torch" not in installed:
        return set()
    found: set[str] = set()
    todo = ["torch"]
    while todo:
        for text in metadata.requires(todo.pop()) or []:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue
            name = canonicalize_name(requirement.name)
            if name in installed and name not in locked and name not in found:
                found.add(name)
                todo.append(name)
    return found


def lock_problems(locked: dict[str, str], installed: dict[str, str], allowed_extra: set[str]) -> list[str]:
    """One line per package whose installed state differs from the lock (mismatched, missing, unlocked)."""
    problems = []
    for name, version in sorted(locked.items()):
        if name not in installed:
            problems.append(f"{name}: locked {version}, not installed")
        elif not same_version(version, installed[name]):
            problems.append(f"{name}: locked {version}, installed {installed[name]}")
    for name in sorted(set(installed) - set(locked) - NOT_LOCKED - allowed_extra):
        problems.append(f"{name}: installed {installed[name]}, not in the lock (pip uninstall {name})")
    return problems


def test_installed_environment_matches_the_lock() -> None:
    locked, installed = read_lock(LOCK), installed_versions()
    problems = lock_problems(locked, installed, unlocked_torch_dependencies(installed, locked))
    assert not problems, (
        "this environment differs from requirements.lock; run make install "
        "(or rm -rf .venv && make install):\n  " + "\n  ".join(problems)
    )


def test_lock_satisfies_the_ranges_in_pyproject() -> None:
    locked, project = read_lock(LOCK), pyproject()["project"]
    extras = project["optional-dependencies"].values()
    declared = project["dependencies"] + [text for extra in extras for text in extra]
    problems = []
    for text in declared:
        requirement = Requirement(text)
        version = locked.get(canonicalize_name(requirement.name))
        if version is None:
            problems.append(f"{requirement.name}: declared {requirement.specifier}, not in the lock")
        elif not requirement.specifier.contains(Version(version).public, prereleases=True):
            problems.append(f"{requirement.name}: declared {requirement.specifier}, locked {version}")
    assert not problems, (
        "requirements.lock is out of date with pyproject.toml; run make lock:\n  " + "\n  ".join(problems)
    )


def test_lock_pins_the_constrained_torch_and_no_cuda_package() -> None:
    locked = read_lock(LOCK)
    constraints = read_lock(ROOT / "constraints.txt")
    assert locked["torch"] == constraints["torch"], "the lock's torch must be constraints.txt's, without +cpu"
    cuda = sorted(name for name in locked if name.startswith(CUDA_PREFIXES))
    assert not cuda, f"CUDA packages in requirements.lock: {cuda}; make lock must resolve torch's CPU build"


def test_lock_problems_name_each_mismatched_missing_and_unlocked_package() -> None:
    locked = {"pyarrow": "26.0.1", "torch": "2.13.0", "numpy": "2.4.6", "scipy": "1.17.1"}
    installed = {"pyarrow": "27.0.0", "torch": "2.13.0+cpu", "numpy": "2.4.6", "pip": "23.2.1",
                 "stray": "1.0", "nvidia-cublas": "13.1.1.3"}
    problems = lock_problems(locked, installed, allowed_extra={"nvidia-cublas"})
    assert problems == [
        "pyarrow: locked 26.0.1, installed 27.0.0",
        "scipy: locked 1.17.1, not installed",
        "stray: installed 1.0, not in the lock (pip uninstall stray)",
    ]
    assert not same_version("2.13.0", "2.14.0+cpu")
    assert not same_version("2.13.0+cpu", "2.13.0+cu130")
