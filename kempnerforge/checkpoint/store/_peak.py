"""The peak disk use of a simulated run: the most checkpoints on disk at once, and when.

Part of :mod:`.simulate`'s closed form: after a save the disk holds the saves kept for good
(milestones, pins) plus the newest ``keep_last_n`` interval saves, and the peak -- those plus the
save being written -- is reached at the final save, first after the last save that raised the
count. Computed from the run's pieces (:mod:`._saves`), never by visiting every save. Pure and
torch-free.
"""

from __future__ import annotations

from kempnerforge.checkpoint.store._saves import Piece, Span

__all__ = ["peak_on_disk"]


def peak_on_disk(
    pieces: list[Piece], keep_last_n: int, final: int | None
) -> tuple[int, int | None]:
    """The most checkpoints on disk at once (the kept ones plus the save being written), and
    the first save at which that happens."""
    if final is None:
        return 0, None
    final_is_plain = isinstance(pieces[-1], Span)
    keepers = [p for p in pieces if isinstance(p, int) and p != final]
    plain = sum(p.count for p in pieces if isinstance(p, Span)) - (1 if final_is_plain else 0)
    if keep_last_n <= 0:  # every round keeps everything: the count grows with each save
        return plain + len(keepers) + 1, final
    nth = min(keep_last_n, plain)
    peak = len(keepers) + nth + 1
    # The last save before the final one that raised the count on disk: the last milestone or
    # pin, or the keep_last_n-th interval save, whichever comes later.
    raisers = keepers[-1:]
    if nth:
        raisers.append(_nth_plain(pieces, nth - 1))
    if not raisers:
        first = pieces[0]
        return peak, first.first if isinstance(first, Span) else first
    return peak, _next_save(pieces, max(raisers))


def _nth_plain(pieces: list[Piece], i: int) -> int:
    """The ``i``-th (0-based) interval save of the run."""
    for piece in pieces:
        if isinstance(piece, Span):
            if i < piece.count:
                return piece.at(i)
            i -= piece.count
    raise IndexError(i)


def _next_save(pieces: list[Piece], step: int) -> int:
    """The first save after ``step`` (there is one: ``step`` is not the final save)."""
    for piece in pieces:
        if isinstance(piece, int):
            if piece > step:
                return piece
        elif piece.last > step:
            if step < piece.first:
                return piece.first
            return piece.at((step - piece.first) // piece.every + 1)
    raise ValueError(f"no save after step {step}")
