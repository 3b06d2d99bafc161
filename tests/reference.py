"""An independent numpy reference for the penalty, written from the spec.

Each slice is taken with `np.moveaxis` and the Gram residual and gradient are
explicit einsums of the index formulas, in float64:

    columns: G[j, b] = sum_k P[k, j] P[k, b] - delta_jb,
             dL/dP[a, b] = 2 factor sum_j P[a, j] sign(G[j, b])
    rows:    G[j, b] = sum_k P[j, k] P[b, k] - delta_jb,
             dL/dP[a, b] = 2 factor sum_j sign(G[a, j]) P[j, b]
"""

import numpy as np


def default_kind(w, slice_axis=None, attention_output=False):
    """The rule the README gives a tensor with no layer (or `slice_axis`), as a kind for `slices_by`."""
    if slice_axis is not None:
        return ("axis", slice_axis)
    if np.ndim(w) >= 3 and attention_output:
        return ("axis", 0)
    if np.ndim(w) == 3:
        return ("axis", 1)
    return ("matrix",)


def slices(w, slice_axis=None, attention_output=False):
    """The list of 2-D matrices the README's slicing rules give for `w`."""
    return slices_by(w, default_kind(w, slice_axis, attention_output))


def slices_by(w, kind):
    """The matrices of `w` by a layer rule: ("matrix",), ("axis", k), ("gates", g) or ("groups", g).

    "matrix": all axes but the last as rows; ("axis", k): slices along axis k,
    each reshaped to (-1, last remaining axis); ("gates", g) and ("groups", g):
    the matrix `(prod(shape[:-1]), shape[-1])` cut into g equal blocks of
    columns (recurrent gates; the filter groups of a grouped convolution, whose
    kernel `(*spatial, cin/g, cout)` gives group j the columns
    `j*cout/g:(j+1)*cout/g`).
    """
    w = np.asarray(w, dtype=np.float64)
    if kind[0] == "matrix":
        return [w.reshape(-1, w.shape[-1])]
    if kind[0] == "axis":
        return [s.reshape(-1, s.shape[-1]) for s in np.moveaxis(w, kind[1], 0)]
    if kind[0] == "groups":
        width = w.shape[-1] // kind[1]
        return [w[..., j * width:(j + 1) * width].reshape(-1, width) for j in range(kind[1])]
    matrix = w.reshape(-1, w.shape[-1])
    return np.split(matrix, kind[1], axis=1)


def penalty_by(w, kind, factor=1.0, mode="auto"):
    return factor * sum(np.abs(residual(p, mode)).sum() for p in slices_by(w, kind))


def gradient_by(w, kind, factor=1.0, mode="auto"):
    """dL/dw for a layer rule, laid out like `w`, from the index formula of each slice."""
    w = np.asarray(w, dtype=np.float64)
    grads = []
    for p in slices_by(w, kind):
        signs = np.sign(residual(p, mode))
        if resolve_mode(p, mode) == "columns":
            grads.append(2 * factor * np.einsum("aj,jb->ab", p, signs, optimize=True))
        else:
            grads.append(2 * factor * np.einsum("aj,jb->ab", signs, p, optimize=True))
    if kind[0] == "matrix":
        return grads[0].reshape(w.shape)
    if kind[0] == "axis":
        moved_shape = np.moveaxis(w, kind[1], 0).shape
        return np.moveaxis(np.stack(grads).reshape(moved_shape), 0, kind[1])
    if kind[0] == "groups":
        return np.concatenate([g.reshape(w.shape[:-1] + (-1,)) for g in grads], axis=-1)
    return np.concatenate(grads, axis=1).reshape(w.shape)


def resolve_mode(matrix, mode):
    if mode == "auto":
        rows, cols = matrix.shape
        return "columns" if rows >= cols else "rows"
    return mode


def residual(matrix, mode):
    mode = resolve_mode(matrix, mode)
    if mode == "columns":
        gram = np.einsum("kj,kb->jb", matrix, matrix, optimize=True)
    else:
        gram = np.einsum("jk,bk->jb", matrix, matrix, optimize=True)
    return gram - np.eye(gram.shape[0])


def slice_errors(w, slice_axis=None, mode="auto", attention_output=False):
    return np.array(
        [np.abs(residual(p, mode)).sum() for p in slices(w, slice_axis, attention_output)]
    )


def penalty(w, factor=1.0, slice_axis=None, mode="auto", attention_output=False):
    return factor * slice_errors(w, slice_axis, mode, attention_output).sum()


def gradient(w, factor=1.0, slice_axis=None, mode="auto"):
    """dL/dw, laid out like `w`."""
    return gradient_by(w, default_kind(w, slice_axis), factor, mode)


def mean_penalty(w, factor=1.0, slice_axis=None, mode="auto"):
    """`reduction="mean"`: factor * sum_i mean_jk |G_i|_jk, the mean over each Gram's k*k entries."""
    return factor * sum(np.abs(residual(p, mode)).mean() for p in slices(w, slice_axis))


def mean_gradient(w, factor=1.0, slice_axis=None, mode="auto"):
    """dL/dw of `mean_penalty`: each slice's sum gradient divided by its Gram's k*k entries."""
    sides = {residual(p, mode).shape[0] for p in slices(w, slice_axis)}
    assert len(sides) == 1  # the slices of one weight share their shape
    return gradient(w, factor / sides.pop() ** 2, slice_axis, mode)
