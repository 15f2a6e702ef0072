"""The one exception type for rejected input.

Every parser and validator raises ``InvalidRecord`` with a reason a person can
act on ("latitude 91.0 out of range [-90, 90]", not "bad record"); the pipeline
turns it into a dead letter ``{source, error, raw}``.
"""


class InvalidRecord(ValueError):
    """An input record that cannot be used; ``str(exc)`` is the dead-letter reason."""
