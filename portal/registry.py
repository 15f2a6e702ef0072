"""A subscriber's settings change, written where the pipeline reads the registry.

The registry is a changing input: each change is one ``users.jsonl`` record (the contract's
fields, plus ``updated_at`` and the portal's signature ``portal_sig``, see
``schemas.signin.sign_registry_change``), appended to a users file (``--registry-out``)
and/or produced to the ``users`` topic (``--kafka-bootstrap``) keyed by user id, so a
compacted topic keeps each user's latest state. Nothing is lost quietly: a change that
cannot be written fails the request (the page says so) and is counted.
"""
from __future__ import annotations

import json
import os
import threading
import time
from typing import Optional

from schemas.records import User
from schemas.signin import sign_registry_change
from schemas.timefmt import format_rfc3339


class RegistryWriter:
    def __init__(self, private_key, path: Optional[str] = None, kafka_bootstrap: Optional[str] = None,
                 topic: str = "users", clock=time.time):
        self.private_key, self.path, self.topic, self.clock = private_key, path, topic, clock
        self._lock = threading.Lock()
        self._producer = None
        if kafka_bootstrap:
            from kafka_client import client_config
            from confluent_kafka import Producer
            self._producer = Producer(client_config(kafka_bootstrap, **{"enable.idempotence": True, "acks": "all"}))
        self.written = 0

    def record(self, user: User) -> dict:
        body = {"user_id": user.user_id, "pubkey": user.pubkey, "alerts_opt_in": user.alerts_opt_in,
                "stats_opt_out": user.stats_opt_out, "updated_at": format_rfc3339(self.clock())}
        if user.age_band is not None:
            body["age_band"] = user.age_band
        return sign_registry_change(self.private_key, body)

    def write(self, user: User) -> dict:
        """Append/produce the signed record; raises OSError / RuntimeError when it was not written."""
        record = self.record(user)
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            if self.path:
                with open(self.path, "a", encoding="utf-8") as handle:
                    handle.write(line + "\n")
                    handle.flush()
                    os.fsync(handle.fileno())
            if self._producer is not None:
                errors = []
                self._producer.produce(self.topic, key=user.user_id.encode(), value=line.encode("utf-8"),
                                       on_delivery=lambda err, _msg: err and errors.append(err))
                if self._producer.flush(10.0) or errors:
                    raise RuntimeError(f"the users topic did not take the change: {errors or 'timeout'}")
            self.written += 1
        return record
