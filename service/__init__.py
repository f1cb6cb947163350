"""rnn-serve: a FastAPI service for model_core's recurrent models."""
__version__ = "0.1.0"
