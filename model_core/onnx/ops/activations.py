"""Activation functions shared by the recurrent ops (``activations`` attribute) and the standalone
activation ops (Relu, Sigmoid, LeakyRelu, ...).

Each is ``f(xp, x, alpha, beta)`` and keeps ``x``'s dtype: Python-float coefficients do not
promote float32 under NumPy 2's rules.
"""
from __future__ import annotations

from collections.abc import Callable

from model_core.onnx.ops.registry import Unsupported


def sigmoid(xp, x, alpha=0.0, beta=0.0):
    # tanh form: one transcendental, and no overflow warning for large negative x
    return xp.tanh(x * 0.5) * 0.5 + 0.5


def tanh(xp, x, alpha=0.0, beta=0.0):
    return xp.tanh(x)


def relu(xp, x, alpha=0.0, beta=0.0):
    return xp.maximum(x, 0)


def affine(xp, x, alpha, beta):
    return x * alpha + beta


def leaky_relu(xp, x, alpha, beta=0.0):
    return xp.where(x >= 0, x, x * alpha)


def thresholded_relu(xp, x, alpha, beta=0.0):
    return xp.where(x > alpha, x, 0).astype(x.dtype, copy=False)


def scaled_tanh(xp, x, alpha, beta):
    return xp.tanh(x * beta) * alpha


def hard_sigmoid(xp, x, alpha, beta):
    return xp.clip(x * alpha + beta, 0, 1)


def elu(xp, x, alpha, beta=0.0):
    return xp.where(x >= 0, x, xp.expm1(xp.minimum(x, 0)) * alpha)


def softsign(xp, x, alpha=0.0, beta=0.0):
    return x / (xp.abs(x) + 1)


def softplus(xp, x, alpha=0.0, beta=0.0):
    return xp.logaddexp(x, xp.zeros((), x.dtype))  # log(1 + e^x) without overflow


# name (lowercase) -> (function, takes alpha, takes beta, default alpha, default beta).
# The defaults are onnxruntime's for the recurrent ops: LeakyRelu 0.01, HardSigmoid 0.2/0.5,
# Elu 1.0, and 0.0 for a coefficient not given to Affine, ThresholdedRelu or ScaledTanh.
RECURRENT_ACTIVATIONS: dict[str, tuple[Callable, bool, bool, float, float]] = {
    "relu": (relu, False, False, 0.0, 0.0),
    "tanh": (tanh, False, False, 0.0, 0.0),
    "sigmoid": (sigmoid, False, False, 0.0, 0.0),
    "affine": (affine, True, True, 0.0, 0.0),
    "leakyrelu": (leaky_relu, True, False, 0.01, 0.0),
    "thresholdedrelu": (thresholded_relu, True, False, 0.0, 0.0),
    "scaledtanh": (scaled_tanh, True, True, 0.0, 0.0),
    "hardsigmoid": (hard_sigmoid, True, True, 0.2, 0.5),
    "elu": (elu, True, False, 1.0, 0.0),
    "softsign": (softsign, False, False, 0.0, 0.0),
    "softplus": (softplus, False, False, 0.0, 0.0),
}


def bind_activations(xp, op_type: str, names: list[str], alphas: list[float], betas: list[float]):
    """Turn the ``activations`` attribute into callables ``f(x)``, one per listed name.

    ``activation_alpha`` / ``activation_beta`` are consumed in order by the activations that take
    them, as onnxruntime does: ``[Sigmoid, LeakyRelu, HardSigmoid]`` with alphas ``[a, b]`` gives
    LeakyRelu ``a`` and HardSigmoid ``b``. Names are matched case-insensitively.
    """
    unknown = [n for n in names if n.lower() not in RECURRENT_ACTIVATIONS]
    if unknown:
        raise Unsupported(f"{op_type} activation {', '.join(unknown)}")
    alpha_iter, beta_iter = iter(alphas), iter(betas)
    bound = []
    for name in names:
        fn, takes_alpha, takes_beta, alpha, beta = RECURRENT_ACTIVATIONS[name.lower()]
        alpha = next(alpha_iter, alpha) if takes_alpha else alpha
        beta = next(beta_iter, beta) if takes_beta else beta
        bound.append(_Bound(xp, fn, float(alpha), float(beta), name.lower()))
    return bound


class _Bound:
    """An activation with its coefficients fixed; equal when the function and coefficients are."""
    __slots__ = ("xp", "fn", "alpha", "beta", "key")

    def __init__(self, xp, fn, alpha, beta, name):
        self.xp, self.fn, self.alpha, self.beta = xp, fn, alpha, beta
        self.key = (name, alpha, beta)

    def __call__(self, x):
        return self.fn(self.xp, x, self.alpha, self.beta)

    def __eq__(self, other):
        return isinstance(other, _Bound) and self.key == other.key

    def __hash__(self):
        return hash(self.key)
