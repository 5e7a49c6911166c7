#!/usr/bin/env python3
"""OpenMetrics history for the Prometheus connector tests, from fixtures/01-quickstart's api_call
events: one counter `billrun_api_requests_total{account_id, endpoint, region}` per distinct
label set, sampled hourly from 2026-09-30 to 2026-11-07 (UTC). The value at hour H counts the
events before H, on top of a base of 1000 (the counter was already running). The ACC-ACME-PROD
/v1/search us-east series is reset (process restart) at 2026-10-15T00:00Z: from there it counts
from 0. A gauge `billrun_storage_gb{account_id, bucket}` is included for the gauge mode.

Usage: prometheus_usage.py FIXTURE_USAGE_DIR > usage.om
"""
import datetime as dt
import json
import pathlib
import sys

usage = pathlib.Path(sys.argv[1])
events = []
for f in sorted(usage.glob("*.ndjson")):
    for line in f.read_text().splitlines():
        if line.strip():
            events.append(json.loads(line))

def ts(s):
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()

start = int(dt.datetime(2026, 9, 30, tzinfo=dt.timezone.utc).timestamp())
end = int(dt.datetime(2026, 11, 7, tzinfo=dt.timezone.utc).timestamp())
reset_at = int(dt.datetime(2026, 10, 15, tzinfo=dt.timezone.utc).timestamp())
reset_series = ("ACC-ACME-PROD", "/v1/search", "us-east")

series = {}
for e in events:
    if e["schemaName"] != "api_call":
        continue
    key = (e["accountId"], e["dimensions"]["endpoint"], e["dimensions"]["region"])
    series.setdefault(key, []).append(ts(e["timestamp"]))

out = ["# TYPE billrun_api_requests counter"]
for key in sorted(series):
    times = series[key]
    if key == reset_series:
        assert not any(reset_at - 3600 <= t < reset_at for t in times), "no event right before the reset"
    labels = 'account_id="%s",endpoint="%s",region="%s"' % key
    for h in range(start, end + 1, 3600):
        if key == reset_series and h >= reset_at:
            v = sum(1 for t in times if reset_at <= t < h)
        else:
            v = 1000 + sum(1 for t in times if t < h)
        out.append("billrun_api_requests_total{%s} %d %d" % (labels, v, h))
out.append("# TYPE billrun_storage_gb gauge")
for acct, gb, h in [("ACC-ACME-PROD", "120.5", start + 86400), ("ACC-GLOBEX", "0.1", start + 2 * 86400)]:
    out.append('billrun_storage_gb{account_id="%s",bucket="b"} %s %d' % (acct, gb, h))
out.append("# EOF")
print("\n".join(out))
