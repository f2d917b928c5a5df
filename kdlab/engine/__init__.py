"""The core: hook specifications, recipe validation, the training loop and the runner."""
