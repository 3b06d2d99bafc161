"""`plot_errors`: per-slice orthogonality errors as heatmaps, lines and bars (needs matplotlib)."""

import math

import numpy as np

from keras_ortho import _validation


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


def plot_errors(source, path=None, epochs=None, title=None, max_columns=2):
    """Per-slice errors of each weight, drawn for a person to read at a glance.

    One panel per weight, of the kind its record calls for:

    * slices by epochs: a heatmap, on a log colour scale fitted to the data;
    * a weight with one slice: its error as a line over epochs;
    * a single point in time (one row, such as a saved model's errors): the
      errors of each slice as bars, and all one-slice weights together as one
      bar each in a shared panel.

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

    Returns:
        The `matplotlib.figure.Figure`.

    Raises:
        ImportError: naming what to install, when matplotlib is missing.
        ValueError: when there is nothing recorded to draw.
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

    snapshot = num_rows == 1
    panels = _panels(arrays, snapshot)
    columns = min(max_columns, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(6.5 * columns, 2.6 * rows + 0.6), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    heatmaps = {name: a for kind, name, a in panels if kind == "heatmap"}
    norm = _fitted_norm(LogNorm, heatmaps.values()) if heatmaps else None
    shown_epochs = None if snapshot else [int(e) + 1 for e in epochs]
    image = None
    for ax, (kind, name, values) in zip(axes.flat, panels):
        ax.set_title(name, fontsize=9)
        if kind == "heatmap":
            # Rows of the picture are slices, columns are epochs; zeros sit at the floor.
            shown = np.ma.masked_invalid(np.clip(values.T, norm.vmin, None))
            image = ax.imshow(shown, aspect="auto", norm=norm, cmap="viridis", interpolation="nearest")
            ax.set_ylabel("slice")
            ax.set_xlabel("epoch (as Keras prints it)")
            ax.set_xticks(*_ticks(len(values), shown_epochs))
            ax.set_yticks(*_ticks(values.shape[1]))
        elif kind == "line":
            ax.plot(shown_epochs[: len(values)], values[:, 0], marker="o", markersize=3)
            ax.set_xlabel("epoch (as Keras prints it)")
            ax.set_ylabel("sum |G|")
            _log_if_wide(ax, values, "y")
        elif kind == "slices":
            ax.bar(np.arange(values.shape[1]), values[0], width=0.8)
            ax.set_xticks(*_ticks(values.shape[1]))
            ax.set_xlabel("slice")
            ax.set_ylabel("sum |G_i|")
            _log_if_wide(ax, values, "y")
        else:  # "kernels": one bar per one-slice weight
            names = list(values)
            ax.barh(np.arange(len(names)), [values[n] for n in names])
            ax.set_yticks(np.arange(len(names)), names, fontsize=7)
            ax.invert_yaxis()
            ax.set_xlabel("sum |G|")
            _log_if_wide(ax, np.array(list(values.values())), "x")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if image is not None:
        figure.colorbar(image, ax=axes, label="sum |G_i| (log scale)")
    if title:
        figure.suptitle(title)
    if path is not None:
        figure.savefig(path, dpi=110)
    return figure


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
