"""LiteLLM's proxy in a virtualenv of its own, for the bench's `litellm` row.

`python -m bench.litellm_env` installs it ahead of a bench run (a first `--targets litellm`
run does the same on its way). LiteLLM never goes into the project's .venv or uv.lock: its
~120 pinned dependencies would constrain the gateway's. The env is made with `uv venv` +
`uv pip sync --require-hashes` from the hash-locked `bench/litellm-requirements.txt` (its
regenerate command is at the top of `bench/litellm-requirements.in`) under
`~/.cache/claude-gateway-bench/litellm-<version>`, outside the work tree, and reused while
its marker says it was completed from the same requirements file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.procs import ROOT

REQUIREMENTS = ROOT / "bench" / "litellm-requirements.txt"
MARKER = ".bench-complete"  # holds the requirements file's sha256 once the install finished
INSTALL_TIMEOUT = 900.0  # seconds for `uv venv` + `uv pip sync` (downloads ~0.5 GB at most)


class LitellmUnavailableError(RuntimeError):
    """LiteLLM's env could not be made (no uv, no network, a failed install): the reason."""


@dataclass(frozen=True, slots=True)
class LitellmEnv:
    """An installed LiteLLM env: its root, the pinned version and its `litellm` CLI."""

    root: Path
    version: str

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def cli(self) -> Path:
        return self.root / "bin" / "litellm"


def pinned_version(requirements: Path = REQUIREMENTS) -> str:
    """The `litellm==X` pin of the requirements file; LitellmUnavailableError without one."""
    try:
        text = requirements.read_text()
    except OSError as exc:
        raise LitellmUnavailableError(f"cannot read {requirements}: {exc}") from exc
    found = re.search(r"^litellm==([^\s\\;]+)", text, re.MULTILINE)
    if found is None:
        raise LitellmUnavailableError(f"{requirements.name} pins no litellm version")
    return found.group(1)


def cache_home() -> Path:
    """`$XDG_CACHE_HOME/claude-gateway-bench`, by default under ~/.cache: outside the tree."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "claude-gateway-bench"


def env_dir(version: str) -> Path:
    return cache_home() / f"litellm-{version}"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def is_complete(root: Path, requirements: Path = REQUIREMENTS) -> bool:
    """Whether `root` was installed to the end from this very requirements file."""
    try:
        marked = (root / MARKER).read_text().strip()
    except OSError:
        return False
    return marked == digest(requirements) and (root / "bin" / "litellm").is_file()


def find_uv() -> str | None:
    """uv on PATH, else the project's pinned one (`make` puts it in .tools/bin)."""
    pinned = ROOT / ".tools" / "bin" / "uv"
    return shutil.which("uv") or (str(pinned) if pinned.is_file() else None)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock file: two bench runs never install into one env at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run(argv: list[str], timeout: float) -> None:
    """Run an install step quietly; LitellmUnavailableError with its last line on failure."""
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}  # the machine's python3, as make does
    env.pop("VIRTUAL_ENV", None)  # the project's venv must not be the target
    try:
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LitellmUnavailableError(f"{Path(argv[0]).name} {argv[1]}: timed out") from exc
    except OSError as exc:
        raise LitellmUnavailableError(f"{argv[0]}: {exc}") from exc
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        reason = next((ln for ln in reversed(lines) if ln.strip()), lines[-1]).strip()
        raise LitellmUnavailableError(f"uv {argv[1]} {argv[2]} failed: {reason}"[:300])


def ensure_env(
    requirements: Path = REQUIREMENTS, *, timeout: float = INSTALL_TIMEOUT, quiet: bool = False
) -> LitellmEnv:
    """The LiteLLM env, installed first if missing or incomplete.

    LitellmUnavailableError (never anything else) says why it cannot be had: the bench then
    skips the row with that reason instead of failing.
    """
    version = pinned_version(requirements)
    root = env_dir(version)
    env = LitellmEnv(root, version)
    if is_complete(root, requirements):
        return env
    uv = find_uv()
    if uv is None:
        raise LitellmUnavailableError("uv not found (on PATH or in .tools/bin; run make install)")
    with _locked(root.with_name(root.name + ".lock")):
        if is_complete(root, requirements):  # another run finished it meanwhile
            return env
        if not quiet:
            print(f"[bench] installing LiteLLM {version} into {root}", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)  # a half-made env is not reused
        try:
            _run([uv, "venv", "--quiet", "--python", "python3", str(root)], timeout)
            sync = [uv, "pip", "sync", "--quiet", "--require-hashes"]
            _run([*sync, "--python", str(env.python), str(requirements)], timeout)
        except LitellmUnavailableError:
            shutil.rmtree(root, ignore_errors=True)
            raise
        (root / MARKER).write_text(digest(requirements) + "\n")
    return env


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.litellm_env`: install (or find) the env; print where it is."""
    del argv
    try:
        env = ensure_env()
    except LitellmUnavailableError as exc:
        print(f"LiteLLM env unavailable: {exc}", file=sys.stderr)
        return 1
    print(f"LiteLLM {env.version}: {env.root} ({env.cli})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
