"""A synthetic Tokyo: users, their phones' pings and NFC touches, the firehose, and the truth.

``write_world(out_dir, users=, hours=, seed=, start=)`` writes the contract's
input files (``users.jsonl``, ``pings.jsonl``, ``taps.jsonl``, ``tweets.jsonl``)
and, under ``truth/``, what really happened, so tests and benchmarks can score
the pipeline against it:

``truth/follows.jsonl``
    the true mutual follows in the ``follows/`` output format (one per pair of
    users who touched phones: the pair's first touch), sorted by
    (user_a, user_b, nonce); built with ``schemas.touch.follow_for_touch``.
``truth/happenings.jsonl``
    ``happening_id``, ``kind`` (concert|sale|festival|incident), ``venue``,
    ``venue_en``, ``area`` (the nearby hotspot), ``lat``, ``lng``, ``start``, ``end`` (RFC 3339),
    ``hashtag`` (as written, already in ``normalize_hashtag`` form),
    ``radius_m`` (a hint: attendees and their tweets are within it),
    ``event_tweet_ids`` (every original tweet about it, deleted ones included;
    retweets excluded), ``attendees`` (count).
``truth/attendance.jsonl``
    ``user_id``, ``happening_id``, ``arrive``, ``leave`` (RFC 3339, clipped to
    the world's window).
``truth/deleted.jsonl``
    ``tweet_id``, ``author_id``, ``deleted_at``: every tweet with a delete notice.
``truth/withdrawn.jsonl``
    ``tweet_id``, ``author_id``, ``kind``, ``at``: every other tweet a compliance message
    withdraws (edited, dropped, withheld in JP, scrubbed, its user protected, suspended,
    deleted or withheld in JP): it must never be alerted or on the timeline
    (``synthetic.compliance``).
``truth/manifest.json``
    ``seed``, ``params`` and ``counts`` (lines per file).

With ``adversarial=True`` (CLI ``--adversarial``) the same clean world gets
hostile additions (``synthetic.adversary``): attack tap reports, labelled one
per line in ``truth/tap_attacks.jsonl`` (``tap_id``, ``kind``, ``user_id``,
``nonce``; a ``duplicate``'s tap_id occurs twice in taps.jsonl), and
unparseable lines, labelled in ``truth/invalid_lines.jsonl`` (``file``,
1-based ``line``, ``kind``). Every other line and every other truth file is
byte-identical to the clean world's: no attack changes the true follows.

How the world works: each user has a home and (most) a workplace in one of the
23 wards, a daily routine (home -> work/errands -> home) and a phone whose
clock is a few seconds off. Venues near Tokyo's hotspots host scheduled
happenings; groups of friends attend them together, tweet about them in
bursts, and touch phones; friends also meet elsewhere and touch; a few pairs
touch twice. Other Twitter accounts (half as many as users, not in
``users.jsonl``, no phone data) chatter, retweet and tweet about happenings
too, as the real firehose carries everyone's tweets. Pings sample each user's
true path every 10-20 minutes (every 3-6 minutes at a happening) with GPS,
Wi-Fi or cell-tower error. Tweets are ordinary
chatter (some geotagged, some with only a place, most with no location, a few
mentioning "ライブ"/"sale" without being at anything), event tweets, retweets
and deletions, each rendered as API v1.1 or v2.

Deterministic: every random draw comes from ``random.Random`` instances seeded
from ``seed`` (one per stage, so changing one stage does not reshuffle the
others), Faker instances are seeded per instance, and no clock is read
(``time`` only converts given instants), so the
same arguments give byte-identical files.
"""
from __future__ import annotations

import bisect
import gzip
import json
import math
import os
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Optional

from faker import Faker

from schemas import proofs
from schemas.records import TapReport, to_json_dict
from schemas.service_area import contains
from schemas.touch import follow_for_touch
from schemas.tweets import normalize_hashtag
from synthetic import adversary, clock, compliance, geo, twitter
from synthetic.params import (DEFAULT_HOURS, DEFAULT_SEED, DEFAULT_START, DEFAULT_USERS, check_params,
                              prepare_output_dir)


INPUT_FILES = ("users.jsonl", "pings.jsonl", "taps.jsonl", "tweets.jsonl")
TRUTH_FILES = ("truth/follows.jsonl", "truth/happenings.jsonl", "truth/attendance.jsonl",
               "truth/deleted.jsonl", "truth/withdrawn.jsonl")

JST_OFFSET_S = 9 * 3600     # daily routines follow Tokyo's clock whatever --start's offset
HOUR = 3600.0
MINUTE = 60.0
# Door to door across Tokyo by rail, transfers included: ~8 m/s plus 10 minutes.
TRAVEL_SPEED_MPS = 8.0
TRAVEL_OVERHEAD_S = 600.0
# Phone clocks: NTP keeps most within a second; none beyond this, so both
# reports of a touch are within 2 * MAX_SKEW_S + NFC latency (< 10 s) of each
# other and of the nonce time.
MAX_SKEW_S = 4.5
NFC_LATENCY_S = 0.5

# Stay kinds: where a user is between trips.
HOME, WORK, ERRAND, VENUE, MEETUP = range(5)

KINDS = ("concert", "sale", "festival", "incident")
KIND_VENUE_TYPE = {"concert": "hall", "sale": "store", "festival": "park", "incident": "crossing"}
VENUE_SUFFIXES = {
    "hall": (("ホール", "Hall"), ("アリーナ", "Arena"), ("ライブハウス", "Live House"), ("劇場", "Theater")),
    "store": (("百貨店", "Department Store"), ("モール", "Mall"), ("商店街", "Shopping Street"), ("ストア", "Store")),
    "park": (("公園", "Park"), ("広場", "Plaza"), ("神社", "Shrine"), ("河川敷", "Riverside")),
    "crossing": (("交差点", "Crossing"), ("駅前", "Station Square"), ("通り", "Avenue"), ("橋", "Bridge")),
}
KIND_PARAMS = {
    # kind: (duration range h, radius_m, attendees as share of users, min, max, typical local start hours)
    "concert": ((2.0, 3.0), 300.0, 0.008, 6, 80, (17.0, 20.0)),
    "sale": ((2.0, 5.0), 200.0, 0.005, 5, 40, (10.0, 16.0)),
    "festival": ((3.0, 6.0), 500.0, 0.010, 7, 100, (10.0, 16.0)),
    "incident": ((0.5, 1.5), 250.0, 0.002, 4, 12, (6.0, 23.0)),
}
# Words event tweets use; the first Japanese and English word of each kind are also generic hashtags.
KIND_WORDS_JA = {
    "concert": ("ライブ", "コンサート", "公演", "アンコール"),
    "sale": ("セール", "特売", "福袋", "タイムセール"),
    "festival": ("祭り", "フェス", "屋台", "花火"),
    "incident": ("事故", "火事", "通行止め", "救急車"),
}
KIND_WORDS_EN = {
    "concert": ("concert", "live show", "gig", "encore"),
    "sale": ("sale", "bargain", "discount", "clearance"),
    "festival": ("festival", "matsuri", "street food", "fireworks"),
    "incident": ("accident", "fire", "road closure", "ambulance"),
}
EVENT_TEMPLATES_JA = (
    "{venue}で{word}なう！最高 #{tag}",
    "#{tag} {venue}の{word}すごい人 #{generic}",
    "{word}始まった！ {venue} #{tag}",
    "{venue}に来た。{word}楽しみ #{tag} #{generic}",
)
INCIDENT_TEMPLATES_JA = (
    "{venue}の近くで{word}。気をつけて #{tag}",
    "#{tag} {venue}付近で{word}、救急車来てる",
    "{venue}で{word}みたい。通れない #{tag} #{generic}",
)
EVENT_TEMPLATES_EN = (
    "At {venue_en} for the {word}! #{tag}",
    "Huge crowd at the {word} near {venue_en} #{tag} #{generic_en}",
    "#{tag} the {word} at {venue_en} is amazing",
)
INCIDENT_TEMPLATES_EN = (
    "There's been an {word} near {venue_en}, avoid the area #{tag}",
    "#{tag} {word} at {venue_en}, emergency services on site",
)
# Chatter that mentions happening words without being at one: the alerts must not fire on these.
DECOY_TEXTS = (
    "来週のライブ楽しみ #ライブ", "昨日のセール行けばよかった", "今年の祭りはいつかな #祭り",
    "ニュースで事故のこと見た", "Can't wait for the concert next month #concert",
    "Missed the sale again", "Watching festival videos at home #festival",
)
CHATTER_TAGS = ("東京", "tokyo", "ランチ", "カフェ", "今日の一枚", "Tokyo", "ラーメン", "猫")
AGE_BANDS = (("10-19", 0.08), ("20-29", 0.22), ("30-39", 0.22), ("40-49", 0.2), ("50-59", 0.14),
             ("60-69", 0.09), ("70+", 0.05))
# Relative tweeting rate by local hour (Tokyo tweets late, sleeps 2-6).
DIURNAL = (0.9, 0.6, 0.3, 0.15, 0.1, 0.15, 0.35, 0.7, 0.9, 0.8, 0.8, 0.9,
           1.3, 1.1, 0.9, 0.9, 1.0, 1.1, 1.3, 1.4, 1.5, 1.6, 1.5, 1.2)


# ---- the world's parts ------------------------------------------------------------------

@dataclass(eq=False)
class Person:
    idx: int
    user_id: str
    key: object                  # Ed25519PrivateKey
    pubkey: str
    alerts_opt_in: bool
    stats_opt_out: bool
    age_band: Optional[str]
    author: twitter.Author
    home: tuple
    work: Optional[tuple]
    ward: int
    skew_s: float                # the phone clock's offset from true time
    chatter_rate: float          # tweets per hour at DIURNAL == 1
    p_exact: float               # share of own tweets with an exact geotag
    p_place: float               # share with only a place
    lang: str
    friends: set = field(default_factory=set)
    # Fixed-time commitments (happenings, meetups): (start, end, lat, lng, kind, wander_m)
    commitments: list = field(default_factory=list)
    # The final timeline, as parallel lists (see _finalise_timeline)
    starts: list = field(default_factory=list)
    ends: list = field(default_factory=list)
    lats: list = field(default_factory=list)
    lngs: list = field(default_factory=list)
    kinds: list = field(default_factory=list)
    wanders: list = field(default_factory=list)
    edge_m: list = field(default_factory=list)


@dataclass(eq=False)
class Venue:
    venue_id: int
    vtype: str
    name: str
    name_en: str
    tag: str                     # hashtag stem
    lat: float
    lng: float
    area: str                    # the hotspot it stands by, e.g. 渋谷
    place: twitter.Place         # its POI place (for place-only tweets)


@dataclass(eq=False)
class Happening:
    happening_id: str
    kind: str
    venue: Venue
    start: float
    end: float
    hashtag: str
    radius_m: float
    # (person, arrive, leave, lat, lng, core): core attendees are there for the opening burst
    attendees: list = field(default_factory=list)
    event_tweet_ids: list = field(default_factory=list)


def travel_s(a: tuple, b: tuple) -> float:
    return geo.distance_m(a[0], a[1], b[0], b[1]) / TRAVEL_SPEED_MPS + TRAVEL_OVERHEAD_S


def _weighted_index(rng: random.Random, cumulative: list) -> int:
    return min(bisect.bisect_right(cumulative, rng.random() * cumulative[-1]), len(cumulative) - 1)


def _cumulative(weights) -> list:
    out, total = [], 0.0
    for w in weights:
        total += w
        out.append(total)
    return out


class World:
    """The world's state, built stage by stage (``build``); ``write_world`` renders it."""

    def __init__(self, users: int, hours: float, seed: int, start: float,
                 progress: Optional[Callable[[str], None]] = None):
        self.n_users = users
        self.hours = hours
        self.seed = seed
        self.t0 = start
        self.t1 = start + hours * HOUR
        self.progress = progress or (lambda message: None)
        self.fake = Faker("ja_JP")
        self.fake.seed_instance(seed)
        self.fake_en = Faker("en_US")
        self.fake_en.seed_instance(seed)
        self.people: list[Person] = []
        # Twitter accounts that are not the carrier's users: they only tweet (no phone data).
        self.public: list[Person] = []
        self.venues: dict[str, list[Venue]] = {}
        self.ward_places: list[twitter.Place] = []
        self.happenings: list[Happening] = []
        self.touches: list[tuple] = []
        self.minter = twitter.SnowflakeMinter()
        self.place_ids: set = set()
        self._edge_cache: dict = {}
        self._ward_grid: dict = {}

    def rng(self, stage: str) -> random.Random:
        # A str seed is hashed with SHA-512 by random.seed: stable across runs and PYTHONHASHSEED.
        return random.Random(f"{self.seed}/{stage}")

    # ---- stage 1: people ---------------------------------------------------------------

    def build_people(self) -> None:
        rng = self.rng("people")
        home_cum = _cumulative(w.home_weight for w in geo.WARDS)
        work_cum = _cumulative(w.work_weight for w in geo.WARDS)
        age_cum = _cumulative(share for _, share in AGE_BANDS)
        self._used_ids, self._used_names = set(), set()
        self._names = [self.fake.name() for _ in range(min(self.n_users, 2000))]
        self._handles = [self.fake.user_name() for _ in range(min(self.n_users, 2000))]
        for idx in range(self.n_users):
            author = self._new_account(rng)
            key, pubkey = proofs.new_keypair(seed=rng.randbytes(32))
            ward = _weighted_index(rng, home_cum)
            w = geo.WARDS[ward]
            home = geo.scatter(rng, w.lat, w.lng, 1500.0)
            work = None
            if rng.random() < 0.72:
                wk = geo.WARDS[_weighted_index(rng, work_cum)]
                work = geo.scatter(rng, wk.lat, wk.lng, 1000.0)
            geo_roll = rng.random()
            p_exact = 0.0 if geo_roll < 0.55 else (0.3 if geo_roll < 0.85 else 0.8)
            self.people.append(Person(
                idx=idx, user_id=author.user_id, key=key, pubkey=pubkey,
                alerts_opt_in=rng.random() < 0.88,
                stats_opt_out=rng.random() < 0.04,
                age_band=AGE_BANDS[_weighted_index(rng, age_cum)][0] if rng.random() < 0.85 else None,
                author=author, home=home, work=work, ward=ward,
                skew_s=max(-MAX_SKEW_S, min(MAX_SKEW_S, rng.gauss(0.0, 1.5))),
                chatter_rate=min(3.0, rng.lognormvariate(math.log(0.2), 0.9)),
                p_exact=p_exact, p_place=0.15,
                lang="en" if rng.random() < 0.08 else "ja",
            ))
        rng = self.rng("public")
        for j in range(max(10, self.n_users // 2)):
            author = self._new_account(rng)
            ward = _weighted_index(rng, home_cum)
            home = geo.scatter(rng, geo.WARDS[ward].lat, geo.WARDS[ward].lng, 1500.0)
            self.public.append(Person(
                idx=-1 - j, user_id=author.user_id, key=None, pubkey="", alerts_opt_in=False,
                stats_opt_out=False, age_band=None, author=author, home=home, work=None, ward=ward,
                skew_s=0.0, chatter_rate=min(3.0, rng.lognormvariate(math.log(0.2), 0.9)),
                p_exact=0.0 if rng.random() < 0.6 else 0.4, p_place=0.15,
                lang="en" if rng.random() < 0.1 else "ja"))
        self.progress(f"people: {len(self.people)} users, {len(self.public)} other accounts")

    def _new_account(self, rng: random.Random) -> twitter.Author:
        while True:
            # Twitter ids: pre-2013 accounts have short sequential ids, later ones are snowflakes.
            if rng.random() < 0.35:
                user_id = str(rng.randrange(10_000_000, 3_000_000_000))
            else:
                user_id = str(rng.randrange(700_000_000_000_000_000, 1_900_000_000_000_000_000))
            if user_id not in self._used_ids:
                self._used_ids.add(user_id)
                break
        handle = self._handles[rng.randrange(len(self._handles))]
        screen_name = handle if handle not in self._used_names else f"{handle}_{rng.randrange(10, 9999)}"
        while screen_name in self._used_names:
            screen_name = f"{handle}_{rng.randrange(10, 999999)}"
        self._used_names.add(screen_name)
        return twitter.Author(user_id, screen_name, self._names[rng.randrange(len(self._names))],
                              int(rng.lognormvariate(4.5, 1.2)), int(rng.lognormvariate(4.8, 0.8)))

    def build_friends(self) -> None:
        rng = self.rng("friends")
        by_ward: dict[int, list[Person]] = {}
        for p in self.people:
            by_ward.setdefault(p.ward, []).append(p)
        for p in self.people:
            for _ in range(rng.choice((1, 1, 2, 2, 3, 3, 4, 5))):
                pool = by_ward[p.ward] if rng.random() < 0.6 and len(by_ward[p.ward]) > 1 else self.people
                q = pool[rng.randrange(len(pool))]
                if q is not p:
                    p.friends.add(q.idx)
                    q.friends.add(p.idx)

    # ---- stage 2: places and venues -----------------------------------------------------

    def _place_id(self, rng: random.Random) -> str:
        while True:
            pid = f"{rng.getrandbits(64):016x}"
            if pid not in self.place_ids:
                self.place_ids.add(pid)
                return pid

    def build_venues(self) -> None:
        rng = self.rng("venues")
        for w in geo.WARDS:
            self.ward_places.append(twitter.Place(
                self._place_id(rng), w.name_ja, f"{w.name_en}-ku, Tokyo", "city",
                geo.bbox_inside(w.lat, w.lng, 2000.0)))
        per_type = max(3, min(60, self.n_users // 150))
        venue_id = 0
        used_tags = set()
        for vtype in ("hall", "store", "park", "crossing"):
            self.venues[vtype] = []
            for _ in range(per_type):
                spot = geo.HOTSPOTS[rng.randrange(len(geo.HOTSPOTS))]
                lat, lng = geo.scatter(rng, spot.lat, spot.lng, 600.0)
                suffix_ja, suffix_en = VENUE_SUFFIXES[vtype][rng.randrange(4)]
                if vtype == "crossing":
                    stem = spot.name_ja
                    surname = self.fake.town() if rng.random() < 0.5 else ""
                else:
                    surname = self.fake.last_name()
                    stem = spot.name_ja
                tag = f"{stem}{surname}"
                while tag in used_tags:
                    tag = f"{stem}{surname}{rng.randrange(2, 99)}"
                used_tags.add(tag)
                name = f"{tag}{suffix_ja}"
                self.venues[vtype].append(Venue(
                    venue_id=venue_id, vtype=vtype, name=name, name_en=f"{spot.name_en} {suffix_en}",
                    tag=tag, lat=lat, lng=lng, area=spot.name_ja,
                    place=twitter.Place(self._place_id(rng), name, f"{name}, {spot.name_ja}, 東京",
                                        "poi", geo.bbox_inside(lat, lng, 80.0))))
                venue_id += 1

    @staticmethod
    def _nearest_ward(lat: float, lng: float) -> int:
        """The ward whose office is nearest: a stand-in for the ward a point is in."""
        return min(range(len(geo.WARDS)), key=lambda i: geo.distance_m(lat, lng, geo.WARDS[i].lat, geo.WARDS[i].lng))

    def _ward_place(self, lat: float, lng: float) -> twitter.Place:
        # Memoised on a ~500 m grid: chatter asks this for every located tweet.
        cell = (round(lat * 200.0), round(lng * 200.0))
        ward = self._ward_grid.get(cell)
        if ward is None:
            ward = self._ward_grid[cell] = self._nearest_ward(lat, lng)
        return self.ward_places[ward]

    # ---- stage 3: happenings, attendance, meetups and touches ---------------------------

    def _window_start(self, rng: random.Random, duration: float, typical: tuple) -> float:
        """A start time for something lasting ``duration`` that fits the window; at
        typical local hours when the window has them (a night-only window gets a
        late-night one)."""
        margin = min(10 * MINUTE, 0.1 * (self.t1 - self.t0))
        lo, hi = self.t0 + margin, self.t1 - duration - margin
        if hi <= lo:
            return self.t0
        start = rng.uniform(lo, hi)
        for _ in range(30):
            if typical[0] <= ((start + JST_OFFSET_S) % 86400) / HOUR <= typical[1]:
                break
            start = rng.uniform(lo, hi)
        return start

    @staticmethod
    def _is_free(p: Person, start: float, end: float, where: tuple) -> bool:
        for (s, e, lat, lng, _kind, _w) in p.commitments:
            gap = travel_s((lat, lng), where)
            if not (end + gap <= s or start >= e + gap):
                return False
        return True

    def build_happenings(self) -> None:
        rng = self.rng("happenings")
        n = max(4, math.ceil(self.n_users * self.hours / 2000.0))
        kind_cum = _cumulative((0.3, 0.3, 0.2, 0.2))
        used_tags = set()
        window = self.t1 - self.t0
        for i in range(n):
            kind = KINDS[i] if i < len(KINDS) else KINDS[_weighted_index(rng, kind_cum)]
            (dur_lo, dur_hi), radius, share, lo, hi, typical = KIND_PARAMS[kind]
            duration = min(rng.uniform(dur_lo, dur_hi) * HOUR, max(0.8 * window, window - 20 * MINUTE))
            start = self._window_start(rng, duration, typical)
            venues = self.venues[KIND_VENUE_TYPE[kind]]
            # One happening at a time per venue (with an hour to clear up); a small
            # world whose venues are all taken shares one rather than dropping it.
            for _ in range(20):
                venue = venues[rng.randrange(len(venues))]
                if all(other.venue is not venue or start >= other.end + HOUR or start + duration + HOUR <= other.start
                       for other in self.happenings):
                    break
            word = KIND_WORDS_JA[kind][0]
            # Written in its canonical form, so the truth's hashtag equals what the parser yields.
            tag = normalize_hashtag(f"{venue.tag}{word}")
            if tag in used_tags:  # the venue's next one: people add the date, as in #渋谷ライブ1120
                local = time.gmtime(start + JST_OFFSET_S)
                tag = f"{tag}{local.tm_mon:02d}{local.tm_mday:02d}"
            while tag in used_tags:
                tag = f"{tag}{rng.randrange(10)}"
            used_tags.add(tag)
            h = Happening(f"h{i + 1:04d}", kind, venue, start, start + duration, tag, radius)
            self._assign_attendees(rng, h, max(lo, min(hi, round(self.n_users * share))))
            self.happenings.append(h)
        self.progress(f"happenings: {len(self.happenings)}, attendances: "
                      f"{sum(len(h.attendees) for h in self.happenings)}")

    def _assign_attendees(self, rng: random.Random, h: Happening, target: int) -> None:
        """Groups of friends attend together; the first three people are the core
        who are there from the opening (and tweet the opening burst)."""
        venue_at = (h.venue.lat, h.venue.lng)
        duration = h.end - h.start
        attempts = 0
        while len(h.attendees) < target and attempts < 40:
            attempts += 1
            candidates = [self.people[rng.randrange(len(self.people))] for _ in range(3)]
            candidates.sort(key=lambda p: (geo.distance_m(p.home[0], p.home[1], *venue_at), p.idx))
            core = len(h.attendees) < 3
            if core:
                arrive = h.start - rng.uniform(0.0, 20 * MINUTE)
                leave = h.end + rng.uniform(-10 * MINUTE, 10 * MINUTE)
                if h.kind == "incident":
                    arrive = h.start - rng.uniform(0.0, 5 * MINUTE)
            else:
                arrive = h.start + rng.uniform(-20 * MINUTE, 0.5 * duration)
                leave = rng.uniform(min(arrive + 30 * MINUTE, h.end), h.end + 10 * MINUTE)
            leader = next((p for p in candidates if self._is_free(p, arrive, leave, venue_at)
                           and p.idx not in {a[0].idx for a in h.attendees}), None)
            if leader is None:
                continue
            group = [leader]
            for fidx in sorted(leader.friends):
                friend = self.people[fidx]
                if (len(group) < 4 and rng.random() < 0.7 and friend.idx not in {a[0].idx for a in h.attendees}
                        and self._is_free(friend, arrive - 5 * MINUTE, leave + 5 * MINUTE, venue_at)):
                    group.append(friend)
            members = []
            # A group stands together: friends within metres of the leader's spot.
            spot = geo.scatter(rng, h.venue.lat, h.venue.lng, h.radius_m * 0.25)
            for p in group:
                a = arrive + (0.0 if p is leader else rng.uniform(-3 * MINUTE, 3 * MINUTE))
                l = leave + (0.0 if p is leader else rng.uniform(-3 * MINUTE, 3 * MINUTE))
                lat, lng = spot if p is leader else geo.scatter(rng, spot[0], spot[1], 4.0)
                p.commitments.append((a, l, lat, lng, VENUE, h.radius_m * 0.1))
                h.attendees.append((p, a, l, lat, lng, core))
                members.append((p, a, l, lat, lng))
            self._touch_in_group(rng, members)

    def _touch_in_group(self, rng: random.Random, members: list) -> None:
        """Friends at the same happening touch phones with probability 0.6 per pair."""
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                p, a1, l1, lat, lng = members[i]
                q, a2, l2, _, _ = members[j]
                if q.idx not in p.friends or rng.random() >= 0.6:
                    continue
                lo, hi = max(a1, a2, self.t0) + 5 * MINUTE, min(l1, l2, self.t1) - 5 * MINUTE
                if hi <= lo:
                    continue
                self._touch(rng, rng.uniform(lo, hi), p, q, lat, lng)

    def _touch(self, rng: random.Random, when: float, p: Person, q: Person, lat: float, lng: float) -> None:
        initiator, responder = (p, q) if rng.random() < 0.5 else (q, p)
        self.touches.append((when, initiator, responder, lat, lng, rng.randbytes(10), rng.getrandbits(128),
                             rng.getrandbits(128), rng.random(), rng.random(), rng.random(), rng.random()))

    def build_meetups(self) -> None:
        """Friends meeting elsewhere (a café, a station, a venue) and touching; some twice."""
        rng = self.rng("meetups")
        edges = sorted({(min(p.idx, f), max(p.idx, f)) for p in self.people for f in p.friends})
        if not edges:
            return
        all_venues = [v for vtype in ("hall", "store", "park", "crossing") for v in self.venues[vtype]]
        n = max(2, round(self.n_users * self.hours / 80.0))
        for _ in range(n):
            a, b = edges[rng.randrange(len(edges))]
            self._meet(rng, self.people[a], self.people[b], all_venues, after=self.t0)
        # Some pairs touch again, at another time and place (a new nonce, the same follow).
        first_touch: dict[tuple, tuple] = {}
        for t in sorted(self.touches, key=lambda t: t[0]):
            pair = (min(t[1].idx, t[2].idx), max(t[1].idx, t[2].idx))
            first_touch.setdefault(pair, t)
        pairs = sorted(first_touch)
        rng.shuffle(pairs)
        wanted = max(1, round(0.15 * len(pairs)))
        for pair in pairs:
            if wanted == 0:
                break
            t = first_touch[pair]
            if self._meet(rng, self.people[pair[0]], self.people[pair[1]], all_venues,
                          after=t[0] + 20 * MINUTE, avoid=(t[3], t[4]), tries=20):
                wanted -= 1

    def _meet(self, rng: random.Random, p: Person, q: Person, venues: list, after: float,
              avoid: Optional[tuple] = None, tries: int = 10) -> bool:
        for _ in range(tries):
            duration = rng.uniform(20 * MINUTE, 90 * MINUTE)
            if rng.random() < 0.5:
                v = venues[rng.randrange(len(venues))]
                spot = geo.scatter(rng, v.lat, v.lng, 40.0)
            else:
                base = p.work if p.work is not None and rng.random() < 0.5 else p.home
                spot = geo.scatter(rng, base[0], base[1], 800.0)
            if avoid is not None and geo.distance_m(spot[0], spot[1], avoid[0], avoid[1]) < 500.0:
                continue
            lo, hi = max(after, self.t0 + 5 * MINUTE), self.t1 - duration - 5 * MINUTE
            if hi <= lo:
                return False
            start = rng.uniform(lo, hi)
            for _ in range(20):
                if 9.0 <= ((start + JST_OFFSET_S) % 86400) / HOUR <= 22.0:
                    break
                start = rng.uniform(lo, hi)
            end = start + duration
            if not (self._is_free(p, start, end, spot) and self._is_free(q, start, end, spot)):
                continue
            for person in (p, q):
                lat, lng = geo.scatter(rng, spot[0], spot[1], 3.0)
                person.commitments.append((start, end, lat, lng, MEETUP, 5.0))
            self._touch(rng, rng.uniform(start + 2 * MINUTE, end - 2 * MINUTE), p, q, *spot)
            return True
        return False

    # ---- stage 4: timelines and pings --------------------------------------------------

    def build_timelines(self) -> None:
        rng = self.rng("routines")
        first_day = math.floor((self.t0 + JST_OFFSET_S) / 86400) - 1
        last_day = math.floor((self.t1 + JST_OFFSET_S) / 86400) + 1
        for p in self.people:
            stays = self._routine(rng, p, first_day, last_day)
            for c in sorted(p.commitments):
                stays = self._make_room(stays, c)
                stays.append(c)
                stays.sort()
            self._finalise_timeline(p, stays)
        self.progress("timelines: done")

    def _routine(self, rng: random.Random, p: Person, first_day: int, last_day: int) -> list:
        """Home -> work (and an errand) -> home on workdays; errands from home otherwise."""
        stays = []
        home = p.home
        at_home_since = (first_day - 1) * 86400.0 - JST_OFFSET_S
        for day in range(first_day, last_day + 1):
            midnight = day * 86400.0 - JST_OFFSET_S
            weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday == 0
            outings = []  # lists of chained stays (lat, lng, start, end, kind, wander)
            if p.work is not None and (weekday < 5 or rng.random() < 0.12):
                leave = midnight + rng.uniform(6.75, 9.5) * HOUR
                arrive = leave + travel_s(home, p.work)
                depart = max(arrive + HOUR, midnight + rng.uniform(17.0, 20.5) * HOUR)
                chain = [(p.work[0], p.work[1], arrive, depart, WORK, 25.0)]
                if rng.random() < 0.35:
                    errand = self._errand_spot(rng, p.work)
                    e_start = depart + travel_s(p.work, errand)
                    chain.append((errand[0], errand[1], e_start, e_start + rng.uniform(20, 120) * MINUTE, ERRAND, 20.0))
                outings.append((leave, chain))
            else:
                t = midnight + rng.uniform(9.5, 12.5) * HOUR
                for _ in range(rng.choice((0, 1, 1, 2))):
                    errand = self._errand_spot(rng, home)
                    e_start = t + travel_s(home, errand)
                    e_end = e_start + rng.uniform(30, 150) * MINUTE
                    outings.append((t, [(errand[0], errand[1], e_start, e_end, ERRAND, 20.0)]))
                    t = e_end + travel_s(errand, home) + rng.uniform(30, 180) * MINUTE
            for leave, chain in outings:
                stays.append((at_home_since, leave, home[0], home[1], HOME, 5.0))
                for (lat, lng, s, e, kind, wander) in chain:
                    stays.append((s, e, lat, lng, kind, wander))
                last = chain[-1]
                at_home_since = last[3] + travel_s((last[0], last[1]), home)
        stays.append((at_home_since, (last_day + 2) * 86400.0, home[0], home[1], HOME, 5.0))
        return stays

    def _errand_spot(self, rng: random.Random, near: tuple) -> tuple:
        if rng.random() < 0.25:
            spot = geo.HOTSPOTS[rng.randrange(len(geo.HOTSPOTS))]
            return geo.scatter(rng, spot.lat, spot.lng, 400.0)
        return geo.scatter(rng, near[0], near[1], 1200.0)

    @staticmethod
    def _make_room(stays: list, c: tuple) -> list:
        """Cut routine stays so the person can travel to and from commitment ``c``."""
        c_start, c_end, c_lat, c_lng = c[0], c[1], c[2], c[3]
        out = []
        for s in stays:
            start, end, lat, lng = s[0], s[1], s[2], s[3]
            if s[4] in (VENUE, MEETUP):
                out.append(s)
                continue
            gap = travel_s((lat, lng), (c_lat, c_lng))
            lo, hi = c_start - gap, c_end + gap
            if end <= lo or start >= hi:
                out.append(s)
                continue
            if lo - start >= 5 * MINUTE:
                out.append((start, lo) + s[2:])
            if end - hi >= 5 * MINUTE:
                out.append((hi, end) + s[2:])
        return out

    def _finalise_timeline(self, p: Person, stays: list) -> None:
        edge_cache = self._edge_cache
        for (s, e, lat, lng, kind, wander) in stays:
            p.starts.append(s)
            p.ends.append(e)
            p.lats.append(lat)
            p.lngs.append(lng)
            p.kinds.append(kind)
            p.wanders.append(wander)
            edge_m = edge_cache.get((lat, lng)) if e >= self.t0 and s <= self.t1 else 0.0
            if edge_m is None:
                edge_m = edge_cache[(lat, lng)] = geo.boundary_distance_m(lat, lng)
            p.edge_m.append(edge_m)

    @staticmethod
    def locate(p: Person, t: float) -> tuple:
        """(lat, lng, stay index or -1 while travelling) of p's true position at t."""
        i = bisect.bisect_right(p.starts, t) - 1
        if i >= 0 and t <= p.ends[i]:
            return p.lats[i], p.lngs[i], i
        if i < 0:
            return p.lats[0], p.lngs[0], -1
        if i + 1 >= len(p.starts):
            return p.lats[i], p.lngs[i], -1
        frac = (t - p.ends[i]) / (p.starts[i + 1] - p.ends[i])
        lat = p.lats[i] + frac * (p.lats[i + 1] - p.lats[i])
        lng = p.lngs[i] + frac * (p.lngs[i + 1] - p.lngs[i])
        if not contains(lat, lng):  # the straight line crossed the bay: stay at the nearer end
            return (p.lats[i], p.lngs[i], -1) if frac < 0.5 else (p.lats[i + 1], p.lngs[i + 1], -1)
        return lat, lng, -1

    def ping_lines(self) -> list:
        """Every ping line, in time order (ties by user)."""
        rng = self.rng("pings")
        out, keys = [], []
        append, append_key = out.append, keys.append
        stride = len(self.people)
        t0, t1 = self.t0, self.t1
        m_lat, m_lng = geo.M_PER_DEG_LAT, geo.M_PER_DEG_LNG
        uniform, rand = rng.uniform, rng.random
        log, sqrt, cos, sin, two_pi = math.log, math.sqrt, math.cos, math.sin, 2.0 * math.pi
        prefixes = {}
        for p in self.people:
            head = f'{{"user_id":"{p.user_id}","ts":"'
            starts, ends, kinds, wanders, edge = p.starts, p.ends, p.kinds, p.wanders, p.edge_m
            n = len(starts)
            i = 0
            t = t0 + uniform(0.0, min(900.0, t1 - t0))
            while t < t1:
                while i < n and ends[i] < t:
                    i += 1
                if i < n and starts[i] <= t:
                    lat, lng = p.lats[i], p.lngs[i]
                    kind, wander, edge_m = kinds[i], wanders[i], edge[i]
                else:
                    lat, lng, _ = self.locate(p, t)
                    kind, wander, edge_m = -1, 0.0, 0.0
                roll = rand()
                if kind == HOME or kind == WORK:
                    source = "wifi" if roll < 0.45 else ("gps" if roll < 0.85 else "cell")
                elif kind == -1:
                    source = "gps" if roll < 0.6 else "cell"
                else:
                    source = "gps" if roll < 0.65 else ("wifi" if roll < 0.85 else "cell")
                if source == "gps":
                    accuracy = uniform(8.0, 30.0)
                elif source == "wifi":
                    accuracy = uniform(30.0, 80.0)
                else:
                    accuracy = uniform(300.0, 2000.0)
                # Device error (sigma = accuracy / 2) plus moving about the place, as one
                # 2-D Gaussian drawn by Box-Muller: the hot loop's cheapest exact draw.
                sigma = sqrt(0.25 * accuracy * accuracy + wander * wander)
                radius = sigma * sqrt(-2.0 * log(1.0 - rand()))
                angle = two_pi * rand()
                dn, de = radius * cos(angle), radius * sin(angle)
                plat, plng = lat + dn / m_lat, lng + de / m_lng
                if edge_m <= radius + 1.0 and not contains(plat, plng):
                    plat, plng = lat, lng
                millis = int(t * 1000.0)
                seconds, ms = divmod(millis, 1000)
                minute, sec = divmod(seconds, 60)
                prefix = prefixes.get(minute)
                if prefix is None:
                    prefix = prefixes[minute] = clock.rfc3339_ms(minute * 60000)[:-7]
                append(f'{head}{prefix}{sec:02d}.{ms:03d}Z","lat":{plat:.6f},"lng":{plng:.6f},'
                       f'"accuracy_m":{accuracy:.1f},"source":"{source}"}}')
                append_key(millis * stride + p.idx)
                t += uniform(180.0, 360.0) if kind == VENUE else uniform(600.0, 1200.0)
        # Sorting int keys is several times faster than sorting (millis, idx, line) tuples.
        order = sorted(range(len(out)), key=keys.__getitem__)
        return [out[i] for i in order]

    # ---- stage 5: tweets --------------------------------------------------------------

    def _spec(self, rng: random.Random, t: float, p: Person, text: str, hashtags: tuple,
              coords: Optional[tuple], place: Optional[twitter.Place],
              retweet_of: Optional[twitter.TweetSpec] = None) -> twitter.TweetSpec:
        millis = int(t * 1000.0)
        return twitter.TweetSpec(
            tweet_id=self.minter.mint(millis), millis=millis, author=p.author, text=text,
            lang=("en" if text.isascii() else "ja"), hashtags=hashtags, coords=coords, place=place,
            retweet_of=retweet_of, api="v1" if rng.random() < 0.5 else "v2", client=rng.randrange(3))

    def _event_geotag(self, rng, lat, lng, place, precise_share: float, force_precise: bool = False):
        """An event tweet's location: precise (share or forced), the venue's place only (to 0.8), or none."""
        roll = rng.random()
        if force_precise or roll < precise_share:
            return self._geotag(rng, lat, lng, 10.0), place
        if roll < 0.8:
            return None, place
        return None, None

    def _geotag(self, rng: random.Random, lat: float, lng: float, sigma_m: float) -> tuple:
        plat, plng = geo.offset(lat, lng, rng.gauss(0.0, sigma_m), rng.gauss(0.0, sigma_m))
        if not contains(plat, plng):
            plat, plng = lat, lng
        return round(plat, 6), round(plng, 6)

    def _event_text(self, rng: random.Random, h: Happening, p: Person, with_tag: bool) -> tuple:
        kind = h.kind
        english = p.lang == "en" or rng.random() < 0.15
        if english:
            templates = INCIDENT_TEMPLATES_EN if kind == "incident" else EVENT_TEMPLATES_EN
            word = rng.choice(KIND_WORDS_EN[kind])
        else:
            templates = INCIDENT_TEMPLATES_JA if kind == "incident" else EVENT_TEMPLATES_JA
            word = rng.choice(KIND_WORDS_JA[kind])
        template = rng.choice(templates)
        generic, generic_en = KIND_WORDS_JA[kind][0], KIND_WORDS_EN[kind][0]
        text = template.format(venue=h.venue.name, venue_en=h.venue.name_en, word=word,
                               tag=h.hashtag, generic=generic, generic_en=generic_en)
        if not with_tag:
            text = text.replace(f"#{h.hashtag}", "").replace("  ", " ").strip()
        if rng.random() < 0.15:
            # A long tweet: past 140 characters, so v1.1 truncates it and v2 uses note_tweet.
            pool = self.sentences_en if english else self.sentences_ja
            while len(text) <= twitter.V1_TEXT_LIMIT + 10:
                text = f"{text} {pool[rng.randrange(len(pool))]}" if rng.random() < 0.5 else f"{pool[rng.randrange(len(pool))]} {text}"
        tags = []
        pos = 0
        while True:
            pos = text.find("#", pos)
            if pos < 0:
                break
            end = pos + 1
            while end < len(text) and text[end] not in twitter.TAG_END:
                end += 1
            tags.append(text[pos + 1:end])
            pos = end
        return text, tuple(tags)

    def build_tweets(self) -> tuple[list, list]:
        """(firehose lines in time order, deleted tweets as (id, author, millis))."""
        rng = self.rng("tweets")
        faker_pool_size = 400
        self.sentences_ja = [self.fake.sentence() for _ in range(faker_pool_size)]
        self.sentences_en = [self.fake_en.sentence() for _ in range(faker_pool_size // 2)]
        t0, t1 = self.t0, self.t1
        specs: list[twitter.TweetSpec] = []
        retweetable: list[twitter.TweetSpec] = []
        deleted: list[tuple] = []  # (spec, delete millis)
        deletable: list[twitter.TweetSpec] = []  # geotagged event tweets outside the opening bursts
        aimable: list[twitter.TweetSpec] = []    # precise event tweets: what compliance messages aim at

        # Event tweets: the opening burst from the core attendees, then the others through the happening.
        for h in self.happenings:
            burst = h.start + (rng.uniform(1, 4) if h.kind == "incident" else rng.uniform(2, 8)) * MINUTE
            for (p, arrive, leave, lat, lng, core) in h.attendees:
                times = []
                if core:
                    times.append((burst + rng.uniform(0, 10 * MINUTE), True))
                elif arrive <= burst <= leave and rng.random() < 0.4:
                    times.append((burst + rng.uniform(0, 12 * MINUTE), False))
                if rng.random() < 0.7:
                    for _ in range(rng.randint(1, 3)):
                        times.append((rng.uniform(max(arrive, h.start), min(leave, h.end)), False))
                for t, is_core in times:
                    if not t0 <= t < t1:
                        continue
                    text, tags = self._event_text(rng, h, p, with_tag=is_core or rng.random() < 0.85)
                    coords, place = self._event_geotag(rng, lat, lng, h.venue.place, 0.55, force_precise=is_core)
                    spec = self._spec(rng, t, p, text, tags, coords, place)
                    specs.append(spec)
                    h.event_tweet_ids.append(spec.tweet_id)
                    if not is_core and rng.random() < 0.06:
                        deleted.append((spec, int((t + rng.uniform(2, 10) * MINUTE) * 1000)))
                    else:
                        retweetable.append(spec)
                        if not is_core and coords is not None:
                            deletable.append(spec)
                        if coords is not None:
                            aimable.append(spec)
            # Non-users at the happening tweet about it too (no attendance truth: no phone data).
            for _ in range(round(len(h.attendees) * 0.5)):
                p = self.public[rng.randrange(len(self.public))]
                t = rng.uniform(max(h.start, t0), min(h.end, t1))
                lat, lng = geo.scatter(rng, h.venue.lat, h.venue.lng, h.radius_m * 0.3)
                text, tags = self._event_text(rng, h, p, with_tag=rng.random() < 0.7)
                coords, place = self._event_geotag(rng, lat, lng, h.venue.place, 0.5)
                spec = self._spec(rng, t, p, text, tags, coords, place)
                specs.append(spec)
                h.event_tweet_ids.append(spec.tweet_id)
                retweetable.append(spec)
        if not deleted and deletable:
            # Every world has at least one deleted event tweet: the alerts must honour it.
            spec = min(deletable, key=lambda s: s.tweet_id)
            retweetable.remove(spec)
            deleted.append((spec, spec.millis + int(rng.uniform(2, 10) * MINUTE * 1000)))
        self.progress(f"event tweets: {len(specs)}")

        # Chatter: a Poisson process per account following the diurnal curve.
        peak = max(DIURNAL)
        for p in self.people + self.public:
            rate = p.chatter_rate * peak / HOUR
            t = t0
            while True:
                t += rng.expovariate(rate)
                if t >= t1:
                    break
                if rng.random() * peak > DIURNAL[int(((t + JST_OFFSET_S) % 86400) // HOUR)]:
                    continue
                if rng.random() < 0.03:
                    text = rng.choice(DECOY_TEXTS)
                else:
                    pool = self.sentences_en if p.lang == "en" else self.sentences_ja
                    text = pool[rng.randrange(len(pool))]
                    if rng.random() < 0.2:
                        text = f"{text} #{rng.choice(CHATTER_TAGS)}"
                    if rng.random() < 0.08:
                        while len(text) <= twitter.V1_TEXT_LIMIT + 10:
                            text = f"{text} {pool[rng.randrange(len(pool))]}"
                tags = tuple(word[1:] for word in text.split() if word.startswith("#"))
                if p.idx >= 0:
                    lat, lng, _ = self.locate(p, t)
                else:  # no phone data: somewhere around home
                    lat, lng = geo.scatter(rng, p.home[0], p.home[1], 2500.0)
                roll = rng.random()
                if roll < p.p_exact:
                    coords, place = self._geotag(rng, lat, lng, 15.0), self._ward_place(lat, lng)
                elif roll < p.p_exact + p.p_place:
                    coords, place = None, self._ward_place(lat, lng)
                else:
                    coords, place = None, None
                spec = self._spec(rng, t, p, text, tags, coords, place)
                specs.append(spec)
                if rng.random() < 0.01:
                    deleted.append((spec, int((t + rng.uniform(1, 60) * MINUTE) * 1000)))
                elif rng.random() < 0.05:
                    retweetable.append(spec)
        self.progress(f"original tweets: {len(specs)}")

        # Retweets: event tweets spread (mostly through friends); a few chatter tweets do too.
        retweets = []
        for orig in retweetable:
            author = self._accounts[orig.author.user_id]
            count = sum(rng.random() < 0.35 for _ in range(3))
            for _ in range(count):
                friends = sorted(author.friends)
                roll = rng.random()
                if friends and roll < 0.7:
                    rter = self.people[friends[rng.randrange(len(friends))]]
                elif roll < 0.85:
                    rter = self.public[rng.randrange(len(self.public))]
                else:
                    rter = self.people[rng.randrange(len(self.people))]
                if rter is author:
                    continue
                t = orig.millis / 1000.0 + rng.uniform(30.0, 60 * MINUTE)
                if t >= t1:
                    continue
                text = f"RT @{orig.author.screen_name}: {orig.text}"
                retweets.append(self._spec(rng, t, rter, text, orig.hashtags, None, None, retweet_of=orig))
        self.progress(f"retweets: {len(retweets)}, deletes: {len(deleted)}")

        deleted_ids = {s.tweet_id for s, _ms in deleted}
        plan = compliance.plan_compliance(self, self.rng("compliance"), specs, deleted_ids,
                                          [s for s in aimable if s.tweet_id not in deleted_ids])
        self.withdrawn = plan.withdrawn
        self.progress(f"compliance: {len(plan.lines) - len(plan.edits)} messages, {len(plan.edits)} edits, "
                      f"{len(plan.withdrawn)} tweets withdrawn")

        lines = [(s.millis, s.tweet_id, twitter.render(s)) for s in specs]
        lines.extend((s.millis, s.tweet_id, twitter.render(s)) for s in retweets)
        # A compliance message sorts after every tweet of its millisecond (ids < 2**64 < this order key);
        # a v2 tweet's delete comes from the v2 compliance stream.
        lines.extend((ms, 1 << 64, twitter.render_delete(s.tweet_id, s.author.user_id, ms, s.api))
                     for s, ms in deleted if ms < t1 * 1000)
        lines.extend(plan.lines)
        lines.sort()
        return [line for _, _, line in lines], sorted((s.tweet_id, s.author.user_id, ms) for s, ms in deleted if ms < t1 * 1000)

    # ---- stage 6: taps ----------------------------------------------------------------

    def tap_reports(self) -> list:
        """Both phones' reports of every touch inside the window, as TapReports."""
        reports = []
        for (when, ini, res, lat, lng, rand10, id1, id2, d1, d2, d3, d4) in sorted(self.touches, key=lambda t: t[0]):
            if not self.t0 <= when < self.t1:
                continue
            # The nonce carries the initiating phone's clock; both phones sign the same claim.
            nonce = proofs.make_nonce(when + ini.skew_s, rand10)
            sig_ini = proofs.sign_claim(ini.key, ini.user_id, res.user_id, nonce)
            sig_res = proofs.sign_claim(res.key, ini.user_id, res.user_id, nonce)
            ts_ini = proofs.nonce_time(nonce) + d1 * 0.05
            ts_res = when + res.skew_s + d2 * NFC_LATENCY_S
            lat_i, lng_i = self._near(lat, lng, d3, 2.0)
            lat_r, lng_r = self._near(lat, lng, d4, 2.0)
            # Position accuracy in whole metres (3..27), from bits of draws already made so the
            # rest of the world is unchanged; each phone signs its whole report (schemas.proofs).
            acc_i, acc_r = 3 + int(d3 * 1e6) % 25, 3 + int(d4 * 1e6) % 25
            for r, key in ((TapReport(str(uuid.UUID(int=id1, version=4)), ini.user_id, res.user_id, nonce,
                                      round(ts_ini, 3), lat_i, lng_i, sig_ini, sig_res, acc_i), ini.key),
                           (TapReport(str(uuid.UUID(int=id2, version=4)), res.user_id, ini.user_id, nonce,
                                      round(ts_res, 3), lat_r, lng_r, sig_res, sig_ini, acc_r), res.key)):
                reports.append(r._replace(report_sig=proofs.sign_report_of(key, r)))
        return reports

    @staticmethod
    def _near(lat: float, lng: float, u: float, metres: float) -> tuple:
        """A point ``metres`` from (lat, lng) in direction u (a uniform draw), inside the area."""
        angle = u * 2.0 * math.pi
        plat, plng = geo.offset(lat, lng, metres * math.cos(angle), metres * math.sin(angle))
        if not contains(plat, plng):
            plat, plng = lat, lng
        return round(plat, 7), round(plng, 7)

    # ---- all of it --------------------------------------------------------------------

    def build(self) -> None:
        self.build_people()
        self._accounts = {p.user_id: p for p in self.people + self.public}
        self.build_friends()
        self.build_venues()
        self.build_happenings()
        self.build_meetups()
        self.build_timelines()


_DUMPS = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _tap_line(r: TapReport) -> str:
    """A report as the phone files it (an attack may lack the project's own fields: then they are left out)."""
    extra = ""
    if r.accuracy_m is not None:
        extra += f',"accuracy_m":{r.accuracy_m}'
    if r.report_sig is not None:
        extra += f',"report_sig":"{r.report_sig}"'
    return (f'{{"tap_id":"{r.tap_id}","user_id":"{r.user_id}","peer_user_id":"{r.peer_user_id}",'
            f'"nonce":"{r.nonce}","ts":"{clock.rfc3339(r.ts)}","lat":{r.lat!r},"lng":{r.lng!r},'
            f'"proof":"{r.proof}","peer_proof":"{r.peer_proof}"{extra}}}')


def true_follows(reports: list) -> list:
    """One Follow per pair that touched: the pair's first touch (by nonce time)."""
    by_nonce: dict[str, list] = {}
    for r in reports:
        by_nonce.setdefault(r.nonce, []).append(r)
    first: dict[tuple, object] = {}
    for nonce in sorted(by_nonce, key=lambda n: (proofs.nonce_time(n), n)):
        pair = by_nonce[nonce]
        follow = follow_for_touch(pair[0], pair[1])
        first.setdefault((follow.user_a, follow.user_b), follow)
    return sorted(first.values(), key=lambda f: (f.user_a, f.user_b, f.nonce))


# Public configuration of the world, beside its input files (not truth): the period it
# covers, from which pipelines.run takes the DP release schedule (see pipelines.dp_schedule).
WORLD_MANIFEST = "world.json"


def write_world_manifest(out_dir: str, start_s: float, end_s: float) -> None:
    """``out_dir/world.json``: the world's period [start, end), from its parameters alone."""
    from schemas.timefmt import format_rfc3339
    period = {"generator": "synthetic.world",
              "period": {"start": format_rfc3339(math.floor(start_s * 1000) / 1000),
                         "end": format_rfc3339(math.ceil(end_s * 1000) / 1000)}}
    with open(os.path.join(out_dir, WORLD_MANIFEST), "w", encoding="utf-8", newline="\n") as fh:
        fh.write(json.dumps(period, indent=2, sort_keys=True) + "\n")


def write_world(out_dir: str, users: int = DEFAULT_USERS, hours: float = DEFAULT_HOURS,
                seed: int = DEFAULT_SEED, start: str | float = DEFAULT_START,
                progress: Optional[Callable[[str], None]] = None, adversarial: bool = False,
                compress: bool = False, firehose: Optional[Callable[[list], None]] = None) -> dict:
    """Generate a world into ``out_dir``; returns line counts per file (paths relative to out_dir).

    ``adversarial`` adds hostile tap reports and unparseable lines on top of the
    clean world (``synthetic.adversary``), labelled in ``truth/tap_attacks.jsonl``
    and ``truth/invalid_lines.jsonl``. Raises ValueError for bad parameters and
    OSError when out_dir cannot be written, before any generation work.
    ``compress`` writes the four input files as ``NAME.jsonl.gz`` (deterministic
    gzip: no name or time in the header); truth files stay plain.
    ``firehose``, when given, receives the firehose lines (exactly those
    ``tweets.jsonl`` would hold) instead of that file, once everything else,
    truth included, is written: the generator's live mode (``synthetic.live``).
    """
    start_s = check_params(users, hours, seed, start)
    prepare_output_dir(out_dir)
    progress = progress or (lambda message: None)

    world = World(users, float(hours), seed, start_s, progress)
    world.build()
    counts: dict[str, int] = {}

    def write(name: str, lines) -> None:
        lines = lines if isinstance(lines, list) else list(lines)
        path = os.path.join(out_dir, name)
        with open(path, "wb", buffering=1 << 20) as raw:
            # mtime=0 and no file name in the header keep gzip output byte-identical run to run.
            sink = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) \
                if name.endswith(".gz") else raw
            for i in range(0, len(lines), 1 << 16):
                sink.write(("\n".join(lines[i:i + (1 << 16)]) + "\n").encode("utf-8"))
            if sink is not raw:
                sink.close()
        counts[name] = len(lines)

    # The hostile additions draw from their own stream, after the clean world is built.
    hostile = world.rng("adversary") if adversarial else None
    invalid_labels: list = []

    def write_input(source: str, lines: list, live: bool = False) -> list:
        if hostile is not None:
            lines, labels = adversary.malformed_lines(
                hostile, source, lines, max(len(adversary.MALFORMED[source]), len(lines) // 2000))
            invalid_labels.extend({"file": f"{source}.jsonl", **label} for label in labels)
        name = f"{source}.jsonl"
        # A reader takes NAME.jsonl and NAME.jsonl.gz alike: never leave the other variant behind
        # (nor either one when the lines go live instead).
        for stale in ((name, name + ".gz") if live else (name if compress else name + ".gz",)):
            if os.path.exists(os.path.join(out_dir, stale)):
                os.remove(os.path.join(out_dir, stale))
        if not live:
            write(name + ".gz" if compress else name, lines)
        return lines

    write_input("users", [_DUMPS({"user_id": p.user_id, "pubkey": p.pubkey, "alerts_opt_in": p.alerts_opt_in,
                                  "stats_opt_out": p.stats_opt_out, **({"age_band": p.age_band} if p.age_band else {})})
                          for p in world.people])
    pings = world.ping_lines()
    progress(f"pings: {len(pings)}")
    write_input("pings", pings)
    del pings
    progress("pings: written")

    reports = world.tap_reports()
    attacks, attack_labels = [], []
    if hostile is not None:
        attacks, attack_labels = adversary.tap_attacks(
            hostile, world.people, [p.user_id for p in world.public], reports, world.t0, world.t1,
            rounds=max(1, len(reports) // 100))
    taps = sorted(reports + attacks, key=lambda r: (r.ts, r.tap_id))
    write_input("taps", [_tap_line(r) for r in taps])
    progress(f"taps: {len(taps)}")

    tweets, deleted = world.build_tweets()
    progress(f"tweets: {len(tweets)}")
    live_lines = write_input("tweets", tweets, live=firehose is not None)
    del tweets
    if firehose is None:
        live_lines = None
        progress("tweets: written")
    else:
        counts["tweets (live)"] = len(live_lines)

    write("truth/follows.jsonl", (_DUMPS(to_json_dict(f)) for f in true_follows(reports)))
    write("truth/happenings.jsonl", (_DUMPS({
        "happening_id": h.happening_id, "kind": h.kind, "venue": h.venue.name, "venue_en": h.venue.name_en,
        "area": h.venue.area, "lat": round(h.venue.lat, 6), "lng": round(h.venue.lng, 6),
        "start": clock.rfc3339(h.start), "end": clock.rfc3339(h.end), "hashtag": h.hashtag,
        "radius_m": h.radius_m, "event_tweet_ids": [str(i) for i in sorted(h.event_tweet_ids)],
        "attendees": len(h.attendees)}) for h in world.happenings))
    write("truth/attendance.jsonl", (_DUMPS({
        "user_id": p.user_id, "happening_id": h.happening_id,
        "arrive": clock.rfc3339(max(arrive, world.t0)), "leave": clock.rfc3339(min(leave, world.t1))})
        for h in world.happenings for (p, arrive, leave, _lat, _lng, _core) in
        sorted(h.attendees, key=lambda a: (a[1], a[0].user_id))))
    write("truth/deleted.jsonl", (_DUMPS({"tweet_id": str(tid), "author_id": uid, "deleted_at": clock.rfc3339_ms(ms)})
                                  for tid, uid, ms in deleted))
    write("truth/withdrawn.jsonl", (_DUMPS({"tweet_id": str(w.tweet_id), "author_id": w.author_id, "kind": w.kind,
                                            "at": clock.rfc3339_ms(w.millis)}) for w in world.withdrawn))
    hostile_truth = ("truth/tap_attacks.jsonl", "truth/invalid_lines.jsonl")
    if adversarial:
        write(hostile_truth[0], (_DUMPS(label) for label in attack_labels))
        write(hostile_truth[1], (_DUMPS(label) for label in invalid_labels))
    else:
        for name in hostile_truth:  # never leave an earlier run's labels beside a clean world
            if os.path.exists(os.path.join(out_dir, name)):
                os.remove(os.path.join(out_dir, name))
    manifest = {
        "generator": "synthetic.world",
        "seed": seed,
        "params": {"users": users, "hours": hours, "seed": seed, "start": clock.rfc3339(start_s),
                   **({"adversarial": True} if adversarial else {}), **({"compress": True} if compress else {})},
        "counts": dict(sorted(counts.items())),
    }
    with open(os.path.join(out_dir, "truth", "manifest.json"), "w", encoding="utf-8", newline="\n") as fh:
        fh.write(json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True) + "\n")
    write_world_manifest(out_dir, world.t0, world.t1)
    if live_lines is not None:
        firehose(live_lines)
    return counts
