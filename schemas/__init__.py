"""Typed records of the pipeline, their Arrow schemas, the proof format and parsers.

Every record crossing a Beam transform is a ``typing.NamedTuple`` from
``schemas.records`` registered with Beam's ``RowCoder``; parsing and validation
are plain functions (``schemas.parse``) so they are tested without a runner.
"""

from schemas import quiet as _quiet

_quiet.install()  # before anything imports apache_beam (see schemas/quiet.py)
