"""ExtractLocationReports: the Beam host of ``core.locations`` (which reports place a user).

The rules, and what a user's current location is, live in ``core.locations``;
this module only wires them into a pipeline and counts what they refuse.
"""
from __future__ import annotations

import apache_beam as beam

from core.locations import LocationReport, location_reports_over
from transforms.beam_ops import BeamOps

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
        return location_reports_over(BeamOps(), inputs, self._max_accuracy_m)
