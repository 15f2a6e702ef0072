"""The public service area: Tokyo's 23 special wards, as one simple polygon.

The area is public knowledge, so the set of H3 cells that cover it is public
too. The DP release enumerates exactly these cells (every one released, data or
not), which is what keeps *which* cells had users from leaking; the synthetic
world places everyone inside it.
"""
from __future__ import annotations

import functools

import h3

# (lat, lng) vertices, counter-clockwise, tracing the wards' outer boundary
# closely enough for a service area (Haneda and the bay islands included).
TOKYO_23_WARDS = (
    (35.8175, 139.6693),  # Itabashi, north
    (35.8170, 139.7440),  # Kita / Adachi border
    (35.8000, 139.8180),  # Adachi, north-east
    (35.7720, 139.8680),  # Katsushika, east
    (35.7050, 139.9050),  # Edogawa, east
    (35.6380, 139.8920),  # Edogawa, south-east
    (35.5880, 139.8200),  # Koto, bay
    (35.5300, 139.7880),  # Ota, Haneda
    (35.5600, 139.7100),  # Ota, south-west
    (35.5950, 139.6470),  # Setagaya, south
    (35.6370, 139.5640),  # Setagaya, west
    (35.6900, 139.5640),  # Suginami, west
    (35.7430, 139.5630),  # Nerima, west
    (35.7800, 139.6050),  # Nerima, north-west
)


def contains(lat: float, lng: float) -> bool:
    """Point-in-polygon (ray casting) on the vertices above."""
    inside = False
    points = TOKYO_23_WARDS
    for (lat1, lng1), (lat2, lng2) in zip(points, points[1:] + points[:1]):
        if (lng1 > lng) != (lng2 > lng):
            crossing = lat1 + (lng - lng1) * (lat2 - lat1) / (lng2 - lng1)
            if lat < crossing:
                inside = not inside
    return inside


@functools.lru_cache(maxsize=None)
def public_cells(res: int) -> tuple[str, ...]:
    """Every H3 cell at ``res`` whose centre lies in the service area, sorted."""
    polygon = h3.LatLngPoly(list(TOKYO_23_WARDS))
    return tuple(sorted(h3.h3shape_to_cells(polygon, res)))
