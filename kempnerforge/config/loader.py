"""Build a :class:`CheckpointConfig` from a KempnerForge job file, overrides, or a dict.

Only the ``[checkpoint]`` table of a job file and its ``[checkpoint.dyn_ckpt_window]`` sub-table
are read; every other table (model, optimizer, data, ...) belongs to other parts of the framework
and is ignored. Overrides are dotted ``KEY=VALUE`` strings (``checkpoint.keep_last_n=5``) whose
values are coerced from the dataclass annotations. Every mistake is a
:class:`~kempnerforge.errors.ConfigError` that names the file, the key and the valid keys.

Example:
    >>> cfg = load_config("job.toml", ["checkpoint.keep_last_n=5"])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kempnerforge.config._fields import (
    CONFIG_FIELDS,
    KINDS,
    WINDOW_FIELDS,
    WINDOW_KEY,
    Kind,
    to_plain,
)
from kempnerforge.config.checkpoint import (
    CheckpointConfig,
    DynamicCheckpointWindow,
)
from kempnerforge.errors import ConfigError

__all__ = [
    "apply_overrides",
    "config_from_dict",
    "config_from_toml",
    "config_to_dict",
    "load_config",
    "recorded_config_from_dict",
]


def _valid(fields: Iterable[str], prefix: str) -> str:
    return ", ".join(f"{prefix}{name}" for name in fields)


def _where(source: str | None) -> str:
    return f" in {source}" if source else ""


def _check_type(key: str, kind: Kind, value: Any, source: str | None) -> Any:
    """Check a value that came typed (TOML, JSON) against the field's kind."""
    if not kind.accepts(value):
        raise ConfigError(f"{key}{_where(source)} must be {kind.expected}, got {_short(value)}")
    return value


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters (a hostile value may be huge or deep)."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # deep nesting; an int over the digit limit
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key(key: Any) -> str:
    """A key as text for a message: control characters escaped, at most 80 characters."""
    text = str(key).encode("unicode_escape").decode("ascii")
    return text if len(text) <= 80 else text[:77] + "..."


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``did you mean 'interval'? `` for a near miss, else ``''``."""
    import difflib  # here: only a mistyped key needs it, and every kf-ckpt ls loads a config

    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def _coerce(key: str, kind: Kind, text: str) -> Any:
    """Turn the text of a ``--set KEY=VALUE`` override into the field's type."""
    try:
        return kind.coerce(text.strip())
    except ValueError:
        raise ConfigError(f"override {key}={text!r}: expected {kind.override_expected}") from None


def _build(
    data: Mapping[str, Any], source: str | None, unknown: list[str] | None = None
) -> CheckpointConfig:
    """Validate a ``[checkpoint]``-shaped mapping and construct the config.

    With ``unknown`` (a recorded config: lenient), unknown keys are appended to it and ignored;
    without it (what the user typed: strict), an unknown key is an error.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"checkpoint{_where(source)} must be a table, got {_short(data)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in CONFIG_FIELDS:
            if unknown is not None:
                unknown.append(f"checkpoint.{_key(key)}")
                continue
            raise ConfigError(
                f"unknown key checkpoint.{_key(key)}{_where(source)}; "
                f"{_did_you_mean(key, CONFIG_FIELDS)}valid keys: "
                f"{_valid(CONFIG_FIELDS, 'checkpoint.')}"
            )
        if key == WINDOW_KEY:
            kwargs[key] = _build_window(value, source, unknown)
        else:
            kwargs[key] = _check_type(f"checkpoint.{key}", KINDS[key], value, source)
    try:
        return CheckpointConfig(**kwargs)
    except ValueError as exc:
        raise ConfigError(f"{exc}{_where(source)}") from exc


def _build_window(
    data: Any, source: str | None, unknown: list[str] | None = None
) -> DynamicCheckpointWindow | None:
    if data is None:
        return None
    if isinstance(data, DynamicCheckpointWindow):
        return data
    prefix = f"checkpoint.{WINDOW_KEY}."
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"checkpoint.{WINDOW_KEY}{_where(source)} must be a table, got {_short(data)}"
        )
    known: dict[str, Any] = {}
    for key, value in data.items():
        if key not in WINDOW_FIELDS:
            if unknown is not None:
                unknown.append(f"{prefix}{_key(key)}")
                continue
            valid = _valid(WINDOW_FIELDS, prefix)
            raise ConfigError(
                f"unknown key {prefix}{_key(key)}{_where(source)}; "
                f"{_did_you_mean(key, WINDOW_FIELDS)}valid keys: {valid}"
            )
        known[key] = _check_type(prefix + key, KINDS[key], value, source)
    data = known
    try:
        return DynamicCheckpointWindow(**data)
    except ValueError as exc:
        raise ConfigError(f"{exc}{_where(source)}") from exc


def config_from_toml(path: str | Path) -> CheckpointConfig:
    """Read the ``[checkpoint]`` table of a KempnerForge job file.

    Raises:
        ConfigError: the file is missing or unreadable, is not UTF-8 or not valid TOML, has no
            ``[checkpoint]`` table (a typo such as ``[chekpoint]`` must not silently give the
            defaults), or has an unknown key or a value of the wrong type.
    """
    import tomllib  # only here: most commands read no TOML, and the import is not free

    path = Path(path)
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; pass an existing job TOML") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; pass a job TOML file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deep to read") from None
    if "checkpoint" not in doc:
        raise ConfigError(_no_table_message(path, doc))
    return _build(doc["checkpoint"], str(path))


def _no_table_message(path: Path, doc: Mapping[str, Any]) -> str:
    tables = [str(k) for k, v in doc.items() if isinstance(v, dict)]
    shown = ", ".join(f"[{t[:40].encode('unicode_escape').decode()}]" for t in tables[:12])
    has = f"its tables: {shown}" if tables else "it has no tables"
    import difflib  # here: only a file without the table needs it

    close = difflib.get_close_matches("checkpoint", tables, n=1, cutoff=0.6)
    if close:
        return (
            f"config file {path} has no [checkpoint] table ({has}); did you mean [checkpoint] "
            f"instead of [{close[0]}]? rename it"
        )
    return (
        f"config file {path} has no [checkpoint] table ({has}); add one (an empty "
        "[checkpoint] table uses the defaults)"
    )


def apply_overrides(config: CheckpointConfig, overrides: Iterable[str]) -> CheckpointConfig:
    """Return ``config`` with dotted ``KEY=VALUE`` overrides applied, in order.

    Keys may be written with or without the ``checkpoint.`` prefix. Setting
    ``checkpoint.dyn_ckpt_window=none`` removes the window; setting a window key when there is no
    window creates one, the keys not set taking their defaults (``start=0``, ``stop=512``,
    ``strategy="power2"``), as an empty ``[checkpoint.dyn_ckpt_window]`` table does.

    Raises:
        ConfigError: a malformed override, an unknown key, or a bad value.
    """
    data = config_to_dict(config)
    for override in overrides:
        key, sep, text = override.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {override!r} must look like checkpoint.KEY=VALUE")
        parts = key.split(".")
        if parts[0] == "checkpoint":
            parts = parts[1:]
        all_keys = (
            _valid(CONFIG_FIELDS, "checkpoint.")
            + ", "
            + _valid(WINDOW_FIELDS, f"checkpoint.{WINDOW_KEY}.")
        )
        if len(parts) == 1 and parts[0] in CONFIG_FIELDS:
            name = parts[0]
            if name == WINDOW_KEY:
                if text.strip().lower() not in {"", "none", "null"}:
                    raise ConfigError(
                        f"override {key}={text!r}: only 'none' is allowed here; set "
                        f"checkpoint.{WINDOW_KEY}.start and .stop instead"
                    )
                data[WINDOW_KEY] = None
            else:
                data[name] = _coerce(key, KINDS[name], text)
        elif len(parts) == 2 and parts[0] == WINDOW_KEY and parts[1] in WINDOW_FIELDS:
            window = dict(data.get(WINDOW_KEY) or {})
            window[parts[1]] = _coerce(key, KINDS[parts[1]], text)
            data[WINDOW_KEY] = window
        else:
            raise ConfigError(f"unknown key {key} in override {override!r}; valid keys: {all_keys}")
    return _build(data, "overrides")


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    *,
    base: CheckpointConfig | None = None,
) -> CheckpointConfig:
    """The config a command runs with: the job file if given, else ``base``, else defaults,
    then ``overrides`` on top.

    Example:
        >>> load_config(None, ["checkpoint.keep_last_n=5"]).keep_last_n
        5
    """
    if path is not None:
        config = config_from_toml(path)
    else:
        config = base if base is not None else CheckpointConfig()
    overrides = list(overrides)
    return apply_overrides(config, overrides) if overrides else config


def config_to_dict(config: CheckpointConfig) -> dict[str, Any]:
    """A JSON-able dict of ``config`` that :func:`config_from_dict` turns back into an equal one."""
    return to_plain(config)


def config_from_dict(data: Mapping[str, Any], *, source: str | None = None) -> CheckpointConfig:
    """Inverse of :func:`config_to_dict`; unknown keys and bad values raise ConfigError."""
    return _build(data, source)


def recorded_config_from_dict(
    data: Mapping[str, Any], *, source: str | None = None
) -> tuple[CheckpointConfig, tuple[str, ...]]:
    """A config recorded by a run (``metadata.json``), read leniently.

    A newer version may record keys this one does not know: they are ignored and returned, so
    that the caller warns once, instead of failing (cron gc must keep working after the
    training side is upgraded). Bad values of known keys still raise.

    Returns:
        The config, and the dotted names of the keys that were ignored.

    Raises:
        ConfigError: a known key has a bad value.
    """
    unknown: list[str] = []
    config = _build(data, source, unknown)
    return config, tuple(unknown)
