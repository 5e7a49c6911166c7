"""Run SQL against the test Snowflake emulator with the Python Snowflake connector (test setup).

Reads a JSON list from stdin: [{"sql": "...", "rows": [[...], ...]?}, ...]; a statement with
`rows` is run once per row (executemany, `%s` placeholders). Connection settings come from the
BILLRUN_TEST_SF_* variables that tests/support/servers/40-snowflake.sh exports; argv[1] is the
schema (created in BILLRUN_TEST_SF_DATABASE on login).
"""

import json
import os
import sys
from urllib.parse import urlparse

import snowflake.connector

url = urlparse(os.environ["BILLRUN_TEST_SF_URL"])
conn = snowflake.connector.connect(
    user=os.environ["BILLRUN_TEST_SF_USER"],
    password=os.environ["BILLRUN_TEST_SF_PASSWORD"],
    account=os.environ["BILLRUN_TEST_SF_ACCOUNT"],
    host=url.hostname,
    port=url.port,
    protocol=url.scheme,
    database=os.environ["BILLRUN_TEST_SF_DATABASE"],
    schema=sys.argv[1],
)
cur = conn.cursor()
for stmt in json.load(sys.stdin):
    if "rows" in stmt:
        if stmt["rows"]:
            cur.executemany(stmt["sql"], [tuple(r) for r in stmt["rows"]])
    else:
        cur.execute(stmt["sql"])
conn.close()
