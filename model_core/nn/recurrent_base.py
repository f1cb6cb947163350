"""Multi-layer, optionally bidirectional recurrent layers with PyTorch's constructor and names.

``forward`` is inference; ``forward_train`` returns a ``cache`` that ``backward`` consumes.
Nothing per call is stored on the layer, so one instance serves many threads at once.
"""
from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from model_core import native
from model_core.backend import device_of
from model_core.cells import CellSteps, native_bf16, select
from model_core.cells.native_weights import aligned_copy, aligned_empty, forget_packs, frozen
from model_core.nn.module import Module, uniform_init
from model_core.nn.bptt import (
    DirectionCache,
    backward_direction,
    forward_direction_chunked,
    forward_direction_fused,
    forward_direction_infer,
    forward_direction_train,
)


class LayerParams(NamedTuple):
    """One layer direction's parameters as the forward reads them."""
    w_ih: Any                   # (G*H, I_l), Fortran order
    w_hh: Any                   # (G*H, H), Fortran order
    bias: Any                   # (G*H,) the biases folded into the input projection (cell.fold_bias), or None
    b_hh: Any                   # (G*H,) or None: the GRU's b_hn stays on the hidden side


WEIGHT_FORMATS = ("float32", "bfloat16")      # what inference may read: RecurrentBase.freeze(weights=...)


def check_weight_format(weights: str) -> str:
    """``weights`` if it is one of WEIGHT_FORMATS, else a ValueError that lists them."""
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}, got {weights!r}")
    return weights


def _with_bases(arrays: list) -> list:
    """The arrays and the ndarrays they view: what must stay read-only for a kept derivative of
    them (packed copies, bfloat16 weights) to stay current (``Module.freeze`` marks both)."""
    return arrays + [a.base for a in arrays if isinstance(a.base, np.ndarray)]


@functools.cache
def _param_names(layer: int, suffix: str) -> tuple[str, str, str, str]:
    """PyTorch's names for one layer direction, formatted once rather than per step."""
    return tuple(f"{kind}_l{layer}{suffix}" for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))


@dataclass(frozen=True)
class LayerCache:
    """One layer's training forward: its input (T, B, I_l), each direction's cache, and the
    inverted-dropout mask applied to its output (None without dropout)."""
    input: Any
    dirs: list[DirectionCache]
    drop: Any


@dataclass(frozen=True)
class StackCache:
    """What ``backward_states`` consumes: every layer's cache and the padding masks (None: full length)."""
    layers: list[LayerCache]
    masks: tuple | None


class RecurrentBase(Module):
    """Shared machinery; subclasses set ``mode`` and ``_kind`` ("lstm", "gru" or "rnn").

    The step implementation (``_cell``) is chosen once per layer and device by
    ``model_core.cells.select``: the compiled one for float32 on the CPU when Numba is present,
    the NumPy/CuPy reference otherwise.

    ``weight_ih_*`` and ``weight_hh_*`` keep PyTorch's shapes, (G*H, in) and (G*H, H), but are
    stored in Fortran order, so their transposes, which the forward products use, are
    C-contiguous. Optimisers update them in place, so the layout never goes stale, and
    ``state_dict()`` hands out ordinary C-ordered copies.
    """

    mode = ""
    _kind = ""
    _cell: CellSteps

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device: str = "cpu", dtype="float32", seed: int | None = None):
        super().__init__(device=device, dtype=dtype)
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.input_size, self.hidden_size, self.num_layers = int(input_size), int(hidden_size), int(num_layers)
        self.bias, self.batch_first, self.bidirectional = bool(bias), bool(batch_first), bool(bidirectional)
        self.dropout = float(dropout)
        self.num_directions = 2 if bidirectional else 1
        self._kept_steps: dict[int, tuple] = {}          # layer -> its parameters, cell.step_weights of them
        self._step_plan: tuple | None = None              # (entry's step, plan, its weights): _refresh_step_plan
        self._bf16: dict[tuple[int, int], native_bf16.Bf16Weights] = {}   # (layer, direction): freeze()
        self._bf16_of: tuple = ()                         # the read-only parameters they were made from
        self._select_cell()
        # torch's default: every parameter ~ U(-1/sqrt(H), 1/sqrt(H)), in torch's parameter order
        rng = np.random.default_rng(seed)
        bound = 1.0 / math.sqrt(self.hidden_size)
        GH = self._cell.GATES * self.hidden_size
        for layer in range(self.num_layers):
            in_size = self.input_size if layer == 0 else self.hidden_size * self.num_directions
            for suffix in self._suffixes():
                self._add_param(f"weight_ih_l{layer}{suffix}", uniform_init(rng, (GH, in_size), bound))
                self._add_param(f"weight_hh_l{layer}{suffix}", uniform_init(rng, (GH, self.hidden_size), bound))
                if self.bias:
                    self._add_param(f"bias_ih_l{layer}{suffix}", uniform_init(rng, (GH,), bound))
                    self._add_param(f"bias_hh_l{layer}{suffix}", uniform_init(rng, (GH,), bound))
        self._store_weights_transposed()

    def _select_cell(self) -> None:
        self._cell = select(self._kind, self.xp, self.dtype, getattr(self, "nonlinearity", "tanh"))
        self._consts = self._cell.gate_constants(self.xp, self.hidden_size, self.dtype)

    def _store_weights_transposed(self) -> None:
        """Each W as the transpose of a C-contiguous W^T, which the kernels read in place (W_hh^T by rows
        for small batches); for them, starting on a cache line (``aligned_copy``: a B=4 LSTM step took
        1.2x the time with W_hh^T 16 bytes past one)."""
        for name, value in self._params.items():
            if not name.startswith("weight_"):
                continue
            if self.xp is np and self.dtype == np.float32:
                self._params[name] = aligned_copy(value.T).T
            else:
                self._params[name] = self.xp.asfortranarray(value)

    def _suffixes(self):
        return ("", "_reverse")[: self.num_directions]

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, bias={self.bias}, "
                f"batch_first={self.batch_first}, bidirectional={self.bidirectional}, device={self.device!r}, "
                f"dtype={self.dtype.name}")

    # -- state helpers ------------------------------------------------------------------------
    # Inside the engine a state is always a tuple of arrays, (h,) or (h, c), each (L*D, B, H). The
    # torch-compatible methods (``init_state``, ``forward``, ``forward_train``, ``backward``,
    # ``step``) take and return torch's form, ``h`` or ``(h, c)``; the ``*_states`` methods are
    # the engine's tuple form, which ``SequenceModel`` and the service use.
    @property
    def state_size(self) -> int:
        """1 for RNN/GRU (h), 2 for LSTM (h, c)."""
        return self._cell.STATE_SIZE

    def init_states(self, batch: int) -> tuple:
        """Zero state as a tuple: ``(h_0,)`` or ``(h_0, c_0)``, each (L*D, B, H)."""
        shape = (self.num_layers * self.num_directions, batch, self.hidden_size)
        return tuple(self.xp.zeros(shape, dtype=self.dtype) for _ in range(self.state_size))

    def init_state(self, batch: int):
        """Zero state in torch's form: ``h_0`` (L*D, B, H), or ``(h_0, c_0)`` for the LSTM."""
        return self._torch_form(self.init_states(batch))

    def _torch_form(self, states: tuple):
        return states if self.state_size > 1 else states[0]

    def _tuple_form(self, state, what: str):
        """torch's ``h`` or ``(h, c)`` -> the engine's tuple (None stays None)."""
        if state is None:
            return None
        if self.state_size == 1:
            return (state,)
        if not isinstance(state, tuple | list):
            raise ValueError(f"{what} for {type(self).__name__} must be a tuple (h, c), got a single array")
        return tuple(state)

    def _check_states(self, states, batch: int, what: str = "state"):
        """A tuple state checked against the layer: None, or ``state_size`` arrays (L*D, B, H)."""
        if states is None:
            return None
        if not isinstance(states, tuple) or len(states) != self.state_size:
            raise ValueError(f"{what} for {type(self).__name__} must be a tuple of {self.state_size} array(s)")
        shape = (self.num_layers * self.num_directions, batch, self.hidden_size)
        out = []
        for p in states:
            p = self._as_array(p, what)
            if p.shape != shape:
                raise ValueError(f"{what} must have shape {shape} (num_layers*num_directions, batch, hidden_size), "
                                 f"got {tuple(p.shape)}")
            out.append(p)
        return tuple(out)

    def _as_array(self, a, what: str):
        if type(a) is self.xp.ndarray and a.dtype == self.dtype:       # checked first: per token
            return a
        if self.xp is np and device_of(a) == "gpu":
            raise ValueError(f"{what} is a GPU array but the layer is on the CPU: move it with model_core.backend.to_numpy")
        return self.xp.asarray(a, dtype=self.dtype)

    # -- input checks -------------------------------------------------------------------------
    def _prepare(self, x, lengths):
        x = self._as_array(x, "input")
        if x.ndim != 3:
            layout = "(B, T, I)" if self.batch_first else "(T, B, I)"
            raise ValueError(f"input must be 3-D {layout}, got shape {tuple(x.shape)}")
        if self.batch_first:
            x = x.transpose(1, 0, 2)
        x = self.xp.ascontiguousarray(x)                                  # (T, B, I)
        T, B, I = x.shape
        if I != self.input_size:
            raise ValueError(f"input has {I} features, expected input_size={self.input_size}")
        masks = None
        if lengths is not None:
            lengths_host = np.asarray(lengths) if device_of(lengths) == "cpu" else lengths.get()
            if lengths_host.shape != (B,) or not np.issubdtype(lengths_host.dtype, np.integer):
                raise ValueError(f"lengths must be an integer array of shape ({B},), "
                                 f"got {lengths_host.dtype} {lengths_host.shape}")
            if lengths_host.size and (lengths_host.min() < 0 or lengths_host.max() > T):
                raise ValueError(f"lengths must lie in [0, {T}], got min {lengths_host.min()} max {lengths_host.max()}")
            if not (lengths_host == T).all():                            # full-length batches skip masking
                keep = self.xp.asarray(np.arange(T)[:, None] < lengths_host[None, :])[:, :, None]  # (T, B, 1)
                masks = (keep, keep.astype(self.dtype))
        return x, masks

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x, state=None, lengths=None):
        """Inference. x: (T, B, I) or (B, T, I) with batch_first.

        Returns y: (T, B, D*H) ((B, T, D*H) with batch_first) and the final state, each part
        (L*D, B, H). With ``lengths`` the outputs past a sequence's end are zero and the final
        state is taken at its last valid step.
        """
        y, states = self.forward_states(x, self._tuple_form(state, "state"), lengths)
        return y, self._torch_form(states)

    __call__ = forward

    def forward_states(self, x, states: tuple | None = None, lengths=None):
        """``forward`` with the state as a tuple, in and out."""
        y, states, _ = self._run(x, states, lengths, train=False, rng=None)
        return y, states

    def forward_train(self, x, state=None, lengths=None, rng=None):
        """Like ``forward`` and also returns the ``cache`` for ``backward``.

        ``rng`` (a NumPy ``Generator`` or CuPy ``RandomState``) draws the inter-layer dropout
        masks when ``dropout > 0``.
        """
        y, states, cache = self.forward_train_states(x, self._tuple_form(state, "state"), lengths, rng)
        return y, self._torch_form(states), cache

    def forward_train_states(self, x, states: tuple | None = None, lengths=None, rng=None):
        """``forward_train`` with the state as a tuple, in and out."""
        return self._run(x, states, lengths, train=True, rng=rng)

    def step(self, x_t, state):
        """One timestep for a batch of independent streams: x_t (B, I) -> (y_t (B, H), state)."""
        entry = self._step_plan
        if entry is not None:
            got = entry[0](entry[1], x_t, state, True)
            if got is not None:
                return got
        y_t, states = self._step_python(x_t, self._tuple_form(state, "state"))
        return y_t, self._torch_form(states)

    def step_states(self, x_t, states: tuple | None):
        """``step`` with the state as a tuple, in and out.

        The same math as ``forward`` on a length-1 sequence, without its sequence machinery
        (time-major copies, per-sequence buffers, masks): a streaming session pays for every
        microsecond of it on every token. A frozen layer's step is one compiled call where the
        input and state are plain float32 arrays (``_refresh_step_plan``); the rest comes here.
        """
        entry = self._step_plan
        if entry is not None:
            got = entry[0](entry[1], x_t, states, False)
            if got is not None:
                return got
        return self._step_python(x_t, states)

    def _step_python(self, x_t, states: tuple | None):
        """``step_states`` in Python around the kernels: every check, conversion and error message."""
        if self.bidirectional:
            raise ValueError("step() needs a unidirectional layer: a bidirectional one must see the whole sequence")
        x_t = self._as_array(x_t, "input")
        if x_t.ndim != 2:
            raise ValueError(f"step input must be 2-D (B, I), got shape {tuple(x_t.shape)}")
        B, I = x_t.shape
        if I != self.input_size:
            raise ValueError(f"input has {I} features, expected input_size={self.input_size}")
        xp, cell = self.xp, self._cell
        state0 = self._check_states(states, B)
        if state0 is None:
            state0 = self.init_states(B)
        new = tuple([xp.empty_like(s) for s in state0])                         # (L, B, H) each
        # the native kernels keep nothing for inference; the others want scratch buffers
        shapes = None if cell.native else cell.cache_shapes(B, self.hidden_size)
        inp, weights = x_t, []
        for layer in range(self.num_layers):
            if cell.step_forward_input is not None:          # the projection inside the kernel
                weights.append(self._step_weights(layer))
                cell.step_forward_input(inp, weights[-1], tuple([s[layer] for s in state0]),
                                        tuple([n[layer] for n in new]))
                inp = new[0][layer]
                continue
            p = self._layer_params(layer, "")
            xproj = inp @ p.w_ih.T                                              # (B, G*H)
            if p.bias is not None:
                xproj += p.bias
            cache_t = None if shapes is None else {k: xp.empty(s, dtype=self.dtype) for k, s in shapes.items()}
            cell.step_forward(xp, xproj, tuple([s[layer] for s in state0]), p.w_hh.T, p.b_hh,
                              self._consts, cache_t, tuple([n[layer] for n in new]))
            inp = new[0][layer]
        self._refresh_step_plan(weights)
        return inp.copy(), new

    def _refresh_step_plan(self, weights: list) -> None:
        """Make, keep or drop the plan through which ``step`` is one call of the compiled entry point
        (``model_core.native.step_entry``): made where every layer's ``weights`` (its cell's
        ``step_weights``, just found) are the ones the layer keeps, i.e. a frozen layer; kept while
        they stay the same; dropped otherwise. The entry checks at every call that the parameters
        are still these read-only arrays, as ``_step_weights`` does, and leaves any other call here."""
        entry, cell = native.step_entry, self._cell
        if (entry is None or cell.step_entry is None or len(weights) != self.num_layers
                or len(self._kept_steps) < self.num_layers):            # a writable layer keeps nothing
            self._step_plan = None
            return
        kept = [self._kept_steps[layer] for layer in range(self.num_layers)]     # one per layer: all there
        if any([k[2] is not w for k, w in zip(kept, weights)]):
            self._step_plan = None
            return
        if self._step_plan is not None and all(map(operator.is_, self._step_plan[2], weights)):
            return
        layers = [cell.step_entry(w) for w in weights]
        names = tuple([n for layer in range(self.num_layers) for n in _param_names(layer, "")])
        plan = (layers[0][0], self.num_layers, self.input_size, self.hidden_size, self._params, names,
                tuple([p for k in kept for p in k[0]]), tuple([a for k in kept for a in k[1]]),
                tuple([arrays for _, arrays in layers]))
        self._step_plan = (entry.step, plan, tuple(weights))

    def _run(self, x, states, lengths, train, rng):
        xp, H, D, cell = self.xp, self.hidden_size, self.num_directions, self._cell
        x, masks = self._prepare(x, lengths)
        T, B, _ = x.shape
        state0 = self._check_states(states, B)
        if state0 is None:
            state0 = self.init_states(B)
        finals = [xp.empty_like(s) for s in state0]
        dropout = self.dropout if train else 0.0
        if dropout and rng is None:
            raise ValueError("forward_train with dropout > 0 needs an rng for the dropout masks")
        if not train and self._bf16_current():
            return (*self._run_bf16(x, state0, finals, None if masks is None else lengths), None)
        inp, layer_caches = x, []
        native_np = cell.native and masks is None and xp is np and self.dtype == np.float32
        for layer in range(self.num_layers):
            y = aligned_empty((T, B, D * H)) if native_np else xp.empty((T, B, D * H), dtype=self.dtype)
            dir_caches = []
            for d, suffix in enumerate(self._suffixes()):
                p = self._layer_params(layer, suffix)
                idx = layer * D + d
                if native_np:
                    # the projection inside the kernel's tile (training too), or for inference a
                    # few steps at a time just before the kernel
                    args = (cell, self._consts, inp, p.w_ih, p.bias, tuple(s[idx] for s in state0), p.w_hh, p.b_hh,
                            d == 1, y[:, :, d * H:(d + 1) * H])
                    got = forward_direction_fused(*args, True) if train else (forward_direction_chunked(*args), None)
                    if got is not None:
                        for k, f in enumerate(got[0]):
                            finals[k][idx] = f
                        dir_caches.append(got[1])
                        continue
                # all steps in one product
                xproj = (inp.reshape(T * B, inp.shape[-1]) @ p.w_ih.T).reshape(T, B, p.w_ih.shape[0])
                if p.bias is not None:
                    xproj += p.bias
                args = (xp, cell, self._consts, xproj, tuple(s[idx] for s in state0), p.w_hh, p.b_hh,
                        masks, d == 1, y[:, :, d * H:(d + 1) * H])
                final, cache = forward_direction_train(*args) if train else (forward_direction_infer(*args), None)
                for k, f in enumerate(final):
                    finals[k][idx] = f
                dir_caches.append(cache)
            drop_mask = None
            if dropout and layer < self.num_layers - 1:
                keep = rng.random(y.shape) >= dropout
                drop_mask = xp.asarray(keep, dtype=self.dtype) / (1.0 - dropout)     # inverted dropout
                y = y * drop_mask
            layer_caches.append(LayerCache(inp, dir_caches, drop_mask))
            inp = y
        y = inp.transpose(1, 0, 2) if self.batch_first else inp
        cache = StackCache(layer_caches, masks) if train else None
        return y, tuple(finals), cache

    def _run_bf16(self, x, state0, finals, lengths):
        """``_run``'s inference over the bfloat16 weights ``freeze`` kept: every layer and direction
        one kernel call, the input projection inside it. lengths: checked by ``_prepare``, or None."""
        T, B, _ = x.shape
        H, D = self.hidden_size, self.num_directions
        lens = None if lengths is None else np.asarray(lengths, np.int64)
        inp = x
        for layer in range(self.num_layers):
            y = aligned_empty((T, B, D * H))
            for d in range(D):
                idx = layer * D + d
                final = native_bf16.sequence_forward(inp, self._bf16[layer, d], tuple(s[idx] for s in state0),
                                                     d == 1, y[:, :, d * H:(d + 1) * H], lens)
                for k, f in enumerate(final):
                    finals[k][idx] = f
            inp = y
        return (inp.transpose(1, 0, 2) if self.batch_first else inp), tuple(finals)

    def _bf16_current(self) -> bool:
        """Are there bfloat16 weights, made from the parameters the layer still has, still read-only?
        Made writable since, what was kept may be stale: it is dropped, and float32 serves."""
        if not self._bf16:
            return False
        params, readonly = self._bf16_of
        if all(map(operator.is_, params, self._params.values())) and not any([a.flags.writeable for a in readonly]):
            return True
        self._bf16.clear()
        self._bf16_of = ()
        return False

    def _step_weights(self, layer: int):
        """``cell.step_weights`` for one layer (unidirectional): made per call, or for a frozen layer
        (read-only parameters, as the service loads a model) made once and kept while the layer's
        parameters are the same read-only arrays: folding the bias and finding the kept packed
        copies took ~7 us of a ~45 us B=1 step."""
        params = tuple(map(self._params.get, _param_names(layer, "")))
        kept = self._kept_steps.get(layer)        # (params, the arrays whose flags say read-only, weights)
        if kept is not None and all(map(operator.is_, kept[0], params)) and not any([a.flags.writeable for a in kept[1]]):
            return kept[2]
        if self._bf16_current():
            weights = native_bf16.step_weights(self._bf16[layer, 0])
        else:
            p = self._layer_params(layer, "")
            weights = self._cell.step_weights(p.w_ih.T, p.bias, p.w_hh.T, p.b_hh)
        if self.xp is np and all([a is None or frozen(a) for a in params]):
            self._kept_steps[layer] = (params, _with_bases([a for a in params if a is not None]), weights)
        else:                            # made writable since: what was kept may be stale when refrozen
            self._kept_steps.pop(layer, None)
        return weights

    def _layer_params(self, layer: int, suffix: str) -> LayerParams:
        P, names = self._params, _param_names(layer, suffix)
        w_ih, w_hh, b_ih, b_hh = map(P.get, names)
        bias = self._cell.fold_bias(b_ih, b_hh) if self.bias else None     # per call: optimisers update in place
        return LayerParams(w_ih, w_hh, bias, b_hh)

    # -- backward -----------------------------------------------------------------------------
    def backward(self, cache, dy, dstate=None):
        """BPTT through the whole stack; ``dstate`` and ``dstate0`` in torch's state form (see ``backward_states``)."""
        dx, dstates0, grads = self.backward_states(cache, dy, self._tuple_form(dstate, "dstate"))
        return dx, self._torch_form(dstates0), grads

    def backward_states(self, cache, dy, dstates: tuple | None = None):
        """BPTT through the whole stack, the state gradients as tuples.

        dy: gradient on ``y`` (same layout as ``y``; None for zeros); dstate: gradient on the
        final state (None for zeros), for truncated BPTT across chunks.
        Returns (dx in the layout of x, dstate0 in the layout of state, grads by parameter name).
        """
        xp, H, D, cell = self.xp, self.hidden_size, self.num_directions, self._cell
        layers, masks = cache.layers, cache.masks
        T, B, _ = layers[0].input.shape
        if dy is None:
            dy = xp.zeros((T, B, D * H), dtype=self.dtype)
        else:
            dy = self._as_array(dy, "dy")
            if self.batch_first:
                dy = dy.transpose(1, 0, 2)
            if dy.shape != (T, B, D * H):
                raise ValueError(f"dy must match the output's shape {(T, B, D * H)} (time-major), got {tuple(dy.shape)}")
        d_final = self._check_states(dstates, B, "dstate")
        if d_final is None:
            d_final = self.init_states(B)
        dstate0 = [xp.empty_like(s) for s in d_final]
        grads: dict[str, object] = {}
        separate = cell.GATES == 3  # only the GRU's hidden-side gradient differs from the input side
        for layer in reversed(range(self.num_layers)):
            lc = layers[layer]
            if lc.drop is not None:
                dy = dy * lc.drop
            inp = lc.input
            flat_in = inp.reshape(T * B, inp.shape[-1])
            dinp = xp.zeros(flat_in.shape, dtype=self.dtype)
            for d, suffix in enumerate(self._suffixes()):
                p = self._layer_params(layer, suffix)
                idx = layer * D + d
                dgx, dgh, d0 = backward_direction(
                    xp, cell, self._consts, lc.dirs[d], p.w_hh, dy[:, :, d * H:(d + 1) * H],
                    tuple(s[idx] for s in d_final), masks, separate)
                for k, g in enumerate(d0):
                    dstate0[k][idx] = g
                GH = self._cell.GATES * H
                dgx2, dgh2 = dgx.reshape(T * B, GH), dgh.reshape(T * B, GH)
                prev_h = lc.dirs[d]["prev"][0].reshape(T * B, H)
                # weight gradients: one product over all timesteps each, computed transposed so
                # that they come out in the weights' own (Fortran) layout for the optimiser
                grads[f"weight_ih_l{layer}{suffix}"] = (flat_in.T @ dgx2).T
                grads[f"weight_hh_l{layer}{suffix}"] = (prev_h.T @ dgh2).T
                if self.bias:
                    grads[f"bias_ih_l{layer}{suffix}"] = dgx2.sum(axis=0)
                    grads[f"bias_hh_l{layer}{suffix}"] = (dgh2.sum(axis=0) if separate
                                                          else grads[f"bias_ih_l{layer}{suffix}"].copy())
                dinp += dgx2 @ p.w_ih
            dy = dinp.reshape(T, B, inp.shape[-1])
        dx = dy.transpose(1, 0, 2) if self.batch_first else dy
        grads = {k: grads[k] for k in self._params}                        # parameter order
        return dx, tuple(dstate0), grads

    def freeze(self, weights: str = "float32"):
        """``Module.freeze``; what the kernels kept of earlier values goes first (packed copies, the
        step's weights), should writes have been turned back on since a previous freeze.

        weights="bfloat16" (LSTM and GRU, on the CPU): inference (``forward``, ``step``) then reads the
        weights rounded once to bfloat16, with float32 arithmetic (``model_core.cells.native_bf16``):
        half the bytes a step reads, a relative 2^-9 on each weight. The float32 parameters stay
        (``state_dict``, export, ``forward_train``)."""
        problem = self.bf16_problem() if check_weight_format(weights) == "bfloat16" else None
        if problem:
            raise ValueError(f"weights='bfloat16' is not available here: {problem}")
        forget_packs(self._params.values())
        self._kept_steps.clear()
        self._step_plan = None
        self._bf16, self._bf16_of = {}, ()
        super().freeze()
        if weights == "bfloat16":
            for layer in range(self.num_layers):
                for d, suffix in enumerate(self._suffixes()):
                    p = self._layer_params(layer, suffix)
                    self._bf16[layer, d] = native_bf16.pack(self._cell.GATES, p.w_ih.T, p.w_hh.T, p.bias, p.b_hh)
            self._bf16_of = (tuple(self._params.values()), tuple(_with_bases(list(self._params.values()))))
        return self

    @property
    def weight_format(self) -> str:
        """What inference reads: "bfloat16" after ``freeze(weights="bfloat16")``, else "float32"."""
        return "bfloat16" if self._bf16_current() else "float32"

    def bf16_problem(self) -> str | None:
        """Why this layer cannot take bfloat16 weights (None: it can)."""
        if self._kind not in ("lstm", "gru"):
            return f"bfloat16 weights serve LSTM and GRU layers, this is an {type(self).__name__}"
        if not (self.xp is np and self.dtype == np.float32 and self._cell.native and native.AVAILABLE):
            return "they need the compiled kernels on the CPU, float32 (model_core.native)"
        return None

    def to(self, device: str):
        clone = super().to(device)
        clone._kept_steps, clone._step_plan = {}, None
        clone._bf16, clone._bf16_of = {}, ()
        clone._select_cell()
        clone._store_weights_transposed()
        return clone
