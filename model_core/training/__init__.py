"""Training: tasks (temporal order, echo, char-LM) and a resumable loop used by ``scripts/train.py``."""
from model_core.training.loop import CHECKPOINT_NAME, TrainConfig, train
from model_core.training.tasks import TASKS, CharLMTask, EchoTask, TemporalOrderTask

__all__ = ["CHECKPOINT_NAME", "TrainConfig", "train", "TASKS", "CharLMTask", "EchoTask", "TemporalOrderTask"]
