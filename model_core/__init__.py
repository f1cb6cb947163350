"""model_core: RNN, LSTM and GRU models with exact BPTT, on NumPy (CPU) or CuPy (GPU).

    import model_core
    model = model_core.load("models/charlm", device="auto")
"""
from model_core.backend import DeviceError, gpu_available
from model_core.checkpoint import CheckpointError, load, save
from model_core.config import ModelConfig
from model_core.model import SequenceModel
from model_core.threads import set_num_threads

__all__ = ["DeviceError", "gpu_available", "CheckpointError", "load", "save", "ModelConfig", "SequenceModel",
           "set_num_threads"]
__version__ = "0.1.0"
