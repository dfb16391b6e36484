"""Dependencies are honest: what the code imports is declared, what is declared
is used, and the locks install exactly what pyproject.toml pins.

The product code is services/, gateway/ and ops/; its third-party imports must
be in ``[project] dependencies`` (an extra is for tests and tools only). A
declared dependency nothing imports is named in ``USED_WITHOUT_AN_IMPORT`` with
how it is used. requirements.lock (the image, deploy/Dockerfile) and
requirements-dev.lock (``make venv``) pin every package with its hashes;
docs/operations.md says how to update them.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("services", "gateway", "ops")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
IMAGE_LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"

USED_WITHOUT_AN_IMPORT = {
    "setuptools": "nameko's CLI imports pkg_resources (setuptools < 81 still has it)",
    "gunicorn": "serves the gateway: a command (deploy/Procfile, deploy/Dockerfile)",
    "pg8000": "the PostgreSQL driver SQLAlchemy loads by URL (services/common/db.py)",
    "limits": "flask-limiter's storage backends, chosen by RATELIMIT_STORAGE_URI",
}


def requirements(group: str | None = None) -> list[Requirement]:
    """``[project] dependencies``, or one extra's (without the self-reference)."""
    project = PYPROJECT["project"]
    lines = project["dependencies"] if group is None else project["optional-dependencies"][group]
    return [Requirement(line) for line in lines if not line.startswith(project["name"] + "[")]


def declared() -> set[str]:
    return {canonicalize_name(req.name) for req in requirements()}


def imported() -> dict[str, set[str]]:
    """Top-level module -> the product files importing it (third-party modules only)."""
    found: dict[str, set[str]] = {}
    for package in PRODUCT:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.partition(".")[0]
                    if top not in sys.stdlib_module_names and top not in PRODUCT:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def distributions_imported() -> dict[str, set[str]]:
    """Distribution -> the modules of it the product imports."""
    installed = packages_distributions()
    result: dict[str, set[str]] = {}
    for module in imported():
        assert module in installed, f"{module} is imported but installed by nothing"
        for dist in installed[module]:
            result.setdefault(canonicalize_name(dist), set()).add(module)
    return result


def test_every_import_of_the_product_is_declared():
    undeclared = {dist: modules for dist, modules in distributions_imported().items()
                  if dist not in declared()}
    assert undeclared == {}, "imported by services/, gateway/ or ops/: declare it in pyproject"


def test_every_declared_dependency_is_imported_or_says_how_it_is_used():
    unused = declared() - distributions_imported().keys()
    assert unused == set(USED_WITHOUT_AN_IMPORT), \
        "declared but not imported: drop it, or say in USED_WITHOUT_AN_IMPORT how it is used"


def test_every_runtime_dependency_is_pinned_exactly_or_said_why():
    loose = {req.name for req in requirements()
             if not (len(req.specifier) == 1 and next(iter(req.specifier)).operator == "==")}
    assert loose == {"setuptools"}  # a range: nameko needs pkg_resources, gone in 81


# ------------------------------------------------------------------ the locks


def locked(path: Path) -> dict[str, tuple[str, int]]:
    """Package -> (version, number of hashes) of the entries for this Python
    (an entry whose marker does not hold here, e.g. Windows-only, is left out)."""
    entries: dict[str, tuple[str, int]] = {}
    current = None
    for line in path.read_text().splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if not line[0].isspace():
            spec, _, marker = text.rstrip(" \\").partition(";")
            name, _, version = spec.strip().partition("==")
            assert version, f"{path.name}: {text!r} is not pinned with =="
            current = None
            if not marker.strip() or Marker(marker.strip()).evaluate():
                current = canonicalize_name(name)
                assert current not in entries, f"{path.name}: {name} twice"
                entries[current] = (version, 0)
        elif text.startswith("--hash=sha256:") and current is not None:
            version, hashes = entries[current]
            entries[current] = (version, hashes + 1)
    return entries


@pytest.mark.parametrize("lock, groups", [
    (IMAGE_LOCK, [None]),
    (DEV_LOCK, [None, "test", "dev"]),
], ids=["image", "dev"])
def test_a_lock_covers_every_dependency_at_its_pinned_version(lock, groups):
    entries = locked(lock)
    for group in groups:
        for req in requirements(group):
            name = canonicalize_name(req.name)
            assert name in entries, f"{lock.name} lacks {req}: update the locks"
            version, _ = entries[name]
            assert req.specifier.contains(version, prereleases=True), \
                f"{lock.name} has {name}=={version}, pyproject wants {req}: update the locks"


@pytest.mark.parametrize("lock", [IMAGE_LOCK, DEV_LOCK], ids=["image", "dev"])
def test_every_locked_package_has_its_hashes(lock):
    entries = locked(lock)
    assert entries, f"{lock.name} is empty"
    assert {name for name, (_, hashes) in entries.items() if hashes == 0} == set()


def test_the_image_runs_the_versions_the_tests_ran():
    image, dev = locked(IMAGE_LOCK), locked(DEV_LOCK)
    differ = {name: (version, dev.get(name, (None,))[0])
              for name, (version, _) in image.items() if dev.get(name, (None,))[0] != version}
    assert differ == {}, "requirements.lock must be compiled against requirements-dev.lock"


def test_the_lock_reader_sees_a_drift(tmp_path):
    """``locked`` itself: a marker that holds is read, one that does not is
    skipped, and a changed pin is told apart from the declared one."""
    lock = tmp_path / "x.lock"
    lock.write_text("flask==3.0.0 \\\n    --hash=sha256:aa\n"
                    "colorama==0.4.6 ; sys_platform == 'never' \\\n    --hash=sha256:bb\n"
                    "# a comment\nwerkzeug==3.1.9 ; python_version >= '3' \\\n"
                    "    --hash=sha256:cc \\\n    --hash=sha256:dd\n")
    entries = locked(lock)
    assert entries == {"flask": ("3.0.0", 1), "werkzeug": ("3.1.9", 2)}
    flask = next(req for req in requirements() if req.name == "flask")
    assert not flask.specifier.contains(entries["flask"][0])
