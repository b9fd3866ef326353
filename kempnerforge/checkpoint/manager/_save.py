"""The host side of a save: per-rank RNG and dataloader state, ``train_state.pt``.

Every rank captures its own RNG and dataloader state; rank 0 gathers them and writes one
``train_state.pt`` (upstream KempnerForge's layout, :mod:`._format`) and ``metadata.json`` into
the save's in-flight directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kempnerforge.checkpoint.manager._files import write_metadata
from kempnerforge.checkpoint.manager.train_state import (
    compose_train_state,
    get_rng_state,
    save_train_state,
)
from kempnerforge.checkpoint.store.layout import TRAIN_STATE
from kempnerforge.checkpoint.store.owner import Owner
from kempnerforge.config.checkpoint import CheckpointConfig

__all__ = [
    "Stateful",
    "TrainFiles",
    "capture_rank_state",
    "write_train_files",
]


class Stateful(Protocol):
    """A scheduler or a dataloader: anything with ``state_dict`` and ``load_state_dict``."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any], /) -> Any: ...


@dataclass(frozen=True, kw_only=True)
class TrainFiles:
    """What rank 0 writes next to the tensors of a save."""

    step: int
    tokens_seen: int
    scheduler: Stateful | None
    extra: dict[str, Any] | None
    frozen: list[str]
    ranks: list[dict[str, Any]]
    config: CheckpointConfig
    world_size: int
    pp_stages: int | None
    owner: Owner | None
    metrics: dict[str, float | int | None]


def capture_rank_state(
    dataloader: Stateful | None,
) -> tuple[dict[str, Any] | None, BaseException | None]:
    """This rank's RNG and dataloader state, or the error that capturing it raised."""
    try:
        loader_state = None
        if dataloader is not None and hasattr(dataloader, "state_dict"):
            loader_state = dataloader.state_dict()
        state = {"rng": get_rng_state(), "dataloader": loader_state}
    except Exception as exc:  # reported through the fence, so that no rank waits for this one
        return None, exc
    return state, None


def write_train_files(save_dir: Path, files: TrainFiles) -> None:
    """Write ``train_state.pt`` and ``metadata.json`` of a save into ``save_dir`` (rank 0).

    Raises:
        CheckpointSaveError: the state of another rank could not be captured.
        TypeError: scheduler, dataloader or ``extra`` state that a safe load would reject.
    """
    from kempnerforge.errors import CheckpointSaveError

    missing = [rank for rank, state in enumerate(files.ranks) if state is None]
    if missing:
        raise CheckpointSaveError(
            f"capturing the train state of step {files.step} failed on rank {missing[0]}"
        )
    train_state = compose_train_state(
        step=files.step,
        tokens_seen=files.tokens_seen,
        scheduler_state=files.scheduler.state_dict() if files.scheduler is not None else None,
        ranks=files.ranks,
        frozen_params=files.frozen,
        extra=files.extra,
    )
    save_train_state(save_dir / TRAIN_STATE, train_state)
    write_metadata(
        save_dir,
        step=files.step,
        tokens_seen=files.tokens_seen,
        config=files.config,
        world_size=files.world_size,
        pp_stages=files.pp_stages,
        owner=files.owner,
        metrics=files.metrics,
    )
