"""MatMul, Gemm, Softmax and LogSoftmax: the dense layers and heads around a recurrent core."""
from __future__ import annotations

import math

from model_core.onnx.ops.registry import normalize_axis, register


@register("MatMul", 1, 9, 13)
def prepare_matmul(node):
    xp = node.xp
    return lambda a, b: xp.matmul(a, b)


@register("Gemm", 7, 9, 11, 13)
def prepare_gemm(node):
    xp = node.xp
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    trans_a, trans_b = bool(node.int_attr("transA", 0)), bool(node.int_attr("transB", 0))

    def kernel(a, b, c=None):
        y = xp.matmul(a.T if trans_a else a, b.T if trans_b else b)  # (M, N)
        if alpha != 1.0:
            y = y * alpha
        if c is not None:
            y = y + (c if beta == 1.0 else c * beta)  # C broadcasts to (M, N)
        return y
    return kernel


def _softmax_along(xp, x, axis, log):
    shifted = x - xp.max(x, axis=axis, keepdims=True)  # stable: the largest exponent is 0
    if log:
        return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))
    e = xp.exp(shifted)
    return e / xp.sum(e, axis=axis, keepdims=True)


def _prepare_softmax(log):
    def prepare(node):
        xp = node.xp
        if node.since >= 13:  # one axis, default the last
            axis = node.int_attr("axis", -1)
            return lambda x: _softmax_along(xp, x, normalize_axis(axis, x.ndim), log)
        axis = node.int_attr("axis", 1)  # before 13: flatten to 2-D at axis, normalise each row

        def kernel(x):
            a = normalize_axis(axis, x.ndim) if x.ndim else 0
            rows = x.reshape(math.prod(x.shape[:a]), math.prod(x.shape[a:]))
            return _softmax_along(xp, rows, 1, log).reshape(x.shape)
        return kernel
    return prepare


register("Softmax", 1, 11, 13)(_prepare_softmax(log=False))
register("LogSoftmax", 1, 11, 13)(_prepare_softmax(log=True))
