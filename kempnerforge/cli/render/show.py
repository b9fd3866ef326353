"""The ``kf-ckpt show`` view of a checkpoint's
:class:`~kempnerforge.checkpoint.export.contents.CheckpointContents`: the tensor table with the
model, group and optimizer-state lines, and the JSON document.

Names and paths come from the checkpoint's own metadata (untrusted): they are escaped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kempnerforge.cli.render import escape, human_bytes, render_table, shape_text

if TYPE_CHECKING:
    from kempnerforge.checkpoint.export.contents import CheckpointContents

__all__ = ["MAX_GROUPS", "rule_text", "show_document", "show_text"]

MAX_GROUPS = 12
"""Groups listed on the ``groups:`` line; more are counted."""

_RULE_TEXT = {
    "model_group": "the 'model' group",
    "outside_non_model_groups": "the rule for checkpoints without a 'model' group "
    "(everything outside optimizer, lr_scheduler, dataloader, train_state, ...)",
    "include_patterns": "--include",
}


def rule_text(rule: str) -> str:
    """How ``show`` names the rule that chose a checkpoint's model part."""
    return _RULE_TEXT.get(str(rule), str(rule))


def show_text(contents: CheckpointContents) -> str:
    """The path line, the tensor table, then the model, groups and state lines."""
    with_stage = contents.pp_stages is not None
    rows = [
        (
            escape(t.name),
            shape_text(t.shape),
            t.dtype,
            human_bytes(t.size_bytes),
            *((f"pp{t.stage}",) if with_stage else ()),
        )
        for t in contents.tensors
    ]
    headers = ("name", "shape", "dtype", "size", *(("stage",) if with_stage else ()))
    tokens = f", {contents.tokens_seen:,} tokens seen" if contents.tokens_seen is not None else ""
    which = f"step {contents.step}" if contents.step is not None else "step unknown"
    excluded = (
        f", {contents.excluded_by_pattern} more left out by --exclude"
        if contents.excluded_by_pattern
        else ""
    )
    groups = ", ".join(
        f"{g.name} ({g.tensors}, {human_bytes(g.size_bytes)})" for g in contents.groups[:MAX_GROUPS]
    )
    if len(contents.groups) > MAX_GROUPS:
        groups += f", ... ({len(contents.groups)} groups)"
    lines = [
        f"{escape(str(contents.step_dir))} ({which}{tokens})",
        render_table(rows, headers, "l" * len(headers)),
        f"model: {len(contents.tensors)} tensors, {human_bytes(contents.model_size_bytes)}, "
        f"chosen by {rule_text(contents.rule)}{excluded}",
        f"groups: {groups}",
        f"optimizer state: {contents.optimizer_tensors} tensors, "
        f"{human_bytes(contents.optimizer_size_bytes)}",
    ]
    if contents.other_size_bytes:
        lines.append(f"other state: {human_bytes(contents.other_size_bytes)}")
    return "\n".join(lines)


def show_document(contents: CheckpointContents) -> dict[str, Any]:
    """The ``kf-ckpt show --json`` document, with the other commands' conventions
    (docs/reference/json.rst)."""
    return {"format": "kf-ckpt-show", "format_version": 1, **contents.to_json()}
