"""Training: the typed run configuration, batch sources, the loop, checkpoints, schedule, reporting."""
