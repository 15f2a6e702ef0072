"""The portal's ASGI application (Starlette): subscribers' light pages and the marketers' view.

Subscriber pages (``/u/{user_id}/…``) are server-rendered, carry no script (the CSP forbids
any), and stay under ``PAGE_BUDGET_BYTES`` of HTML: a page lists at most ``PAGE_ROWS`` rows.
A page is served only to the signed-in subscriber it names (403 otherwise; 401 without a
valid session). Marketer pages (``/m/…``) read only the Parquet release. ``/metrics`` is the
Prometheus text exposition of requests and latency per route.
"""
from __future__ import annotations

import csv
import functools
import io
import logging
import os
import time
from datetime import datetime, timedelta, timezone
from typing import Optional
from urllib.parse import urlencode

import jinja2
import pyarrow as pa
import pyarrow.parquet as pq
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from portal import charts
from portal.auth import PRESESSION_COOKIE, SESSION_COOKIE, Authority, Principal, new_presession
from portal.i18n import MESSAGES, pick_lang
from portal.registry import RegistryWriter
from portal.store import STAT_COLUMNS, Store
from schemas.records import User

log = logging.getLogger("portal")

PAGE_BUDGET_BYTES = 20 * 1024
PAGE_ROWS = 20
RECENT_S = 3 * 3600.0       # "recent" tweets of the area: the last three hours
MAX_QUERY_CHARS = 50
JST = timezone(timedelta(hours=9))
CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")

_env = jinja2.Environment(loader=jinja2.PackageLoader("portal", "templates"), autoescape=True,
                          trim_blocks=True, lstrip_blocks=True)
_env.filters["jst"] = lambda ts: datetime.fromtimestamp(ts, JST).strftime("%m/%d %H:%M")
_env.filters["jst_full"] = lambda ts: datetime.fromtimestamp(ts, JST).strftime("%Y-%m-%d %H:%M JST")


class Row(dict):
    __getattr__ = dict.get


class Portal:
    """Routes over one store; ``secure_cookies`` when served over https (behind TLS)."""

    def __init__(self, store: Store, authority: Authority, registry: RegistryWriter, secure_cookies: bool = False):
        self.store, self.auth, self.registry, self.secure = store, authority, registry, secure_cookies
        self.metrics = CollectorRegistry()
        self.requests = Counter("portal_requests_total", "HTTP requests", ("route", "method", "status"),
                                registry=self.metrics)
        self.latency = Histogram("portal_request_seconds", "request latency", ("route",), registry=self.metrics,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.refusals = Counter("portal_auth_refusals_total", "refused sign-ins and accesses", ("reason",),
                                registry=self.metrics)
        self.settings_written = Counter("portal_settings_changes_total", "registry changes written",
                                        registry=self.metrics)
        routes = [
            Route("/", self.home), Route("/signin", self.signin_page),
            Route("/auth/challenge", self.challenge), Route("/auth/signin", self.signin_link),
            Route("/auth/signin", self.signin_post, methods=["POST"]),
            Route("/auth/signout", self.signout, methods=["POST"]),
            Route("/u/{user_id}/near", self.near), Route("/u/{user_id}/alerts", self.alerts),
            Route("/u/{user_id}/friends", self.friends), Route("/u/{user_id}/settings", self.settings),
            Route("/u/{user_id}/settings", self.settings_post, methods=["POST"]),
            Route("/m/map", self.m_map), Route("/m/cell", self.m_cell), Route("/m/ledger", self.m_ledger),
            Route("/m/about", self.m_about), Route("/m/download.csv", self.m_download),
            Route("/m/download.parquet", self.m_download),
            Route("/metrics", self.metrics_page), Route("/healthz", self.healthz),
        ]
        self.app = Starlette(routes=routes)
        self.routes = routes

    # ---- ASGI entry: metrics and security headers around every request ------------------------
    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = next((r.path for r in self.routes if r.matches(scope)[0].name == "FULL"), "other")
        started, status = time.perf_counter(), [500]

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = list(message.get("headers", []))
                headers += [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY")]
                if not any(k == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            self.requests.labels(route, scope["method"], str(status[0])).inc()
            self.latency.labels(route).observe(time.perf_counter() - started)

    # ---- rendering --------------------------------------------------------------------------
    def render(self, request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
        lang = pick_lang(request.query_params.get("lang"), request.cookies.get("lang"))

        def url(path: str) -> str:
            if lang == "ja":
                return path
            return path + ("&" if "?" in path else "?") + urlencode({"lang": lang})
        other = "en" if lang == "ja" else "ja"
        html = _env.get_template(template).render(
            lang=lang, t=MESSAGES[lang], url=url, path=request.url.path,
            lang_switch=request.url.path + "?" + urlencode({"lang": other}), **context)
        return HTMLResponse(html, status_code=status)

    def refuse(self, request: Request, reason: str, status: int) -> HTMLResponse:
        self.refusals.labels(reason).inc()
        lang = pick_lang(request.query_params.get("lang"), request.cookies.get("lang"))
        title = MESSAGES[lang]["forbidden"] if status == 403 else MESSAGES[lang]["signin"]
        return self.render(request, "message.html", status, title=title, message=reason, me=None)

    def principal(self, request: Request) -> Optional[Principal]:
        return self.auth.principal(request.cookies.get(SESSION_COOKIE))

    def subscriber(self, request: Request):
        """(user_id, None) for the signed-in owner of the page; (None, refusal) otherwise."""
        who = self.principal(request)
        if who is None:
            return None, self.refuse(request, "no valid session: sign in again", 401)
        if who.role != "subscriber" or who.account != request.path_params["user_id"]:
            return None, self.refuse(request, "this page belongs to another account", 403)
        return who.account, None

    def marketer(self, request: Request):
        who = self.principal(request)
        if who is None:
            return None, self.refuse(request, "no valid session: sign in again", 401)
        if who.role != "marketer":
            return None, self.refuse(request, "marketers only", 403)
        return who.account, None

    def set_cookie(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="strict", secure=self.secure,
                            path="/")

    # ---- sign-in ----------------------------------------------------------------------------
    async def home(self, request: Request):
        who = self.principal(request)
        if who is None:
            return RedirectResponse("/signin", 303)
        return RedirectResponse("/m/map" if who.role == "marketer" else f"/u/{who.account}/near", 303)

    async def signin_page(self, request: Request):
        return self.render(request, "signin.html", me=None, base=str(request.base_url).rstrip("/"))

    async def challenge(self, request: Request):
        role = request.query_params.get("role", "subscriber")
        account = request.query_params.get("account", "")
        challenge = self.auth.challenge(role, account)
        if challenge is None:
            return JSONResponse({"error": "role must be subscriber or marketer and account well-formed"}, 400)
        return JSONResponse({"challenge": challenge, "expires_in_s": self.auth.challenge_s})

    async def signin_link(self, request: Request):
        """The link the phone prints: a confirmation form, so that a sign-in is a CSRF-protected POST."""
        fields = {k: request.query_params.get(k, "") for k in ("role", "account", "challenge", "sig")}
        pre = request.cookies.get(PRESESSION_COOKIE) or new_presession()
        response = self.render(request, "signin.html", me=None, confirm=Row(fields),
                               csrf=self.auth.csrf_token(pre), base=str(request.base_url).rstrip("/"))
        self.set_cookie(response, PRESESSION_COOKIE, pre, int(self.auth.challenge_s))
        return response

    async def signin_post(self, request: Request):
        form = await request.form()
        if not self.auth.csrf_ok(request.cookies.get(PRESESSION_COOKIE), form.get("csrf")):
            return self.refuse(request, "csrf token missing or wrong", 403)
        role, account = str(form.get("role", "")), str(form.get("account", ""))
        token, reason = await run_in_threadpool(self.auth.sign_in, role, account, str(form.get("challenge", "")),
                                                str(form.get("sig", "")))
        if token is None:
            self.refusals.labels(reason).inc()
            return self.render(request, "signin.html", 401, me=None, error=reason,
                               base=str(request.base_url).rstrip("/"))
        target = "/m/map" if role == "marketer" else f"/u/{account}/near"
        response = RedirectResponse(target, 303)
        self.set_cookie(response, SESSION_COOKIE, token, int(self.auth.session_s))
        response.delete_cookie(PRESESSION_COOKIE, path="/")
        return response

    async def signout(self, request: Request):
        form = await request.form()
        if not self.auth.csrf_ok(request.cookies.get(SESSION_COOKIE), form.get("csrf")):
            return self.refuse(request, "csrf token missing or wrong", 403)
        response = RedirectResponse("/signin", 303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # ---- subscriber pages -------------------------------------------------------------------
    def near(self, request: Request):
        me, refused = self.subscriber(request)
        if refused:
            return refused
        q = request.query_params.get("q", "").strip()[:MAX_QUERY_CHARS]
        now = self.store.now()
        where = self.store.location(me, now)
        tweets, cell = [], None
        if where is not None:
            rows = self.store.near(where.lat, where.lng, now - RECENT_S, now, q, PAGE_ROWS)
            tweets = [Row(zip(("tweet_id", "ts", "text", "h3_cell", "happening"), r)) for r in rows]
            import h3
            cell = h3.latlng_to_cell(where.lat, where.lng, self.store.timeline_res or 8)
        return self.render(request, "near.html", me=me, located=where is not None, tweets=tweets, q=q, cell=cell)

    def alerts(self, request: Request):
        me, refused = self.subscriber(request)
        if refused:
            return refused
        rows = self.store.alerts_of(me, PAGE_ROWS)
        alerts = [Row(zip(("alert_id", "tweet_id", "ts", "distance_m", "reason", "text"), r)) for r in rows]
        return self.render(request, "alerts.html", me=me, alerts=alerts)

    def friends(self, request: Request):
        me, refused = self.subscriber(request)
        if refused:
            return refused
        rows = self.store.friends_of(me, PAGE_ROWS)
        friends = [Row(zip(("user_id", "h3_cell", "established_at"), r)) for r in rows]
        return self.render(request, "friends.html", me=me, friends=friends)

    def settings(self, request: Request):
        me, refused = self.subscriber(request)
        if refused:
            return refused
        return self.render(request, "settings.html", me=me, user=self.store.user(me),
                           csrf=self.auth.csrf_token(request.cookies[SESSION_COOKIE]),
                           saved=request.query_params.get("saved") == "1")

    async def settings_post(self, request: Request):
        me, refused = self.subscriber(request)
        if refused:
            return refused
        form = await request.form()
        if not self.auth.csrf_ok(request.cookies.get(SESSION_COOKIE), form.get("csrf")):
            return self.refuse(request, "csrf token missing or wrong", 403)
        current = await run_in_threadpool(self.store.user, me)
        changed = User(me, current.pubkey, form.get("alerts_opt_in") == "1", form.get("stats_opt_out") == "1",
                       current.age_band)
        try:
            await run_in_threadpool(self.registry.write, changed)
        except (OSError, RuntimeError) as exc:
            log.error("settings of %s not written: %s", me, exc)
            self.refusals.labels("registry_write_failed").inc()
            return self.render(request, "message.html", 503, me=me, title="503", message=str(exc))
        await run_in_threadpool(self.store.set_user_settings, me, changed.alerts_opt_in, changed.stats_opt_out)
        self.settings_written.inc()
        lang = request.query_params.get("lang")
        return RedirectResponse(f"/u/{me}/settings?saved=1" + (f"&lang={lang}" if lang == "en" else ""), 303)

    # ---- marketer pages ----------------------------------------------------------------------
    def _metric_window(self, request: Request):
        metrics = self.store.metrics()
        metric = request.query_params.get("metric")
        if metric not in metrics:
            metric = "footfall" if "footfall" in metrics else (metrics[0] if metrics else None)
        windows = self.store.windows(metric) if metric else []
        try:
            window = float(request.query_params.get("window", "nan"))
        except ValueError:
            window = float("nan")
        if windows and not any(abs(window - w) < 0.5 for w in windows):
            window = windows[-1]
        return metrics, metric, windows, window

    def m_map(self, request: Request):
        who, refused = self.marketer(request)
        if refused:
            return refused
        metrics, metric, windows, window = self._metric_window(request)
        rows = self.store.release_rows(metric, window_start=window) if metric else []
        i_val, i_ci = STAT_COLUMNS.index("value"), STAT_COLUMNS.index("ci95_halfwidth")
        cells = [(r[i_val], r[i_ci]) for r in rows]
        lang = pick_lang(request.query_params.get("lang"), request.cookies.get("lang"))
        svg = self._map_svg(metric, window, lang, self.store.release_stamp()) if metric else ""
        return self.render(request, "m_map.html", metrics=metrics, metric=metric, windows=windows,
                           window=window, svg=svg, n_cells=len(cells),
                           n_zero=sum(charts.spans_zero(v, ci) for v, ci in cells))

    @functools.lru_cache(maxsize=64)
    def _map_svg(self, metric: str, window: float, lang: str, release_stamp) -> str:
        """One map drawn once per (metric, hour, language) of a release (``release_stamp`` changes
        when the Parquet files do): drawing 1,000 cells costs ~50 ms, serving it again nothing."""
        i_cell, i_val, i_ci = (STAT_COLUMNS.index(c) for c in ("h3_cell", "value", "ci95_halfwidth"))
        rows = self.store.release_rows(metric, window_start=window)
        suffix = "" if lang == "ja" else "&lang=en"
        return charts.cell_map([(r[i_cell], r[i_val], r[i_ci]) for r in rows],
                               lambda c: f"/m/cell?metric={metric}&cell={c}{suffix}",
                               lambda c, v, ci: f"{c}: {v:.1f} ± {ci:.1f}")

    def m_cell(self, request: Request):
        who, refused = self.marketer(request)
        if refused:
            return refused
        metrics, metric, _, _ = self._metric_window(request)
        cell = request.query_params.get("cell", "")
        rows = [Row(zip(STAT_COLUMNS, r)) for r in self.store.release_rows(metric, h3_cell=cell)] if metric else []
        svg = charts.time_series([(r.window_start, r.value, r.ci95_halfwidth) for r in rows],
                                 lambda x: datetime.fromtimestamp(x, JST).strftime("%m/%d %H:%M"))
        return self.render(request, "m_cell.html", metric=metric, cell=cell, rows=rows, svg=svg)

    def m_ledger(self, request: Request):
        who, refused = self.marketer(request)
        if refused:
            return refused
        days = self.store.ledger_by_day()
        svg = charts.ledger_bars([(d, e) for d, e, _ in days], self.store.budget_epsilon)
        return self.render(request, "m_ledger.html", days=days, budget=self.store.budget_epsilon, svg=svg)

    def m_about(self, request: Request):
        who, refused = self.marketer(request)
        if refused:
            return refused
        return self.render(request, "m_about.html")

    def m_download(self, request: Request):
        """Exactly the rows the map (metric + window) or the time series (metric + cell) shows."""
        who, refused = self.marketer(request)
        if refused:
            return refused
        metrics, metric, _, window = self._metric_window(request)
        cell = request.query_params.get("cell")
        if metric is None:
            return PlainTextResponse("no release", 404)
        rows = self.store.release_rows(metric, h3_cell=cell) if cell else \
            self.store.release_rows(metric, window_start=window)
        name = f"{metric}-{cell or int(window)}"
        if request.url.path.endswith(".csv"):
            buf = io.StringIO()
            writer = csv.writer(buf)
            writer.writerow(STAT_COLUMNS)
            for r in rows:
                writer.writerow([datetime.fromtimestamp(v, timezone.utc).isoformat() if c.startswith("window")
                                 else v for c, v in zip(STAT_COLUMNS, r)])
            return Response(buf.getvalue(), media_type="text/csv; charset=utf-8",
                            headers={"content-disposition": f'attachment; filename="{name}.csv"'})
        columns = list(zip(*rows)) if rows else [[] for _ in STAT_COLUMNS]
        table = pa.table({c: (pa.array([datetime.fromtimestamp(v, timezone.utc) for v in col],
                                       pa.timestamp("ms", tz="UTC")) if c.startswith("window") else pa.array(col))
                          for c, col in zip(STAT_COLUMNS, columns)})
        sink = io.BytesIO()
        pq.write_table(table, sink)
        return Response(sink.getvalue(), media_type="application/vnd.apache.parquet",
                        headers={"content-disposition": f'attachment; filename="{name}.parquet"'})

    # ---- operations -------------------------------------------------------------------------
    async def metrics_page(self, request: Request):
        return Response(generate_latest(self.metrics), media_type=CONTENT_TYPE_LATEST)

    async def healthz(self, request: Request):
        return JSONResponse({"ok": True, "loaded": self.store.loaded, "rejected": self.store.rejected})
