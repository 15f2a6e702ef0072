"""The gateway's /metrics in Prometheus's text format (issue #16): what Prometheus scrapes equals
the gateway's own JSON counters, parsed with the reference parser; JSON stays the default."""
from __future__ import annotations

import http.client

from prometheus_client.parser import text_string_to_metric_families

from nfc_gateway.service import prometheus_text
from nfc_gateway.testing import get, post, signed_report
from tests.gateway_helpers import counters, start

# what Prometheus 2.x sends when it scrapes
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
                     "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def scrape(port: int, path: str = "/metrics", accept: str = PROMETHEUS_ACCEPT):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Accept": accept})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read().decode("utf-8")
    finally:
        conn.close()


def samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_prometheus_scrape_equals_the_json_counters(tmp_path):
    gw = start(tmp_path)
    try:
        assert post(gw.port, signed_report("1001", "1002"))[0] == 201
        assert post(gw.port, b"{not json")[0] == 400
        assert get(gw.port, "/nope")[0] == 404
        json_counters = counters(gw)
        status, content_type, text = scrape(gw.port)
        assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
        got = samples(text)
        rejected = {name[len("rejected_"):]: value for name, value in json_counters.items()
                    if name.startswith("rejected_")}
        assert len(rejected) == 2 and "not_found" in rejected
        assert {labels[0][1]: value for (name, labels), value in got.items()
                if name == "tapfollow_gateway_rejected_total"} == rejected
        assert got[("tapfollow_gateway_accepted_total", ())] == 1
        assert got[("tapfollow_gateway_duplicates_total", ())] == 0
        assert got[("tapfollow_gateway_tap_ids_known", ())] == 1
        # ?format=prometheus (the scrape job's parameter) gives the same text; a plain GET still JSON
        assert scrape(gw.port, "/metrics?format=prometheus", accept="*/*")[2] == scrape(gw.port)[2]
        assert get(gw.port, "/metrics")[1]["counters"] == counters(gw)
    finally:
        gw.stop()


def test_firehose_progress_and_every_counter_is_exported():
    text = prometheus_text({"counters": {"accepted": 3, "rejected_bad_signature": 2, "duplicates": 1},
                            "tap_ids_known": 3, "open_connections": 1, "clients_connected": 1,
                            "firehose": {"source": "file", "read": 10, "written": 9, "not_json": 1,
                                         "done": True, "error": None, "write_retries": 0}})
    assert samples(text) == {
        ("tapfollow_gateway_rejected_total", (("reason", "bad_signature"),)): 2,
        ("tapfollow_gateway_accepted_total", ()): 3, ("tapfollow_gateway_duplicates_total", ()): 1,
        ("tapfollow_gateway_firehose_read_total", ()): 10, ("tapfollow_gateway_firehose_written_total", ()): 9,
        ("tapfollow_gateway_firehose_not_json_total", ()): 1,
        ("tapfollow_gateway_firehose_write_retries_total", ()): 0,
        ("tapfollow_gateway_tap_ids_known", ()): 3, ("tapfollow_gateway_open_connections", ()): 1,
        ("tapfollow_gateway_clients_connected", ()): 1, ("tapfollow_gateway_firehose_done", ()): 1,
        ("tapfollow_gateway_firehose_failed", ()): 0}
