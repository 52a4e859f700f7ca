"""The Dockerfile read as data: its instructions, the runtime stage, its command and env."""

from __future__ import annotations

import json
import shlex

from tests.support.processes import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        keyword, _, args = (current + line).partition(" ")
        instructions.append((keyword.upper(), " ".join(args.split())))
        current = ""
    return instructions


def final_stage() -> list[tuple[str, str]]:
    """The instructions of the last stage (the image that runs)."""
    instructions = dockerfile_instructions()
    start = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[start:]


def last(stage: list[tuple[str, str]], keyword: str) -> str:
    """The arguments of the stage's last `keyword` instruction."""
    return [args for key, args in stage if key == keyword][-1]


def image_env() -> dict[str, str]:
    """The runtime stage's ENV, as the image sets it."""
    env: dict[str, str] = {}
    for keyword, args in final_stage():
        if keyword == "ENV":
            env.update(token.split("=", 1) for token in shlex.split(args))  # type: ignore[misc]
    return env


def image_command() -> list[str]:
    """ENTRYPOINT + CMD of the runtime stage (exec form)."""
    stage = final_stage()
    return [*json.loads(last(stage, "ENTRYPOINT")), *json.loads(last(stage, "CMD"))]


def healthcheck_command() -> list[str]:
    """The HEALTHCHECK's CMD (exec form)."""
    return list(json.loads(last(final_stage(), "HEALTHCHECK").split(" CMD ", 1)[1]))
