"""`plot_errors`: per-slice orthogonality errors as heatmaps (needs matplotlib)."""

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
    """One heatmap per weight: slices by epochs, on a log colour scale.

    Args:
        source: an `OrthoLogger`, or a dict `{name: array (epochs, num_slices)}`
            such as `logger.errors`.
        path: if given, the figure is also saved there (PNG by extension).
        epochs: the epoch number of each row; taken from the logger when
            `source` is one, else 0, 1, 2, ...
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

    finite = np.concatenate([a[np.isfinite(a) & (a > 0)] for a in arrays.values()])
    vmin, vmax = (finite.min(), finite.max()) if finite.size else (1e-6, 1.0)
    vmax = max(vmax, vmin * 10)
    norm = LogNorm(vmin=vmin, vmax=vmax)

    columns = min(max_columns, len(arrays))
    rows = math.ceil(len(arrays) / columns)
    figure = Figure(figsize=(6.5 * columns, 2.6 * rows + 0.6), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    image = None
    for ax, (name, values) in zip(axes.flat, arrays.items()):
        # Rows of the picture are slices, columns are epochs; zeros sit at the floor.
        shown = np.ma.masked_invalid(np.clip(values.T, vmin, None))
        image = ax.imshow(shown, aspect="auto", norm=norm, cmap="viridis", interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("slice")
        ax.set_xlabel("epoch")
        ax.set_xticks(*_ticks(len(values), epochs))
        ax.set_yticks(*_ticks(values.shape[1]))
    for ax in list(axes.flat)[len(arrays):]:
        ax.set_visible(False)
    figure.colorbar(image, ax=axes, label="sum |G_i| (log scale)")
    if title:
        figure.suptitle(title)
    if path is not None:
        figure.savefig(path, dpi=110)
    return figure
