"""LSTM and GRU inference over bfloat16 weights, float32 arithmetic (``model_core/native/bf16_body.h``).

Opt-in, for a frozen layer (``freeze(weights="bfloat16")``): the weights are rounded once to
bfloat16 (round to nearest even) and kept packed; x, h, c, the sums and the gates stay float32. A
one-row step then reads half the bytes, and at H=256 its weights fit a core's L2. The results
differ from float32 weights by what rounding the weights moves (a relative 2^-9 per weight); they
equal, to float32's rounding, the float32 engine run on the rounded weights (``round_weights``),
which is how the tests check them.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from model_core.cells.native_weights import NULL, aligned_empty, c_array, ptr, row_strides
from model_core.native import lib

BLOCK = 16                 # hidden units per block of the layout (bf16_body.h's BF_BLOCK)
SLOTS = 4                  # bias vectors a block: the LSTM's 4 gates; the GRU's r, z, n's input side, b_hn
PACKED_BF16 = 2            # the step kernels' `packed` for these weights (rnn_kernels.c)


class Bf16Weights(NamedTuple):
    """One layer direction's weights as bf16_body.h reads them (``pack``); read-only arrays."""
    words: np.ndarray      # (UB, K/2, gates, 16) uint32
    bias16: np.ndarray     # (UB, 4, 16) float32
    gates: int             # 4 LSTM, 3 GRU


def round_bf16(a: np.ndarray) -> np.ndarray:
    """float32 -> the nearest bfloat16 (ties to even), as float32 bits with the low 16 cleared:
    the values the kernel computes with. Finite weights only (``load_state_dict`` refuses others)."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32)
    r = (u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return r.view(np.float32).reshape(np.shape(a))


def round_weights(state: dict) -> dict:
    """A layer's ``state_dict`` with every weight rounded as ``pack`` rounds it (the biases stay
    float32): loaded into a float32 layer, the reference the bfloat16 kernel is checked against."""
    return {k: round_bf16(v) if k.startswith("weight") else v for k, v in state.items()}


def pack(gates: int, weight_ih_t: np.ndarray, weight_hh_t: np.ndarray, bias, bias_hh) -> Bf16Weights:
    """W_ih^T (I, G*H), W_hh^T (H, G*H), bias folded as the cell folds it (G*H,) or None, and bias_hh
    (the GRU's b_hn is its last third; None: none) -> the layout bf16_body.h reads: the rows of
    [W_ih^T; W_hh^T] (I and H each padded to even with zero rows) by blocks of 16 units, each uint32
    word two rows' bf16 of one column (the even row in the low half); bias16 (UB, 4, 16)."""
    I, H = weight_ih_t.shape[0], weight_hh_t.shape[0]
    ub = -(-H // BLOCK)
    rows = np.zeros((I + I % 2 + H + H % 2, gates, ub * BLOCK), np.float32)
    rows[:I, :, :H] = weight_ih_t.reshape(I, gates, H)
    rows[I + I % 2:I + I % 2 + H, :, :H] = weight_hh_t.reshape(H, gates, H)
    halves = (round_bf16(rows).view(np.uint32) >> 16).reshape(-1, 2, gates, ub, BLOCK)   # (K/2, 2, G, UB, 16)
    words = aligned_empty((ub, halves.shape[0], gates, BLOCK)).view(np.uint32)   # on a cache line; all written
    words[...] = (halves[:, 0] | (halves[:, 1] << 16)).transpose(2, 0, 1, 3)
    bias16 = np.zeros((SLOTS, ub * BLOCK), np.float32)
    if bias is not None:
        bias16[:gates, :H] = np.asarray(bias, np.float32).reshape(gates, H)
    if gates == 3 and bias_hh is not None:
        bias16[3, :H] = np.asarray(bias_hh, np.float32)[2 * H:]
    bias16 = np.ascontiguousarray(bias16.reshape(SLOTS, ub, BLOCK).transpose(1, 0, 2))
    words.flags.writeable = bias16.flags.writeable = False
    return Bf16Weights(words, bias16, gates)


def sequence_forward(x, weights: Bf16Weights, state0, reverse: bool, y_out, lengths=None) -> tuple:
    """One direction over x (T, B, I) (rows may be strided): weights ``pack``'s; state0 (h0, c0) or
    (h0,), each (B, H); y_out (T, B, H) view receiving every h_t (zero past a row's length); lengths
    (B,) int64 or None (packed-sequence semantics: past its length a row's state passes through).
    Returns the final state, (h_T, c_T) or (h_T,)."""
    T, B, I = x.shape
    H = state0[0].shape[1]
    if x.strides[2] != 4:
        x = np.ascontiguousarray(x)
    state0 = tuple(c_array(s) for s in state0)
    final = tuple(np.empty((B, H), np.float32) for _ in state0)
    c0, cT = (state0[1], final[1]) if len(state0) > 1 else (None, None)
    lens = None if lengths is None else np.ascontiguousarray(lengths, np.int64)
    xt, xb = row_strides(x)
    yt, yb = row_strides(y_out)
    if lib.mc_forward_bf16(weights.gates, T, B, H, I, int(reverse), ptr(x), xt, xb, ptr(weights.words),
                           ptr(weights.bias16), NULL if lens is None else ptr(lens), ptr(state0[0]), ptr(c0),
                           ptr(y_out), yt, yb, ptr(final[0]), ptr(cT)):
        raise MemoryError("the bfloat16 kernel could not allocate its scratch buffer")
    return final


def step_weights(weights: Bf16Weights) -> tuple:
    """What the cell's ``step_forward_input`` and the compiled step entry read for these weights, in
    the cell's ``step_weights`` form: the words in W_ih's place (and W_hh's: the entry wants both),
    ``PACKED_BF16``, bias16 (and the GRU's b_hn: None, bias16 holds it)."""
    head = (weights.words, weights.words, PACKED_BF16, weights.bias16)
    return head if weights.gates == 4 else (*head, None)
