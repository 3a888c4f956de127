"""Layer 4, training: the Trainer and its callbacks, resumable state, checkpoints, loader, optimizer, metrics."""
