"""Property: for any weight of rank 2 to 5, slice axis and mode, value and gradient match the reference."""

import numpy as np
import pytest
import reference
from backends import value_and_grad
from hypothesis import given, settings
from hypothesis import strategies as st

import keras_ortho


@st.composite
def weights_and_options(draw):
    rank = draw(st.integers(2, 5))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank)))
    slice_axis = draw(st.one_of(st.none(), st.integers(-rank, rank - 1)))
    mode = draw(st.sampled_from(["auto", "columns", "rows"]))
    seed = draw(st.integers(0, 2**32 - 1))
    w = np.random.default_rng(seed).normal(scale=0.7, size=shape)
    return w, slice_axis, mode


@pytest.mark.slow  # 60 random weights: a sweep, for the full suite
@settings(max_examples=60, deadline=None)
@given(weights_and_options(), st.floats(0.0, 3.0))
def test_value_and_gradient_match_the_reference(case, factor):
    w, slice_axis, mode = case
    value, grad = value_and_grad(lambda x: keras_ortho.ortho_penalty(x, factor, slice_axis=slice_axis, mode=mode), w)
    np.testing.assert_allclose(value, reference.penalty(w, factor, slice_axis, mode), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad, reference.gradient(w, factor, slice_axis, mode), rtol=1e-10, atol=1e-12)


# "spectral" is left to test_norms: its power iteration converges at the rate of the eigenvalue gap, which
# random draws do not bound; there it is checked on matrices whose gap is set.
NORMS_AND_REDUCTIONS = [("l1", "mean"), ("fro", "sum"), ("fro", "mean"), ("double", "sum"), ("double", "mean")]
NORMS_AND_REDUCTIONS += [("coherence", "sum")]


@pytest.mark.slow  # 60 random weights per norm: a sweep, for the full suite
@settings(max_examples=60, deadline=None)
@given(weights_and_options(), st.floats(0.1, 3.0), st.sampled_from(NORMS_AND_REDUCTIONS), st.integers(0, 2**32 - 1))
def test_every_norm_and_reduction_matches_its_definition(case, factor, norm_and_reduction, seed):
    w, slice_axis, mode = case
    norm, reduction = norm_and_reduction

    def ours(x):
        return keras_ortho.ortho_penalty(x, factor, slice_axis=slice_axis, mode=mode, reduction=reduction, norm=norm)

    def theirs(x):
        return reference.norm_penalty(x, norm, factor, slice_axis, mode, reduction)

    value, grad = value_and_grad(ours, w)
    np.testing.assert_allclose(value, theirs(w), rtol=1e-10, atol=1e-12)
    # The gradient along a random direction, against central differences of the definition.
    direction = np.random.default_rng(seed).normal(size=w.shape)
    eps = 1e-6
    numeric = (theirs(w + eps * direction) - theirs(w - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(np.sum(grad * direction), numeric, rtol=1e-5, atol=1e-6 * (1 + abs(numeric)))
