"""The fields of the config as the loader sees them: each field's kind, read from its annotation.

One place says, per kind, how a typed value (TOML, JSON) is checked and how the text of an
override (``--set KEY=VALUE``) is coerced, and the words for each when they fail. The kind of a
field is derived from its dataclass annotation, so a new field with a new kind of annotation
fails at import instead of being forgotten. No torch.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kempnerforge.config.checkpoint import (
    AsyncCheckpointMode,
    CheckpointConfig,
    DynamicCheckpointWindow,
)

__all__ = ["CONFIG_FIELDS", "KINDS", "WINDOW_FIELDS", "WINDOW_KEY", "Kind", "to_plain"]

WINDOW_KEY = "dyn_ckpt_window"
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(CheckpointConfig))
WINDOW_FIELDS = tuple(f.name for f in dataclasses.fields(DynamicCheckpointWindow))


def _int(text: str) -> int:
    return int(text, 0)


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in {"true", "1", "yes", "on"}:
        return True
    if lowered in {"false", "0", "no", "off"}:
        return False
    raise ValueError(text)


def _optional_str(text: str) -> str | None:
    return None if text.lower() in {"", "none", "null"} else text


def _str_list(text: str) -> list[str]:
    if text.startswith("["):
        value = json.loads(text)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(text)
        return value
    return [part.strip() for part in text.split(",") if part.strip()]


@dataclass(frozen=True, kw_only=True)
class Kind:
    """How values of one kind of field are checked, coerced from text, and described."""

    accepts: Callable[[Any], bool]
    """Is a typed value (from TOML or JSON) of this kind?"""
    expected: str
    """What a typed value must be, for the message when it is not."""
    coerce: Callable[[str], Any]
    """The value an override's text stands for (``ValueError`` when it stands for none)."""
    override_expected: str
    """What an override's text must look like, for the message when it does not."""


_STR = Kind(
    accepts=lambda v: isinstance(v, str),
    expected="a string",
    coerce=str,
    override_expected="a valid value",
)
_KIND_OF_ANNOTATION: dict[str, Kind] = {
    "int": Kind(
        accepts=lambda v: isinstance(v, int) and not isinstance(v, bool),
        expected="an integer",
        coerce=_int,
        override_expected="an integer",
    ),
    "str": _STR,
    "str | None": Kind(
        accepts=lambda v: v is None or isinstance(v, str),
        expected="a string",
        coerce=_optional_str,
        override_expected="a valid value",
    ),
    "bool": Kind(
        accepts=lambda v: isinstance(v, bool),
        expected="true or false",
        coerce=_bool,
        override_expected="true or false",
    ),
    "list[str]": Kind(
        accepts=lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        expected="a list of strings",
        coerce=_str_list,
        override_expected='a comma-separated list or a JSON list of strings like ["optimizer"]',
    ),
    "AsyncCheckpointMode": Kind(
        accepts=lambda v: isinstance(v, str),
        expected="one of " + ", ".join(repr(m.value) for m in AsyncCheckpointMode),
        coerce=str,
        override_expected="a valid value",
    ),
}


def _kind(annotation: str) -> Kind:
    # A Literal of strings is checked as a string here; __post_init__ checks the allowed values.
    return _STR if annotation.startswith("Literal[") else _KIND_OF_ANNOTATION[annotation]


KINDS: dict[str, Kind] = {
    f.name: _kind(str(f.type))
    for cls in (CheckpointConfig, DynamicCheckpointWindow)
    for f in dataclasses.fields(cls)
    if f.name != WINDOW_KEY
}
"""Field name (of the config or of its window) -> its kind."""


def to_plain(obj: CheckpointConfig | DynamicCheckpointWindow) -> dict[str, Any]:
    """The fields of a config (or window) as JSON-able values, in field order."""
    plain: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, DynamicCheckpointWindow):
            value = to_plain(value)
        elif isinstance(value, StrEnum):
            value = value.value
        elif isinstance(value, list):
            value = list(value)
        plain[f.name] = value
    return plain
