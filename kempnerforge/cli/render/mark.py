"""The ``kf-ckpt mark`` view of a :class:`~kempnerforge.checkpoint.store.policy.MarkResult`:
the table of milestones with the policy line, and the JSON document."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kempnerforge.cli.render import FORMAT_VERSION, plural, render_table
from kempnerforge.config.loader import config_to_dict

if TYPE_CHECKING:
    from kempnerforge.checkpoint.store.policy import MarkResult
    from kempnerforge.config.checkpoint import CheckpointConfig

__all__ = ["mark_document", "mark_text"]


def _window_text(config: CheckpointConfig) -> str:
    window = config.dyn_ckpt_window
    if window is None:
        return "no window"
    return f"window {window.start}..{window.stop} {window.strategy}"


def mark_text(result: MarkResult, config: CheckpointConfig) -> str:
    """What ``kf-ckpt mark`` did: a table of the milestones, then the policy line."""
    root = result.root
    if not result.checkpoints:
        return f"no checkpoints under {root}; nothing to mark"
    would = result.dry_run
    rows = [(s, "would mark" if would else "marked") for s in result.marked]
    rows += [(s, "already marked") for s in result.already_marked]
    rows += [(s, f"skipped: {why}") for s, why in result.skipped]
    lines = []
    if rows:
        lines += [render_table(sorted(rows), ("step", "milestone"), "rl"), ""]
        done = "would mark" if would else "marked"
        lines.append(
            f"{done} {plural(len(result.marked), 'milestone')} of {_window_text(config)}; "
            f"{len(result.already_marked)} already marked"
            + (f"; {len(result.skipped)} skipped" if result.skipped else "")
        )
    else:
        lines.append(f"nothing to mark: {_window_text(config)} matches no checkpoint under {root}")
    if result.policy_path is not None:
        policy = f"keep_last_n {config.keep_last_n}, {_window_text(config)}"
        if not result.policy_changed:
            lines.append(f"policy unchanged in {result.policy_path} ({policy})")
        elif would:
            lines.append(f"would record the policy ({policy}) in {result.policy_path}")
        else:
            lines.append(
                f"recorded the policy ({policy}) in {result.policy_path}; "
                f"'kf-ckpt gc {root}' now uses it"
            )
    if would:
        lines.append("dry run: nothing was changed")
    return "\n".join(lines)


def mark_document(
    result: MarkResult, config: CheckpointConfig, config_path: str | None
) -> dict[str, Any]:
    """The ``kf-ckpt mark --json`` document (schema in docs/reference/json.rst)."""
    return {
        "format": "kf-ckpt-mark",
        "format_version": FORMAT_VERSION,
        "root": str(result.root),
        "dry_run": result.dry_run,
        "config": {
            "source": "file" if config_path is not None else "window",
            "path": config_path,
            "checkpoint": config_to_dict(config),
        },
        "checkpoint_count": result.checkpoints,
        "marked": list(result.marked),
        "already_marked": list(result.already_marked),
        "skipped": [{"step": s, "reason": why} for s, why in result.skipped],
        "policy": None
        if result.policy_path is None
        else {"path": str(result.policy_path), "changed": result.policy_changed},
    }
