#!/usr/bin/env python3
"""Delivery's outbox listing against a growing pull backlog (issue 20 §4), in-process SQLite.

    python3 benches/outbox_listing.py

The delivery worker lists the destinations with an update due after every commit that
adds outbox rows and at each poll. Practices without an endpoint pull their updates, so
their rows stay `pending` for good and the outbox grows with every referral. This builds
an outbox with the migration's indexes (`outbox_due`, `outbox_by_referral`): 20
practices with an endpoint holding 5 waiting rows each, plus 10,000 / 100,000 /
1,000,000 rows of 40 practices that pull, and times, on the same data,

  every pending row   the listing before (one DISTINCT over every due head),
  endpoint probes     the listing now (`store/sql/outbox.rs`, `due_destinations`:
                      one EXISTS probe per destination with an endpoint).

The SQL is copied from `store/sql/outbox.rs` (SQLite's `json_each` for the list);
keep them in step.
"""
import json
import sqlite3
import time

HEAD = ("NOT EXISTS (SELECT 1 FROM outbox e WHERE e.referral_id = o.referral_id "
        "AND e.seq < o.seq AND e.state IN ('pending', 'dead'))")
DUE = "o.next_attempt_ms <= ?1 AND (o.lease_until_ms IS NULL OR o.lease_until_ms < ?1)"
EVERY_PENDING_ROW = (f"SELECT DISTINCT o.destination_ods FROM outbox o WHERE o.state = 'pending' "
                     f"AND o.destination_ods IS NOT NULL AND {DUE} AND {HEAD}")
ENDPOINT_PROBES = (f"WITH d (ods) AS (SELECT value FROM json_each(?2)) SELECT d.ods FROM d "
                   f"WHERE EXISTS (SELECT 1 FROM outbox o WHERE o.state = 'pending' "
                   f"AND o.destination_ods = d.ods AND {DUE} AND {HEAD})")


def main():
    db = sqlite3.connect(":memory:")
    db.executescript("""
        CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, referral_id TEXT NOT NULL,
            state TEXT NOT NULL, destination_ods TEXT, next_attempt_ms INTEGER NOT NULL DEFAULT 0,
            lease_until_ms INTEGER);
        CREATE INDEX outbox_by_referral ON outbox (referral_id, seq);
        CREATE INDEX outbox_due ON outbox (state, destination_ods, seq);
    """)
    insert = "INSERT INTO outbox (referral_id, state, destination_ods) VALUES (?, 'pending', ?)"
    db.executemany(insert, [(f"e{i}", f"E{i % 20:05d}") for i in range(100)])
    endpoints = json.dumps([f"E{i:05d}" for i in range(20)])
    now = 10**15
    held = 0

    def per_query_ms(sql, args, repeats):
        started = time.perf_counter()
        for _ in range(repeats):
            db.execute(sql, args).fetchall()
        return (time.perf_counter() - started) / repeats * 1000

    for pulled in (10_000, 100_000, 1_000_000):
        db.executemany(insert, [(f"r{i}", f"P{i % 40:05d}") for i in range(held, pulled)])
        held = pulled
        before = per_query_ms(EVERY_PENDING_ROW, (now,), 5)
        after = per_query_ms(ENDPOINT_PROBES, (now, endpoints), 200)
        print(f"{pulled:>9,} rows waiting for pull: every pending row {before:9.2f} ms, "
              f"endpoint probes {after:6.3f} ms ({before / after:,.0f}x)")


if __name__ == "__main__":
    main()
