"""PyTorch: a `torch.autograd.Function` with the analytic backward pass."""

import keras
import torch


def to_tensor(w):
    # A Keras variable becomes its torch Parameter, which autograd tracks; passed
    # whole into a custom Function it would silently get no gradient.
    return keras.ops.convert_to_tensor(w)


def reshape(x, shape):
    return torch.reshape(x, shape)


def transpose(x, perm):
    return torch.permute(x, perm)


def gram(phi, mode):
    # bmm/mm keep float64 in float64 (keras.ops.matmul computes it in float32),
    # and cost eager PyTorch half the dispatch of `torch.matmul`, which
    # reshapes a batch before it calls bmm (8 against 17 us on a small stack).
    product = torch.bmm if phi.dim() == 3 else torch.mm
    if mode == "columns":
        return product(phi.mT, phi)
    return product(phi, phi.mT)


def minus_identity(gram):
    # In place, on the diagonal only: eager PyTorch would otherwise allocate an
    # identity and a second Gram-sized result.
    gram.diagonal(dim1=-2, dim2=-1).sub_(1)
    return gram


def matmul(a, b):
    return torch.matmul(a, b)


def times_symmetric(phi, symmetric, mode, scale=None):
    recorded = torch.is_grad_enabled() and any(torch.is_tensor(x) and x.requires_grad for x in (phi, symmetric, scale))
    if torch.compiler.is_compiling() or recorded:
        # Plain operations, which autograd and the compiler follow.
        symmetric = symmetric if scale is None else symmetric * scale
        return torch.matmul(phi, symmetric) if mode == "columns" else torch.matmul(symmetric, phi)
    # Eagerly, one BLAS call does it all. The scale rides in the product's
    # `alpha` (no pass over `S` to scale it), and the product takes phi's
    # strides: phi is most often a transposed view of the weight (slices along
    # a middle axis), and a gradient written straight in the weight's layout is
    # one the autograd engine keeps as it is, where a stack-shaped one is
    # copied to the weight's layout. `beta=0` ignores `out`'s contents.
    alpha = _host_number(scale)
    if alpha is None:  # on an accelerator: `S` is scaled there, as a float would wait for the device
        symmetric, alpha = symmetric * scale, 1.0
    out = torch.empty_like(phi)
    product = torch.baddbmm if phi.dim() == 3 else torch.addmm
    factors = (phi, symmetric) if mode == "columns" else (symmetric, phi)
    return product(out, *factors, beta=0, alpha=alpha, out=out)


def _host_number(scale):
    """`scale` as a Python float (1.0 for none), or None for a tensor on an accelerator (reading it would wait)."""
    if scale is None:
        return 1.0
    if not torch.is_tensor(scale):
        return float(scale)
    return float(scale) if scale.device.type == "cpu" else None


def svd_factors(phi):
    u, _, vh = torch.linalg.svd(phi, full_matrices=False)
    return u, vh


def sum_of_abs(x):
    # One reduction, where `abs` then `sum` would allocate an `|x|` the size of
    # the Gram, and dispatch twice.
    return torch.linalg.vector_norm(x, 1)


def sign_of_residual(x):
    # Written over the residual where nothing records it: no Gram-sized allocation.
    if x.requires_grad and torch.is_grad_enabled():
        return torch.sign(x)
    return x.sign_()


class _WithGradient(torch.autograd.Function):
    # One class at module level: torch.compile traces it as it is, with no
    # closure over per-call functions.
    @staticmethod
    def forward(ctx, phi, options, forward, backward):
        value, saved = forward(phi, options)
        ctx.save_for_backward(phi, saved)
        ctx.options, ctx.backward_function = options, backward
        return value

    @staticmethod
    def backward(ctx, upstream):
        phi, saved = ctx.saved_tensors
        return ctx.backward_function(phi, saved, ctx.options, _as_scale(upstream)), None, None, None


def _as_scale(upstream):
    """The upstream scalar as a Python float where that is free (eager, on the host, not recorded), else as it is.

    The backward pass multiplies it by constants (the factor, the norm's slope)
    before the product takes it as `alpha`: on floats, with no dispatch each.
    """
    if torch.compiler.is_compiling() or upstream.requires_grad or upstream.device.type != "cpu":
        return upstream
    return float(upstream)


def with_gradient(phi, options, forward, backward):
    return _WithGradient.apply(phi, options, forward, backward)


class _Recomputing(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, options, value, gradient):
        ctx.save_for_backward(x, scale)
        ctx.options, ctx.gradient_function = options, gradient
        return value(x, scale, options)

    @staticmethod
    def backward(ctx, upstream):
        x, scale = ctx.saved_tensors
        return ctx.gradient_function(x, scale, ctx.options, upstream), None, None, None, None


def gated(x, scale, options, value, gradient):
    # A Python branch (as Keras's `cond` is on PyTorch): a skipped step
    # returns a constant, so autograd has no node and no zero gradient to add.
    if scale > 0:
        return _Recomputing.apply(x, scale, options, value, gradient)
    return torch.zeros((), dtype=x.dtype, device=x.device)


def for_measuring(fn, jit_compile):
    # Measuring needs no graph: run eagerly, without recording for autograd.
    def run(*args):
        with torch.no_grad():
            return fn(*args)

    return run


def is_chief(model):
    distributed = torch.distributed
    return not (distributed.is_available() and distributed.is_initialized()) or distributed.get_rank() == 0


def adjoint(fn, x, y):
    with torch.enable_grad():
        x = torch.as_tensor(x).detach().requires_grad_(True)
        out = fn(x)
        (grad,) = torch.autograd.grad(out, x, grad_outputs=torch.as_tensor(y, dtype=out.dtype, device=out.device))
    return grad.detach()


def complex_singular_values(real, imag):
    return torch.linalg.svdvals(torch.complex(real, imag))


def dynamo_compiling():
    return torch.compiler.is_compiling()


def outside_dynamo(fn):
    return torch.compiler.disable(fn)
