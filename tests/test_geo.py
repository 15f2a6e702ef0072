"""core.geo: exact spherical distance, and a covering that never misses a point."""
import math

import h3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import geo

R = 6371008.8


def destination(lat, lng, bearing_deg, distance):
    """The point ``distance`` metres from (lat, lng) along ``bearing_deg`` (great circle)."""
    phi1, lmb1, theta, delta = math.radians(lat), math.radians(lng), math.radians(bearing_deg), distance / R
    phi2 = math.asin(math.sin(phi1) * math.cos(delta) + math.cos(phi1) * math.sin(delta) * math.cos(theta))
    lmb2 = lmb1 + math.atan2(math.sin(theta) * math.sin(delta) * math.cos(phi1),
                             math.cos(delta) - math.sin(phi1) * math.sin(phi2))
    return math.degrees(phi2), math.degrees(lmb2)


def test_distance_uses_the_mean_earth_radius():
    assert geo.EARTH_RADIUS_M == 6371008.8
    # one degree of latitude is R * pi / 180 on a sphere
    assert geo.distance_m(35.0, 139.0, 36.0, 139.0) == pytest.approx(R * math.pi / 180, rel=1e-12)
    assert geo.distance_m(0.0, 0.0, 0.0, 180.0) == pytest.approx(R * math.pi, rel=1e-12)
    assert geo.distance_m(35.68, 139.76, 35.68, 139.76) == 0.0


def test_distance_is_not_flat_earth():
    # at Tokyo's latitude a degree of longitude is cos(35.68°) of a degree of latitude
    east = geo.distance_m(35.68, 139.0, 35.68, 140.0)
    assert east == pytest.approx(R * math.pi / 180 * math.cos(math.radians(35.68)), rel=1e-4)
    assert east < geo.distance_m(35.0, 139.0, 36.0, 139.0) * 0.82


@given(st.floats(35.5, 35.85), st.floats(139.5, 139.95), st.floats(0, 360), st.floats(0.5, 5000))
def test_distance_matches_the_destination_formula(lat, lng, bearing, distance):
    lat2, lng2 = destination(lat, lng, bearing, distance)
    assert geo.distance_m(lat, lng, lat2, lng2) == pytest.approx(distance, rel=1e-9, abs=1e-6)
    assert geo.distance_m(lat, lng, lat2, lng2) == pytest.approx(geo.distance_m(lat2, lng2, lat, lng), abs=1e-9)


@settings(max_examples=300, deadline=None)
@given(st.floats(35.5, 35.85), st.floats(139.5, 139.95), st.floats(0, 360),
       st.floats(0.0, 1.0), st.floats(20, 3000), st.integers(7, 10))
def test_cover_holds_every_point_within_the_radius(lat, lng, bearing, fraction, radius, res):
    cover = geo.cells_covering_disc(lat, lng, radius, res)
    plat, plng = destination(lat, lng, bearing, radius * fraction)
    assert h3.latlng_to_cell(plat, plng, res) in cover


@settings(max_examples=100, deadline=None)
@given(st.floats(35.5, 35.85), st.floats(139.5, 139.95), st.floats(20, 3000), st.integers(7, 10))
def test_cover_is_tight(lat, lng, radius, res):
    """Every covering cell can hold a point of the disc, give or take its circumradius."""
    for cell in geo.cells_covering_disc(lat, lng, radius, res):
        clat, clng = h3.cell_to_latlng(cell)
        assert geo.distance_m(lat, lng, clat, clng) <= radius + geo.cell_circumradius_m(cell) + 1.0


def test_cover_of_a_point_is_its_cell_and_neighbours_close_by():
    cover = geo.cells_covering_disc(35.68, 139.76, 0.0, 9)
    assert h3.latlng_to_cell(35.68, 139.76, 9) in cover
    assert len(cover) <= 7
    with pytest.raises(ValueError, match="radius_m"):
        geo.cells_covering_disc(35.68, 139.76, -1.0, 9)


def test_circumradius_is_about_the_edge_length():
    cell = h3.latlng_to_cell(35.68, 139.76, 9)
    edge = h3.average_hexagon_edge_length(9, "m")
    assert 0.8 * edge < geo.cell_circumradius_m(cell) < 1.3 * edge


def test_res_for_radius_keeps_the_edge_near_a_third_of_the_radius():
    assert geo.res_for_radius(500) == 9
    assert geo.res_for_radius(2000) == 7
    for radius in (100, 500, 2000, 10000):
        res = geo.res_for_radius(radius)
        assert h3.average_hexagon_edge_length(res, "m") >= radius / 3
        assert res == 15 or h3.average_hexagon_edge_length(res + 1, "m") < radius / 3
