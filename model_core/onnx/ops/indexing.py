"""Ops that select or join: Gather, Slice, Concat, Split, Pad."""
from __future__ import annotations

import math

from model_core.onnx.ops.registry import (Unsupported, check_size, host_ints, host_scalar, normalize_axis,
                                          register)

_LATE = (13, 21, 23, 24, 25)


@register("Gather", 1, 11, 13)
def prepare_gather(node):
    xp, axis = node.xp, node.int_attr("axis", 0)

    def kernel(data, indices):
        # negative indices count from the end (opset 11+), which take() already does
        return xp.take(data, indices, axis=normalize_axis(axis, data.ndim))
    return kernel


@register("Slice", 1, 10, 11, 13)
def prepare_slice(node):
    if node.since < 10:  # starts / ends / axes were attributes, with no steps
        starts, ends, axes = node.attr("starts"), node.attr("ends"), node.attr("axes", None)
        return lambda x: slice_array(x, starts, ends, axes, None)

    def kernel(x, starts, ends, axes=None, steps=None):
        return slice_array(x, host_ints(starts), host_ints(ends),
                           None if axes is None else host_ints(axes), None if steps is None else host_ints(steps))
    return kernel


def slice_array(x, starts, ends, axes, steps):
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ValueError("Slice starts, ends, axes and steps must have the same length")
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = normalize_axis(axis, x.ndim)
        index[axis] = _clamped_slice(start, end, step, x.shape[axis])
    return x[tuple(index)]


def _clamped_slice(start, end, step, dim):
    """The spec's clamping; then a Python slice (where an end of -1 would mean 'the last')."""
    if step == 0:
        raise ValueError("Slice step must not be 0")
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
    start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return slice(start, None if end < 0 else end, step)


@register("Concat", 4, 11, 13)
def prepare_concat(node):
    xp, axis = node.xp, node.int_attr("axis")
    return lambda *inputs: xp.concatenate(inputs, axis=normalize_axis(axis, inputs[0].ndim))


@register("Split", 2, 11, 13, 18)
def prepare_split(node):
    xp, axis, count = node.xp, node.int_attr("axis", 0), len(node.outputs)
    static_split = node.attr("split", None) if node.since < 13 else None
    num_outputs = node.attr("num_outputs", None) if node.since >= 18 else None
    if num_outputs is not None and num_outputs != count:
        raise Unsupported(f"Split with num_outputs={num_outputs} and {count} outputs")

    def kernel(x, split=None):
        a = normalize_axis(axis, x.ndim)
        sizes = static_split if split is None else host_ints(split)
        if not sizes:
            dim = x.shape[a]
            if num_outputs is not None:  # opset 18: ceil-sized chunks, the last one smaller
                chunk = math.ceil(dim / count)
                sizes = [min(chunk, max(dim - k * chunk, 0)) for k in range(count)]
            elif dim % count:
                raise ValueError(f"Split cannot divide dimension {dim} into {count} equal parts")
            else:
                sizes = [dim // count] * count
        if len(sizes) != count or sum(sizes) != x.shape[a]:
            raise ValueError(f"Split sizes {sizes} do not fit dimension {x.shape[a]} and {count} outputs")
        offsets = [sum(sizes[:k]) for k in range(1, count)]
        return tuple(xp.split(x, offsets, axis=a))
    return kernel


@register("Pad", 2, 11, 18, 19, *_LATE)
def prepare_pad(node):
    xp, limit = node.xp, node.max_tensor_bytes
    mode = node.attr("mode", "constant")
    if mode not in ("constant", "reflect", "edge") and not (mode == "wrap" and node.since >= 19):
        raise Unsupported(f"Pad attribute mode={mode}")
    if node.since < 11:
        pads, value = node.attr("pads"), node.attr("value", 0.0)
        return lambda x: pad_array(xp, x, pads, value, None, mode, limit)

    def kernel(x, pads, constant_value=None, axes=None):
        value = 0 if constant_value is None else host_scalar(constant_value)
        return pad_array(xp, x, host_ints(pads), value, None if axes is None else host_ints(axes), mode, limit)
    return kernel


def pad_array(xp, x, pads, value, axes, mode, limit):
    """pads: all begins then all ends, for ``axes`` (default: every axis). Negative pads crop."""
    axes = list(range(x.ndim)) if axes is None else [normalize_axis(a, x.ndim) for a in axes]
    if len(pads) != 2 * len(axes):
        raise ValueError(f"Pad expects {2 * len(axes)} pads, got {len(pads)}")
    width = [(0, 0)] * x.ndim
    for k, axis in enumerate(axes):
        width[axis] = (pads[k], pads[k + len(axes)])
    x = x[tuple(slice(max(-b, 0), x.shape[a] - max(-e, 0)) for a, (b, e) in enumerate(width))]
    width = [(max(b, 0), max(e, 0)) for b, e in width]
    check_size([d + b + e for d, (b, e) in zip(x.shape, width)], x.dtype.itemsize, limit)
    if mode == "constant":
        return xp.pad(x, width, mode="constant", constant_values=value)
    return xp.pad(x, width, mode=mode)
