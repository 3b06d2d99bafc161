"""`plot_errors`: per-slice orthogonality errors as heatmaps, lines and bars (needs matplotlib)."""

import math
import os
from collections.abc import Sequence
from typing import IO, Any

import numpy as np

from keras_ortho import _math, _validation

# From this many weights on, one overview replaces the panel per weight.
OVERVIEW_FROM = 13
# Weights whose slices the overview details beside the totals.
WORST_DETAILED = 4


def _import_matplotlib():
    try:
        from matplotlib.colors import LogNorm
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "keras_ortho.plot_errors needs matplotlib. Install it with "
            "`pip install 'keras-ortho[plot]'` (or `pip install matplotlib`)."
        ) from error
    return Figure, LogNorm


def _ticks(count, labels=None, most=8):
    """At most `most` integer tick positions over `count` cells, with their labels."""
    positions = np.arange(0, count, max(1, math.ceil(count / most)))
    labels = range(count) if labels is None else labels
    return positions, [str(labels[p]) for p in positions]


def plot_errors(
    source: Any,
    path: str | os.PathLike | IO | None = None,
    epochs: Sequence[int] | None = None,
    title: str | None = None,
    max_columns: int = 2,
    measure: str | None = None,
) -> "matplotlib.figure.Figure":  # noqa: F821 (matplotlib is imported when called)
    """Per-slice errors of each weight, drawn for a person to read at a glance.

    Up to 12 weights, one panel per weight, of the kind its record calls for:

    * slices by epochs: a heatmap, on a log colour scale fitted to the data;
    * a weight with one slice: its error as a line over epochs;
    * a single point in time (one row, such as a saved model's errors): the
      errors of each slice as bars, and all one-slice weights together as one
      bar each in a shared panel.

    From 13 weights on (a ResNet50 has 54 kernels), one overview instead: the
    total error of each weight (the sum over its slices) as a weights x epochs
    heatmap, or as one bar per weight for a single point in time, and beside
    it the per-slice detail of the 4 weights with the largest totals. Its
    longest side stays under 2,400 px for a few hundred weights.

    Epochs are numbered as Keras prints them (`Epoch 1/...` is the first):
    `logger.epochs` counts from 0, and the axes show that number plus one.

    Args:
        source: an `OrthoLogger`, or a dict `{name: array (epochs, num_slices)}`
            such as `logger.errors`.
        path: if given, the figure is also saved there (PNG by extension).
        epochs: the epoch index (from 0) of each row; taken from the logger
            when `source` is one, else 0, 1, 2, ...
        title: optional figure title.
        max_columns: panels per row of the grid.
        measure: what an error measures, for the axes (such as "sum |G_i|",
            the L1 norm's); None takes it from the logger's norm (or says
            "error" for weights of different norms, and for a dict).

    Returns:
        The `matplotlib.figure.Figure`.

    Raises:
        ImportError: naming what to install, when matplotlib is missing.
        ValueError: when there is nothing recorded to draw.

    Examples:

        >>> import numpy as np, keras_ortho
        >>> figure = keras_ortho.plot_errors({"dense/kernel": np.ones((3, 2))})  # 3 epochs x 2 slices
        >>> type(figure).__name__
        'Figure'
    """
    if not isinstance(source, dict) and not hasattr(source, "errors"):
        raise TypeError(
            "Argument `source` must be an OrthoLogger or a dict {name: array (epochs, slices)}. "
            f"Received: source of type {type(source).__name__}"
        )
    max_columns = _validation.check_positive_int("max_columns", max_columns)
    Figure, LogNorm = _import_matplotlib()
    errors = source if isinstance(source, dict) else source.errors
    if epochs is None and not isinstance(source, dict):
        epochs = source.epochs
    if not errors or all(np.asarray(e).size == 0 for e in errors.values()):
        raise ValueError(
            "plot_errors has nothing to draw: no errors were recorded. "
            f"Received: {type(source).__name__} with {len(errors)} weight(s) and no rows"
        )
    arrays = {name: np.asarray(e, dtype=np.float64).reshape(len(e), -1) for name, e in errors.items()}
    num_rows = max(len(a) for a in arrays.values())
    epochs = list(range(num_rows)) if epochs is None else list(epochs)
    if len(epochs) != num_rows:
        raise ValueError(
            f"Argument `epochs` must give one epoch per recorded row ({num_rows}). "
            f"Received: epochs of length {len(epochs)}"
        )

    measure = _measure_of(source) if measure is None else measure
    snapshot = num_rows == 1
    shown_epochs = None if snapshot else [int(e) + 1 for e in epochs]
    if len(arrays) >= OVERVIEW_FROM:
        figure = _overview(Figure, LogNorm, arrays, shown_epochs, measure)
        if title:
            figure.suptitle(title)
        if path is not None:
            figure.savefig(path, dpi=110)
        return figure
    panels = _panels(arrays, snapshot)
    columns = min(max_columns, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(6.5 * columns, 2.6 * rows + 0.6), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    heatmaps = {name: a for kind, name, a in panels if kind == "heatmap"}
    norm = _fitted_norm(LogNorm, heatmaps.values()) if heatmaps else None
    image = None
    for ax, (kind, name, values) in zip(axes.flat, panels, strict=False):  # a last row may have spare axes
        ax.set_title(name, fontsize=9)
        if kind == "heatmap":
            image = _slices_by_epochs(ax, values, norm, shown_epochs)
        elif kind == "line":
            _line(ax, shown_epochs[: len(values)], values[:, 0])
            ax.set_ylabel(measure)
        elif kind == "slices":
            _slice_bars(ax, values, measure)
        else:  # "kernels": one bar per one-slice weight
            names = list(values)
            ax.barh(np.arange(len(names)), [values[n] for n in names])
            ax.set_yticks(np.arange(len(names)), names, fontsize=7)
            ax.invert_yaxis()
            ax.set_xlabel(measure)
            _log_if_wide(ax, np.array(list(values.values())), "x")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    if image is not None:
        figure.colorbar(image, ax=axes, label=f"{measure} (log scale)")
    if title:
        figure.suptitle(title)
    if path is not None:
        figure.savefig(path, dpi=110)
    return figure


def _measure_of(source):
    """The axes' name for an error: the logger's one norm, else "error"."""
    norms = {w.norm for w in getattr(source, "_watched", ())}
    return _math.MEASURES[norms.pop()] if len(norms) == 1 else "error"


def _panels(arrays, snapshot):
    """`[(kind, title, values)]`: what each weight is drawn as (see `plot_errors`)."""
    if snapshot:
        single = {name: float(a[0, 0]) for name, a in arrays.items() if a.shape[1] == 1}
        panels = [("slices", name, a) for name, a in arrays.items() if a.shape[1] > 1]
        if single:
            panels.append(("kernels", "weights of one slice", single))
        return panels
    return [("line" if a.shape[1] == 1 else "heatmap", name, a) for name, a in arrays.items()]


def _fitted_norm(LogNorm, arrays):
    """A log colour scale from the smallest to the largest positive finite error."""
    finite = np.concatenate([a[np.isfinite(a) & (a > 0)] for a in arrays])
    if not finite.size:
        return LogNorm(vmin=1e-6, vmax=1.0)
    vmin, vmax = finite.min(), finite.max()
    if vmax <= vmin:  # one value: a scale of its own width around it
        vmin, vmax = vmin / 1.1, vmax * 1.1
    return LogNorm(vmin=vmin, vmax=vmax)


def _log_if_wide(ax, values, axis):
    """A log scale where the positive values span more than a factor of 100."""
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size and positive.max() > 100 * positive.min():
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def _heatmap(ax, rows_by_epochs, norm, shown_epochs):
    """`(rows, epochs)` on the log colour scale `norm`; zeros sit at its floor. Returns the image."""
    shown = np.ma.masked_invalid(np.clip(rows_by_epochs, norm.vmin, None))
    image = ax.imshow(shown, aspect="auto", norm=norm, cmap="viridis", interpolation="nearest")
    ax.set_xticks(*_ticks(rows_by_epochs.shape[1], shown_epochs))
    ax.set_xlabel("epoch (as Keras prints it)")
    return image


def _slices_by_epochs(ax, values, norm, shown_epochs):
    """A weight's `(epochs, slices)` record: slices as rows of the picture, epochs as columns."""
    image = _heatmap(ax, values.T, norm, shown_epochs)
    ax.set_ylabel("slice")
    ax.set_yticks(*_ticks(values.shape[1]))
    return image


def _slice_bars(ax, values, measure):
    """One point in time of a weight: a bar per slice."""
    ax.bar(np.arange(values.shape[1]), values[0], width=0.8)
    ax.set_xticks(*_ticks(values.shape[1]))
    ax.set_xlabel("slice")
    ax.set_ylabel(measure)
    _log_if_wide(ax, values, "y")


def _line(ax, epochs, values, **style):
    """A line over whole epochs: integer ticks, plain numbers (no offset), log if wide."""
    from matplotlib.ticker import MaxNLocator

    ax.plot(epochs, values, marker="o", markersize=3, **style)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (as Keras prints it)")
    _log_if_wide(ax, values, "y")
    if ax.get_yscale() == "linear":
        ax.ticklabel_format(axis="y", style="plain", useOffset=False)


def _overview(Figure, LogNorm, arrays, shown_epochs, measure):
    """Totals of every weight, and the slices of the worst, in one figure of bounded size.

    `shown_epochs` is None for a single point in time.
    """
    snapshot = shown_epochs is None
    num_rows = 1 if snapshot else len(shown_epochs)
    names = list(arrays)
    totals = np.array(
        [[np.sum(a[r]) if r < len(a) else np.nan for r in range(num_rows)] for a in arrays.values()]
    )  # (weights, epochs)
    last = np.nan_to_num(totals[:, -1], nan=-np.inf)
    # A single point in time of a one-slice weight is its total: nothing more to detail.
    detailed = [i for i in np.argsort(-last, kind="stable") if not snapshot or arrays[names[i]].shape[1] > 1]
    worst = [names[i] for i in detailed[:WORST_DETAILED]]
    # One label row per weight, 0.11 in each: 200 weights are 22 in, 2,420 px at 110 dpi.
    height = min(21.0, max(5.0, 0.11 * len(names) + 1.5))
    figure = Figure(figsize=(15, height), layout="constrained")
    grid = figure.add_gridspec(max(1, len(worst)), 2, width_ratios=[1.1, 1] if worst else [1, 0.001])
    overview = figure.add_subplot(grid[:, 0])
    label_size = 7 if len(names) <= 80 else 5
    if snapshot:
        overview.barh(np.arange(len(names)), totals[:, 0], height=0.8)
        overview.set_xlabel(f"total error: sum over slices of {measure}")
        _log_if_wide(overview, totals[:, 0], "x")
    else:
        image = _heatmap(overview, totals, _fitted_norm(LogNorm, [totals]), shown_epochs)
        figure.colorbar(image, ax=overview, label="total error (log scale)", location="left", pad=0.01)
    overview.set_yticks(np.arange(len(names)), names, fontsize=label_size)
    overview.set_ylim(len(names) - 0.5, -0.5)
    overview.yaxis.tick_right()
    overview.set_title(f"all {len(names)} weights: total error", fontsize=10)
    rank = {names[i]: r + 1 for r, i in enumerate(np.argsort(-last, kind="stable"))}
    for row, name in enumerate(worst):
        ax = figure.add_subplot(grid[row, 1])
        values = arrays[name]
        # Its rank among all weights by total error (a snapshot's one-slice weights are not detailed).
        ax.set_title(f"{name}: total {np.sum(values[-1]):.4g}, #{rank[name]} of {len(names)}", fontsize=9)
        if snapshot:
            _slice_bars(ax, values, measure)
        elif values.shape[1] == 1:
            _line(ax, shown_epochs[: len(values)], values[:, 0])
            ax.set_ylabel(measure)
        else:
            image = _slices_by_epochs(ax, values, _fitted_norm(LogNorm, [values]), shown_epochs)
            figure.colorbar(image, ax=ax, label=measure)
    return figure
