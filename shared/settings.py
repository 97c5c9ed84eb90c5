"""Typed settings, declared once per service (bgremoval/config.py, search/config.py) and checked
before a service serves.

A section is a pydantic model. Each field names its environment variable (`setting(env=...)`) and
carries its type, default, bounds or choices and a one-line description; the settings
table of docs/operations.md is generated from these declarations (`python scripts/settings_table.py`).
`Section.from_env(env)` reads a mapping (os.environ by default) and validates it; a bad value
raises SettingsError with one line naming the variable, the value given and what is allowed.

Why not pydantic-settings' BaseSettings: our variable names are flat (BG_PERSON_THRESHOLD) over
nested sections, and tools and tests read settings from a mapping they pass in; both are one small
function here, while pydantic does all the parsing and checking.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, DirectoryPath, Field, FilePath, ValidationError

class SettingsError(ValueError):
    """A setting's value is not allowed; str() is the one line to print."""


def setting(default: Any = ..., *, env: str, description: str, **constraints: Any) -> Any:
    """A field read from the environment variable `env` (its alias; also settable by its field name)."""
    return Field(default, validation_alias=env, description=description, **constraints)


def _text_or_none(value: Any) -> Any:
    # "VAR=" means unset for the optional settings (paths, URLs, tokens), as it always has.
    if isinstance(value, str) and not value.strip():
        return None
    return value.strip() if isinstance(value, str) else value


def _flag(value: Any) -> Any:
    # 1/true/yes/on and 0/false/no/off (any case); empty is off. Anything else is refused.
    if isinstance(value, str):
        value = value.strip().lower()
        return value or False
    return value


def _choice(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


Flag = Annotated[bool, BeforeValidator(_flag)]
OptionalText = Annotated[str | None, BeforeValidator(_text_or_none)]
OptionalFile = Annotated[FilePath | None, BeforeValidator(_text_or_none)]  # must exist when set
OptionalDirectory = Annotated[DirectoryPath | None, BeforeValidator(_text_or_none)]


def choice(*allowed: str):
    """A string setting limited to `allowed`, compared after trimming and lower-casing."""
    return Annotated[Literal[allowed], BeforeValidator(_choice)]  # type: ignore[valid-type]


class Settings(BaseModel):
    """A section of settings: immutable, no unknown fields, each field from one variable."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True,
                              validate_default=True)

    @classmethod
    def variables(cls) -> dict[str, Any]:
        """Every variable this section and its subsections read: {env name: FieldInfo}."""
        found: dict[str, Any] = {}
        for info in cls.model_fields.values():
            section = _section(info)
            if section is not None:
                found.update(section.variables())
            elif isinstance(info.validation_alias, str):
                found[info.validation_alias] = info
        return found

    @classmethod
    def _raw(cls, env: Mapping[str, str]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, info in cls.model_fields.items():
            section = _section(info)
            if section is not None:
                values[name] = section._raw(env)
            elif info.validation_alias in env:
                values[info.validation_alias] = env[info.validation_alias]
        return values

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(describe_error(type(self), exc)) from None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None):
        """This section from the environment (or `env`); SettingsError names a bad variable."""
        raw = cls._raw(os.environ if env is None else env)
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise SettingsError(describe_error(cls, exc)) from None


def _section(info) -> type[Settings] | None:
    """The section a field holds, or None for a variable's field."""
    kind = info.annotation
    return kind if isinstance(kind, type) and issubclass(kind, Settings) else None


def _variable(model: type[Settings], loc: tuple) -> str | None:
    """The environment variable an error's location points at (by field name or by variable)."""
    for part in loc:
        if not isinstance(part, str):
            return None
        fields = model.model_fields
        info = fields.get(part) or next((f for f in fields.values() if f.validation_alias == part), None)
        if info is None:
            return None
        section = _section(info)
        if section is not None:
            model = section
            continue
        return info.validation_alias if isinstance(info.validation_alias, str) else part
    return None


def describe_error(model: type[Settings], exc: ValidationError) -> str:
    """One line: `NAME='value' is not allowed: <what is>`, for each bad variable."""
    lines = []
    for error in exc.errors(include_url=False):
        name = _variable(model, tuple(error["loc"]))
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "bool_parsing":
            message = "a flag is one of 1, 0, true, false, yes, no, on, off (or empty: off)"
        elif error["type"] == "literal_error":
            message = f"choose {error['ctx']['expected']}"
        # A model-wide check names its variables in its message.
        lines.append(f"{name}={error['input']!r} is not allowed: {message}" if name else message)
    return "; ".join(lines)


def exit_on_bad_settings(check, *, stream=None):
    """Run `check()` (which validates and returns settings); on SettingsError print its one line
    and exit with status 2, before anything serves or builds."""
    try:
        return check()
    except SettingsError as exc:
        print(f"bad setting: {exc}", file=stream or sys.stderr, flush=True)
        raise SystemExit(2) from None
