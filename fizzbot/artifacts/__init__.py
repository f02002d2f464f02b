"""The artifacts between stages: prepared-data folders, checkpoints and their manifest, finding the
latest checkpoint, and loading one for inference. Writes are atomic (`io`)."""
