"""Geography of the synthetic world: Tokyo's 23 wards, their hotspots, and metric helpers.

Everything the generator places (homes, offices, venues, phones, tweets, place
bounding boxes) is drawn here and kept inside ``schemas.service_area`` — the
same polygon the pipeline and the DP release use — so a test can assert that
no generated position falls outside the public area.

Distances use a local equirectangular projection around central Tokyo: over
the ~40 km of the wards its error is well under 1 %, far below GPS noise, and
it is an order of magnitude cheaper than haversine in the per-ping hot loop.
"""
from __future__ import annotations

import math
import random
from typing import NamedTuple

from schemas.service_area import TOKYO_23_WARDS, contains

# Metres per degree at Tokyo's latitude (35.68 N).
M_PER_DEG_LAT = 110_950.0
M_PER_DEG_LNG = 111_320.0 * math.cos(math.radians(35.68))


class Ward(NamedTuple):
    name_ja: str
    name_en: str
    lat: float
    lng: float
    # Relative weight as a place to live (night population) and to work (day population).
    home_weight: float
    work_weight: float


# Approximate ward offices; weights follow the rough shape of Tokyo's day/night populations.
WARDS = (
    Ward("千代田区", "Chiyoda", 35.6940, 139.7536, 0.3, 9.0),
    Ward("中央区", "Chuo", 35.6707, 139.7720, 1.0, 6.0),
    Ward("港区", "Minato", 35.6581, 139.7516, 1.5, 8.0),
    Ward("新宿区", "Shinjuku", 35.6938, 139.7034, 2.0, 5.0),
    Ward("文京区", "Bunkyo", 35.7081, 139.7522, 1.5, 1.5),
    Ward("台東区", "Taito", 35.7126, 139.7800, 1.2, 1.5),
    Ward("墨田区", "Sumida", 35.7107, 139.8015, 1.8, 1.0),
    Ward("江東区", "Koto", 35.6730, 139.8170, 3.0, 2.0),
    Ward("品川区", "Shinagawa", 35.6092, 139.7302, 2.5, 3.0),
    Ward("目黒区", "Meguro", 35.6415, 139.6982, 1.8, 0.8),
    Ward("大田区", "Ota", 35.5613, 139.7160, 4.0, 2.0),
    Ward("世田谷区", "Setagaya", 35.6464, 139.6533, 6.0, 1.5),
    Ward("渋谷区", "Shibuya", 35.6640, 139.6982, 1.5, 4.0),
    Ward("中野区", "Nakano", 35.7074, 139.6638, 2.2, 0.8),
    Ward("杉並区", "Suginami", 35.6995, 139.6364, 3.5, 0.8),
    Ward("豊島区", "Toshima", 35.7260, 139.7166, 1.9, 2.0),
    Ward("北区", "Kita", 35.7528, 139.7336, 2.3, 0.8),
    Ward("荒川区", "Arakawa", 35.7361, 139.7834, 1.4, 0.5),
    Ward("板橋区", "Itabashi", 35.7512, 139.7093, 3.5, 1.0),
    Ward("練馬区", "Nerima", 35.7356, 139.6517, 4.5, 0.8),
    Ward("足立区", "Adachi", 35.7750, 139.8044, 4.5, 1.0),
    Ward("葛飾区", "Katsushika", 35.7436, 139.8474, 3.0, 0.7),
    Ward("江戸川区", "Edogawa", 35.7066, 139.8683, 4.5, 1.0),
)


class Hotspot(NamedTuple):
    name_ja: str
    name_en: str
    lat: float
    lng: float


# Where Tokyo's venues cluster: stations, arenas, shopping streets, waterfronts.
HOTSPOTS = (
    Hotspot("東京ドーム", "Tokyo Dome", 35.7056, 139.7519),
    Hotspot("武道館", "Budokan", 35.6933, 139.7499),
    Hotspot("渋谷", "Shibuya", 35.6595, 139.7005),
    Hotspot("新宿", "Shinjuku", 35.6896, 139.7006),
    Hotspot("池袋", "Ikebukuro", 35.7295, 139.7109),
    Hotspot("銀座", "Ginza", 35.6717, 139.7650),
    Hotspot("お台場", "Odaiba", 35.6267, 139.7750),
    Hotspot("浅草", "Asakusa", 35.7148, 139.7967),
    Hotspot("秋葉原", "Akihabara", 35.6984, 139.7731),
    Hotspot("上野", "Ueno", 35.7141, 139.7774),
    Hotspot("六本木", "Roppongi", 35.6628, 139.7314),
    Hotspot("原宿", "Harajuku", 35.6702, 139.7027),
    Hotspot("下北沢", "Shimokitazawa", 35.6616, 139.6681),
    Hotspot("中野", "Nakano", 35.7056, 139.6657),
    Hotspot("高円寺", "Koenji", 35.7052, 139.6497),
    Hotspot("両国", "Ryogoku", 35.6969, 139.7935),
    Hotspot("豊洲", "Toyosu", 35.6550, 139.7960),
    Hotspot("有明", "Ariake", 35.6340, 139.7930),
    Hotspot("錦糸町", "Kinshicho", 35.6966, 139.8146),
    Hotspot("北千住", "Kitasenju", 35.7497, 139.8049),
    Hotspot("巣鴨", "Sugamo", 35.7334, 139.7393),
    Hotspot("自由が丘", "Jiyugaoka", 35.6074, 139.6687),
    Hotspot("蒲田", "Kamata", 35.5625, 139.7160),
    Hotspot("品川", "Shinagawa", 35.6285, 139.7387),
    Hotspot("東京駅", "Tokyo Station", 35.6812, 139.7671),
    Hotspot("練馬", "Nerima", 35.7379, 139.6540),
    Hotspot("亀有", "Kameari", 35.7662, 139.8479),
    Hotspot("葛西", "Kasai", 35.6638, 139.8729),
    Hotspot("赤羽", "Akabane", 35.7778, 139.7210),
)


def offset(lat: float, lng: float, north_m: float, east_m: float) -> tuple[float, float]:
    """The point north_m / east_m metres from (lat, lng)."""
    return lat + north_m / M_PER_DEG_LAT, lng + east_m / M_PER_DEG_LNG


def distance_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    dy = (lat2 - lat1) * M_PER_DEG_LAT
    dx = (lng2 - lng1) * M_PER_DEG_LNG
    return math.hypot(dx, dy)


def scatter(rng: random.Random, lat: float, lng: float, sigma_m: float, tries: int = 50) -> tuple[float, float]:
    """A point Gaussian-scattered around (lat, lng), redrawn until inside the service area.

    (lat, lng) itself must be inside; after ``tries`` misses it is returned
    unchanged, so the result is always inside.
    """
    for _ in range(tries):
        plat, plng = offset(lat, lng, rng.gauss(0.0, sigma_m), rng.gauss(0.0, sigma_m))
        if contains(plat, plng):
            return plat, plng
    return lat, lng


def _segment_distance_m(lat, lng, a, b) -> float:
    ax, ay = (a[1] - lng) * M_PER_DEG_LNG, (a[0] - lat) * M_PER_DEG_LAT
    bx, by = (b[1] - lng) * M_PER_DEG_LNG, (b[0] - lat) * M_PER_DEG_LAT
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    t = 0.0 if length2 == 0 else max(0.0, min(1.0, -(ax * dx + ay * dy) / length2))
    return math.hypot(ax + t * dx, ay + t * dy)


def boundary_distance_m(lat: float, lng: float) -> float:
    """Metres from (lat, lng) to the nearest edge of the service-area polygon."""
    points = TOKYO_23_WARDS
    return min(_segment_distance_m(lat, lng, a, b) for a, b in zip(points, points[1:] + points[:1]))


def bbox_inside(lat: float, lng: float, half_m: float) -> tuple[float, float, float, float]:
    """A square bounding box (west, south, east, north) around (lat, lng), shrunk
    until all four corners are inside the service area (so its centre is too)."""
    while True:
        south, west = offset(lat, lng, -half_m, -half_m)
        north, east = offset(lat, lng, half_m, half_m)
        if half_m < 1.0 or all(contains(a, b) for a, b in ((south, west), (south, east), (north, east), (north, west))):
            return west, south, east, north
        half_m /= 2.0
