"""The firehose parser: one decoded ``tweets.jsonl`` object -> ``Tweet`` or ``ComplianceEvent``.

``parse_tweet(obj)`` is called by ``schemas.parse.parse_line('tweets', line)``
after JSON decoding. The firehose mixes three kinds of object in one file:

* API v1.1 status objects (``id_str``, ``user``, ``created_at`` …);
* API v2 stream objects ``{"data": {...}, "includes": {"places", "tweets", "users"}}``;
* compliance messages, v1.1 (``delete``, ``scrub_geo``, ``status_withheld``,
  ``user_withheld``) and v2 (``{"data": {"<event>": {...}}}``: ``delete``, ``tweet_edit``,
  ``withheld``, ``drop``/``undrop``, ``scrub_geo``, ``user_*``): ``schemas.compliance``.

Every other message (``limit``, ``disconnect``, ``warning``, v2 ``errors`` …) raises
``InvalidRecord`` naming it, so it becomes a dead letter rather than vanishing.

The same tweet delivered as v1.1 or as v2 gives an *equal* ``Tweet``: both
paths reduce to the same normalisation rules, written once here:

* location: an exact point (v1.1 ``coordinates`` = GeoJSON ``[lng, lat]``,
  else the deprecated ``geo`` = ``[lat, lng]``; v2 ``data.geo.coordinates`` =
  GeoJSON) wins; else the centre of the tweet's place bounding box, with
  ``coarse=True``; else no location. ``place_id`` is kept whenever given.
  A place box is read as the shorter of the two longitude arcs between its
  edges, so a box across the antimeridian has its centre near ±180, not 0.
* text: the untruncated text (v1.1 ``extended_tweet.full_text`` / ``full_text``,
  v2 ``note_tweet.text``); for a retweet, the original's text and hashtags
  when the message carries the original, since "RT @x: …" is truncated.
* hashtags: from the entities of that same text, normalised by
  ``normalize_hashtag`` (NFKC + case folding, no ``#``), in order.
* time: ``created_at`` (v1.1 ``Wed Oct 10 20:19:24 +0000 2018``, v2 RFC 3339).

HTML escapes in the text (``&amp;``) are kept as both APIs deliver them.
Everything here is dict lookups; no regular expressions on the hot path.
"""
from __future__ import annotations

import reprlib
import unicodedata

from schemas.errors import InvalidRecord
from schemas.parse import as_lat_lng, as_object, as_str, as_user_id, req
from schemas.records import ComplianceEvent, Tweet
from schemas.timefmt import parse_rfc3339, parse_twitter_v1

# Snowflake ids carry their creation time: milliseconds = (id >> 22) + this epoch.
SNOWFLAKE_EPOCH_MS = 1288834974657
# v1.1 ``coordinates`` and ``geo`` encode one point twice; beyond this many degrees
# apart they are two different points and the tweet cannot be trusted.
COORDINATE_TOLERANCE_DEG = 1e-6
_MAX_ID = 1 << 64

# Firehose / compliance-firehose messages that are not tweets; named in the error.
UNSUPPORTED_MESSAGES = frozenset({
    "limit", "disconnect", "warning", "event", "friends", "friends_str", "direct_message", "control",
    "for_user", "errors",
})
# Top-level names of the compliance messages (schemas.compliance.V1_NAMES), checked on every
# object: listed here so the hot path imports nothing.
COMPLIANCE_MESSAGES = frozenset({
    "delete", "scrub_geo", "status_withheld", "user_withheld", "user_delete", "user_undelete",
    "user_protect", "user_unprotect", "user_suspend", "user_unsuspend",
})
# Any of these at the top level makes an object a v1.1 status (then missing
# fields get their specific error rather than "unrecognised object").
_V1_STATUS_KEYS = ("id_str", "created_at", "user", "text", "full_text")


def parse_tweet(obj: dict) -> Tweet | ComplianceEvent:
    """One decoded firehose object -> ``Tweet`` | ``ComplianceEvent``, or ``InvalidRecord``."""
    if not isinstance(obj, dict):
        raise InvalidRecord(f"expected a JSON object, got {type(obj).__name__}")
    if "data" in obj:
        data = obj["data"]
        if isinstance(data, dict) and len(data) == 1 and "id" not in data and "text" not in data:
            from schemas.compliance import parse_v2_event  # rare: compliance imports this module
            return parse_v2_event(data)
        return _parse_v2(obj)
    for key in obj:
        if key in COMPLIANCE_MESSAGES:
            from schemas.compliance import parse_v1_message
            return parse_v1_message(key, obj[key])
        if key in UNSUPPORTED_MESSAGES:
            raise InvalidRecord(f"unsupported firehose message {key!r}")
    for key in _V1_STATUS_KEYS:
        if key in obj:
            return _parse_v1(obj)
    keys = ", ".join(repr(str(key)[:40]) for key in list(obj)[:6])
    raise InvalidRecord(
        f"unrecognised firehose object (keys: {keys or 'none'}): "
        "neither a v1.1 status, a v2 {data, includes} object nor a delete notice")


def normalize_hashtag(tag: str) -> str:
    """The canonical form of a hashtag: NFKC, case-folded, without leading '#'.

    ``#Tokyo``, ``ＴＯＫＹＯ`` and ``tokyo`` all become ``tokyo``; half-width
    ``ｶﾀｶﾅ`` becomes ``カタカナ``. Use it for any hashtag compared to tweets.
    """
    if tag.isascii():
        return tag.lower().lstrip("#")
    # Unicode's compatibility caseless match: folding can denormalise, so NFKC again.
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", tag).casefold()).lstrip("#")


def snowflake_time(tweet_id: str) -> float:
    """Creation time (epoch seconds) encoded in a snowflake tweet id (ids after Nov 2010)."""
    return ((int(tweet_id) >> 22) + SNOWFLAKE_EPOCH_MS) / 1000.0


# ---- API v1.1 status ----------------------------------------------------------------

def _parse_v1(status: dict) -> Tweet:
    tweet_id = id_of(status, "id_str", "id", "")
    author_id = id_of(as_object(req(status, "user"), "user"), "id_str", "id", "user.")
    ts = parse_twitter_v1(req(status, "created_at"), "created_at")
    lang = _lang(status.get("lang"), "lang")
    original = status.get("retweeted_status")
    if original is None:
        retweet_of = None
        text, hashtags = _v1_text_and_hashtags(status, "")
    else:
        original = as_object(original, "retweeted_status")
        retweet_of = id_of(original, "id_str", "id", "retweeted_status.")
        text, hashtags = _v1_text_and_hashtags(original, "retweeted_status.")
    lat, lng, coarse, place_id = _v1_location(status)
    return Tweet(tweet_id=tweet_id, author_id=author_id, ts=ts, text=text, lang=lang,
                 hashtags=hashtags, lat=lat, lng=lng, coarse=coarse, place_id=place_id,
                 retweet_of=retweet_of)


def _v1_text_and_hashtags(status: dict, where: str) -> tuple[str, list]:
    extended = status.get("extended_tweet")
    if extended is not None:
        # Streaming "compatibility mode": the top-level text is cut at 140 chars
        # and its entities miss whatever was cut; the whole tweet lives here.
        extended = as_object(extended, f"{where}extended_tweet")
        text = _as_text(req(extended, "full_text", f"{where}extended_tweet."),
                        f"{where}extended_tweet.full_text")
        if extended.get("entities") is not None:
            return text, _hashtags(extended["entities"], "text", f"{where}extended_tweet.entities")
        return text, _hashtags(status.get("entities"), "text", f"{where}entities")
    if status.get("full_text") is not None:  # REST tweet_mode=extended
        text = _as_text(status["full_text"], f"{where}full_text")
    else:
        text = _as_text(req(status, "text", where), f"{where}text")
    return text, _hashtags(status.get("entities"), "text", f"{where}entities")


def _v1_location(status: dict):
    """(lat, lng, coarse, place_id) of a v1.1 status."""
    point = _point(status.get("coordinates"), "coordinates", lng_first=True)
    geo = _point(status.get("geo"), "geo", lng_first=False)
    place_id, box = _v1_place(status.get("place"))
    if point is None:
        point = geo
    elif geo is not None and (abs(point[0] - geo[0]) > COORDINATE_TOLERANCE_DEG
                              or abs(point[1] - geo[1]) > COORDINATE_TOLERANCE_DEG):
        raise InvalidRecord(
            f"inconsistent location: coordinates [lng, lat] = [{point[1]}, {point[0]}] but "
            f"geo [lat, lng] = [{geo[0]}, {geo[1]}]")
    if point is not None:
        return point[0], point[1], False, place_id
    if box is not None:
        lat, lng = _box_centre(*box)
        return lat, lng, True, place_id
    return None, None, False, place_id


def _v1_place(place):
    """(place_id, (lng_a, lng_b, south, north) or None) of a v1.1 ``place``."""
    if place is None:
        return None, None
    place = as_object(place, "place")
    place_id = as_str(req(place, "id", "place."), "place.id", 64)
    bbox = place.get("bounding_box")
    if bbox is None:
        return place_id, None
    bbox = as_object(bbox, "place.bounding_box")
    if bbox.get("type") != "Polygon":
        raise InvalidRecord(f"place.bounding_box.type: expected 'Polygon', got {_show(bbox.get('type'))}")
    rings = bbox.get("coordinates")
    if not isinstance(rings, list) or not rings or not isinstance(rings[0], list) or not rings[0]:
        raise InvalidRecord(
            f"place.bounding_box.coordinates: expected [[[lng, lat], ...]], got {_show(rings)}")
    lats, lngs = [], []
    for i, position in enumerate(rings[0]):
        if not isinstance(position, list) or len(position) != 2:
            raise InvalidRecord(
                f"place.bounding_box.coordinates[0][{i}]: expected [lng, lat], got {_show(position)}")
        lat, lng = as_lat_lng(position[1], position[0], f"place.bounding_box.coordinates[0][{i}].")
        lats.append(lat)
        lngs.append(lng)
    return place_id, (min(lngs), max(lngs), min(lats), max(lats))


# ---- API v2 -------------------------------------------------------------------------

def _parse_v2(obj: dict) -> Tweet:
    data = obj["data"]
    if isinstance(data, list):
        raise InvalidRecord("data: a list of tweets (a lookup response), not one stream message")
    data = as_object(data, "data")
    includes = obj.get("includes")
    includes = {} if includes is None else as_object(includes, "includes")
    tweet_id = _as_id(req(data, "id", "data."), "data.id")
    author_id = _as_id(req(data, "author_id", "data."), "data.author_id")
    ts = parse_rfc3339(req(data, "created_at", "data."), "data.created_at")
    lang = _lang(data.get("lang"), "data.lang")
    retweet_of = _v2_retweet_of(data.get("referenced_tweets"))
    content, where = data, "data."
    if retweet_of is not None:
        index, original = _find_included(includes, "tweets", retweet_of)
        if original is not None:
            content, where = original, f"includes.tweets[{index}]."
    text, hashtags = _v2_text_and_hashtags(content, where)
    lat, lng, coarse, place_id = _v2_location(data.get("geo"), includes)
    return Tweet(tweet_id=tweet_id, author_id=author_id, ts=ts, text=text, lang=lang,
                 hashtags=hashtags, lat=lat, lng=lng, coarse=coarse, place_id=place_id,
                 retweet_of=retweet_of)


def _v2_retweet_of(references):
    if references is None:
        return None
    if not isinstance(references, list):
        raise InvalidRecord(f"data.referenced_tweets: expected a list, got {type(references).__name__}")
    for i, reference in enumerate(references):
        reference = as_object(reference, f"data.referenced_tweets[{i}]")
        if reference.get("type") == "retweeted":
            return _as_id(req(reference, "id", f"data.referenced_tweets[{i}]."),
                          f"data.referenced_tweets[{i}].id")
    return None


def _v2_text_and_hashtags(tweet: dict, where: str) -> tuple[str, list]:
    note = tweet.get("note_tweet")
    if note is not None:
        # A long ("note") tweet: data.text is cut at 280 chars, the whole text and
        # its entities are in note_tweet.
        note = as_object(note, f"{where}note_tweet")
        text = _as_text(req(note, "text", f"{where}note_tweet."), f"{where}note_tweet.text")
        if note.get("entities") is not None:
            return text, _hashtags(note["entities"], "tag", f"{where}note_tweet.entities")
        return text, _hashtags(tweet.get("entities"), "tag", f"{where}entities")
    text = _as_text(req(tweet, "text", where), f"{where}text")
    return text, _hashtags(tweet.get("entities"), "tag", f"{where}entities")


def _v2_location(geo, includes: dict):
    """(lat, lng, coarse, place_id) from v2 ``data.geo`` and ``includes.places``."""
    if geo is None:
        return None, None, False, None
    geo = as_object(geo, "data.geo")
    point = _point(geo.get("coordinates"), "data.geo.coordinates", lng_first=True)
    place_id = geo.get("place_id")
    if place_id is not None:
        place_id = as_str(place_id, "data.geo.place_id", 64)
    if point is not None:
        return point[0], point[1], False, place_id
    if place_id is None:
        return None, None, False, None
    index, place = _find_included(includes, "places", place_id)
    if place is None or place.get("geo") is None:
        return None, None, False, place_id
    where = f"includes.places[{index}].geo"
    bbox = as_object(place["geo"], where).get("bbox")
    if bbox is None:
        return None, None, False, place_id
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise InvalidRecord(f"{where}.bbox: expected [west, south, east, north], got {_show(bbox)}")
    south, west = as_lat_lng(bbox[1], bbox[0], f"{where}.bbox[south/west].")
    north, east = as_lat_lng(bbox[3], bbox[2], f"{where}.bbox[north/east].")
    if south > north:
        raise InvalidRecord(f"{where}.bbox: south {south} is north of north {north}")
    lat, lng = _box_centre(min(west, east), max(west, east), south, north)
    return lat, lng, True, place_id


def _find_included(includes: dict, key: str, wanted_id: str):
    """(index, object) of the expansion with id ``wanted_id`` in ``includes[key]``."""
    items = includes.get(key)
    if items is None:
        return None, None
    if not isinstance(items, list):
        raise InvalidRecord(f"includes.{key}: expected a list, got {type(items).__name__}")
    for i, item in enumerate(items):
        item = as_object(item, f"includes.{key}[{i}]")
        if item.get("id") == wanted_id:
            return i, item
    return None, None


# ---- shared rules --------------------------------------------------------------------

def _box_centre(lng_lo: float, lng_hi: float, south: float, north: float) -> tuple[float, float]:
    """Centre (lat, lng) of a box, taking the shorter longitude arc between its edges."""
    lng = (lng_lo + lng_hi) / 2.0
    if lng_hi - lng_lo > 180.0:  # the box crosses the antimeridian
        lng = lng + 180.0 if lng <= 0.0 else lng - 180.0
    return (south + north) / 2.0, lng


def _point(value, field: str, lng_first: bool):
    """(lat, lng) of a GeoJSON-like Point, or None when absent."""
    if value is None:
        return None
    value = as_object(value, field)
    if value.get("type") != "Point":
        raise InvalidRecord(f"{field}.type: expected 'Point', got {_show(value.get('type'))}")
    coords = value.get("coordinates")
    if not isinstance(coords, list) or len(coords) != 2:
        order = "[lng, lat]" if lng_first else "[lat, lng]"
        raise InvalidRecord(f"{field}.coordinates: expected {order}, got {_show(coords)}")
    if lng_first:
        return as_lat_lng(coords[1], coords[0], f"{field}.")
    return as_lat_lng(coords[0], coords[1], f"{field}.")


def _hashtags(entities, key: str, where: str) -> list:
    if entities is None:
        return []
    entities = as_object(entities, where)
    tags = entities.get("hashtags")
    if tags is None:
        return []
    if not isinstance(tags, list):
        raise InvalidRecord(f"{where}.hashtags: expected a list, got {type(tags).__name__}")
    out = []
    for i, tag in enumerate(tags):
        field = f"{where}.hashtags[{i}].{key}"
        value = as_object(tag, f"{where}.hashtags[{i}]").get(key)
        if not isinstance(value, str):
            raise InvalidRecord(f"{field}: expected a string, got {type(value).__name__}")
        normal = normalize_hashtag(value)
        if not normal:
            raise InvalidRecord(f"{field}: empty hashtag {value!r}")
        out.append(_check_unicode(normal, field))
    return out


def _as_text(value, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidRecord(f"{field}: expected a string, got {type(value).__name__}")
    return _check_unicode(value, field)


def _check_unicode(value: str, field: str) -> str:
    # JSON may smuggle in a lone UTF-16 surrogate ("\ud800"), which no UTF-8 or
    # Arrow sink can write later: reject it here, where the reason is clear.
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRecord(f"{field}: contains an unpaired UTF-16 surrogate") from None
    return value


def _lang(value, field: str):
    return None if value is None else as_str(value, field, 35)


def id_of(obj: dict, str_field: str, int_field: str, where: str) -> str:
    """An id from ``<x>_str``, else from the numeric field if it is an exact integer."""
    value = obj.get(str_field)
    if value is not None:
        return _as_id(value, f"{where}{str_field}")
    value = obj.get(int_field)
    if value is None:
        raise InvalidRecord(f"missing required field '{where}{str_field}'")
    return _as_id(value, f"{where}{int_field}")


def _as_id(value, field: str) -> str:
    if isinstance(value, str):
        return as_user_id(value, field)
    if isinstance(value, bool):
        raise InvalidRecord(f"{field}: expected an id, got bool")
    if isinstance(value, int):
        if 0 <= value < _MAX_ID:
            return str(value)
        raise InvalidRecord(f"{field}: integer outside the 64-bit id range")
    if isinstance(value, float):
        # A JSON float has 53 bits of mantissa: tweet ids above 2**53 arrive altered.
        raise InvalidRecord(f"{field}: {value!r} is a float; ids lose precision as floats, send the id as a string")
    raise InvalidRecord(f"{field}: expected an id string, got {type(value).__name__}")


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxstring, _SHORT_REPR.maxother = 3, 40, 40


def _show(value) -> str:
    """A bounded repr for error messages (inputs may be huge or deeply nested)."""
    return _SHORT_REPR.repr(value)
