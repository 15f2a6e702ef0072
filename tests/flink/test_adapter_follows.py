"""flink_job.follows.resolve_follows on a local MiniCluster vs the core and the Beam host.

Hand-made signed reports (tests.test_pairing's helpers): a genuine pair, a one-sided tap
(unmatched at expiry), a forged proof, a replay of a genuine report, a third phone on
the same nonce, a pair tapping twice (one edge, one repeat), an unknown user. BATCH
must equal ``core.follows.resolve_reports``; STREAMING, with the replay arriving after
its touch's deadline, must equal Beam's streaming host fed the same deliveries.
"""
from __future__ import annotations

import json
import pickle

import apache_beam as beam
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that
from apache_beam.transforms.window import TimestampedValue

from core.follows import dead_letter, resolve_reports
from schemas.records import TapReport
from tests.flink.conftest import driver_path, run_driver
from tests.test_follows import PARAMS, streaming_pipeline, users_of
from tests.test_pairing import A, B, C, D, PUBKEYS, T0, report, signed, touch

REGISTRY = {u.user_id: u for u in users_of(PUBKEYS)}


def world():
    """(reports delivered on time, reports delivered after the A-B touch's deadline)."""
    ab = touch(A, B, T0, 1)
    lonely, _ = touch(A, C, T0 + 5, 2)                          # C's phone never reports
    forged = report("forged", D, A, ab[0].nonce, T0, proof=ab[0].proof)   # D claims A's touch
    third = signed(report("third", C, A, ab[0].nonce, T0 + 1))  # a third phone on the same nonce
    again = touch(B, A, T0 + 300, 3)                             # the pair taps twice
    ghost = TapReport("ghost", "999", A, ab[0].nonce, T0, 35.6812, 139.7671, "x", "y")   # unknown user
    clock = touch(C, D, T0 + 1000, 4)      # a later touch: moves the watermark past A-B's deadline
    replay = signed(ab[1]._replace(tap_id="replayed-ab"))
    return [*ab, lonely, forged, third, *again, ghost, *clock], [replay]


def run_flink(pyflink_python, tmp_path, mode, reports):
    spec = tmp_path / f"{mode}.pkl"
    spec.write_bytes(pickle.dumps({"mode": mode, "reports": reports, "registry": REGISTRY,
                                   "params": PARAMS, "pace_s": 0.3}))
    return run_driver(pyflink_python, driver_path("follows_run.py"), str(spec), timeout=180)


def as_json(records):
    return sorted(json.dumps(r if isinstance(r, (list, dict)) else (r._asdict() if hasattr(r, "_asdict") else r),
                             sort_keys=True) for r in records)


def test_batch_equals_resolve_reports(pyflink_python, tmp_path):
    on_time, late = world()
    reports = on_time + late
    want = resolve_reports(reports, PUBKEYS, max_clock_skew_s=PARAMS.max_clock_skew_s,
                           pending_expiry_s=PARAMS.pending_expiry_s)
    assert len(want.follows) == 2 and len(want.repeats) == 1        # the world is what it says
    assert {r.kind for r in want.rejections} >= {"taps_unmatched", "taps_bad_proof", "taps_replayed",
                                                 "taps_unknown_user"}, want.rejections
    got = run_flink(pyflink_python, tmp_path, "batch", reports)
    assert as_json(got["follows"]) == as_json([list(f) for f in want.follows])
    assert as_json(got["dead_letters"]) == as_json([dead_letter(r)._asdict() for r in want.rejections])


def beam_streaming(on_time, late, folder):
    """Beam's streaming host on the same deliveries: on time, the watermark past A-B's deadline, the replay."""
    stream = TestStream().advance_watermark_to(T0 - 60)
    stream = stream.add_elements([TimestampedValue(r, r.ts) for r in on_time])
    stream = (stream.advance_watermark_to(T0 + 1000 - 5)
              .add_elements([TimestampedValue(r, r.ts) for r in late]).advance_watermark_to_infinity())
    p, out = streaming_pipeline(stream)
    # the checks run as pickled copies: they hand what they saw over in files
    assert_that(out["follows"] | "F" >> beam.Map(list), _keep(folder / "follows.json"), label="Follows")
    assert_that(out["dead_letters"] | "D" >> beam.Map(lambda d: d._asdict()), _keep(folder / "dead.json"),
                label="Dead")
    p.run().wait_until_finish()
    return json.loads((folder / "follows.json").read_text()), json.loads((folder / "dead.json").read_text())


def _keep(path):
    def check(actual):
        path.write_text(json.dumps(list(actual)))
    return check


def test_streaming_with_a_late_replay_equals_beams_streaming_host(pyflink_python, tmp_path):
    on_time, late = world()
    want_follows, want_dead = beam_streaming(on_time, late, tmp_path)
    assert any(d["error"].startswith("replayed") and "replayed-ab" in d["raw"] for d in want_dead)
    got = run_flink(pyflink_python, tmp_path, "streaming", on_time + late)
    assert as_json(got["follows"]) == as_json(want_follows)
    assert as_json(got["dead_letters"]) == as_json(want_dead)
