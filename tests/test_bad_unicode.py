"""Unencodable text anywhere in any input line is that line's dead letter, never a crash.

Every string (value and key) of real generated lines of every kind -- users, pings,
taps (whatever the generator's current report format), v1.1 and v2 tweets, deletes,
compliance messages -- is replaced in turn by a lone UTF-16 surrogate; the line must
be a dead letter naming that field, and the dead letter must be writable as UTF-8.
"""
from __future__ import annotations

import json
import os

import pytest

from schemas.records import to_json_line
from synthetic.world import write_world
from core.conventions import raw_text
from core.inputs import classify

COMPLIANCE = [
    {"delete": {"status": {"id": 1, "id_str": "1", "user_id": 2, "user_id_str": "2"}, "timestamp_ms": "1795132800000"}},
    {"scrub_geo": {"user_id_str": "2", "up_to_status_id_str": "3"}},
    {"status_withheld": {"id_str": "1", "user_id_str": "2", "withheld_in_countries": ["DE"]}},
    {"user_withheld": {"id_str": "2", "withheld_in_countries": ["DE"]}},
    {"data": {"event_type": "user_protect", "user": {"id": "2"}, "event_at": "2026-11-20T00:00:00.000Z"}},
]


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """Up to 6 distinct-shaped lines per kind from a generated world, plus compliance messages."""
    world = str(tmp_path_factory.mktemp("world"))
    write_world(world, users=12, hours=1, seed=3, start="2026-11-20T17:00:00+09:00")
    out = []
    for kind in ("users", "pings", "taps", "tweets"):
        shapes = {}
        with open(os.path.join(world, f"{kind}.jsonl"), encoding="utf-8") as handle:
            for line in handle:
                obj = json.loads(line)
                shapes.setdefault(tuple(sorted(obj)) + tuple(sorted(obj.get("data", {}))), obj)
        out += [(kind, obj) for obj in list(shapes.values())[:6]]
    out += [("tweets", obj) for obj in COMPLIANCE]
    return out


def _string_paths(obj, path=()):
    if isinstance(obj, str):
        yield path, "value"
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield (*path, key), "key"
            yield from _string_paths(value, (*path, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _string_paths(value, (*path, i))


def _poisoned(obj, path, where):
    """A deep copy of obj with the string (or key) at path turned into a lone surrogate."""
    obj = json.loads(json.dumps(obj))
    parent = obj
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if where == "key":
        parent["\ud800" + last] = parent.pop(last)
    else:
        parent[last] = parent[last][:3] + "\ud800" + parent[last][3:]
    return obj


def _dotted(path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _assert_writable(letter):
    line = to_json_line(letter)
    line.encode("utf-8")
    assert json.loads(line)["source"] == letter.source


def test_every_string_of_every_kind_poisoned_is_a_dead_letter_naming_it(samples):
    tried = 0
    for kind, obj in samples:
        for path, where in _string_paths(obj):
            bad = _poisoned(obj, path, where)
            for raw in (json.dumps(bad).encode("ascii"),        # "\ud800" as a JSON escape
                        json.dumps(bad, ensure_ascii=False)):   # a str line holding the surrogate
                tag, letter = classify(kind, f"{kind}.jsonl", raw)
                assert tag == "dead_letters", (kind, path, where)
                if where == "value":
                    assert letter.error == f"{_dotted(path)}: contains an unpaired UTF-16 surrogate", letter.error
                else:
                    assert "key '\\ud800" in letter.error and "contains an unpaired UTF-16 surrogate" in letter.error
                _assert_writable(letter)
                tried += 1
    assert tried > 200


def test_tap_id_and_age_band_of_the_issue(samples):
    user = next(obj for kind, obj in samples if kind == "users")
    tag, letter = classify("users", "users.jsonl", json.dumps(dict(user, age_band="\ud800")).encode())
    assert (tag, letter.error) == ("dead_letters", "age_band: contains an unpaired UTF-16 surrogate")
    assert letter.raw == json.dumps(dict(user, age_band="\ud800"))  # the JSON escape, as received
    tap = next(obj for kind, obj in samples if kind == "taps")
    tag, letter = classify("taps", "taps.jsonl", json.dumps(dict(tap, tap_id="\ud800")).encode())
    assert (tag, letter.error) == ("dead_letters", "tap_id: contains an unpaired UTF-16 surrogate")


def test_raw_text_escapes_what_utf8_cannot_hold():
    assert raw_text('{"a": "\ud800"}') == '{"a": "\\ud800"}'
    assert raw_text(b'{"a": "\xff\xed\xa0\x80"}') == '{"a": "\\xff\\xed\\xa0\\x80"}'
    assert raw_text("ok é") == "ok é"
    tag, letter = classify("pings", "pings.jsonl", b'{"user_id": "\xed\xa0\x80"}')
    assert tag == "dead_letters" and letter.error.startswith("not UTF-8: ")
    _assert_writable(letter)


def test_to_json_line_never_emits_unencodable_text():
    line = to_json_line({"raw": "x\udc80y", "ok": "é"})
    assert line.encode("utf-8") and json.loads(line) == {"raw": "x\udc80y", "ok": "é"}
