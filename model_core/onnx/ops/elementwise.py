"""Elementwise ops: math, activations, comparisons, logic, Where, Clip and the variadic Max/Min/Sum/Mean.

Broadcasting is NumPy's, which is ONNX's multidirectional broadcasting (opset 7 onwards).
"""
from __future__ import annotations

import functools
import math

import numpy as np

from model_core.onnx.ops import activations as act
from model_core.onnx.ops.registry import Unsupported, register

# op -> (schema versions, f(xp, x)).
_UNARY = {
    "Neg": ((6, 13), lambda xp, x: xp.negative(x)),
    "Abs": ((6, 13), lambda xp, x: xp.abs(x)),
    "Exp": ((6, 13), lambda xp, x: xp.exp(x)),
    "Log": ((6, 13), lambda xp, x: xp.log(x)),
    "Sqrt": ((6, 13), lambda xp, x: xp.sqrt(x)),
    "Reciprocal": ((6, 13), lambda xp, x: xp.reciprocal(x)),
    "Floor": ((6, 13), lambda xp, x: xp.floor(x)),
    "Ceil": ((6, 13), lambda xp, x: xp.ceil(x)),
    "Sign": ((9, 13), lambda xp, x: xp.sign(x)),
    "Round": ((11, 22), lambda xp, x: xp.round(x)),  # half to even, as ONNX specifies
    "Not": ((1,), lambda xp, x: xp.logical_not(x)),
    "Relu": ((6, 13, 14), lambda xp, x: act.relu(xp, x)),
    "Tanh": ((6, 13), lambda xp, x: act.tanh(xp, x)),
    "Sigmoid": ((6, 13), lambda xp, x: act.sigmoid(xp, x)),
    "Softsign": ((1, 22), lambda xp, x: act.softsign(xp, x)),
    "Softplus": ((1, 22), lambda xp, x: act.softplus(xp, x)),
}

_BINARY = {
    "Add": ((7, 13, 14), lambda xp, a, b: xp.add(a, b)),
    "Sub": ((7, 13, 14), lambda xp, a, b: xp.subtract(a, b)),
    "Mul": ((7, 13, 14), lambda xp, a, b: xp.multiply(a, b)),
    "Div": ((7, 13, 14), lambda xp, a, b: _divide(xp, a, b)),
    "Pow": ((7, 12, 13, 15), lambda xp, a, b: xp.power(a, b).astype(a.dtype, copy=False)),
    "Equal": ((7, 11, 13, 19), lambda xp, a, b: xp.equal(a, b)),
    "Less": ((7, 9, 13), lambda xp, a, b: xp.less(a, b)),
    "Greater": ((7, 9, 13), lambda xp, a, b: xp.greater(a, b)),
    "LessOrEqual": ((12, 16), lambda xp, a, b: xp.less_equal(a, b)),
    "GreaterOrEqual": ((12, 16), lambda xp, a, b: xp.greater_equal(a, b)),
    "And": ((7,), lambda xp, a, b: xp.logical_and(a, b)),
    "Or": ((7,), lambda xp, a, b: xp.logical_or(a, b)),
    "Xor": ((7,), lambda xp, a, b: xp.logical_xor(a, b)),
    "PRelu": ((7, 9, 16), lambda xp, x, slope: xp.where(x < 0, x * slope, x)),
}

_VARIADIC = {
    "Max": ((6, 8, 12, 13), lambda xp, a, b: xp.maximum(a, b)),
    "Min": ((6, 8, 12, 13), lambda xp, a, b: xp.minimum(a, b)),
    "Sum": ((6, 8, 13), lambda xp, a, b: xp.add(a, b)),
    "Mean": ((6, 8, 13), lambda xp, a, b: xp.add(a, b)),
}


def _divide(xp, a, b):
    if a.dtype.kind in "iu":
        # ONNX integer division truncates toward zero (C semantics); NumPy's // floors
        q = a // b
        return q + ((q < 0) & (q * b != a)).astype(q.dtype)
    return xp.divide(a, b)


def _unary(fn):
    def prepare(node):
        xp = node.xp
        return lambda x: fn(xp, x)
    return prepare


def _binary(fn):
    def prepare(node):
        xp = node.xp
        return lambda a, b: fn(xp, a, b)
    return prepare


def _variadic(op, fn):
    def prepare(node):
        xp, count = node.xp, len(node.inputs)

        def kernel(*inputs):
            out = functools.reduce(lambda a, b: fn(xp, a, b), inputs)
            return out / count if op == "Mean" else out
        return kernel
    return prepare


for _op, (_versions, _fn) in _UNARY.items():
    register(_op, *_versions)(_unary(_fn))
for _op, (_versions, _fn) in _BINARY.items():
    register(_op, *_versions)(_binary(_fn))
for _op, (_versions, _fn) in _VARIADIC.items():
    register(_op, *_versions)(_variadic(_op, _fn))


# -- activations with coefficients --------------------------------------------------------------
@register("LeakyRelu", 6, 16)
def prepare_leaky_relu(node):
    xp, alpha = node.xp, float(node.attr("alpha", 0.01))
    return lambda x: act.leaky_relu(xp, x, alpha)


@register("Elu", 6, 22)
def prepare_elu(node):
    xp, alpha = node.xp, float(node.attr("alpha", 1.0))
    return lambda x: act.elu(xp, x, alpha)


@register("HardSigmoid", 6, 22)
def prepare_hard_sigmoid(node):
    xp, alpha, beta = node.xp, float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5))
    return lambda x: act.hard_sigmoid(xp, x, alpha, beta)


@register("ThresholdedRelu", 10, 22)
def prepare_thresholded_relu(node):
    xp, alpha = node.xp, float(node.attr("alpha", 1.0))
    return lambda x: act.thresholded_relu(xp, x, alpha)


@register("Selu", 6, 22)
def prepare_selu(node):
    xp = node.xp
    alpha = float(node.attr("alpha", 1.67326319217681884765625))
    gamma = float(node.attr("gamma", 1.05070102214813232421875))
    return lambda x: xp.where(x > 0, x, xp.expm1(xp.minimum(x, 0)) * alpha) * gamma


def erf(xp, x):
    if xp is np:  # NumPy has no erf ufunc; math.erf is exact, and Erf is rare in recurrent models
        return np.frompyfunc(math.erf, 1, 1)(x).astype(x.dtype)
    import cupyx.scipy.special  # only reachable with CuPy installed
    return cupyx.scipy.special.erf(x)


register("Erf", 9, 13)(_unary(erf))


@register("Gelu", 20)
def prepare_gelu(node):
    xp, approximate = node.xp, node.attr("approximate", "none")
    if approximate == "none":
        return lambda x: x * (erf(xp, x * (1 / math.sqrt(2))) + 1) * 0.5
    if approximate == "tanh":
        k = math.sqrt(2 / math.pi)
        return lambda x: x * (xp.tanh((x + x * x * x * 0.044715) * k) + 1) * 0.5
    raise Unsupported(f"Gelu attribute approximate={approximate}")


# -- selection and clamping ---------------------------------------------------------------------
@register("Where", 9, 16)
def prepare_where(node):
    xp = node.xp
    return lambda condition, x, y: xp.where(condition, x, y)


@register("Clip", 6, 11, 12, 13)
def prepare_clip(node):
    xp = node.xp
    if node.since < 11:  # the bounds were attributes before opset 11
        low, high = node.attr("min", None), node.attr("max", None)
        return lambda x: _clip(xp, x, low, high)
    return lambda x, low=None, high=None: _clip(xp, x, low, high)


def _clip(xp, x, low, high):
    if low is not None:
        x = xp.maximum(x, low)
    if high is not None:  # applied last: where min > max everything becomes max, as specified
        x = xp.minimum(x, high)
    return x
