"""Loading a limits file: YAML in, a validated `LimitsConfig` out, or one readable error.

`load_limits(path)` validates a YAML file (see `config/limits.example.yaml`) and reports any
mistake as one `LimitsFileError` naming the file, the line and the problem::

    limits.yaml:7: groups[0].requests_per_minute: must be >= 0

Line numbers come from the composed YAML node tree: each pydantic error `loc` is walked down
that tree to the node it names.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from gateway.limits.policy import LimitsConfig, LimitsFileError

if TYPE_CHECKING:  # PyYAML loads only when a limits file is read, not at start-up
    import yaml

Loc = tuple[int | str, ...]
_MESSAGES = {
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "extra_forbidden": "unknown key",
    "missing": "required",
    "too_short": "must not be empty",
    "string_too_short": "must not be empty",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "tuple_type": "must be a list",
    "model_type": "must be a mapping",
    "literal_error": "must be {expected}",
    "string_pattern_mismatch": "must contain only letters, digits, '_', '.' and '-'",
}


def load_limits(path: Path) -> LimitsConfig:
    """Read and validate a limits file; an empty one is valid and limits nothing."""
    import yaml  # noqa: PLC0415 (PyYAML loads only when a limits file is read)

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LimitsFileError(f"{path}: cannot read: {exc.strerror}") from exc
    loader = yaml.SafeLoader(text)
    try:  # what yaml.safe_load does, keeping the node tree for line numbers
        root = loader.get_single_node()
        data = None if root is None else loader.construct_document(root)
    except yaml.YAMLError as exc:
        raise LimitsFileError(_yaml_problem(path, exc)) from exc
    finally:
        loader.dispose()
    if root is None:
        return LimitsConfig()
    duplicate = _duplicate_key(root, ())
    if duplicate is not None:
        line, loc = duplicate
        raise LimitsFileError(f"{path}:{line}: {_path(loc)}: duplicate key")
    try:
        return LimitsConfig.model_validate(data)
    except ValidationError as exc:
        problems = (_problem(path, root, error) for error in exc.errors(include_url=False))
        raise LimitsFileError("\n".join(problems)) from exc


def _yaml_problem(path: Path, exc: yaml.YAMLError) -> str:
    import yaml  # noqa: PLC0415 (PyYAML loads only when a limits file is read)

    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        return f"{path}:{exc.problem_mark.line + 1}: invalid YAML: {exc.problem}"
    return f"{path}: invalid YAML: {exc}"


def _problem(path: Path, root: yaml.Node, error: ErrorDetails) -> str:
    """One validation error as `file:line: where: what`."""
    ctx = error.get("ctx", {})
    loc = tuple(error["loc"])
    if "at" in ctx:  # a cross-entry check: point below the field it validated
        loc = (*loc, *ctx["at"])
    template = _MESSAGES.get(error["type"])
    plain = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in ctx.items()}
    message = template.format(**plain) if template else error["msg"]
    return f"{path}:{_line(root, loc)}: {_path(loc)}: {message}"


def _line(root: yaml.Node, loc: Sequence[int | str]) -> int:
    """The 1-based line of the deepest node `loc` reaches (a mapping entry's key line)."""
    import yaml  # noqa: PLC0415 (PyYAML loads only when a limits file is read)

    node, line = root, root.start_mark.line
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            entry = next((e for e in node.value if e[0].value == part), None)
            if entry is None:
                break
            line, node = entry[0].start_mark.line, entry[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line
        else:
            break
    return line + 1


def _duplicate_key(node: yaml.Node, loc: Loc) -> tuple[int, Loc] | None:
    """The line and path of the first key repeated in one mapping (YAML keeps the last)."""
    import yaml  # noqa: PLC0415 (PyYAML loads only when a limits file is read)

    if isinstance(node, yaml.SequenceNode):
        children: list[tuple[int | str, yaml.Node]] = list(enumerate(node.value))
    elif isinstance(node, yaml.MappingNode):
        children, seen = [], set()
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue
            if key.value in seen:
                return key.start_mark.line + 1, (*loc, key.value)
            seen.add(key.value)
            children.append((key.value, value))
    else:
        return None
    for part, child in children:
        found = _duplicate_key(child, (*loc, part))
        if found is not None:
            return found
    return None


def _path(loc: Sequence[int | str]) -> str:
    """`('groups', 0, 'name')` as `groups[0].name`; the empty path as `(top level)`."""
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    return text.lstrip(".") or "(top level)"
