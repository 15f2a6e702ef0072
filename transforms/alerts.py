"""FanOutGeofencedAlerts: the Beam host of the alert fan-out (``core.alerts``).

The rules, the processors and the one wiring of the steps are in
``core.alerts`` and ``core.happenings`` (engine-neutral); this module only
hosts that wiring on Beam: it extracts the location reports, decides batch or
streaming from the inputs, and calls ``core.alerts.fan_out_over`` with
``BeamOps``, whose ordered steps run in ``transforms.ordered.OrderedByKey``.
"""
from __future__ import annotations

from typing import Optional

import apache_beam as beam

from core.alerts import AlertParams, FollowEdge, UserInfo, fan_out_over
from core.conventions import is_bounded
from transforms.beam_ops import BeamOps
from transforms.locations import ExtractLocationReports

# The fan-out's own records cross Beam steps as schema'd rows, not pickles.
for _record in (UserInfo, FollowEdge):
    beam.coders.registry.register_coder(_record, beam.coders.RowCoder)


class FanOutGeofencedAlerts(beam.PTransform):
    """{'tweets','deletes','pings','taps','follows','users'} -> {'alerts','dead_letters'}.

    Batch or streaming is read from the inputs (any unbounded input: streaming),
    unless ``bounded`` is given.
    """

    def __init__(self, params: AlertParams = AlertParams(), bounded: Optional[bool] = None):
        super().__init__()
        self._params = params
        self._bounded = bounded

    def expand(self, inputs):
        bounded = is_bounded(*(inputs[name] for name in ("tweets", "deletes", "pings", "taps", "follows")),
                             override=self._bounded)
        reports = inputs | "LocationReports" >> ExtractLocationReports(self._params.max_accuracy_m)
        # reports : LocationReport (accepted pings, precise own tweets, own taps), at their event time
        return fan_out_over(BeamOps(bounded), {
            "tweets": inputs["tweets"], "deletes": inputs["deletes"], "reports": reports,
            "follows": inputs["follows"], "users": inputs["users"]}, self._params)
