"""Task definitions (model building, losses, metrics) used by the training engine."""
