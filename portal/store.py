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
import pyarrow as pa

from core.alerts import AlertParams, is_retraction
from core.dp_accounting import spend_per_day
from core.locations import current_location, report_from_ping
from schemas.errors import InvalidRecord
from schemas.parse import as_bool, as_str, as_user_id, decode_json_object, parse_line, req
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


# kind -> (table, key column of retractions, table of retracted keys, how a row is written)
TABLES = {"users": ("users", "user_id", None, "INSERT OR REPLACE"),       # the latest record of a user wins
          "pings": ("pings", None, None, "INSERT"),
          "follows": ("follows", None, None, "INSERT OR IGNORE"),           # the first copy of a follow
          "alerts": ("alerts", "alert_id", "alerts_retracted", "INSERT OR REPLACE"),
          "timeline": ("timeline", "tweet_id", "tweets_retracted", "INSERT OR REPLACE")}


def valid_cell(value) -> str:
    cell = str(value)
    if not h3.is_valid_cell(cell):
        raise ValueError(f"h3_cell {cell!r} is not an H3 cell")
    return cell


def utf8_only(op) -> None:
    """UnicodeEncodeError (a ValueError) if a key or column of a parsed line is no UTF-8 text: a
    JSON escape of a lone surrogate (``"\\ud800"``) parses, but fails the whole batch's write."""
    _verb, key, row = op
    for value in (*(key if isinstance(key, tuple) else (key,)), *(row if isinstance(row, tuple) else ())):
        if isinstance(value, str):
            value.encode("utf-8")


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
        """Apply JSON lines of one kind (follows|alerts|timeline|ledger|users|pings), in order, as one
        transaction of bulk writes (DuckDB is columnar: one row at a time would take minutes at 10k
        users); returns the rows applied."""
        parse = getattr(self, f"_parse_{kind}")
        puts: dict = {}          # key -> row: the last copy of a key wins
        retracts: set = set()
        applied = 0
        for n, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                op = parse(line)
                if op is not None:
                    utf8_only(op)
            except (InvalidRecord, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
                self._reject(kind, str(exc), line)
                continue
            if op is None:
                continue
            applied += 1
            verb, key, row = op
            if verb == "retract":
                retracts.add(key)
                puts.pop(key, None)
            elif key not in retracts:
                puts[key if key is not None else n] = row
        if kind == "ledger":
            self.ledger_rows.extend(puts.values())
        elif puts or retracts:
            self._write_batch(kind, list(puts.values()), retracts)
        self.loaded[kind] = self.loaded.get(kind, 0) + applied
        return applied

    def _write_batch(self, kind: str, rows: list[tuple], retracts: set) -> None:
        table, key, gone, verb = TABLES[kind]
        with self._write:
            cur = self.cursor()
            try:
                cur.execute("BEGIN")
                if retracts:
                    cur.register("gone_batch", pa.table({key: pa.array(sorted(retracts), pa.string())}))
                    cur.execute(f"INSERT OR IGNORE INTO {gone} SELECT {key} FROM gone_batch")
                    cur.execute(f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM gone_batch)")
                    cur.unregister("gone_batch")
                if rows:
                    names = [d[0] for d in cur.execute(f"SELECT * FROM {table} LIMIT 0").description]
                    cur.register("put_batch", pa.table(dict(zip(names, map(list, zip(*rows))))))
                    keep = f" WHERE {key} NOT IN (SELECT {key} FROM {gone})" if gone else ""
                    cur.execute(f"{verb} INTO {table} SELECT * FROM put_batch{keep}")
                    cur.unregister("put_batch")
                cur.execute("COMMIT")
            except Exception:
                cur.execute("ROLLBACK")
                raise
            finally:
                cur.close()

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

    # ---- one line of each kind: (verb "put"|"retract", key or None, row) or None ------------
    def _parse_users(self, line: str):
        # The contract's fields with their types; the key itself is checked in full (canonical
        # encoding, curve point, no small order: schemas.proofs.decode_pubkey) only when it signs a
        # sign-in, because that check is pure-Python point arithmetic: minutes at 10k users.
        obj = decode_json_object(line)
        age_band = obj.get("age_band")
        return "put", as_user_id(req(obj, "user_id")), (
            as_user_id(req(obj, "user_id")), as_str(req(obj, "pubkey"), "pubkey", 64),
            as_bool(req(obj, "alerts_opt_in"), "alerts_opt_in"), as_bool(req(obj, "stats_opt_out"), "stats_opt_out"),
            None if age_band is None else as_str(age_band, "age_band", 16))

    def _parse_pings(self, line: str):
        report = report_from_ping(parse_line("pings", line), self.params.max_accuracy_m)
        if report is None:
            return None     # an inaccurate ping places nobody (core.locations), as in the pipeline
        self._seen(report.ts)
        return "put", None, (report.user_id, report.ts, report.lat, report.lng)

    def _parse_follows(self, line: str):
        row = json.loads(line)
        a, b = str(row["user_a"]), str(row["user_b"])
        if not a < b:
            raise ValueError(f"user_a {a!r} is not below user_b {b!r}")
        return "put", (a, b), (a, b, parse_rfc3339(row["established_at"], "established_at"), str(row["nonce"]),
                               valid_cell(row["h3_cell"]))

    def _parse_alerts(self, line: str):
        row = json.loads(line)
        alert = Alert(str(row["alert_id"]), str(row["user_id"]), str(row["tweet_id"]),
                      parse_rfc3339(row["ts"]), float(row["distance_m"]), str(row["reason"]))
        if is_retraction(alert):
            return "retract", alert.alert_id, None
        self._seen(alert.ts)
        return "put", alert.alert_id, tuple(alert)

    def _parse_timeline(self, line: str):
        row = json.loads(line)
        tweet_id = str(row["tweet_id"])
        if row.get("retracted") is True:
            return "retract", tweet_id, None
        if row.get("retracted") not in (False, None):
            raise ValueError(f"retracted {row.get('retracted')!r} is not a bool")
        h3_cell = valid_cell(row["h3_cell"])
        if self.timeline_res is None:
            self.timeline_res = h3.get_resolution(h3_cell)
        ts = parse_rfc3339(row["ts"])
        self._seen(ts)
        happening = row.get("happening")
        return "put", tweet_id, (tweet_id, str(row["author_id"]), ts, str(row["text"]), float(row["lat"]),
                                 float(row["lng"]), h3_cell, None if happening is None else str(happening))

    def _parse_ledger(self, line: str):
        row = json.loads(line)
        if not isinstance(row, dict) or not isinstance(row.get("date"), str):
            raise ValueError("a ledger row needs a 'date'")
        float(row["epsilon"]), float(row["delta"])
        return "put", None, row

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

    def release_stamp(self) -> tuple:
        """Changes whenever a file of the release does (names, sizes, mtimes)."""
        if self.marketing_source is None:
            return ()
        return tuple((p, st.st_size, st.st_mtime_ns) for p in sorted(glob.glob(self.marketing_source, recursive=True))
                     for st in (os.stat(p),))

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
