"""core.locations (and its Beam host transforms.locations): which reports place a user, and where a user is at a given time."""
import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.records import Ping, TapReport, Tweet
from core.locations import LocationReport, current_location, report_from_ping, report_from_tap, report_from_tweet
from transforms.locations import ExtractLocationReports

T0 = 1_764_000_000.0


def ping(ts, lat=35.68, lng=139.76, acc=10.0, source="gps", user="1"):
    return Ping(user, ts, lat, lng, acc, source)


def test_inaccurate_pings_never_place_a_user():
    assert report_from_ping(ping(T0, acc=100.0), 100.0) == LocationReport("1", T0, 35.68, 139.76, "ping")
    assert report_from_ping(ping(T0, acc=100.1), 100.0) is None
    assert report_from_ping(ping(T0, acc=None, source="cell"), 100.0) is None
    assert report_from_ping(ping(T0, acc=None, source="gps"), 100.0) is not None
    assert report_from_ping(ping(T0, acc=None, source=None), 100.0) is not None
    assert report_from_ping(ping(T0, acc=50.0, source="cell"), 100.0) is not None


def test_only_precise_own_tweets_place_their_author():
    t = Tweet("9", "7", T0, "hi", None, [], 35.1, 139.1, False, None, None)
    assert report_from_tweet(t) == LocationReport("7", T0, 35.1, 139.1, "tweet")
    assert report_from_tweet(t._replace(coarse=True)) is None
    assert report_from_tweet(t._replace(lat=None, lng=None)) is None


def test_a_tap_places_the_reporting_user():
    tap = TapReport("t", "5", "6", "0" * 32, T0, 35.2, 139.2, "p", "q")
    assert report_from_tap(tap) == LocationReport("5", T0, 35.2, 139.2, "tap")


def r(ts, lat=35.68, source="ping"):
    return LocationReport("1", ts, lat, 139.76, source)


def test_current_location_is_the_latest_report_at_or_before_t():
    reports = [r(T0, 35.1), r(T0 + 100, 35.2), r(T0 + 200, 35.3)]
    assert current_location(reports, T0 + 150, 1800) == reports[1]
    assert current_location(reports, T0 + 100, 1800) == reports[1]       # a report at t counts
    assert current_location(reports, T0 - 1, 1800) is None               # nothing yet
    assert current_location(reports, T0 + 200 + 1800, 1800) == reports[2]
    assert current_location(reports, T0 + 200 + 1800.001, 1800) is None  # stale


def test_simultaneous_reports_resolve_the_same_way_in_any_order():
    a, b = r(T0, 35.1, "tap"), r(T0, 35.2, "ping")
    assert current_location([a, b], T0, 1800) == current_location([b, a], T0, 1800) == a  # 'tap' > 'ping'


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.floats(35.0, 36.0), st.sampled_from(["ping", "tweet", "tap"])),
                min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_current_location_ignores_report_order(items, rnd):
    reports = [r(T0 + ts, lat, src) for ts, lat, src in items]
    shuffled = reports[:]
    rnd.shuffle(shuffled)
    for at in (T0, T0 + 25, T0 + 60):
        assert current_location(shuffled, at, 30) == current_location(reports, at, 30)


def test_extract_location_reports_in_beam():
    pings = [ping(T0), ping(T0 + 1, acc=500.0)]
    tweets = [Tweet("9", "7", T0, "hi", None, [], 35.1, 139.1, False, None, None),
              Tweet("10", "7", T0, "hi", None, [], 35.1, 139.1, True, "p", None)]
    taps = [TapReport("t", "5", "6", "0" * 32, T0, 35.2, 139.2, "p", "q")]
    with TestPipeline() as p:
        out = {"pings": p | "P" >> beam.Create(pings), "tweets": p | "T" >> beam.Create(tweets),
               "taps": p | "X" >> beam.Create(taps)} | ExtractLocationReports(max_accuracy_m=100.0)
        assert_that(out, equal_to([LocationReport("1", T0, 35.68, 139.76, "ping"),
                                   LocationReport("7", T0, 35.1, 139.1, "tweet"),
                                   LocationReport("5", T0, 35.2, 139.2, "tap")]))
