"""The firehose's compliance messages, both forms, as Twitter documents them (schemas.compliance)."""
from __future__ import annotations

import json

import pytest

from core.inputs import TAG_OF_TYPE, classify
from schemas.errors import InvalidRecord
from schemas.records import ComplianceEvent
from schemas.tweets import parse_tweet

TWEET_ID = "1050118621198921728"          # snowflake time 2018-10-10T20:19:24.211Z
EDITED_ID = "1567233994734948354"
INITIAL_ID = "1567233844205453313"
AUTHOR_ID = "6253282"
EVENT_AT = "2022-12-23T12:34:56.789Z"
EVENT_TS = 1671798896.789
SNOWFLAKE_TS = 1539202764.211


def event(**fields):
    return ComplianceEvent(**{"tweet_id": None, "author_id": None, **fields})


CASES = {
    # v1.1 stream messages
    "v1 delete": ({"delete": {"status": {"id_str": TWEET_ID, "user_id_str": AUTHOR_ID}, "timestamp_ms": "1671798896789"}},
                  event(tweet_id=TWEET_ID, author_id=AUTHOR_ID, ts=EVENT_TS, kind="delete")),
    "v1 scrub_geo": ({"scrub_geo": {"user_id": int(AUTHOR_ID), "user_id_str": AUTHOR_ID,
                                    "up_to_status_id": int(TWEET_ID), "up_to_status_id_str": TWEET_ID}},
                     event(author_id=AUTHOR_ID, ts=SNOWFLAKE_TS, kind="scrub_geo", up_to_tweet_id=TWEET_ID)),
    "v1 status_withheld": ({"status_withheld": {"id": int(TWEET_ID), "user_id": int(AUTHOR_ID),
                                                "withheld_in_countries": ["jp", "DE"]}},
                           event(tweet_id=TWEET_ID, author_id=AUTHOR_ID, ts=SNOWFLAKE_TS, kind="withheld",
                                 countries=["DE", "JP"])),
    "v1 user_withheld": ({"user_withheld": {"id": int(AUTHOR_ID), "withheld_in_countries": ["XX"],
                                            "timestamp_ms": "1671798896789"}},
                         event(author_id=AUTHOR_ID, ts=EVENT_TS, kind="user_withheld", countries=["XX"])),
    # v2 compliance stream events (developer.x.com "Compliance Data Objects")
    "v2 delete": ({"data": {"delete": {"tweet": {"id": TWEET_ID, "author_id": AUTHOR_ID}, "event_at": EVENT_AT}}},
                  event(tweet_id=TWEET_ID, author_id=AUTHOR_ID, ts=EVENT_TS, kind="delete")),
    "v2 tweet_edit": ({"data": {"tweet_edit": {"tweet": {"id": EDITED_ID}, "initial_tweet_id": INITIAL_ID,
                                               "edit_tweet_ids": [INITIAL_ID, EDITED_ID], "event_at": EVENT_AT}}},
                      event(tweet_id=EDITED_ID, ts=EVENT_TS, kind="tweet_edit", superseded=[INITIAL_ID])),
    "v2 withheld": ({"data": {"withheld": {"tweet": {"id": TWEET_ID, "author_id": AUTHOR_ID},
                                           "withheld_in_countries": ["JP"], "event_at": EVENT_AT}}},
                    event(tweet_id=TWEET_ID, author_id=AUTHOR_ID, ts=EVENT_TS, kind="withheld", countries=["JP"])),
    "v2 drop": ({"data": {"drop": {"tweet": {"id": TWEET_ID, "author_id": AUTHOR_ID}, "event_at": EVENT_AT}}},
                event(tweet_id=TWEET_ID, author_id=AUTHOR_ID, ts=EVENT_TS, kind="drop")),
    "v2 undrop": ({"data": {"undrop": {"tweet": {"id": TWEET_ID, "author_id": AUTHOR_ID}, "event_at": EVENT_AT}}},
                  event(tweet_id=TWEET_ID, author_id=AUTHOR_ID, ts=EVENT_TS, kind="undrop")),
    "v2 scrub_geo": ({"data": {"scrub_geo": {"user": {"id": AUTHOR_ID}, "up_to_tweet_id": TWEET_ID,
                                             "event_at": EVENT_AT}}},
                     event(author_id=AUTHOR_ID, ts=EVENT_TS, kind="scrub_geo", up_to_tweet_id=TWEET_ID)),
    "v2 user_withheld": ({"data": {"user_withheld": {"user": {"id": AUTHOR_ID}, "withheld_in_countries": ["DE"],
                                                     "event_at": EVENT_AT}}},
                         event(author_id=AUTHOR_ID, ts=EVENT_TS, kind="user_withheld", countries=["DE"])),
    **{f"v2 {kind}": ({"data": {kind: {"user": {"id": AUTHOR_ID}, "event_at": EVENT_AT}}},
                      event(author_id=AUTHOR_ID, ts=EVENT_TS, kind=kind))
       for kind in ("user_delete", "user_undelete", "user_protect", "user_unprotect", "user_suspend",
                    "user_unsuspend")},
    "top-level user_protect": ({"user_protect": {"user": {"id_str": AUTHOR_ID}, "timestamp_ms": "1671798896789"}},
                               event(author_id=AUTHOR_ID, ts=EVENT_TS, kind="user_protect")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_compliance_message_parses_to_its_event(case):
    message, expected = CASES[case]
    assert parse_tweet(message) == expected
    # through the pipeline's one judgement: every kind goes to the compliance input ('deletes')
    tag, value = classify("tweets", "tweets.jsonl", json.dumps(message))
    assert (tag, value) == (TAG_OF_TYPE[ComplianceEvent], expected)


def rejected(obj) -> str:
    with pytest.raises(InvalidRecord) as info:
        parse_tweet(obj)
    return str(info.value)


@pytest.mark.parametrize("message, reason", [
    ({"data": {"user_profile_modification": {"user": {"id": AUTHOR_ID}, "event_at": EVENT_AT}}},
     "unsupported compliance event 'data.user_profile_modification'"),
    ({"data": {"user_protect": {"user": {"id": AUTHOR_ID}}}},
     "data.user_protect: no event time (neither 'event_at' nor 'timestamp_ms')"),
    ({"data": {"withheld": {"tweet": {"id": TWEET_ID, "author_id": AUTHOR_ID}, "event_at": EVENT_AT}}},
     "missing required field 'data.withheld.withheld_in_countries'"),
    ({"data": {"withheld": {"tweet": {"id": TWEET_ID, "author_id": AUTHOR_ID}, "event_at": EVENT_AT,
                            "withheld_in_countries": ["JPN"]}}},
     "data.withheld.withheld_in_countries[0]: expected a two-letter country code, got 'JPN'"),
    ({"data": {"tweet_edit": {"tweet": {"id": EDITED_ID}, "edit_tweet_ids": "x", "event_at": EVENT_AT}}},
     "data.tweet_edit.edit_tweet_ids: expected a list of 1..32 ids"),
    ({"data": {"scrub_geo": {"user": {"id": AUTHOR_ID}, "event_at": EVENT_AT}}},
     "missing required field 'data.scrub_geo.up_to_status_id_str'"),
    ({"data": {"delete": {"tweet": {"id": TWEET_ID}, "event_at": EVENT_AT}}},
     "missing required field 'data.delete.tweet.author_id'"),
    ({"data": {"user_delete": {"user": {"id": 1.5}, "event_at": EVENT_AT}}},
     "data.user_delete.user.id: 1.5 is a float; ids lose precision as floats, send the id as a string"),
    ({"user_withheld": {"id": int(AUTHOR_ID), "withheld_in_countries": ["DE"]}},
     "user_withheld: no event time (neither 'event_at' nor 'timestamp_ms')"),
    ({"data": {"user_suspend": {"user": {"id": AUTHOR_ID}, "event_at": "yesterday"}}},
     None),
])
def test_bad_compliance_messages_are_rejected_with_their_reason(message, reason):
    got = rejected(message)
    if reason is None:
        assert got.startswith("data.user_suspend.event_at")
    else:
        assert got == reason


def test_a_v2_tweet_is_still_a_tweet():
    # a one-key data object holding "id" or "text" is a (broken) tweet, not an event
    assert rejected({"data": {"id": TWEET_ID}}).startswith("missing required field")
