"""Helpers of the in-process gateway tests: start one, read its counters and spool, wait."""
from __future__ import annotations

import json
import time

from nfc_gateway.service import Gateway, GatewayConfig
from nfc_gateway.spool import read_lines
from nfc_gateway.testing import PUBKEYS, get

DEADLINE_S = 60.0          # generous: CI is a loaded 2-core machine


def wait_for(condition, what: str, deadline_s: float = DEADLINE_S, step: float = 0.02):
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(step)


def start(tmp_path, **overrides) -> Gateway:
    config = dict(port=0, output_dir=str(tmp_path), public_keys=PUBKEYS, device_rate=1000, device_burst=1000)
    config.update(overrides)
    return Gateway(GatewayConfig(**config)).start()


def counters(gw) -> dict:
    return get(gw.port, "/metrics")[1]["counters"]


def stored(gw) -> list[dict]:
    return [json.loads(line) for _, line in read_lines(gw.tap_sink.path)]
