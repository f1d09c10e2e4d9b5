"""User-facing errors: the CLI prints these as one line and exits non-zero."""


class BeerayError(Exception):
    """A problem with the user's input (file, config, data, cluster), not a bug."""
