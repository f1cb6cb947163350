"""model_core: cells, BPTT, layers, training, checkpoints, fast paths, parity with PyTorch."""
