"""`make lock-check`: pyproject.toml, uv.lock and requirements.lock agree, or CI stops."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UV = ROOT / ".tools" / "bin" / "uv"
PROJECT_FILES = ("Makefile", "pyproject.toml", "uv.lock", "requirements.lock", "README.md")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of what uv needs to judge the locks: the project files and the package version."""
    if not UV.exists():
        pytest.fail(f"{UV} is missing: run `make install` first")
    for name in PROJECT_FILES:
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "gateway").mkdir()
    shutil.copy(ROOT / "gateway" / "__init__.py", tmp_path / "gateway" / "__init__.py")
    return tmp_path


def lock_check(project: Path) -> subprocess.CompletedProcess[str]:
    """`make lock-check` in `project` with the repository's uv (`-o`: never rebuild it)."""
    return subprocess.run(
        ["make", "--no-print-directory", "-o", str(UV), f"UV={UV}", "lock-check"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_committed_locks_agree(project: Path) -> None:
    """The repository's pyproject.toml, uv.lock and requirements.lock pass the check."""
    result = lock_check(project)
    assert 0 == result.returncode, result.stderr


def test_a_dependency_changed_without_relocking_fails(project: Path) -> None:
    """A requirement edited in pyproject.toml but not in uv.lock fails the check."""
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"PyYAML>=6.0"', '"PyYAML>=6.0.1"'))
    result = lock_check(project)
    assert 0 != result.returncode
    assert "needs to be updated" in result.stderr


def test_an_image_lock_that_drifted_from_uv_lock_fails(project: Path) -> None:
    """requirements.lock edited by hand (here: one pin dropped) fails the check."""
    image_lock = project / "requirements.lock"
    entries = image_lock.read_text().split("\nwheel==")[0] + "\n"
    image_lock.write_text(entries)
    result = lock_check(project)
    assert 0 != result.returncode
    assert "requirements.lock is not uv.lock's export: run 'make lock'" in result.stderr
