"""Training: config, the train loop, and its logs and plots."""
