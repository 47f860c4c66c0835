"""Training engine: configuration, loops, checkpoints, DDP, reports, export."""
