"""The package version, in one place (read by the package, results files and `--version`)."""
__version__ = "0.1.0"
