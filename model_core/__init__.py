"""model_core: RNN, LSTM and GRU models with exact BPTT, on NumPy (CPU) or CuPy (GPU).

    import model_core
    model = model_core.load("models/charlm/model.safetensors", device="auto")   # a checkpoint file
    model_core.save(model, "/tmp/charlm/model.safetensors")                     # writes one back

    net = ...                                   # a torch Embedding -> LSTM -> Linear module
    model = model_core.from_torch(net, task="lm", vocab="abc")                  # torch only here

``load`` takes the checkpoint file, not its model folder. docs/pytorch.md serves a torch model.
"""
from model_core.backend import DeviceError, gpu_available
from model_core.checkpoint import CheckpointError, load, save
from model_core.config import ModelConfig
from model_core.heap import keep_freed_memory
from model_core.model import SequenceModel
from model_core.served import ServedModel
from model_core.threads import set_num_threads
from model_core.torch_import import TorchImportError, from_torch

__all__ = ["DeviceError", "gpu_available", "CheckpointError", "load", "save", "ModelConfig", "SequenceModel",
           "ServedModel", "TorchImportError", "from_torch", "keep_freed_memory", "set_num_threads"]
__version__ = "0.1.0"
