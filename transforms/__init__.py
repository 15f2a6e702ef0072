"""The business steps of the pipeline, one module per step.

Each step is one composite ``PTransform`` over pure functions that are tested
without a runner. The pipeline (``pipelines/run.py``) hands every step a dict of
event-time-stamped PCollections and takes a dict back:

=====================================  ==============================================  ===========================================
step                                   input dict                                      output dict
=====================================  ==============================================  ===========================================
``follows.ResolveMutualFollows``       ``taps``, ``users``                             ``follows`` [Follow], ``dead_letters``
``alerts.FanOutGeofencedAlerts``       ``tweets``, ``deletes``, ``pings``, ``taps``,   ``alerts`` [Alert], ``dead_letters``
                                       ``follows``, ``users``
``dp_stats.ReleaseDpStatistics``       ``pings``, ``tweets``, ``taps``, ``users``      ``statistics`` [Statistic], ``ledger``
=====================================  ==============================================  ===========================================

``users`` is the user registry: bounded in batch and in streaming (a snapshot
taken when the job starts), element timestamp MIN, global window. All other
inputs carry their event time (``ts``) as the element timestamp, in the global
window; each step windows as its logic needs.
"""

import schemas  # noqa: F401,E402 -- installs the Beam import-noise filter first (schemas/quiet.py)

import apache_beam as beam  # noqa: E402

from schemas.records import ALL_RECORDS  # noqa: E402

# The records cross every Beam step as schema'd rows, not pickles. Registered here, in
# the Beam adapter, so that the records themselves import no engine.
for _record in ALL_RECORDS:
    beam.coders.registry.register_coder(_record, beam.coders.RowCoder)
