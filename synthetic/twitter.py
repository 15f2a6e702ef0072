"""The firehose's wire formats, as the generator emits them.

One internal description of a tweet (``TweetSpec``) renders either as an API
v1.1 status object or as an API v2 ``{"data", "includes"}`` object, with the
formats' own quirks kept on purpose because the pipeline's parser must cope
with them:

* v1.1 ``coordinates`` is GeoJSON ``[lng, lat]`` while the deprecated ``geo`` is
  ``[lat, lng]``; geotagged tweets also carry their ``place``; a place-only
  tweet carries just ``place.bounding_box`` (four corners, not closed).
* v1.1 texts over 140 characters are ``truncated``: ``text`` ends in ``…`` and a
  t.co link, the full text and its entities are in ``extended_tweet``, and a
  hashtag past the cut appears only there. v2 keeps long text in ``note_tweet``.
* v1.1 retweets embed the original in ``retweeted_status`` and have no location
  of their own; v2 retweets point at it through ``referenced_tweets`` and carry
  it in ``includes.tweets``.
* ids are snowflakes: ``((unix_ms - 1288834974657) << 22) | sequence``, so the
  id's own time equals ``created_at`` (v1.1's to the second, ``timestamp_ms`` to
  the millisecond; v2's ``created_at`` has whole seconds, as the API gives).
* compliance messages (``synthetic.compliance`` plans them) in the form of the API the
  tweet came from: a v1.1 tweet's delete is ``{"delete": {"status": …}, "timestamp_ms"}``,
  a v2 tweet's ``{"data": {"delete": {"tweet": …, "event_at"}}}``; the other kinds in both
  forms where v1.1 has one (``scrub_geo``, ``status_withheld``, ``user_withheld``), else
  the v2 compliance event (``tweet_edit``, ``drop``/``undrop``, ``user_*``).
"""
from __future__ import annotations

import json
from typing import NamedTuple, Optional

from synthetic import clock

TWITTER_EPOCH_MS = 1288834974657
V1_TEXT_LIMIT = 140
_DUMPS = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

CLIENTS = (
    '<a href="http://twitter.com/download/iphone" rel="nofollow">Twitter for iPhone</a>',
    '<a href="http://twitter.com/download/android" rel="nofollow">Twitter for Android</a>',
    '<a href="https://mobile.twitter.com" rel="nofollow">Twitter Web App</a>',
)


class Author(NamedTuple):
    user_id: str
    screen_name: str
    name: str
    followers: int
    friends: int


class Place(NamedTuple):
    place_id: str            # 16 hex digits, as Twitter's
    name: str
    full_name: str
    place_type: str          # city | neighborhood | poi
    bbox: tuple              # (west, south, east, north)


class TweetSpec(NamedTuple):
    tweet_id: int
    millis: int              # the snowflake's time
    author: Author
    text: str                # the full text
    lang: str
    hashtags: tuple          # tags as written (without '#'), each occurring in text
    coords: Optional[tuple]  # (lat, lng) for an exact geotag
    place: Optional[Place]
    retweet_of: Optional["TweetSpec"]
    api: str                 # "v1" | "v2"
    client: int              # index into CLIENTS


class SnowflakeMinter:
    """Unique snowflake ids for given times; the sequence counts up within each millisecond."""

    def __init__(self):
        self._seq: dict[int, int] = {}

    def mint(self, millis: int) -> int:
        seq = self._seq.get(millis, 0)
        if seq >= 1 << 22:
            raise OverflowError(f"more than {1 << 22} tweets in millisecond {millis}")
        self._seq[millis] = seq + 1
        return ((millis - TWITTER_EPOCH_MS) << 22) | seq


def snowflake_millis(tweet_id: int) -> int:
    return (tweet_id >> 22) + TWITTER_EPOCH_MS


# A hashtag ends at whitespace, punctuation or another '#'.
TAG_END = frozenset(" \t\n　#、。!！?？,.:;)")


def _hashtag_entities(text: str, tags, v2: bool) -> list:
    """Entities for every written occurrence of ``tags`` in ``text``, in text order.

    An occurrence counts only as a whole hashtag (``#祭り`` is not inside
    ``#祭りだ``); a tag cut off by truncation simply has no entity.
    """
    spans = []
    for tag in set(tags):
        needle = "#" + tag
        start = text.find(needle)
        while start >= 0:
            end = start + len(needle)
            if end == len(text) or text[end] in TAG_END:
                spans.append((start, end, tag))
            start = text.find(needle, end)
    spans.sort()
    if v2:
        return [{"start": start, "end": end, "tag": tag} for start, end, tag in spans]
    return [{"text": tag, "indices": [start, end]} for start, end, tag in spans]


def _tco(tweet_id: int) -> str:
    # Deterministic stand-in for a t.co short link (10 base-62 characters).
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    n, chars = tweet_id, []
    for _ in range(10):
        n, r = divmod(n, 62)
        chars.append(alphabet[r])
    return "https://t.co/" + "".join(chars)


def _v1_user(author: Author) -> dict:
    return {
        "id": int(author.user_id),
        "id_str": author.user_id,
        "name": author.name,
        "screen_name": author.screen_name,
        "location": "東京",
        "protected": False,
        "followers_count": author.followers,
        "friends_count": author.friends,
        "lang": None,
    }


def _v1_place(place: Place) -> dict:
    west, south, east, north = place.bbox
    return {
        "id": place.place_id,
        "url": f"https://api.twitter.com/1.1/geo/id/{place.place_id}.json",
        "place_type": place.place_type,
        "name": place.name,
        "full_name": place.full_name,
        "country_code": "JP",
        "country": "日本",
        "bounding_box": {
            "type": "Polygon",
            "coordinates": [[[west, south], [east, south], [east, north], [west, north]]],
        },
        "attributes": {},
    }


def _v1_status(spec: TweetSpec) -> dict:
    seconds = spec.millis // 1000
    text = spec.text
    status = {
        "created_at": clock.twitter_v1(seconds),
        "id": spec.tweet_id,
        "id_str": str(spec.tweet_id),
        "text": text,
        "source": CLIENTS[spec.client],
        "truncated": False,
        "in_reply_to_status_id": None,
        "in_reply_to_status_id_str": None,
        "in_reply_to_user_id_str": None,
        "user": _v1_user(spec.author),
        "geo": None,
        "coordinates": None,
        "place": None,
        "is_quote_status": False,
    }
    rt = spec.retweet_of
    if rt is not None:
        status["retweeted_status"] = _v1_status(rt)
    if len(text) > V1_TEXT_LIMIT:
        link = _tco(spec.tweet_id)
        if rt is None:
            # Classic extended tweet: visible prefix + "… " + link, the rest in extended_tweet.
            visible = text[: V1_TEXT_LIMIT - len(link) - 2]
            status["text"] = f"{visible}… {link}"
            status["truncated"] = True
            status["extended_tweet"] = {
                "full_text": text,
                "display_text_range": [0, len(text)],
                "entities": {"hashtags": _hashtag_entities(text, spec.hashtags, False),
                             "urls": [], "user_mentions": [], "symbols": []},
            }
            entity_text = visible
            urls = [{"url": link, "expanded_url": f"https://twitter.com/i/web/status/{spec.tweet_id}",
                     "display_url": "twitter.com/i/web/status/1…",
                     "indices": [len(visible) + 2, len(visible) + 2 + len(link)]}]
        else:
            # A retweet's own text is cut without extended_tweet; the original keeps it all.
            entity_text = text[: V1_TEXT_LIMIT - 1]
            status["text"] = entity_text + "…"
            urls = []
    else:
        entity_text = text
        urls = []
    status["entities"] = {"hashtags": _hashtag_entities(entity_text, spec.hashtags, False),
                          "urls": urls, "user_mentions": [], "symbols": []}
    if spec.coords is not None:
        lat, lng = spec.coords
        status["geo"] = {"type": "Point", "coordinates": [lat, lng]}
        status["coordinates"] = {"type": "Point", "coordinates": [lng, lat]}
    if spec.place is not None:
        status["place"] = _v1_place(spec.place)
    status["retweet_count"] = 0
    status["favorite_count"] = 0
    status["favorited"] = False
    status["retweeted"] = False
    status["filter_level"] = "low"
    status["lang"] = spec.lang
    status["timestamp_ms"] = str(spec.millis)
    return status


def _v2_data(spec: TweetSpec) -> dict:
    text = spec.text
    data = {
        "id": str(spec.tweet_id),
        "author_id": spec.author.user_id,
        "created_at": clock.twitter_v2(spec.millis // 1000),
        "edit_history_tweet_ids": [str(spec.tweet_id)],
        "lang": spec.lang,
        "source": "Twitter for iPhone" if spec.client == 0 else ("Twitter for Android" if spec.client == 1 else "Twitter Web App"),
    }
    if len(text) > V1_TEXT_LIMIT and spec.retweet_of is None:
        shown = text[: V1_TEXT_LIMIT - 1] + "…"
        data["text"] = shown
        data["note_tweet"] = {"text": text, "entities": {"hashtags": _hashtag_entities(text, spec.hashtags, True)}}
        entity_text = shown
    elif spec.retweet_of is not None and len(text) > V1_TEXT_LIMIT:
        entity_text = text[: V1_TEXT_LIMIT - 1]
        data["text"] = entity_text + "…"
    else:
        data["text"] = text
        entity_text = text
    hashtags = _hashtag_entities(entity_text, spec.hashtags, True)
    if hashtags:
        data["entities"] = {"hashtags": hashtags}
    if spec.coords is not None:
        lat, lng = spec.coords
        geo = {"coordinates": {"type": "Point", "coordinates": [lng, lat]}}
        if spec.place is not None:
            geo["place_id"] = spec.place.place_id
        data["geo"] = geo
    elif spec.place is not None:
        data["geo"] = {"place_id": spec.place.place_id}
    if spec.retweet_of is not None:
        data["referenced_tweets"] = [{"type": "retweeted", "id": str(spec.retweet_of.tweet_id)}]
    return data


def _v2_user(author: Author) -> dict:
    return {"id": author.user_id, "name": author.name, "username": author.screen_name}


def _v2_place(place: Place) -> dict:
    return {
        "id": place.place_id,
        "full_name": place.full_name,
        "name": place.name,
        "place_type": place.place_type,
        "country": "日本",
        "country_code": "JP",
        "geo": {"type": "Feature", "bbox": list(place.bbox), "properties": {}},
    }


def _v2_object(spec: TweetSpec) -> dict:
    users = [_v2_user(spec.author)]
    places = [_v2_place(spec.place)] if spec.place is not None else []
    includes = {"users": users}
    rt = spec.retweet_of
    if rt is not None:
        includes["tweets"] = [_v2_data(rt)]
        if rt.author.user_id != spec.author.user_id:
            users.append(_v2_user(rt.author))
        if rt.place is not None:
            places.append(_v2_place(rt.place))
    if places:
        includes["places"] = places
    return {"data": _v2_data(spec), "includes": includes}


def render(spec: TweetSpec) -> str:
    """The firehose line for one tweet, in the API version the spec names."""
    return _DUMPS(_v1_status(spec) if spec.api == "v1" else _v2_object(spec))


def render_delete(tweet_id: int, user_id: str, millis: int, api: str = "v1") -> str:
    """A compliance ``delete`` notice sent at ``millis``: v1.1's, or the v2 compliance event."""
    if api == "v2":
        return render_v2_event("delete", millis, tweet=(tweet_id, user_id))
    return _DUMPS({"delete": {"status": {"id": tweet_id, "id_str": str(tweet_id),
                                         "user_id": int(user_id), "user_id_str": user_id},
                              "timestamp_ms": str(millis)}})


def render_v2_event(kind: str, millis: int, tweet: Optional[tuple] = None, user_id: Optional[str] = None,
                    **fields) -> str:
    """A v2 compliance stream event: ``tweet`` = (id, author id or None), or ``user_id``."""
    body = {}
    if tweet is not None:
        body["tweet"] = {"id": str(tweet[0]), **({"author_id": tweet[1]} if tweet[1] else {})}
    if user_id is not None:
        body["user"] = {"id": user_id}
    body.update(fields)
    body["event_at"] = clock.rfc3339_ms(millis)
    return _DUMPS({"data": {kind: body}})


def render_v1_scrub_geo(user_id: str, up_to: int, millis: int) -> str:
    return _DUMPS({"scrub_geo": {"user_id": int(user_id), "user_id_str": user_id, "up_to_status_id": up_to,
                                 "up_to_status_id_str": str(up_to), "timestamp_ms": str(millis)}})


def render_v1_status_withheld(tweet_id: int, user_id: str, countries: list, millis: int) -> str:
    return _DUMPS({"status_withheld": {"id": tweet_id, "id_str": str(tweet_id), "user_id": int(user_id),
                                       "user_id_str": user_id, "withheld_in_countries": countries,
                                       "timestamp_ms": str(millis)}})


def render_v1_user_withheld(user_id: str, countries: list, millis: int) -> str:
    return _DUMPS({"user_withheld": {"id": int(user_id), "id_str": user_id, "withheld_in_countries": countries,
                                     "timestamp_ms": str(millis)}})
