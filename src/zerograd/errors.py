"""The one error type users see: a bad value, named, with what would be valid."""


class ConfigError(ValueError):
    """Raised before any work starts; the CLI prints it as one line and exits 2."""
