"""One line per config mistake: a pydantic error turned into a :class:`UserError` naming the
file, the field (dotted, as the YAML has it) and the fix; a YAML file read or refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from smotune.errors import UserError


def _dotted(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not str(p).startswith(("function-", "tagged-union"))]
    return ".".join(parts)


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed next to ``loc[-1]`` in ``model``, for an 'unknown key' message."""
    current: Any = model
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return []
        ann = fields[part].annotation
        current = next(
            (a for a in getattr(ann, "__args__", (ann,)) if hasattr(a, "model_fields")), ann
        )
    fields = getattr(current, "model_fields", None)
    return list(fields) if fields else []


def _user_error(where: str, err: ValidationError, model: type[BaseModel], prefix: str) -> UserError:
    first = err.errors()[0]
    loc = tuple(first["loc"])
    field = prefix + _dotted(loc)
    kind = first["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc)
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return UserError(where, field, "unknown key", f"remove it or correct its spelling{hint}")
    got = first.get("input")
    # a validator of ours may name its fix after "; fix: "
    problem, _, own_fix = first["msg"].replace("Value error, ", "").partition("; fix: ")
    if kind != "missing":
        problem += f", got {got!r}"
    if own_fix:
        fix = own_fix
    elif kind == "missing":
        fix = "add the key"
    elif "should be " in first["msg"]:
        fix = "set a value that is " + first["msg"].split("should be ", 1)[1]
    else:
        fix = "correct the value"
    return UserError(where, field, problem, fix)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(str(path), "", "file not found", "check the path of the config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}" if mark else "YAML"
        raise UserError(str(path), line, "not valid YAML", "fix the syntax there") from None
    if not isinstance(data, dict):
        raise UserError(str(path), "", "must be a YAML mapping", "write key: value pairs")
    return data
