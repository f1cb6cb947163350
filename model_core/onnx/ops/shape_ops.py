"""Ops that rearrange without computing: Shape, Size, Reshape, Flatten, Transpose, Squeeze,
Unsqueeze, Expand, Tile. Shape-like inputs are small int64 tensors read back to the host."""
from __future__ import annotations

import math

import numpy as np

from model_core.onnx.ops.registry import check_size, host_ints, normalize_axis, register

_LATE = (13, 21, 23, 24, 25)  # versions after 13 that only add element types


@register("Shape", 1, 15, 19, *_LATE)
def prepare_shape(node):
    xp = node.xp
    start = node.int_attr("start", 0) if node.since >= 15 else 0
    end = node.attr("end", None) if node.since >= 15 else None
    # Python slicing clamps negative and out-of-range bounds exactly as the spec asks
    return lambda x: xp.asarray(np.array(x.shape[start:end], dtype=np.int64))


@register("Size", 1, 19, *_LATE)
def prepare_size(node):
    xp = node.xp
    return lambda x: xp.asarray(np.array(math.prod(x.shape), dtype=np.int64))


@register("Reshape", 5, 14, 19, *_LATE)
def prepare_reshape(node):
    allow_zero = node.since >= 14 and bool(node.int_attr("allowzero", 0))

    def kernel(x, shape):
        dims = host_ints(shape)
        if not allow_zero:  # 0 means "keep this input dimension"
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return x.reshape(dims)
    return kernel


@register("Flatten", 1, 9, 11, *_LATE)
def prepare_flatten(node):
    axis = node.int_attr("axis", 1)

    def kernel(x):
        a = axis + x.ndim if axis < 0 else axis
        if not 0 <= a <= x.ndim:
            raise ValueError(f"Flatten axis {axis} is out of range for rank {x.ndim}")
        return x.reshape(math.prod(x.shape[:a]), math.prod(x.shape[a:]))
    return kernel


@register("Transpose", 1, *_LATE)
def prepare_transpose(node):
    xp, perm = node.xp, node.attr("perm", None)
    return lambda x: xp.transpose(x, perm)


@register("Squeeze", 1, 11, *_LATE)
def prepare_squeeze(node):
    xp = node.xp
    static_axes = node.attr("axes", None) if node.since < 13 else None
    from_input = node.since >= 13

    def kernel(x, axes=None):
        wanted = (None if axes is None else host_ints(axes)) if from_input else static_axes
        if wanted is None:  # no axes: drop every dimension of size 1
            return xp.squeeze(x)
        return xp.squeeze(x, axis=tuple(normalize_axis(a, x.ndim) for a in wanted))
    return kernel


@register("Unsqueeze", 1, 11, *_LATE)
def prepare_unsqueeze(node):
    static_axes = node.attr("axes") if node.since < 13 else None
    from_input = node.since >= 13

    def kernel(x, axes=None):
        wanted = host_ints(axes) if from_input else static_axes
        rank = x.ndim + len(wanted)
        positions = sorted(normalize_axis(a, rank) for a in wanted)  # axes index the output
        shape = list(x.shape)
        for p in positions:
            shape.insert(p, 1)
        return x.reshape(shape)
    return kernel


@register("Expand", 8, 13)
def prepare_expand(node):
    xp, limit = node.xp, node.max_tensor_bytes

    def kernel(x, shape):
        out_shape = np.broadcast_shapes(x.shape, tuple(host_ints(shape)))  # bidirectional broadcast
        check_size(out_shape, x.dtype.itemsize, limit)
        return xp.broadcast_to(x, out_shape)
    return kernel


@register("Tile", 6, 13)
def prepare_tile(node):
    xp, limit = node.xp, node.max_tensor_bytes

    def kernel(x, repeats):
        reps = host_ints(repeats)
        if len(reps) != x.ndim:
            raise ValueError(f"Tile repeats {reps} do not match rank {x.ndim}")
        check_size([d * r for d, r in zip(x.shape, reps)], x.dtype.itemsize, limit)
        return xp.tile(x, reps)
    return kernel
