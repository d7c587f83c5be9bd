"""The errors users see, each printed by the CLI as one line with exit code 2."""


class ZerogradError(Exception):
    """Base class: a failure zerograd explains in one line (no traceback)."""


class ConfigError(ZerogradError, ValueError):
    """A bad value, named, with what would be valid; raised before any work starts."""


class StorageError(ZerogradError, OSError):
    """The machine, not the input: a file could not be written (full disk, read-only folder).
    What was there before is intact, and the message says so."""
