"""Optimisers that update a Module's live parameter arrays in place, and global-norm clipping."""
from model_core.optim.adam import Adam
from model_core.optim.clip import clip_grad_norm_
from model_core.optim.sgd import SGD

__all__ = ["SGD", "Adam", "clip_grad_norm_"]
