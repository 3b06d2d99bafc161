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
    """The rule docs/slicing.md gives a tensor with no layer (or `slice_axis`), as a kind for `slices_by`."""
    if slice_axis is not None:
        return ("axis", slice_axis)
    if np.ndim(w) >= 3 and attention_output:
        return ("axis", 0)
    if np.ndim(w) == 3:
        return ("axis", 1)
    return ("matrix",)


def slices(w, slice_axis=None, attention_output=False):
    """The list of 2-D matrices the slicing rules of docs/slicing.md give for `w`."""
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
        return [w[..., j * width : (j + 1) * width].reshape(-1, width) for j in range(kind[1])]
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
    return np.array([np.abs(residual(p, mode)).sum() for p in slices(w, slice_axis, attention_output)])


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


# --- The other norms, each from its definition (no identity the library uses) ----


def norm_of(matrix, norm, mode="auto", reduction="sum"):
    """One slice's measure under `norm`, from its definition, in float64.

    "l1": sum |G|; "fro": sum G^2; "double": both Grams explicitly,
    ||P^T P - I||^2 + ||P P^T - I||^2; "spectral": max |eigvalsh(G)|;
    "coherence": max |G|. "mean" averages over each Gram's entries.
    """
    if norm == "double":
        sides = [residual(matrix, "columns"), residual(matrix, "rows")]
        return sum((g**2).mean() if reduction == "mean" else (g**2).sum() for g in sides)
    g = residual(matrix, mode)
    if norm == "l1":
        value = np.abs(g)
    elif norm == "fro":
        value = g**2
    elif norm == "spectral":
        return np.abs(np.linalg.eigvalsh(g)).max()
    else:
        return np.abs(g).max()
    return value.mean() if reduction == "mean" else value.sum()


def norm_errors(w, norm, slice_axis=None, mode="auto"):
    return np.array([norm_of(p, norm, mode) for p in slices(w, slice_axis)])


def norm_penalty(w, norm, factor=1.0, slice_axis=None, mode="auto", reduction="sum"):
    return factor * sum(norm_of(p, norm, mode, reduction) for p in slices(w, slice_axis))


def numeric_gradient(f, w, eps=1e-6):
    """Central differences of the float64 function `f` at `w`, entry by entry."""
    numeric = np.zeros_like(w)
    for index in np.ndindex(w.shape):
        step = np.zeros_like(w)
        step[index] = eps
        numeric[index] = (f(w + step) - f(w - step)) / (2 * eps)
    return numeric


def spectral_gradient(matrix, mode="auto"):
    """d sigma_max(G) / dP = 2 s P u u^T (columns) or 2 s u u^T P (rows), from `eigh`."""
    g = residual(matrix, mode)
    values, vectors = np.linalg.eigh(g)
    top = np.argmax(np.abs(values))
    outer = np.sign(values[top]) * np.outer(vectors[:, top], vectors[:, top])
    return 2 * (matrix @ outer if resolve_mode(matrix, mode) == "columns" else outer @ matrix)


def with_singular_values(rng, rows, cols, singular_values):
    """A `rows x cols` matrix with the given singular values and random singular vectors."""
    k = min(rows, cols)
    u, _ = np.linalg.qr(rng.normal(size=(rows, k)))
    v, _ = np.linalg.qr(rng.normal(size=(cols, k)))
    return (u * np.asarray(singular_values, dtype=np.float64)) @ v.T


def polar_factor(matrix):
    """The nearest matrix with orthonormal columns (rows, if wide): `U V^T` of the SVD."""
    u, _, vt = np.linalg.svd(matrix, full_matrices=False)
    return u @ vt


def conv_matrix(kernel, strides, input_size, groups=1, per_channel=False, padding="circular"):
    """The matrix of a convolution, from its definition `y[p, o] = sum_{d, c} x[s p + d, c] K[d, c, o]`.

    `kernel` is `(*spatial, cin / groups, cout)`, or `(*spatial, channels, multiplier)`
    with `per_channel` (input channel `c` feeds outputs `c * multiplier + m`).
    Inputs and outputs are flattened position-major, channel-minor. "circular"
    wraps `s p + d` around an image of `input_size`; "valid" keeps the outputs
    whose taps all fall inside it (Keras's "valid", and the interior of "same").
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    spatial, strides, sizes = kernel.shape[:-2], tuple(strides), tuple(input_size)
    if per_channel:
        channels, multiplier = kernel.shape[-2:]
        cin, cout = channels, channels * multiplier
    else:
        cin, cout = kernel.shape[-2] * groups, kernel.shape[-1]
    if padding == "circular":
        outputs = [n // s for n, s in zip(sizes, strides, strict=True)]
    else:
        outputs = [(n - k) // s + 1 for n, k, s in zip(sizes, spatial, strides, strict=True)]
    matrix = np.zeros((int(np.prod(outputs)) * cout, int(np.prod(sizes)) * cin))
    for p_index, p in enumerate(np.ndindex(*outputs)):
        for d in np.ndindex(*spatial):
            q = tuple((s * a + b) % n for s, a, b, n in zip(strides, p, d, sizes, strict=True))
            q_index = np.ravel_multi_index(q, sizes)
            tap = kernel[d]
            if per_channel:
                for c in range(channels):
                    for m in range(multiplier):
                        matrix[p_index * cout + c * multiplier + m, q_index * cin + c] += tap[c, m]
                continue
            cin_g, cout_g = cin // groups, cout // groups
            for j in range(groups):
                block = tap[:, j * cout_g : (j + 1) * cout_g].T  # (cout_g, cin_g)
                rows = slice(p_index * cout + j * cout_g, p_index * cout + (j + 1) * cout_g)
                cols = slice(q_index * cin + j * cin_g, q_index * cin + (j + 1) * cin_g)
                matrix[rows, cols] += block
    return matrix


def entrywise(residual, norm):
    """`sum |R|` ("l1") or `sum R^2` ("fro") over every entry."""
    return np.abs(residual).sum() if norm == "l1" else np.square(residual).sum()


def side_gram_residual(matrix, mode):
    """`A A^T - I` ("rows") or `A^T A - I` ("columns"), whole."""
    gram = matrix @ matrix.T if mode == "rows" else matrix.T @ matrix
    return gram - np.eye(len(gram))
