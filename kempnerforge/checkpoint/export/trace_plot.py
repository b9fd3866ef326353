"""A figure of a trace: weight norm and relative change per group against the step.

matplotlib is an optional extra (``pip install 'kempnerforge[plot]'``) imported only here, and
only when a figure is drawn. The figure is drawn on a bare :class:`~matplotlib.figure.Figure`
(no pyplot, no GUI backend), so it works headless whatever ``MPLBACKEND`` says.

The step axis is logarithmic, as the power-2 window is (``symlog`` with a linear stretch below 1,
so that step 0, the initial weights, has a place). The window's milestones are marked. With
many groups the legend names only the ``top_k`` that changed most (largest relative change at
any step); the others are drawn thin and grey under one legend entry, and the whole model in
black on top.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from kempnerforge.checkpoint.export.weight_trace import TraceResult, TraceRow
from kempnerforge.errors import ConfigError, MissingExtraError

__all__ = ["PLOT_SUFFIXES", "check_plot_path", "plot_trace", "require_matplotlib"]

PLOT_SUFFIXES = (".png", ".svg")
INSTALL_LINE = "pip install 'kempnerforge[plot]'"
DEFAULT_TOP_K = 8


def require_matplotlib() -> None:
    """Fail early, before any checkpoint is read, when matplotlib is not installed.

    Raises:
        MissingExtraError: matplotlib cannot be imported.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(
            f"plotting needs matplotlib, an optional extra: {INSTALL_LINE}"
        ) from exc


def check_plot_path(path: Path) -> None:
    """The figure goes to an existing directory, as PNG or SVG by its suffix.

    Raises:
        ConfigError: another suffix, or the directory does not exist.
    """
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise ConfigError(f"plot file {path} must end in .png or .svg")
    if not path.parent.is_dir():
        raise ConfigError(f"cannot write the plot {path}: {path.parent} is not a directory")


def plot_trace(result: TraceResult, path: str | Path, *, top_k: int = DEFAULT_TOP_K) -> Path:
    """Draw ``result`` into ``path`` (``.png`` or ``.svg``); the file appears complete or not.

    Raises:
        ConfigError: a bad suffix or directory.
        MissingExtraError: matplotlib is not installed.
    """
    path = Path(path)
    check_plot_path(path)
    require_matplotlib()
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 7), layout="constrained")
    ax_norm, ax_rel = fig.subplots(2, 1, sharex=True)
    steps = list(result.steps)
    ranked = sorted(result.rows, key=_peak_change, reverse=True)
    highlighted = {r.name for r in ranked[:top_k]}
    others = [r for r in result.rows if r.name not in highlighted]
    for i, row in enumerate(others):
        label = f"other groups ({len(others)})" if i == 0 else None
        _draw(ax_norm, ax_rel, steps, row, color="0.75", width=0.8, label=label, z=1)
    colors = _palette(len(highlighted))
    for row, color in zip(ranked[:top_k], colors, strict=False):
        _draw(ax_norm, ax_rel, steps, row, color=color, width=1.5, label=row.name, z=2)
    _draw(ax_norm, ax_rel, steps, result.total, color="black", width=2.5, label="total", z=3)
    for ax in (ax_norm, ax_rel):
        ax.set_xscale("symlog", linthresh=1, linscale=0.5)
        ax.grid(True, which="major", alpha=0.3)
        if _positive(ax):
            ax.set_yscale("log")
    for k, step in enumerate(result.milestones):
        for ax in (ax_norm, ax_rel):
            ax.axvline(step, color="tab:blue", alpha=0.25, linestyle=":", linewidth=1, zorder=0,
                       label="window milestone" if k == 0 and ax is ax_norm else None)  # fmt: skip
    if len(steps) <= 16:
        ax_rel.set_xticks(steps, [str(s) for s in steps])
    ax_norm.set_ylabel("L2 norm")
    ax_rel.set_ylabel("relative change from previous step")
    ax_rel.set_xlabel("step")
    ax_norm.set_title(f"{result.root} ({len(steps)} checkpoints)", fontsize=10)
    ax_norm.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        # SVG text stays text (searchable, small) rather than glyph outlines.
        with rc_context({"svg.fonttype": "none"}):
            fig.savefig(tmp, format=path.suffix.lower().lstrip("."), dpi=150)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _peak_change(row: TraceRow) -> float:
    values = [v for v in row.rel_change if v is not None and math.isfinite(v)]
    return max(values, default=-1.0)


def _draw(
    ax_norm: Any,
    ax_rel: Any,
    steps: list[int],
    row: TraceRow,
    *,
    color: Any,
    width: float,
    label: str | None,
    z: int,
) -> None:
    style = {"color": color, "linewidth": width, "zorder": z, "marker": "o", "markersize": 2.5}
    ax_norm.plot(steps, _masked(row.l2), label=label, **style)
    ax_rel.plot(steps, _masked(row.rel_change), **style)


def _masked(values: tuple[float | None, ...]) -> list[float]:
    # Gaps for undefined points; zeros too, which a log axis cannot show.
    return [v if v is not None and math.isfinite(v) and v > 0 else math.nan for v in values]


def _positive(ax: Any) -> bool:
    ys = [y for line in ax.get_lines() for y in line.get_ydata() if not math.isnan(y)]
    return bool(ys) and min(ys) > 0


def _palette(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]
