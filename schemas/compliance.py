"""The firehose's compliance messages: one decoded object -> ``ComplianceEvent``.

Called by ``schemas.tweets.parse_tweet`` for every object that is not a status. Both
forms Twitter delivers are read, into the one record ``schemas.records.ComplianceEvent``
whose ``kind`` is the v2 event name:

**API v1.1 stream messages** (developer.twitter.com, "Streaming message types"; the same
shapes as twitter4s' ``StatusDeletionNotice``, ``LocationDeletionNotice``,
``StatusWithheldNotice``, ``UserWithheldNotice`` and tweepy's ``on_scrub_geo`` /
``on_status_withheld`` / ``on_user_withheld``, tweepy PR #886)::

    {"delete": {"status": {"id_str", "user_id_str"}, "timestamp_ms"}}
    {"scrub_geo": {"user_id_str", "up_to_status_id_str"}}                    # kind scrub_geo
    {"status_withheld": {"id_str", "user_id_str", "withheld_in_countries"}}  # kind withheld
    {"user_withheld": {"id_str", "withheld_in_countries"}}                   # kind user_withheld

(each id also as a JSON number ``id`` / ``user_id`` / ``up_to_status_id`` when it is an
exact 64-bit integer; an optional ``timestamp_ms`` on any of them).

**API v2 compliance stream events** (developer.x.com, "Compliance Data Objects",
``GET /2/tweets/compliance/stream`` and ``/2/users/compliance/stream``; the XDK's
``UserScrubGeoObjectSchema``, ``TweetWithheldComplianceSchema``)::

    {"data": {"delete":     {"tweet": {"id", "author_id"}, "event_at"}}}
    {"data": {"tweet_edit": {"tweet": {"id"}, "initial_tweet_id", "edit_tweet_ids": [...], "event_at"}}}
    {"data": {"withheld":   {"tweet": {"id", "author_id"}, "withheld_in_countries": [...], "event_at"}}}
    {"data": {"drop" | "undrop": {"tweet": {"id", "author_id"}, "event_at"}}}
    {"data": {"scrub_geo":  {"user": {"id"}, "up_to_tweet_id", "event_at"}}}
    {"data": {"user_delete" | "user_undelete" | "user_protect" | "user_unprotect" |
              "user_suspend" | "user_unsuspend": {"user": {"id"}, "event_at"}}}
    {"data": {"user_withheld": {"user": {"id"}, "withheld_in_countries": [...], "event_at"}}}

The same user events at the top level (``{"user_protect": {"user": {...}, "timestamp_ms"}}``,
the enterprise compliance firehose's framing) are read alike.

Normalisation: ``tweet_edit``'s ``tweet.id`` is the latest version; every other id of
``edit_tweet_ids`` (and ``initial_tweet_id``) is ``superseded``. Country codes are
upper-cased two-letter codes; Twitter's ``XX`` means every country. The event time is
``event_at`` (RFC 3339), else ``timestamp_ms``, else, for a tweet event or ``scrub_geo``,
the snowflake time of the id it names; a user event with neither is rejected (it could
not be placed in event time). Anything else (``limit``, ``disconnect``, a v2 kind not
listed) raises ``InvalidRecord`` naming it.
"""
from __future__ import annotations

from schemas.errors import InvalidRecord
from schemas.parse import as_object, req
from schemas.records import ComplianceEvent
from schemas.timefmt import check_epoch, parse_rfc3339
from schemas.tweets import id_of, snowflake_time

TWEET_KINDS = ("delete", "tweet_edit", "withheld", "drop", "undrop")
USER_KINDS = ("scrub_geo", "user_delete", "user_undelete", "user_protect", "user_unprotect",
              "user_suspend", "user_unsuspend", "user_withheld")
KINDS = TWEET_KINDS + USER_KINDS
# v1.1 top-level message name -> kind
V1_NAMES = {"delete": "delete", "scrub_geo": "scrub_geo", "status_withheld": "withheld",
            "user_withheld": "user_withheld", **{k: k for k in USER_KINDS}}
ALL_COUNTRIES = "XX"
_MAX_EDITS = 32   # Twitter allows 5 edits; more ids than this is not an edit history


def parse_v2_event(data: dict) -> ComplianceEvent:
    ((name, body),) = data.items()
    if name not in KINDS:
        raise InvalidRecord(f"unsupported compliance event 'data.{str(name)[:40]}'")
    return _parse(name, as_object(body, f"data.{name}"), f"data.{name}.")


def parse_v1_message(name: str, body) -> ComplianceEvent:
    kind = V1_NAMES[name]
    return _parse(kind, as_object(body, name), f"{name}.")


def withheld_here(countries, country: str) -> bool:
    """Withheld in ``country`` by this list of codes (``XX``: everywhere)."""
    return country in countries or ALL_COUNTRIES in countries


def _parse(kind: str, body: dict, where: str) -> ComplianceEvent:
    tweet_id = author_id = up_to = None
    countries, superseded = [], []
    if kind in TWEET_KINDS:
        if "tweet" in body:            # v2
            tweet = as_object(body["tweet"], f"{where}tweet")
            tweet_id = id_of(tweet, "id", "id", f"{where}tweet.")
            if kind != "tweet_edit" or tweet.get("author_id") is not None:
                author_id = id_of(tweet, "author_id", "author_id", f"{where}tweet.")
        elif "status" in body:         # v1.1 delete
            status = as_object(body["status"], f"{where}status")
            tweet_id = id_of(status, "id_str", "id", f"{where}status.")
            author_id = id_of(status, "user_id_str", "user_id", f"{where}status.")
        elif kind == "delete":
            for other in body:
                if other != "timestamp_ms":
                    raise InvalidRecord(f"unsupported firehose message 'delete.{str(other)[:40]}'")
            raise InvalidRecord("missing required field 'delete.status'")
        else:                          # v1.1 status_withheld
            tweet_id = id_of(body, "id_str", "id", where)
            author_id = id_of(body, "user_id_str", "user_id", where)
    else:
        if "user" in body:             # v2
            author_id = id_of(as_object(body["user"], f"{where}user"), "id_str", "id", f"{where}user.")
        elif kind == "scrub_geo":      # v1.1
            author_id = id_of(body, "user_id_str", "user_id", where)
        else:                          # v1.1 user_withheld
            author_id = id_of(body, "id_str", "id", where)
    if kind == "scrub_geo":
        if "up_to_tweet_id" in body:
            up_to = id_of(body, "up_to_tweet_id", "up_to_tweet_id", where)
        else:
            up_to = id_of(body, "up_to_status_id_str", "up_to_status_id", where)
    if kind in ("withheld", "user_withheld"):
        countries = _countries(req(body, "withheld_in_countries", where), f"{where}withheld_in_countries")
    if kind == "tweet_edit":
        superseded = _superseded(body, tweet_id, where)
    ts = _event_time(body, where, tweet_id or up_to)
    return ComplianceEvent(tweet_id=tweet_id, author_id=author_id, ts=ts, kind=kind,
                           up_to_tweet_id=up_to, countries=countries, superseded=superseded)


def _superseded(body: dict, latest: str, where: str) -> list:
    ids = req(body, "edit_tweet_ids", where)
    if not isinstance(ids, list) or not 1 <= len(ids) <= _MAX_EDITS:
        raise InvalidRecord(f"{where}edit_tweet_ids: expected a list of 1..{_MAX_EDITS} ids")
    versions = [id_of({"id": value}, "id", "id", f"{where}edit_tweet_ids[{i}].") for i, value in enumerate(ids)]
    if body.get("initial_tweet_id") is not None:
        versions.insert(0, id_of(body, "initial_tweet_id", "initial_tweet_id", where))
    return sorted({v for v in versions if v != latest}, key=lambda v: (len(v), v))


def _countries(value, field: str) -> list:
    if not isinstance(value, list) or len(value) > 300:
        raise InvalidRecord(f"{field}: expected a list of country codes")
    out = []
    for i, code in enumerate(value):
        if not (isinstance(code, str) and len(code) == 2 and code.isascii() and code.isalpha()):
            raise InvalidRecord(f"{field}[{i}]: expected a two-letter country code, got {code!r:.40}")
        out.append(code.upper())
    return sorted(set(out))


def _event_time(body: dict, where: str, snowflake_id) -> float:
    if body.get("event_at") is not None:
        return parse_rfc3339(body["event_at"], f"{where}event_at")
    if body.get("timestamp_ms") is not None:
        return check_epoch(as_millis(body["timestamp_ms"], f"{where}timestamp_ms") / 1000.0, f"{where}timestamp_ms")
    if snowflake_id is not None:
        return check_epoch(snowflake_time(snowflake_id), f"{where}(snowflake time of {snowflake_id})")
    raise InvalidRecord(f"{where.rstrip('.')}: no event time (neither 'event_at' nor 'timestamp_ms')")


def as_millis(value, field: str) -> int:
    """Epoch milliseconds as v1.1 sends them: a string of digits; a JSON integer too."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 15:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10 ** 15:
        return value
    raise InvalidRecord(f"{field}: expected epoch milliseconds as digits, got {value!r:.40}")
