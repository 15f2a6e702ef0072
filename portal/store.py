"""The portal's embedded store: DuckDB, filled from a run's output folders and kept current
from the Kafka topics (``portal.feed``).

* ``marketing/`` is never copied: DuckDB reads the Parquet release in place
  (``read_parquet``), and only the release's own columns ever reach a marketer page.
* ``follows/``, ``alerts/``, ``timeline/``, ``privacy_ledger/`` (JSON Lines) and the world's
  ``users.jsonl`` and ``pings.jsonl`` are loaded into tables. Alert retractions
  (``core.alerts.is_retraction``) and timeline rows with ``retracted: true`` delete the
  earlier row and are remembered, so a retracted row that arrives again (a replayed topic)
  stays gone. A line that cannot be read is counted per folder with its reason
  (``Store.rejected``), never dropped silently.
* The current location of a subscriber is ``core.locations.current_location`` over the
  accepted pings (``report_from_ping``), at the portal's clock: the latest event time seen
  (``clock="data"``, a replayed world) or the wall clock.

Every read takes its own DuckDB cursor, so concurrent requests (Starlette's threadpool)
never share one.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import threading
import time
from typing import Iterable, Optional

import duckdb
import h3

from core.alerts import AlertParams, is_retraction
from core.dp_accounting import spend_per_day
from core.locations import current_location, report_from_ping
from schemas.errors import InvalidRecord
from schemas.parse import parse_line
from schemas.records import Alert, User
from schemas.timefmt import parse_rfc3339

log = logging.getLogger("portal.store")

SCHEMA = """
CREATE TABLE users (user_id VARCHAR PRIMARY KEY, pubkey VARCHAR, alerts_opt_in BOOLEAN, stats_opt_out BOOLEAN,
                    age_band VARCHAR);
CREATE TABLE pings (user_id VARCHAR, ts DOUBLE, lat DOUBLE, lng DOUBLE);
CREATE INDEX pings_user ON pings(user_id);
CREATE TABLE timeline (tweet_id VARCHAR PRIMARY KEY, author_id VARCHAR, ts DOUBLE, text VARCHAR,
                       lat DOUBLE, lng DOUBLE, h3_cell VARCHAR, happening VARCHAR);
CREATE INDEX timeline_cell ON timeline(h3_cell);
CREATE TABLE tweets_retracted (tweet_id VARCHAR PRIMARY KEY);
CREATE TABLE alerts (alert_id VARCHAR PRIMARY KEY, user_id VARCHAR, tweet_id VARCHAR, ts DOUBLE,
                     distance_m DOUBLE, reason VARCHAR);
CREATE INDEX alerts_user ON alerts(user_id);
CREATE TABLE alerts_retracted (alert_id VARCHAR PRIMARY KEY);
CREATE TABLE follows (user_a VARCHAR, user_b VARCHAR, established_at DOUBLE, nonce VARCHAR, h3_cell VARCHAR,
                      PRIMARY KEY (user_a, user_b));
"""

# The Parquet release's columns a marketer may see (schemas.records.Statistic): nothing else.
STAT_COLUMNS = ("window_start", "window_end", "h3_cell", "h3_res", "metric", "value", "mechanism",
                "noise_scale", "ci95_halfwidth", "epsilon", "delta")


def jsonl_files(folder: str) -> list[str]:
    return sorted(glob.glob(os.path.join(folder, "**", "*.jsonl"), recursive=True))


class Store:
    def __init__(self, alert_params: AlertParams = AlertParams(), clock: str = "data", db_path: str = ":memory:"):
        if clock not in ("data", "wall"):
            raise ValueError(f"clock {clock!r}: expected 'data' or 'wall'")
        self.db = duckdb.connect(db_path)
        self.db.execute("SET threads TO 2")
        self.db.execute(SCHEMA)
        self.params, self.clock = alert_params, clock
        self.rejected: dict[str, int] = {}
        self.loaded: dict[str, int] = {}
        self.latest_event_ts = 0.0
        self.marketing_source: Optional[str] = None
        self.budget_epsilon: Optional[float] = None
        self.timeline_res: Optional[int] = None
        self.ledger_rows: list[dict] = []
        self._write = threading.Lock()

    # ---- reading -------------------------------------------------------------------
    def cursor(self):
        return self.db.cursor()

    def now(self) -> float:
        return self.latest_event_ts if self.clock == "data" else time.time()

    def query(self, sql: str, params: Iterable = ()) -> list[tuple]:
        cur = self.cursor()
        try:
            return cur.execute(sql, list(params)).fetchall()
        finally:
            cur.close()

    # ---- loading -------------------------------------------------------------------
    def _reject(self, folder: str, reason: str, line: str) -> None:
        self.rejected[folder] = self.rejected.get(folder, 0) + 1
        log.warning("%s: refused line (%s): %.200s", folder, reason, line)

    def _seen(self, ts: float) -> None:
        if ts > self.latest_event_ts:
            self.latest_event_ts = ts

    def load_lines(self, kind: str, lines: Iterable[str]) -> int:
        """Apply JSON lines of one kind (follows|alerts|timeline|ledger|users|pings); returns rows applied."""
        apply = getattr(self, f"_apply_{kind}")
        applied = 0
        with self._write:
            cur = self.cursor()
            try:
                cur.execute("BEGIN")
                for line in lines:
                    if not line.strip():
                        continue
                    try:
                        applied += apply(cur, line)
                    except (InvalidRecord, ValueError, KeyError, TypeError) as exc:
                        self._reject(kind, str(exc), line)
                cur.execute("COMMIT")
            finally:
                cur.close()
        self.loaded[kind] = self.loaded.get(kind, 0) + applied
        return applied

    def load_folder(self, kind: str, folder: str) -> int:
        total = 0
        for path in jsonl_files(folder):
            with open(path, encoding="utf-8", errors="replace") as handle:
                total += self.load_lines(kind, handle)
        return total

    def load_run(self, out_dir: str, world_dir: Optional[str]) -> None:
        """Fill the store from a run's output folder (and its world's users/pings)."""
        if world_dir:
            for kind in ("users", "pings"):
                for path in (os.path.join(world_dir, f"{kind}.jsonl"), os.path.join(world_dir, f"{kind}.jsonl.gz")):
                    if os.path.exists(path):
                        import gzip
                        opener = gzip.open if path.endswith(".gz") else open
                        with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
                            self.load_lines(kind, handle)
        for kind, folder in (("follows", "follows"), ("alerts", "alerts"), ("timeline", "timeline"),
                             ("ledger", "privacy_ledger")):
            self.load_folder(kind, os.path.join(out_dir, folder))
        summary = os.path.join(out_dir, "run_summary.json")
        if os.path.exists(summary):
            with open(summary, encoding="utf-8") as handle:
                privacy = json.load(handle).get("privacy") or {}
            self.budget_epsilon = privacy.get("budget_epsilon_per_user_day")
        if glob.glob(os.path.join(out_dir, "marketing", "**", "*.parquet"), recursive=True):
            self.marketing_source = os.path.join(out_dir, "marketing", "**", "*.parquet")

    # ---- one line of each kind ----------------------------------------------------------
    def _apply_users(self, cur, line: str) -> int:
        user = parse_line("users", line)
        cur.execute("INSERT OR REPLACE INTO users VALUES (?, ?, ?, ?, ?)",
                    [user.user_id, user.pubkey, user.alerts_opt_in, user.stats_opt_out, user.age_band])
        return 1

    def _apply_pings(self, cur, line: str) -> int:
        report = report_from_ping(parse_line("pings", line), self.params.max_accuracy_m)
        if report is None:
            return 0        # an inaccurate ping places nobody (core.locations), as in the pipeline
        cur.execute("INSERT INTO pings VALUES (?, ?, ?, ?)", [report.user_id, report.ts, report.lat, report.lng])
        self._seen(report.ts)
        return 1

    def _apply_follows(self, cur, line: str) -> int:
        row = json.loads(line)
        a, b = str(row["user_a"]), str(row["user_b"])
        if not a < b:
            raise ValueError(f"user_a {a!r} is not below user_b {b!r}")
        h3_cell = str(row["h3_cell"])
        if not h3.is_valid_cell(h3_cell):
            raise ValueError(f"h3_cell {h3_cell!r} is not an H3 cell")
        cur.execute("INSERT OR IGNORE INTO follows VALUES (?, ?, ?, ?, ?)",
                    [a, b, parse_rfc3339(row["established_at"], "established_at"), str(row["nonce"]), h3_cell])
        return 1

    def _apply_alerts(self, cur, line: str) -> int:
        row = json.loads(line)
        alert = Alert(str(row["alert_id"]), str(row["user_id"]), str(row["tweet_id"]),
                      parse_rfc3339(row["ts"]), float(row["distance_m"]), str(row["reason"]))
        if is_retraction(alert):
            cur.execute("INSERT OR IGNORE INTO alerts_retracted VALUES (?)", [alert.alert_id])
            cur.execute("DELETE FROM alerts WHERE alert_id = ?", [alert.alert_id])
            return 1
        if cur.execute("SELECT 1 FROM alerts_retracted WHERE alert_id = ?", [alert.alert_id]).fetchone():
            return 0
        cur.execute("INSERT OR REPLACE INTO alerts VALUES (?, ?, ?, ?, ?, ?)", list(alert))
        self._seen(alert.ts)
        return 1

    def _apply_timeline(self, cur, line: str) -> int:
        row = json.loads(line)
        tweet_id = str(row["tweet_id"])
        if row.get("retracted") is True:
            cur.execute("INSERT OR IGNORE INTO tweets_retracted VALUES (?)", [tweet_id])
            cur.execute("DELETE FROM timeline WHERE tweet_id = ?", [tweet_id])
            return 1
        if row.get("retracted") not in (False, None):
            raise ValueError(f"retracted {row.get('retracted')!r} is not a bool")
        if cur.execute("SELECT 1 FROM tweets_retracted WHERE tweet_id = ?", [tweet_id]).fetchone():
            return 0
        h3_cell = str(row["h3_cell"])
        if not h3.is_valid_cell(h3_cell):
            raise ValueError(f"h3_cell {h3_cell!r} is not an H3 cell")
        if self.timeline_res is None:
            self.timeline_res = h3.get_resolution(h3_cell)
        ts = parse_rfc3339(row["ts"])
        happening = row.get("happening")
        cur.execute("INSERT OR REPLACE INTO timeline VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [tweet_id, str(row["author_id"]), ts, str(row["text"]), float(row["lat"]), float(row["lng"]),
                     h3_cell, None if happening is None else str(happening)])
        self._seen(ts)
        return 1

    def _apply_ledger(self, cur, line: str) -> int:
        row = json.loads(line)
        if not isinstance(row, dict) or not isinstance(row.get("date"), str):
            raise ValueError("a ledger row needs a 'date'")
        float(row["epsilon"]), float(row["delta"])
        self.ledger_rows.append(row)
        return 1

    # ---- settings ------------------------------------------------------------------------
    def set_user_settings(self, user_id: str, alerts_opt_in: bool, stats_opt_out: bool) -> None:
        with self._write:
            cur = self.cursor()
            try:
                cur.execute("UPDATE users SET alerts_opt_in = ?, stats_opt_out = ? WHERE user_id = ?",
                            [alerts_opt_in, stats_opt_out, user_id])
            finally:
                cur.close()

    # ---- subscriber queries ----------------------------------------------------------------
    def user(self, user_id: str) -> Optional[User]:
        rows = self.query("SELECT user_id, pubkey, alerts_opt_in, stats_opt_out, age_band FROM users "
                          "WHERE user_id = ?", [user_id])
        return User(*rows[0]) if rows else None

    def pubkey_of(self, user_id: str) -> Optional[str]:
        """The user's registered key (None: unknown user, or no usable key after a merge)."""
        rows = self.query("SELECT pubkey FROM users WHERE user_id = ? AND pubkey <> ''", [user_id])
        return rows[0][0] if rows else None

    def location(self, user_id: str, at: Optional[float] = None):
        """The user's current location (core.locations) or None."""
        at = self.now() if at is None else at
        from core.locations import LocationReport
        rows = self.query("SELECT ts, lat, lng FROM pings WHERE user_id = ? AND ts <= ? AND ts >= ?",
                          [user_id, at, at - self.params.location_stale_s])
        reports = (LocationReport(user_id, ts, lat, lng, "ping") for ts, lat, lng in rows)
        return current_location(reports, at, self.params.location_stale_s)

    def near(self, lat: float, lng: float, since: float, until: float, keyword: str = "", limit: int = 20):
        """Live timeline rows in the location's cell and its neighbours, newest first."""
        if self.timeline_res is None:
            return []
        cells = sorted(h3.grid_disk(h3.latlng_to_cell(lat, lng, self.timeline_res), 1))
        sql = (f"SELECT tweet_id, ts, text, h3_cell, happening FROM timeline WHERE h3_cell IN "
               f"({', '.join('?' * len(cells))}) AND ts >= ? AND ts <= ?")
        params: list = [*cells, since, until]
        if keyword:
            sql += " AND contains(lower(text), lower(?))"
            params.append(keyword)
        return self.query(sql + " ORDER BY ts DESC, tweet_id DESC LIMIT ?", [*params, limit])

    def alerts_of(self, user_id: str, limit: int = 30):
        return self.query(
            "SELECT a.alert_id, a.tweet_id, a.ts, a.distance_m, a.reason, t.text FROM alerts a "
            "LEFT JOIN timeline t ON t.tweet_id = a.tweet_id WHERE a.user_id = ? "
            "ORDER BY a.ts DESC, a.alert_id LIMIT ?", [user_id, limit])

    def friends_of(self, user_id: str, limit: int = 50):
        return self.query(
            "SELECT CASE WHEN user_a = ? THEN user_b ELSE user_a END, h3_cell, established_at FROM follows "
            "WHERE user_a = ? OR user_b = ? ORDER BY established_at DESC LIMIT ?",
            [user_id, user_id, user_id, limit])

    # ---- marketer queries (the release only) ------------------------------------------------
    def _release(self) -> str:
        if self.marketing_source is None:
            raise LookupError("no marketing/ release loaded")
        return f"read_parquet({self.marketing_source!r}, union_by_name = true)"

    def metrics(self) -> list[str]:
        if self.marketing_source is None:
            return []
        return [m for (m,) in self.query(f"SELECT DISTINCT metric FROM {self._release()} ORDER BY 1")]

    def windows(self, metric: str) -> list[float]:
        if self.marketing_source is None:
            return []
        return [w for (w,) in self.query(
            f"SELECT DISTINCT epoch(window_start) FROM {self._release()} WHERE metric = ? ORDER BY 1", [metric])]

    def release_rows(self, metric: str, window_start: Optional[float] = None, h3_cell: Optional[str] = None):
        """Released statistics (STAT_COLUMNS, times as epoch seconds) for a metric and one window or one cell."""
        if self.marketing_source is None:
            return []
        cols = ", ".join(f"epoch({c})" if c in ("window_start", "window_end") else c for c in STAT_COLUMNS)
        sql = f"SELECT {cols} FROM {self._release()} WHERE metric = ?"
        params: list = [metric]
        if window_start is not None:
            sql += " AND abs(epoch(window_start) - ?) < 0.5"
            params.append(window_start)
        if h3_cell is not None:
            sql += " AND h3_cell = ?"
            params.append(h3_cell)
        return self.query(sql + " ORDER BY window_start, h3_cell", params)

    def ledger_by_day(self) -> list[tuple[str, float, int]]:
        """(day, epsilon spent by one user that day, releases) as the DP step composes it
        (``core.dp_accounting.spend_per_day``)."""
        spends = spend_per_day(self.ledger_rows)
        return [(day, spends[day].epsilon, spends[day].releases) for day in sorted(spends)]
