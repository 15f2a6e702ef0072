"""ExtractLocationReports: the Beam host of ``core.locations`` (which reports place a user).

The rules, and what a user's current location is, live in ``core.locations``;
this module only wires them into a pipeline and counts what they refuse.
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from core.conventions import METRICS_NAMESPACE
from core.locations import (PING_INACCURATE, TWEET_NOT_PRECISE, LocationReport, report_from_ping, report_from_tap,
                            report_from_tweet)

# The reports cross Beam steps as schema'd rows; registered in the adapter so core imports no engine.
beam.coders.registry.register_coder(LocationReport, beam.coders.RowCoder)


class ExtractLocationReports(beam.PTransform):
    """pings, tweets, taps -> PCollection[LocationReport] of the accepted reports only.

    Element timestamps are kept (each report's own event time).
    """

    def __init__(self, max_accuracy_m: float):
        super().__init__()
        self._max_accuracy_m = max_accuracy_m

    def expand(self, inputs):
        max_acc = self._max_accuracy_m
        rejected_ping = Metrics.counter(METRICS_NAMESPACE, PING_INACCURATE)
        rejected_tweet = Metrics.counter(METRICS_NAMESPACE, TWEET_NOT_PRECISE)

        def from_ping(ping):
            report = report_from_ping(ping, max_acc)
            if report is None:
                rejected_ping.inc()
                return []
            return [report]

        def from_tweet(tweet):
            report = report_from_tweet(tweet)
            if report is None:
                rejected_tweet.inc()
                return []
            return [report]

        pings = inputs["pings"] | "PingReports" >> beam.FlatMap(from_ping).with_output_types(LocationReport)
        tweets = inputs["tweets"] | "TweetReports" >> beam.FlatMap(from_tweet).with_output_types(LocationReport)
        taps = inputs["taps"] | "TapReports" >> beam.Map(report_from_tap).with_output_types(LocationReport)
        return (pings, tweets, taps) | "AllReports" >> beam.Flatten()
