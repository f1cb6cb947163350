"""Ops that make or retype tensors: Constant, ConstantOfShape, Range, Cast, CastLike, Identity,
and Dropout (the identity at inference)."""
from __future__ import annotations

import math

import numpy as np

from model_core.onnx.dtypes import NUMPY_DTYPES, elem_type_label
from model_core.onnx.ops.registry import Unsupported, check_size, host_ints, host_scalar, register

_LATE = (13, 21, 23, 24, 25)


@register("Constant", 1, 9, 11, 12, 19, *_LATE)
def prepare_constant(node):
    xp = node.xp
    present = [name for name in ("value", "value_float", "value_floats", "value_int", "value_ints",
                                 "sparse_value", "value_string", "value_strings") if node.has_attr(name)]
    if len(present) != 1:
        raise Unsupported(f"Constant with attributes {present or 'none'}")
    name = present[0]
    if name in ("sparse_value", "value_string", "value_strings"):
        raise Unsupported(f"Constant attribute {name}")
    value = node.attr(name)
    if name == "value":
        array = value
    else:
        array = np.array(value, dtype=np.float32 if name.startswith("value_float") else np.int64)
    constant = xp.asarray(array)  # converted once; the plan folds this node at load time
    return lambda: constant


@register("ConstantOfShape", 9, 20, 21, 23, 24, 25)
def prepare_constant_of_shape(node):
    xp, limit = node.xp, node.max_tensor_bytes
    value = node.attr("value", None)
    value = np.zeros(1, np.float32) if value is None else value
    if value.size != 1:
        raise Unsupported(f"ConstantOfShape value with {value.size} elements")
    scalar, dtype = value.reshape(-1)[0], value.dtype

    def kernel(shape):
        dims = host_ints(shape)
        check_size(dims, dtype.itemsize, limit)
        return xp.full(dims, scalar, dtype=dtype)
    return kernel


@register("Range", 11, 27)
def prepare_range(node):
    xp, limit = node.xp, node.max_tensor_bytes
    node.ignore("stash_type")  # we always accumulate in float64 / int64, at least the stash precision

    def kernel(start, stop, delta):
        dtype = start.dtype
        a, b, d = host_scalar(start), host_scalar(stop), host_scalar(delta)
        if d == 0:
            raise ValueError("Range delta must not be 0")
        count = max(math.ceil((b - a) / d), 0) if dtype.kind == "f" else max(-((a - b) // d), 0)
        check_size([count], dtype.itemsize, limit)
        return xp.asarray((a + np.arange(count, dtype=np.result_type(dtype, np.int64)) * d).astype(dtype))
    return kernel


@register("Cast", 6, 9, 13, 19, 21, 23, 24, 25, 28)
def prepare_cast(node):
    to = node.int_attr("to")
    node.ignore("saturate", "round_mode")  # they only affect float8 / float4 targets, refused here
    if to not in NUMPY_DTYPES:
        raise Unsupported(f"Cast to {elem_type_label(to)}")
    dtype = NUMPY_DTYPES[to]
    return lambda x: x.astype(dtype, copy=False)


@register("CastLike", 15, 19, 21, 23, 24, 25)
def prepare_cast_like(node):
    node.ignore("saturate", "round_mode")
    return lambda x, like: x.astype(like.dtype, copy=False)


@register("Identity", 1, 13, 14, 16, 19, 21, 23, 24, 25)
def prepare_identity(node):
    return lambda x: x


@register("Dropout", 7, 10, 12, 13, 22)
def prepare_dropout(node):
    xp = node.xp
    node.ignore("ratio", "seed")  # inference: the ratio and the seed play no part
    if node.since >= 12 and node.has_input(2):
        training = node.constant(2)
        if training is None or bool(np.asarray(training).reshape(-1)[0]):
            raise Unsupported("Dropout in training mode")
    wants_mask = node.has_output(1)
    # onnxruntime's inference mask: 0 / False before opset 12 (its "nothing dropped" convention),
    # True from 12 on (the spec's "kept"); opset 7's mask has the input's type
    mask_value, mask_dtype = (node.since >= 12), (np.bool_ if node.since >= 10 else None)

    def kernel(x, ratio=None, training_mode=None):
        if not wants_mask:
            return x, None
        return x, xp.full(x.shape, mask_value, dtype=mask_dtype or x.dtype)
    return kernel
