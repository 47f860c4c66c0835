"""Small utilities every room stands on: atomic writes, a run-folder lock, typed settings, progress display."""
