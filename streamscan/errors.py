"""One exception hierarchy. Every message is one line that says what is wrong and how to fix it."""

from __future__ import annotations


class StreamscanError(Exception):
    """Base of every error a user can cause; ``str(err)`` is a single line with the fix."""


class SourceError(StreamscanError):
    """MODEL does not name a checkpoint we can read."""


class CheckpointError(StreamscanError):
    """A checkpoint file is corrupt, truncated or inconsistent with its index."""


class JournalError(StreamscanError):
    """The output directory holds an incompatible scan, or another scan is using it."""


class UsageError(StreamscanError):
    """Options that cannot work together or name nothing."""


class DistributedError(StreamscanError):
    """A rank of a split scan died, hung, or disagrees with rank 0; finished work is kept, a rerun completes it."""


class SelectionError(StreamscanError):
    """A selection names modules the model does not have, or cannot be applied to it."""


class OutputError(StreamscanError):
    """The scan directory cannot be used: not a directory, not writable, full, or holds a planted symlink."""
