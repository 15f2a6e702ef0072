"""The launcher's one error type."""


class ConfigError(ValueError):
    """An invalid argument, input or configuration; the CLI prints it on one line and exits 2."""
