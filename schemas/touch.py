"""What a confirmed NFC touch becomes: the one rule for a ``Follow`` record.

Shared by the pipeline's pairing step and the generator's truth, so the two
cannot drift. ``established_at`` is the touch time signed into the nonce (both
phones agreed on it over the link; see ``schemas.proofs``), and where the
touch happened is kept only as an H3 cell at ``FOLLOW_H3_RES`` of the midpoint
of the two phones' *signed* positions (each quantised to 1e-7 degrees exactly as
its reporter signed it, ``schemas.proofs.signed_lat_lng``), never as raw
coordinates: bits of a float below what was signed cannot move the cell.
"""
from __future__ import annotations

import h3

from schemas.proofs import nonce_time, signed_lat_lng
from schemas.records import Follow, TapReport

FOLLOW_H3_RES = 9  # ~0.1 km² cells: a venue, not a person


def follow_for_touch(report_x: TapReport, report_y: TapReport, h3_res: int = FOLLOW_H3_RES) -> Follow:
    """The mutual follow for two matching reports (order of arguments irrelevant)."""
    user_a, user_b = sorted((report_x.user_id, report_y.user_id))
    # (x + y) / 2 is commutative in IEEE arithmetic, so argument order cannot change the cell.
    (lat_x, lng_x), (lat_y, lng_y) = signed_lat_lng(report_x), signed_lat_lng(report_y)
    lat = (lat_x + lat_y) / 2.0
    lng = (lng_x + lng_y) / 2.0
    return Follow(
        user_a=user_a,
        user_b=user_b,
        established_at=nonce_time(report_x.nonce),
        nonce=report_x.nonce,
        h3_cell=h3.latlng_to_cell(lat, lng, h3_res),
    )
