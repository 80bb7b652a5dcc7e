"""checkpoint: where a model's files are, their headers, and one tensor (or expert slice) at a time."""
