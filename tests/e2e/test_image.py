"""The image's command and environment, run as a process: it serves, passes its HEALTHCHECK
and stops on SIGTERM (the Dockerfile's static checks are in tests/test_deploy.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bench.ports import free_port
from tests.support.dockerfile import healthcheck_command, image_command, image_env
from tests.support.processes import BIN, gateway_env, wait_healthy


def http_status(url: str) -> int:
    """GET `url` and return the status code."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.slow
def test_image_command_and_env_serve_health_endpoints(tmp_path: Path) -> None:
    """The image's ENTRYPOINT+CMD with its ENV serves /healthz and /readyz and passes its
    HEALTHCHECK, then exits 0 on SIGTERM."""
    port = free_port()  # the image's own 8080 may be taken here; the setting is the same
    env = gateway_env() | image_env() | {"GATEWAY_PORT": str(port)}
    env["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    command = image_command()
    executable = shutil.which(command[0], path=env["PATH"])
    assert executable is not None
    with (tmp_path / "gateway.log").open("wb") as log:
        process = subprocess.Popen(
            [executable, *command[1:]], env=env, cwd=tmp_path, stdout=log, stderr=log
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url)
        statuses = {path: http_status(url + path) for path in ("/healthz", "/readyz")}
        check = subprocess.run(healthcheck_command(), env=env, timeout=10, check=False)
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    actual = {**statuses, "HEALTHCHECK": check.returncode, "exit": exit_code}
    assert {"/healthz": 200, "/readyz": 200, "HEALTHCHECK": 0, "exit": 0} == actual
