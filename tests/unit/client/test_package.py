"""darkroom-client is its own package: it imports only the standard library,
``requests`` (with its ``urllib3``) and ``standardwebhooks``, declares those,
and the versions the repository's locks install satisfy what it declares."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[3]
CLIENT = ROOT / "clients" / "python"
#: what the client may import besides the standard library (urllib3 comes with requests)
ALLOWED = {"requests", "standardwebhooks", "urllib3", "darkroom_client"}


def locked(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, _, version = line.split(" ")[0].partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_it_declares_only_requests_and_standardwebhooks_and_the_lock_satisfies_them():
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(line) for line in project["dependencies"]]
    assert {canonicalize_name(r.name) for r in requirements} == {"requests", "standardwebhooks"}
    pins = locked(ROOT / "requirements-dev.lock")
    for requirement in requirements:
        assert requirement.specifier.contains(pins[canonicalize_name(requirement.name)]), \
            requirement


def test_it_imports_nothing_else():
    found = set()
    for path in (CLIENT / "src" / "darkroom_client").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.partition(".")[0])
    assert found - set(sys.stdlib_module_names) - ALLOWED == set()
    assert "requests" in found and "standardwebhooks" in found


def test_the_tests_use_the_installed_package():
    import darkroom_client

    assert Path(darkroom_client.__file__).is_relative_to(CLIENT / "src")
    assert darkroom_client.__version__ == tomllib.loads(
        (CLIENT / "pyproject.toml").read_text())["project"]["version"]
