"""Networks from the architecture registry: building, weights in and out, trained checkpoints, facts."""
