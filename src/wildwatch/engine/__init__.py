"""Engine: training loop, evaluation and checkpoints."""
