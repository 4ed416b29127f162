"""CKA heatmaps with matplotlib, an optional extra (``pip install 'mgtool[plots]'``).

Uses matplotlib's object API (``Figure`` + Agg), never pyplot, so no global state or
display backend is touched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from mgtool.checkpoint import atomic_write

PLOTS_HINT = "pip install 'mgtool[plots]'"
FORMATS = (".png", ".pdf", ".svg")
MAX_TICKS = 24
ANNOTATE_UP_TO = 12  # write the values into the cells of matrices this small


def matplotlib_available() -> bool:
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        return False
    return True


def plot_heatmap(
    matrix: Sequence[Sequence[float | None]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    title: str,
    row_axis: str,
    col_axis: str,
    out: Path,
    force: bool = True,
) -> None:
    """Draw ``matrix`` (rows bottom to top, like the paper's figures) to ``out`` atomically
    (without ``force``, a file that appeared at ``out`` meanwhile is never replaced).

    Entries are CKA values in [0, 1]; None/NaN cells are left blank.
    """
    from matplotlib.figure import Figure

    values = [[math.nan if v is None else float(v) for v in row] for row in matrix]
    rows, cols = len(values), len(values[0]) if values else 0
    size = min(9.0, max(4.0, 0.28 * max(rows, cols) + 2.5))
    fig = Figure(figsize=(size + 1.0, size), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(
        values,
        origin="lower",
        cmap="magma",
        vmin=0.0,
        vmax=1.0,
        aspect="auto",
        interpolation="nearest",
    )
    fig.colorbar(image, ax=ax, label="linear CKA")
    if rows <= ANNOTATE_UP_TO and cols <= ANNOTATE_UP_TO:
        for r, row in enumerate(values):
            for c, v in enumerate(row):
                if not math.isnan(v):
                    color = "black" if v > 0.6 else "white"
                    ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7, color=color)
    _ticks(ax.set_yticks, rows, row_labels)
    _ticks(ax.set_xticks, cols, col_labels, rotate=True)
    ax.set_ylabel(row_axis)
    ax.set_xlabel(col_axis)
    ax.set_title(title, fontsize=10)
    fmt = out.suffix.lstrip(".").lower()
    atomic_write(out, lambda tmp: fig.savefig(tmp, format=fmt), force=force)


def _ticks(setter: object, count: int, labels: Sequence[str], rotate: bool = False) -> None:
    step = max(1, math.ceil(count / MAX_TICKS))
    positions = list(range(0, count, step))
    kwargs = {"rotation": 90, "fontsize": 7} if rotate else {"fontsize": 7}
    setter(positions, [labels[i] for i in positions], **kwargs)  # type: ignore[operator]


def plot_series(
    series: Sequence[tuple[str, Sequence[float], Sequence[float], Sequence[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    out: Path,
    hline: float | None = None,
    force: bool = True,
) -> None:
    """Lines with error bars, one per ``(label, xs, ys, errors)``, to ``out`` atomically.

    The file is a function of the arguments alone (no date or software version written
    into it), so a report rebuilt from the same numbers is byte for byte the same."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5), dpi=130, layout="constrained")
    ax = fig.add_subplot()
    markers = "osD^v<>ph*"
    for i, (label, xs, ys, errs) in enumerate(series):
        ax.errorbar(list(xs), list(ys), yerr=list(errs), fmt=markers[i % len(markers)] + "-", color=f"C{i % 10}",
                    capsize=3, lw=1, ms=5, label=label)
    if hline is not None:
        ax.axhline(hline, ls="--", color="gray", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if series:
        ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fmt = out.suffix.lstrip(".").lower()
    metadata = {"Software": None} if fmt == "png" else {"Creator": None, "Date": None} if fmt == "svg" else {
        "Creator": None, "Producer": None, "CreationDate": None}
    atomic_write(out, lambda tmp: fig.savefig(tmp, format=fmt, metadata=metadata), force=force)
