"""Figure style shared by every plot of the sweep report.

One colour per method, fixed by the method's name (the same in every figure of every report),
panels wrapped into a grid no wider than the page, a visible mark on any axis that does not
start at zero, and one way of saving (atomic, fixed dpi). Plot code elsewhere in the report
only asks for colours, grids and saving here.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Any, Sequence

from dipnet._util.fileio import atomic_path

__all__ = ["method_colour", "method_marker", "axis_floor", "layer_colours", "prediction_style", "panel_grid", "save_figure",
           "mark_truncated_axis", "legend_below", "integer_epochs", "pyplot", "MAX_FIGURE_WIDTH_IN", "DPI", "MAX_FIGURE_WIDTH_PX"]

#: Figures are saved at DPI; MAX_FIGURE_WIDTH_IN * DPI is the widest a figure may be in pixels
#: (the HTML page is 1100 px wide at most, so a figure is shown at 100% or close to it and its
#: 8-10 pt text stays legible).
DPI = 90
MAX_FIGURE_WIDTH_IN = 11.0
MAX_FIGURE_WIDTH_PX = int(MAX_FIGURE_WIDTH_IN * DPI) + 40  # bbox_inches="tight" may add a little

# Fixed colours for the methods the project ships (colour-blind-friendlier Tableau set); the
# baseline is neutral dark grey so every other method reads against it. fixed_noise (DIPNet
# with the variances frozen) used to be a light red beside DIPNet's red, which readers could not
# tell apart in the attack panels: it is ochre now, and every method has its own marker too.
_KNOWN: dict[str, str] = {
    "standard": "#3b3b3b",
    "dipnet": "#d62728",
    "fixed_noise": "#a6761d",
    "sam": "#1f77b4",
    "rs": "#2ca02c",
    "input_noise": "#ff7f0e",
    "dropout": "#9467bd",
    "mixup": "#8c564b",
    "cutmix": "#e377c2",
    "cutout": "#17becf",
}
# Methods not listed above get a colour from this palette chosen by a hash of the name: stable
# across figures, reports and runs (Python's own hash() is salted per process, crc32 is not).
_PALETTE = ("#bcbd22", "#7f7f7f", "#aec7e8", "#98df8a", "#ffbb78", "#c5b0d5", "#c49c94",
            "#f7b6d2", "#dbdb8d", "#9edae5", "#393b79", "#637939", "#8c6d31", "#843c39")


#: One marker per shipped method, so overlapping lines stay apart in grey print and for
#: colour-blind readers; other methods get "o".
_MARKERS: dict[str, str] = {
    "standard": "o", "dipnet": "s", "fixed_noise": "D", "sam": "v", "rs": "^",
    "input_noise": "P", "dropout": "X", "mixup": "<", "cutmix": ">", "cutout": "*",
}


def method_marker(method: str) -> str:
    """The marker of ``method`` in line figures (its colour is `method_colour`)."""
    return _MARKERS.get(method, "o")


def axis_floor(low: float, high: float, truncated: float) -> float:
    """Where a y axis for values in [low, high] (``high`` the axis top) starts: 0 when a full
    axis still shows them (they fill at least a third of it), else ``truncated`` (an axis that
    the caller marks as broken with `mark_truncated_axis`)."""
    return 0.0 if low <= 0 or (high - low) >= high / 3 else truncated


def method_colour(method: str) -> str:
    """The colour of ``method`` in every figure (a hex string).

    Known methods have a fixed colour; a name derived from a known one (``dipnet_lr0.05``,
    ``dipnet-sgd``) gets that method's colour only when it is exactly the known name, otherwise
    a palette colour chosen by a stable hash of the name.
    """
    if method in _KNOWN:
        return _KNOWN[method]
    return _PALETTE[zlib.crc32(method.encode("utf-8")) % len(_PALETTE)]


def layer_colours(layers: Sequence[str]) -> dict[str, Any]:
    """Colours for the layers of one model, from input to output (viridis, so order reads as
    depth). Returns ``{layer: colour}``."""
    plt = pyplot()
    cmap = plt.get_cmap("viridis")
    n = max(len(layers), 1)
    return {la: cmap(0.9 * i / max(n - 1, 1)) for i, la in enumerate(layers)}


def prediction_style(prediction: str) -> dict[str, Any]:
    """Line style of a prediction mode: deterministic solid with circles, sampled dashed with
    squares (the colour stays the method's)."""
    if prediction == "sampled":
        return {"linestyle": "--", "marker": "s"}
    return {"linestyle": "-", "marker": "o"}


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display on servers)."""
    import matplotlib
    matplotlib.use("Agg")  # must precede the pyplot import
    import matplotlib.pyplot as plt
    return plt


def panel_grid(n: int, panel_w: float = 3.5, panel_h: float = 2.8, max_cols: int = 3
               ) -> tuple[Any, list[Any]]:
    """A figure of ``n`` panels wrapped into rows of at most ``max_cols`` (and never wider than
    MAX_FIGURE_WIDTH_IN). Returns (figure, the n axes in reading order); unused cells of the
    last row are switched off."""
    plt = pyplot()
    n = max(int(n), 1)
    cols = max(1, min(n, max_cols, int(MAX_FIGURE_WIDTH_IN // panel_w) or 1))
    rows = math.ceil(n / cols)
    width = min(MAX_FIGURE_WIDTH_IN, panel_w * cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width, panel_h * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def mark_truncated_axis(ax: Any, unit: str = "") -> None:
    """Draw the broken-axis mark (two short diagonals) at the bottom of the y axis and say in
    the label where it starts: for axes whose lower limit is above zero."""
    low = ax.get_ylim()[0]
    if low <= 0:
        return
    kw = {"transform": ax.transAxes, "color": "k", "clip_on": False, "lw": 1}
    for dy in (0.0, 0.03):
        ax.plot((-0.025, 0.025), (0.0 + dy - 0.012, 0.0 + dy + 0.012), **kw)
    label = ax.get_ylabel()
    ax.set_ylabel(f"{label}\n(axis starts at {low:g}{unit})" if label else
                  f"axis starts at {low:g}{unit}")


def legend_below(fig: Any, axes: Sequence[Any], ncol: int = 5) -> None:
    """One legend for the whole figure, under its panels (a legend inside a panel hides
    data). Collects the labelled artists of ``axes`` once each; call after tight_layout."""
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if not handles:
        return
    rows = math.ceil(len(labels) / ncol)
    height = fig.get_size_inches()[1]
    # room for the legend rows (about 0.22 in each) under the panels
    fig.subplots_adjust(bottom=min(0.5, fig.subplotpars.bottom + 0.22 * rows / height))
    fig.legend(handles, labels, loc="lower center", ncol=min(ncol, len(labels)), fontsize=7,
               frameon=False, bbox_to_anchor=(0.5, 0.0))


def integer_epochs(ax: Any) -> None:
    """Whole-number ticks on an epoch axis."""
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def save_figure(fig: Any, path: Path) -> Path:
    """Save ``fig`` as PNG at ``path`` (atomically: a reader never sees half a file), close it
    and return the path."""
    plt = pyplot()
    try:
        with atomic_path(path, suffix=".tmp.png") as tmp:
            fig.savefig(tmp, dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
