"""Where each user is now: location reports from pings, own precise tweets and taps.

A user's *current location at time t* is their latest accepted report with
``ts <= t`` (ties: the report that sorts last by ``(ts, source, lat, lng)``, so
the choice never depends on delivery order), provided ``t - ts <=
location_stale_s``; otherwise the user has no location and is alerted about
nothing.

Accepted reports (:func:`report_from_ping` etc.; the rest are counted, never
used to place anyone):

- a ping whose ``accuracy_m`` is at most ``max_accuracy_m``; a ping without
  ``accuracy_m`` only if its source is not ``cell`` (a cell-tower fix is
  hundreds of metres wide, so an unqualified one cannot place a user);
- the user's own tweet with precise coordinates (``coarse`` place-only tweets
  and tweets without location are not positions);
- the user's own tap report: the phone stood where it touched the other phone.

Engine-neutral: :func:`location_reports_over` wires these rules over any
``core.ops.Ops`` (Beam: ``transforms.locations.ExtractLocationReports``; Flink:
``flink_job.job``); :func:`current_location` is the rule itself, used by the alert
fan-out and by the tests' oracle.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple, Optional

from schemas.records import Ping, TapReport, Tweet

# Counter names of the reports that place nobody (one per input kind that can be refused).
PING_INACCURATE = "alerts_location_ping_inaccurate"
TWEET_NOT_PRECISE = "alerts_location_tweet_not_precise"


class LocationReport(NamedTuple):
    user_id: str
    ts: float
    lat: float
    lng: float
    source: str        # ping | tweet | tap


def report_from_ping(ping: Ping, max_accuracy_m: float) -> Optional[LocationReport]:
    if ping.accuracy_m is None:
        if ping.source == "cell":
            return None
    elif ping.accuracy_m > max_accuracy_m:
        return None
    return LocationReport(ping.user_id, ping.ts, ping.lat, ping.lng, "ping")


def report_from_tweet(tweet: Tweet) -> Optional[LocationReport]:
    if tweet.lat is None or tweet.lng is None or tweet.coarse:
        return None
    return LocationReport(tweet.author_id, tweet.ts, tweet.lat, tweet.lng, "tweet")


def report_from_tap(tap: TapReport) -> LocationReport:
    return LocationReport(tap.user_id, tap.ts, tap.lat, tap.lng, "tap")


def report_order(report: LocationReport):
    """Total order of one user's reports; the last one at or before t is current."""
    return (report.ts, report.source, report.lat, report.lng)


def newer(candidate: LocationReport, current: Optional[LocationReport]) -> bool:
    return current is None or report_order(candidate) > report_order(current)


def current_location(reports: Iterable[LocationReport], at: float, stale_s: float) -> Optional[LocationReport]:
    """The user's location at ``at`` from all their accepted reports, or None."""
    best = None
    for report in reports:
        if report.ts <= at and newer(report, best):
            best = report
    if best is None or at - best.ts > stale_s:
        return None
    return best


def location_reports_over(ops, inputs: dict, max_accuracy_m: float):
    """{'pings','tweets','taps'} -> the accepted LocationReports, on any engine (``core.ops``);
    the refused pings and tweets are counted (PING_INACCURATE, TWEET_NOT_PRECISE)."""
    inaccurate, not_precise = ops.counter(PING_INACCURATE), ops.counter(TWEET_NOT_PRECISE)

    def from_ping(ping):
        report = report_from_ping(ping, max_accuracy_m)
        if report is None:
            inaccurate.inc()
            return []
        return [report]

    def from_tweet(tweet):
        report = report_from_tweet(tweet)
        if report is None:
            not_precise.inc()
            return []
        return [report]

    return ops.flatten([
        ops.flat_map(inputs["pings"], from_ping, "PingReports", output_type=LocationReport),
        ops.flat_map(inputs["tweets"], from_tweet, "TweetReports", output_type=LocationReport),
        ops.map(inputs["taps"], report_from_tap, "TapReports", output_type=LocationReport),
    ], "AllReports")
