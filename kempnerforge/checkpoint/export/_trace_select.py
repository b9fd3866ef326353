"""Which checkpoints of a root a trace reads: all, the window's milestones, or listed steps.

Read-only: the step directories are listed, judged complete by their markers, and their
``metadata.json`` read for the milestone flag; nothing is written into the root.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kempnerforge.checkpoint.store.catalog import check_root
from kempnerforge.checkpoint.store.layout import check_complete, list_step_dirs
from kempnerforge.checkpoint.store.recorded import read_metadata_json, recorded_pp_stages
from kempnerforge.checkpoint.store.selection import select_config
from kempnerforge.config.checkpoint import CheckpointConfig
from kempnerforge.errors import CheckpointNotFoundError, ConfigError

__all__ = ["ChosenSteps", "select_steps"]


@dataclass(frozen=True, kw_only=True)
class ChosenSteps:
    root: Path
    steps: tuple[int, ...]
    paths: tuple[Path, ...]
    """Complete checkpoints to read, in step order (one per step)."""
    milestones: tuple[int, ...]
    """Those of them that are milestones of the run's window."""
    notes: tuple[str, ...]


def select_steps(root: Path, steps: str | Sequence[int]) -> ChosenSteps:
    """Pick the complete checkpoints of ``root`` that ``steps`` names.

    Milestones are the steps of the window of the run's recorded config (the newest checkpoint
    that records one), plus any checkpoint whose metadata.json records ``dynamic_milestone``.

    Raises:
        CheckpointRootError: ``root`` is missing or not a directory.
        CheckpointNotFoundError: a listed step has no checkpoint, or none complete is selected.
        ConfigError: ``steps`` is neither ``"all"``, ``"milestones"`` nor a list of steps.
    """
    root = check_root(root)
    found = dict(list_step_dirs(root))
    if not found:
        raise CheckpointNotFoundError(
            f"no step_<N> checkpoint under {root}; pass the checkpoint root of a run "
            f"(see 'kf-ckpt ls {root}')"
        )
    notes: list[str] = []
    milestone = _milestone_rule(root, notes)
    if steps == "all":
        wanted = sorted(found)
    elif steps == "milestones":
        wanted = [s for s in sorted(found) if milestone(s, found[s])]
        if not wanted:
            raise CheckpointNotFoundError(
                f"no checkpoint under {root} is a milestone of a checkpoint window; "
                f"select steps by number instead (see 'kf-ckpt ls {root}')"
            )
    elif isinstance(steps, str):
        raise ConfigError(f"steps must be 'all', 'milestones' or a list of steps, got {steps!r}")
    else:
        missing = [s for s in steps if s not in found]
        if missing:
            raise CheckpointNotFoundError(
                f"no checkpoint for step {', '.join(map(str, missing))} under {root}; "
                f"run 'kf-ckpt ls {root}'"
            )
        wanted = sorted(set(steps))
    paths: list[Path] = []
    chosen: list[int] = []
    for step in wanted:
        path = found[step]
        status = check_complete(path, pp_stages=recorded_pp_stages(path))
        if status.complete:
            paths.append(path)
            chosen.append(step)
        else:
            notes.append(f"skipped {path.name}: incomplete ({status.reason})")
    if not paths:
        raise CheckpointNotFoundError(
            f"none of the selected checkpoints under {root} is complete; run 'kf-ckpt ls {root}'"
        )
    milestones = tuple(s for s in chosen if milestone(s, found[s]))
    return ChosenSteps(
        root=root,
        steps=tuple(chosen),
        paths=tuple(paths),
        milestones=milestones,
        notes=tuple(notes),
    )


def _milestone_rule(root: Path, notes: list[str]) -> Callable[[int, Path], bool]:
    config: CheckpointConfig | None
    try:
        config = select_config(root).config
    except ConfigError as exc:
        notes.append(f"milestones from metadata.json only: {exc}")
        config = None

    def is_milestone(step: int, path: Path) -> bool:
        if config is not None and config.is_dynamic_milestone(step):
            return True
        data = read_metadata_json(path).data
        return bool(data and data.get("dynamic_milestone") is True)

    return is_milestone
