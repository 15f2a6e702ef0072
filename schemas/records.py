"""The typed records that flow through the pipeline.

Inputs (``User``, ``Ping``, ``TapReport``, ``Tweet``, ``ComplianceEvent``) come out of
``schemas.parse``; outputs (``Follow``, ``Alert``, ``TimelineEntry``, ``Statistic``, ``DeadLetter``)
go to the sinks of ``shared/CONTRACTS.md``. Times are float epoch seconds (UTC)
inside the pipeline (see ``schemas.timefmt``) and RFC 3339 in files.

No engine is imported here: the Beam adapter registers each record with Beam's
``RowCoder`` (``transforms/__init__.py``: runners move it as a schema'd row, not
a pickle), and ``arrow_schema(Record)`` gives its Arrow schema, derived from the
same annotations so the two never disagree. ``to_json_line`` is the one JSON line of a
record in an output folder or topic: here, not in the Beam launcher's sinks, because the
Flink job (``flink_job``) writes the same lines and must not import ``pipelines``.
"""
from __future__ import annotations

import json
import typing
from typing import List, NamedTuple, Optional

import pyarrow as pa

from schemas.timefmt import format_rfc3339


class User(NamedTuple):
    user_id: str                 # Twitter id_str
    pubkey: str                  # base64 of the raw 32-byte Ed25519 public key
    alerts_opt_in: bool
    stats_opt_out: bool
    age_band: Optional[str]      # e.g. "20-29"; only ever used in aggregates


class RegistryChange(NamedTuple):
    """A subscriber's settings change, as the portal writes it to the registry (a ``users.jsonl``
    record with ``updated_at`` and the portal's signature ``portal_sig``; ``schemas.signin``).

    Only the two settings a subscriber controls are taken from it (``alerts_opt_in``,
    ``stats_opt_out``); the key and age band stay the registry's own. ``signed`` is the
    canonical JSON the portal signed, kept so the signature is checked where the portal's
    public key is known (``core.registry``), without parsing the line again."""
    user: User
    ts: float                    # updated_at: when the subscriber made the change (event time)
    signed: str
    portal_sig: str


class Ping(NamedTuple):
    user_id: str
    ts: float
    lat: float
    lng: float
    accuracy_m: Optional[float]
    source: Optional[str]        # gps | cell | wifi


class TapReport(NamedTuple):
    """One phone's report of one NFC touch (see ``schemas.proofs`` for proofs)."""
    tap_id: str
    user_id: str
    peer_user_id: str
    nonce: str                   # hex, shared by both phones of the touch
    ts: float                    # the reporting phone's clock
    lat: float
    lng: float
    proof: str                   # base64 Ed25519 signature by user_id over the claim
    peer_proof: str              # base64 Ed25519 signature by peer_user_id over the claim
    # The project's own fields (CONTRACTS.md allows them; see schemas.proofs). Optional only so
    # that a report without them parses and is dead-lettered with its specific reason.
    accuracy_m: Optional[int] = None   # the reporter's position accuracy, whole metres (signed)
    report_sig: Optional[str] = None   # base64 Ed25519 signature by user_id over the whole report


class Tweet(NamedTuple):
    """One status, normalised from API v1.1 or v2: the same tweet gives the same record."""
    tweet_id: str
    author_id: str
    ts: float                    # created_at
    text: str                    # extended_tweet.full_text / note_tweet when present
    lang: Optional[str]
    hashtags: List[str]          # lower-cased, without '#', in order of appearance
    lat: Optional[float]         # None when the tweet has no location at all
    lng: Optional[float]
    coarse: bool                 # located only at a place bounding box's centre
    place_id: Optional[str]
    retweet_of: Optional[str]    # the original's id when this is a retweet


class ComplianceEvent(NamedTuple):
    """One firehose compliance message (v1.1 stream message or v2 compliance event), normalised.

    ``kind`` is the v2 event name (``schemas.compliance.KINDS``: the v1.1 ``status_withheld`` is
    ``withheld``); what each kind covers is ``core.compliance``'s. The first three fields are the
    ones a ``delete`` notice always had (``TweetDelete`` is this record's old name).
    """
    tweet_id: Optional[str]      # the tweet a tweet event is about; None for a user event
    author_id: Optional[str]     # the tweet's author / the user of a user event; None: not sent (tweet_edit)
    ts: float                    # event_at / timestamp_ms, else the tweet id's snowflake time
    kind: str = "delete"
    up_to_tweet_id: Optional[str] = None   # scrub_geo: the user's tweets up to this id lose their location
    countries: List[str] = []    # withheld / user_withheld: withheld_in_countries, upper case
    superseded: List[str] = []   # tweet_edit: the earlier versions the edit replaces


TweetDelete = ComplianceEvent


class Follow(NamedTuple):
    user_a: str                  # user_a < user_b
    user_b: str
    established_at: float
    nonce: str
    h3_cell: str                 # where the touch happened, never raw coordinates


class Alert(NamedTuple):
    alert_id: str                # deterministic: same input, same id
    user_id: str
    tweet_id: str
    ts: float
    distance_m: float
    reason: str


class TimelineEntry(NamedTuple):
    """One public, precisely geotagged tweet inside the service area, for the local timeline
    (``core.timeline``); ``retracted`` rows take back an earlier entry with the same tweet_id."""
    tweet_id: str
    author_id: str
    ts: float                    # created_at
    text: str
    lat: float
    lng: float
    h3_cell: str                 # the tweet's cell at the statistics' resolution (DpParams.h3_res)
    happening: Optional[str]     # the happening kind (core.happenings.KINDS) if the tweet is one, else None
    retracted: bool              # True: an earlier entry with this tweet_id must no longer be shown


class Statistic(NamedTuple):
    """One released differentially private value (no user id or coordinate, ever)."""
    window_start: float
    window_end: float
    h3_cell: str
    h3_res: int
    metric: str
    value: float
    mechanism: str               # e.g. "laplace", "gaussian"
    noise_scale: float           # stddev of the added noise
    ci95_halfwidth: float
    epsilon: float
    delta: float


class DeadLetter(NamedTuple):
    source: str                  # input file or topic
    error: str                   # a readable, specific reason
    raw: str                     # the input as received


# Every record an engine moves between steps. The engine adapters give each one their
# schema'd coder (Beam: ``transforms/__init__.py`` registers ``RowCoder``); nothing here
# imports an engine, so a worker without Beam reads and writes these records.
ALL_RECORDS = (User, Ping, TapReport, Tweet, ComplianceEvent, Follow, Alert, TimelineEntry, Statistic, DeadLetter)

# Fields holding event time; sinks write them as RFC 3339.
TIME_FIELDS = frozenset({"ts", "established_at", "window_start", "window_end"})

_ARROW_TYPES = {str: pa.string(), float: pa.float64(), int: pa.int64(), bool: pa.bool_()}


def _arrow_type(annotation):
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _arrow_type(inner)[0], True
    if origin in (list, List):
        (inner,) = typing.get_args(annotation)
        return pa.list_(_arrow_type(inner)[0]), False
    return _ARROW_TYPES[annotation], False


def arrow_schema(record_type, times_as_timestamps: bool = True) -> pa.Schema:
    """The Arrow schema of a record type; time fields become UTC timestamps."""
    fields = []
    for name, annotation in typing.get_type_hints(record_type).items():
        arrow_type, nullable = _arrow_type(annotation)
        if times_as_timestamps and name in TIME_FIELDS:
            arrow_type = pa.timestamp("ms", tz="UTC")
        fields.append(pa.field(name, arrow_type, nullable=nullable))
    return pa.schema(fields)


def arrow_table(records, record_type) -> pa.Table:
    """Records of ``record_type`` as one Arrow table of ``arrow_schema(record_type)``, built
    column by column (no dict per row): time fields, epoch seconds, become UTC milliseconds."""
    schema = arrow_schema(record_type)
    columns = list(zip(*records)) if records else [()] * len(schema)
    arrays = []
    for field, values in zip(schema, columns):
        if field.name in TIME_FIELDS:
            millis = pa.array([None if v is None else round(v * 1000) for v in values], pa.int64())
            arrays.append(millis.cast(field.type))
        else:
            arrays.append(pa.array(values, field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def to_json_dict(record) -> dict:
    """A record as the dict its JSONL sink writes (times as RFC 3339)."""
    out = record._asdict()
    for name in TIME_FIELDS.intersection(out):
        if out[name] is not None:
            out[name] = format_rfc3339(out[name])
    return out


def to_json_line(record) -> str:
    """One record as its contract JSON line (times RFC 3339, UTF-8 kept as is)."""
    as_dict = record if isinstance(record, dict) else to_json_dict(record)
    line = json.dumps(as_dict, ensure_ascii=False, separators=(",", ":"))
    if not line.isascii():
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate got this far (the parsers reject them): write it as a JSON
            # escape rather than fail the whole write.
            line = json.dumps(as_dict, ensure_ascii=True, separators=(",", ":"))
    return line
