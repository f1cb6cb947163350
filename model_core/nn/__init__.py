"""Layers with PyTorch-compatible names and semantics, on NumPy or CuPy."""
from model_core.nn.embedding import Embedding
from model_core.nn.linear import Linear
from model_core.nn import losses
from model_core.nn.module import Module
from model_core.nn.rnn import RNN
from model_core.nn.lstm import LSTM
from model_core.nn.gru import GRU

__all__ = ["Embedding", "Linear", "losses", "Module", "RNN", "LSTM", "GRU"]
