"""Which files a run reads: the contract's input directory, resolved and checked once.

Engine-neutral (no Beam): the Beam launcher (``pipelines.sources``) and the Flink job
(``flink_job.io``) both find a run's input files and name their dead letters' ``source``
with these, so the two engines read the same files under the same names, and hand each
line read (:func:`as_element`) to the same judgement (``core.inputs.judge_line``).
"""
from __future__ import annotations

import os

from core.config import ConfigError
from core.lines import DamagedLine, InputFileError, check_input_file
from schemas.parse import SOURCES

EVENT_KINDS = tuple(kind for kind in SOURCES if kind != "users")


def input_files(input_dir: str) -> dict[str, list[str]]:
    """kind -> its file(s) in input_dir (``kind.jsonl`` and/or ``kind.jsonl.gz``)."""
    if not os.path.isdir(input_dir):
        raise ConfigError(f"--input {input_dir}: not a directory")
    found = {}
    for kind in SOURCES:
        paths = [os.path.join(input_dir, f"{kind}{ext}") for ext in (".jsonl", ".jsonl.gz")]
        paths = [p for p in paths if os.path.isfile(p)]
        if not paths:
            raise ConfigError(f"--input {input_dir}: missing {kind}.jsonl (or {kind}.jsonl.gz)")
        for path in paths:
            if not os.access(path, os.R_OK):
                raise ConfigError(f"--input {path}: not readable")
            try:
                check_input_file(path)
            except (InputFileError, OSError) as exc:
                raise ConfigError(f"--input {exc}") from None
        found[kind] = paths
    return found


def origin_names(files: dict[str, list[str]]) -> dict[str, str]:
    """The dead letters' ``source`` per kind: the file name(s) it was read from."""
    return {kind: "+".join(os.path.basename(p) for p in paths) for kind, paths in files.items()}


def kafka_origins() -> dict[str, str]:
    """The dead letters' ``source`` per kind when the events come from Kafka (topic = kind)."""
    return {kind: f"kafka:{kind}" for kind in SOURCES}


def as_element(kind: str, line) -> tuple:
    """A read line as a ParseInputs element: ``(kind, bytes)``, or ``(kind, raw, error)`` for damage."""
    if isinstance(line, DamagedLine):
        return (kind, line.raw, line.error)
    return (kind, line)
