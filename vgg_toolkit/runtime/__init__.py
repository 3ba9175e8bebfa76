"""Where and how code runs: devices and precision, torch.distributed, derived seeds, atomic files."""
