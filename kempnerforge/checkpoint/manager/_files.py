"""What rank 0 writes into a save besides the tensors: ``metadata.json``.

``metadata.json`` is what ``kf-ckpt`` and retention read without torch: the step, the config,
the world size, and the lineage (the ``run_id`` of the manager that wrote it, and the checkpoint
its run resumed from). Torch-free.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kempnerforge.checkpoint.store.files import write_json_atomic
from kempnerforge.checkpoint.store.layout import METADATA_JSON, parse_step
from kempnerforge.checkpoint.store.owner import Owner
from kempnerforge.config.checkpoint import CheckpointConfig
from kempnerforge.config.loader import config_to_dict

__all__ = ["FORMAT_VERSION", "resumed_from_document", "write_metadata"]

FORMAT_VERSION = 1


def resumed_from_document(owner: Owner | None) -> dict[str, Any] | None:
    """The ``resumed_from`` entry of metadata.json: the checkpoint the owning run resumed from."""
    if owner is None or owner.resumed_from_path is None:
        return None
    path = Path(owner.resumed_from_path)
    step = owner.resumed_from if owner.resumed_from is not None else parse_step(path.name)
    return {"step": step, "path": str(path), "in_root": owner.resumed_from is not None}


def write_metadata(
    step_dir: Path,
    *,
    step: int,
    tokens_seen: int,
    config: CheckpointConfig,
    world_size: int,
    pp_stages: int | None,
    owner: Owner | None = None,
    metrics: dict[str, float | int | None] | None = None,
) -> None:
    """Publish ``metadata.json``: what ``kf-ckpt`` and retention read without torch.

    ``metrics`` are recorded as given: check them first with
    :func:`kempnerforge.checkpoint.store.metrics.checked_metrics`.
    """
    metadata: dict[str, Any] = {
        "step": step,
        "tokens_seen": tokens_seen,
        "dynamic_milestone": config.is_dynamic_milestone(step),
        "checkpoint": config_to_dict(config),
        "world_size": world_size,
        "format_version": FORMAT_VERSION,
        "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "metrics": dict(metrics or {}),
    }
    if pp_stages is not None:
        metadata["pp_stages"] = pp_stages
    if owner is not None:
        metadata["run_id"] = owner.token
        metadata["resumed_from"] = resumed_from_document(owner)
    write_json_atomic(step_dir / METADATA_JSON, metadata)
