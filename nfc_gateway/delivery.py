"""Getting a phone's tap report to the gateway: outbox first, then POST with retry.

A report is written to the phone's outbox (one fsynced file per report) before
the first POST, and removed only once the gateway answered for it, so a report
survives the phone losing its network or its process. The gateway dedupes by
``tap_id``, which is derived from the touch, so re-sending is always safe.

Status handling (see ``nfc_gateway/README.md``): 201/200 delivered; 429 and
5xx and connection errors are retried with exponential backoff (honouring
``Retry-After``); any other 4xx is final (the report can never be accepted) and
the report moves to ``outbox/rejected/`` with the gateway's reason.
"""
from __future__ import annotations

import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from nfc_gateway.spool import fsync_dir

log = logging.getLogger(__name__)

RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class DeliveryResult:
    tap_id: str
    delivered: bool
    status: Optional[int]       # last HTTP status, None if the gateway was never reached
    attempts: int
    detail: str


class Outbox:
    """Reports waiting for the gateway's answer, one JSON file per tap_id."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        (self.dir / "rejected").mkdir(parents=True, exist_ok=True)

    def _path(self, tap_id: str) -> Path:
        # tap ids are "<hex nonce>-<digits>"; anything else is refused rather than escaped
        if not tap_id.replace("-", "").isalnum():
            raise ValueError(f"tap_id {tap_id!r} is not safe as a file name")
        return self.dir / f"{tap_id}.json"

    def put(self, report: dict):
        path = self._path(report["tap_id"])
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(report, handle, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(self.dir)

    def done(self, tap_id: str):
        self._path(tap_id).unlink(missing_ok=True)

    def reject(self, tap_id: str, reason: str):
        path = self._path(tap_id)
        if path.exists():
            report = json.loads(path.read_text(encoding="utf-8"))
            target = self.dir / "rejected" / path.name
            target.write_text(json.dumps({"report": report, "reason": reason}), encoding="utf-8")
            path.unlink()

    def pending(self) -> list[dict]:
        out = []
        for path in sorted(self.dir.glob("*.json")):
            try:
                out.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, json.JSONDecodeError) as exc:
                log.error("outbox file %s unreadable (%s); moving it aside", path, exc)
                path.rename(path.with_suffix(".corrupt"))
        return out


class GatewayClient:
    """POST /v1/taps with bounded exponential backoff."""

    def __init__(self, base_url: str, deadline_s: float = 30.0, first_backoff_s: float = 0.2,
                 max_backoff_s: float = 5.0, timeout_s: float = 5.0):
        self.url = base_url.rstrip("/") + "/v1/taps"
        self.deadline_s = deadline_s
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s

    def post_once(self, report: dict) -> tuple[Optional[int], str, Optional[float]]:
        body = json.dumps(report, separators=(",", ":")).encode("utf-8")
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.status, response.read().decode("utf-8", "replace"), None
        except urllib.error.HTTPError as exc:
            retry_after = exc.headers.get("Retry-After") if exc.headers else None
            text = exc.read().decode("utf-8", "replace")
            try:
                retry_after = float(retry_after) if retry_after is not None else None
            except ValueError:
                retry_after = None
            return exc.code, text, retry_after
        except (urllib.error.URLError, OSError) as exc:
            return None, f"gateway unreachable: {getattr(exc, 'reason', exc)}", None

    def deliver(self, report: dict) -> DeliveryResult:
        started = time.monotonic()
        backoff = self.first_backoff_s
        attempts = 0
        while True:
            attempts += 1
            status, text, retry_after = self.post_once(report)
            if status in (200, 201):
                return DeliveryResult(report["tap_id"], True, status, attempts, text)
            if status is not None and status not in RETRYABLE:
                return DeliveryResult(report["tap_id"], False, status, attempts, text)
            wait = retry_after if retry_after is not None else backoff * (0.5 + random.random())
            if time.monotonic() - started + wait > self.deadline_s:
                return DeliveryResult(report["tap_id"], False, status, attempts, f"gave up: {text}")
            log.info("gateway answered %s for %s; retrying in %.2f s", status, report["tap_id"], wait)
            time.sleep(wait)
            backoff = min(backoff * 2, self.max_backoff_s)


def deliver_with_outbox(client: GatewayClient, outbox: Optional[Outbox], report: dict) -> DeliveryResult:
    if outbox is not None:
        outbox.put(report)
    result = client.deliver(report)
    if outbox is not None:
        if result.delivered:
            outbox.done(result.tap_id)
        elif result.status is not None and result.status not in RETRYABLE:
            outbox.reject(result.tap_id, f"HTTP {result.status}: {result.detail[:500]}")
        # otherwise it stays in the outbox for the next run
    return result
