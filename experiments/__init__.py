"""The shared harness: data, models, losses, the training loop, tracking and the entry point."""
