"""Geometry for the alert fan-out: exact distance on the sphere, H3 as an index only.

The rule "within R metres" is decided by :func:`distance_m` (haversine on the
mean Earth radius, IUGG R1 = 6 371 008.8 m). H3 cells never decide anything:
they only narrow down who *might* be within R so that the exact test runs on a
few candidates instead of on every user.

:func:`cells_covering_disc` is the one covering rule the project relies on. It
returns every cell at ``res`` that can contain a point within ``radius_m`` of
the centre, proved by the triangle inequality: a point P within R of C lies in
its own cell X, and ``d(C, centre(X)) <= d(C, P) + d(P, centre(X)) <= R +
circumradius(X)``. The cover is grown breadth-first from C's cell, keeping
each cell whose centre passes that bound; cells meeting a disc form a
connected set, so the search cannot miss one. Pure functions, no Beam.
"""
from __future__ import annotations

import functools
import math

import h3

EARTH_RADIUS_M = 6371008.8
# Added to every cell's circumradius: h3 boundaries are float approximations,
# and a missed cell would be a silent false negative; one extra cell is cheap.
_COVER_SLACK_M = 1.0


def distance_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Great-circle distance in metres (haversine; stable for tiny distances)."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlmb = math.radians(lng2 - lng1)
    a = math.sin(dphi / 2.0) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2.0) ** 2
    return 2.0 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def cell_of(lat: float, lng: float, res: int) -> str:
    return h3.latlng_to_cell(lat, lng, res)


@functools.lru_cache(maxsize=1 << 16)
def cell_circumradius_m(cell: str) -> float:
    """The largest distance from the cell's centre to a boundary vertex.

    H3 edges are great-circle arcs (gnomonic faces), so the farthest point of
    a cell from its centre is a vertex; the slack covers distortion vertices.
    """
    clat, clng = h3.cell_to_latlng(cell)
    return max(distance_m(clat, clng, vlat, vlng) for vlat, vlng in h3.cell_to_boundary(cell))


def cells_covering_disc(lat: float, lng: float, radius_m: float, res: int) -> frozenset[str]:
    """Every cell at ``res`` that may hold a point within ``radius_m`` of (lat, lng)."""
    if radius_m < 0:
        raise ValueError(f"radius_m must be >= 0, got {radius_m}")
    start = h3.latlng_to_cell(lat, lng, res)
    kept = {start}
    frontier = [start]
    seen = {start}
    while frontier:
        nxt = []
        for cell in frontier:
            for neighbour in h3.grid_disk(cell, 1):
                if neighbour in seen:
                    continue
                seen.add(neighbour)
                nlat, nlng = h3.cell_to_latlng(neighbour)
                if distance_m(lat, lng, nlat, nlng) <= radius_m + cell_circumradius_m(neighbour) + _COVER_SLACK_M:
                    kept.add(neighbour)
                    nxt.append(neighbour)
        frontier = nxt
    return frozenset(kept)


def res_for_radius(radius_m: float) -> int:
    """The finest resolution whose average edge is still >= radius_m / 3.

    Finer cells hug the disc more tightly (fewer candidates to test exactly) but
    a disc then spans more cells (more index keys per happening); an edge of
    about a third of the radius keeps both near ~20-40 cells per disc.
    """
    for res in range(15, -1, -1):
        if h3.average_hexagon_edge_length(res, "m") >= radius_m / 3.0:
            return res
    return 0
