"""Reductions (ReduceSum/Mean/Max/Min/Prod, axes as attribute or input) and ArgMax/ArgMin."""
from __future__ import annotations

from model_core.onnx.ops.registry import host_ints, normalize_axis, register

# op -> (schema versions, first version taking axes as an input, reduction)
_REDUCTIONS = {
    "ReduceSum": ((1, 11, 13), 13, lambda xp: xp.sum),
    "ReduceMean": ((1, 11, 13, 18), 18, lambda xp: xp.mean),
    "ReduceMax": ((1, 11, 12, 13, 18, 20), 18, lambda xp: xp.max),
    "ReduceMin": ((1, 11, 12, 13, 18, 20), 18, lambda xp: xp.min),
    "ReduceProd": ((1, 11, 13, 18), 18, lambda xp: xp.prod),
    "ReduceSumSquare": ((1, 11, 13, 18), 18, lambda xp: lambda x, **kw: xp.sum(x * x, **kw)),
}


def _prepare_reduction(axes_input_since, pick):
    def prepare(node):
        xp, reduce = node.xp, pick(node.xp)
        keepdims = bool(node.int_attr("keepdims", 1))
        from_input = node.since >= axes_input_since
        noop_if_empty = from_input and bool(node.int_attr("noop_with_empty_axes", 0))
        static_axes = None if from_input else node.attr("axes", None)

        def kernel(x, axes=None):
            wanted = (host_ints(axes) if axes is not None else None) if from_input else static_axes
            if not wanted:
                if noop_if_empty:
                    return x
                axis = None  # every axis
            else:
                axis = tuple(normalize_axis(a, x.ndim) for a in wanted)
            # keep the input's element type: NumPy widens integer sums and averages integers to float
            return xp.asarray(reduce(x, axis=axis, keepdims=keepdims)).astype(x.dtype, copy=False)
        return kernel
    return prepare


for _op, (_versions, _since, _pick) in _REDUCTIONS.items():
    register(_op, *_versions)(_prepare_reduction(_since, _pick))


def _prepare_arg(find):
    def prepare(node):
        xp = node.xp
        axis, keepdims = node.int_attr("axis", 0), bool(node.int_attr("keepdims", 1))
        last = node.since >= 12 and bool(node.int_attr("select_last_index", 0))

        def kernel(x):
            a = normalize_axis(axis, x.ndim)
            if last:  # ties go to the last index: search the flipped axis
                index = x.shape[a] - 1 - find(xp)(xp.flip(x, axis=a), axis=a)
            else:
                index = find(xp)(x, axis=a)
            index = xp.asarray(index).astype(xp.int64)
            return xp.expand_dims(index, a) if keepdims else index
        return kernel
    return prepare


register("ArgMax", 1, 11, 12, 13)(_prepare_arg(lambda xp: xp.argmax))
register("ArgMin", 1, 11, 12, 13)(_prepare_arg(lambda xp: xp.argmin))
