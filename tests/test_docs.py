"""The docs quote the real thing: every console transcript is run, every setting is listed.

A ```console block in README.md or docs/*.md is a transcript. A line starting with `$ ` is a
command, of the form `[VAR=value ...] claude-gateway ARGS` and nothing else; the lines after
it, up to the next `$ ` or the end of the block, are its combined stdout and stderr. A `...`
line stands for any number of lines. A last line `[exit N]` gives the exit code; without one
the command must exit 0. Each command runs as `python -m gateway ARGS` from the repository
root, with GATEWAY_* and ANTHROPIC_* taken out of the environment and the VAR=value
assignments put in, as `tests/support/processes.py` runs the CLI.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import AnyUrl

from gateway.config import ENV_PREFIX, Settings
from tests.support.processes import ROOT, gateway_env

DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
DOC_DATA = ROOT / "tests" / "data" / "docs"
FENCE = re.compile(r"^(`{3,})\s*(\S*)")
ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)
EXIT_LINE = re.compile(r"^\[exit (\d+)\]$")
ANY_LINES = "..."
PROGRAM = "claude-gateway"
SHELL_SYNTAX = frozenset({"|", "||", "&", "&&", ";", "<", ">", ">>", "2>&1", "$(", "`"})
SETTINGS_HEADER = "| setting | default | meaning |"
SETTING_NAME = re.compile(r"\bGATEWAY_([A-Z0-9_]*[A-Z0-9])(_?\*)?")


@dataclass(frozen=True, slots=True)
class Block:
    """One ```console block: where it starts and its lines."""

    path: Path
    line: int
    lines: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


@dataclass(frozen=True, slots=True)
class Transcript:
    """One command of a console block, the output the docs show for it and its exit code."""

    command: str
    output: tuple[str, ...]
    exit_code: int


def fenced_blocks(path: Path) -> list[tuple[str, int, tuple[str, ...]]]:
    """(info string, first line number, lines) of every fenced block of a Markdown file."""
    blocks: list[tuple[str, int, tuple[str, ...]]] = []
    opened: tuple[str, str, int] | None = None
    body: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fence = FENCE.match(line.strip())
        if opened is None:
            if fence:
                opened, body = (fence.group(1), fence.group(2), number), []
        elif fence and fence.group(1) == opened[0] and not fence.group(2):
            blocks.append((opened[1], opened[2] + 1, tuple(body)))
            opened = None
        else:
            body.append(line)
    return blocks


def console_blocks() -> list[Block]:
    """Every ```console block of the docs."""
    return [
        Block(path, line, lines)
        for path in DOCS
        for info, line, lines in fenced_blocks(path)
        if info == "console"
    ]


def transcripts(block: Block) -> list[Transcript]:
    """The commands of `block` with their expected output; ValueError when it is malformed."""
    found: list[Transcript] = []
    command: str | None = None
    output: list[str] = []

    def close() -> None:
        if command is None:
            return
        exit_code = 0
        if output and (last := EXIT_LINE.match(output[-1])):
            exit_code = int(last.group(1))
            output.pop()
        if any(EXIT_LINE.match(line) for line in output):
            raise ValueError(f"{block.name}: `[exit N]` must be the last line of its output")
        found.append(Transcript(command, tuple(output), exit_code))

    for line in block.lines:
        if line.startswith("$ "):
            close()
            command, output = line[2:], []
        elif command is None:
            raise ValueError(f"{block.name}: a console block starts with a `$ ` command")
        else:
            output.append(line.rstrip())
    close()
    if not found:
        raise ValueError(f"{block.name}: a console block holds at least one `$ ` command")
    return found


def parse_command(command: str) -> tuple[dict[str, str], list[str]]:
    """(environment, arguments) of `[VAR=value ...] claude-gateway ARGS`; ValueError otherwise."""
    words = shlex.split(command)
    if any(word in SHELL_SYNTAX or "$(" in word or "`" in word for word in words):
        raise ValueError(f"no shell syntax in a quoted command: {command!r}")
    env = {}
    while words and (assignment := ASSIGNMENT.match(words[0])):
        env[assignment.group(1)] = assignment.group(2)
        words.pop(0)
    if not words or words[0] != PROGRAM:
        raise ValueError(f"only `[VAR=value ...] {PROGRAM} ARGS` may be quoted: {command!r}")
    return env, words[1:]


def matches(expected: tuple[str, ...], actual: tuple[str, ...]) -> bool:
    """Whether `actual` is `expected`, each `...` line standing for any number of lines."""
    if not expected:
        return not actual
    if expected[0] == ANY_LINES:
        return any(matches(expected[1:], actual[skip:]) for skip in range(len(actual) + 1))
    return bool(actual) and expected[0] == actual[0] and matches(expected[1:], actual[1:])


def run(env: dict[str, str], args: list[str]) -> tuple[tuple[str, ...], int]:
    """Run `python -m gateway ARGS` from the repository root: its output lines and exit code."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env=gateway_env() | {"PYTHONUNBUFFERED": "1"} | env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
        check=False,
    )
    return tuple(line.rstrip() for line in result.stdout.splitlines()), result.returncode


def settings_table() -> list[tuple[str, str]]:
    """The README's settings table: (`GATEWAY_*` name, its default cell) per row."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = lines.index(SETTINGS_HEADER) + 2  # the header, then the |---| line
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        name, default = (cell.strip() for cell in line.strip("|").split("|")[:2])
        rows.append((name.strip("`"), default))
    return rows


def shown_default(value: object) -> str:
    """How the settings table writes a default value."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, AnyUrl):
        return f"`{str(value).rstrip('/')}`"
    return f"`{value}`"


def prose(path: Path) -> str:
    """A Markdown file without its console blocks (which may quote a misspelt setting)."""
    text = path.read_text(encoding="utf-8").splitlines()
    quoted = {
        line + offset
        for info, line, lines in fenced_blocks(path)
        if info == "console"
        for offset in range(len(lines))
    }
    return "\n".join(line for number, line in enumerate(text, start=1) if number not in quoted)


@pytest.mark.parametrize("block", console_blocks(), ids=lambda block: block.name)
def test_console_block_shows_the_real_output(block: Block) -> None:
    """Each quoted command prints exactly the lines the docs show and exits as they say."""
    if (ROOT / ".env").exists():
        pytest.skip("a .env in the repository root changes what check-config prints")
    for transcript in transcripts(block):
        env, args = parse_command(transcript.command)
        actual, exit_code = run(env, args)
        shown = actual if matches(transcript.output, actual) else transcript.output
        assert (transcript.command, shown, transcript.exit_code) == (
            transcript.command,
            actual,
            exit_code,
        )


def test_every_doc_data_file_is_quoted() -> None:
    """Every file under tests/data/docs is used by a console block, so none goes stale."""
    quoted = "\n".join(line for block in console_blocks() for line in block.lines)
    unused = [
        str(path.relative_to(ROOT))
        for path in sorted(DOC_DATA.iterdir())
        if str(path.relative_to(ROOT)) not in quoted
    ]
    assert [] == unused


def test_settings_table_lists_every_setting_with_its_default() -> None:
    """The README's settings table names each `Settings` field once, with its default."""
    expected = {
        ENV_PREFIX + name.upper(): shown_default(field.default)
        for name, field in Settings.model_fields.items()
    }
    rows = [(name, cell.split(" ")[0]) for name, cell in settings_table()]
    assert (expected, len(expected)) == (dict(rows), len(rows))


def test_docs_name_only_real_settings() -> None:
    """Every `GATEWAY_*` name in the docs' prose is a setting, or a prefix of some."""
    known = [ENV_PREFIX + name.upper() for name in Settings.model_fields]
    unknown = sorted(
        {
            f"{path.name}: {found.group(0)}"
            for path in DOCS
            for found in SETTING_NAME.finditer(prose(path))
            if not any(
                name == found.group(0) or (found.group(2) and name.startswith(found.group(0)))
                for name in known
            )
        }
    )
    assert [] == unknown


@pytest.mark.parametrize(
    "command",
    ["rm -rf /tmp/x", "claude-gateway check-config | head", "GATEWAY_PORT=1 python -m gateway"],
)
def test_only_claude_gateway_commands_are_quoted(command: str) -> None:
    """A quoted command other than `[VAR=value ...] claude-gateway ARGS` is refused."""
    with pytest.raises(ValueError, match="quoted"):
        parse_command(command)


def test_quoted_command_becomes_environment_and_arguments() -> None:
    """`VAR=value` words become the environment, the rest the gateway's arguments."""
    parsed = parse_command("GATEWAY_PORT=eighty claude-gateway check-config --probe")
    assert ({"GATEWAY_PORT": "eighty"}, ["check-config", "--probe"]) == parsed


def test_ellipsis_stands_for_any_lines_and_nothing_else() -> None:
    """A `...` line matches zero or more lines; every other line must be equal."""
    actual = ("a", "b", "c", "d")
    assert (True, True, True, False, False) == (
        matches(("a", "...", "d"), actual),
        matches(("...", "a", "b", "c", "d", "..."), actual),
        matches(("...",), ()),
        matches(("a", "...", "c"), actual),
        matches(("a", "b", "c"), actual),
    )
