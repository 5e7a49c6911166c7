"""billrun's Snowflake emulator for the connector tests: fakesnow's server behind a small ASGI shim.

fakesnow (PyPI) answers the Snowflake REST protocol from an in-memory DuckDB, but differs from
Snowflake where snowflake-connector-rs (the Rust driver billrun uses) needs Snowflake's answers:

- SELECT and DDL results come back as Arrow IPC (`queryResultFormat: arrow`); the Rust driver only
  reads JSON rowsets. The shim converts each Arrow rowset to Snowflake's JSON rowset: every value
  a string in Snowflake's wire text for its `rowtype` (NUMBER as exact decimal text at the
  column's scale, timestamps as `epoch.fraction` seconds (+ ` <offset+1440>` for TIMESTAMP_TZ),
  DATE as days since the epoch, BOOLEAN as `1`/`0`, BINARY as hex), NULL as null.
- A login without SESSION_PARAMETERS fails with a KeyError; the shim adds an empty map.
- Error answers lack `data.queryId`, which the Rust driver requires; the shim adds one.
- fakesnow accepts any credentials. The shim checks them like Snowflake when started with
  `--user`/`--password` (and `--public-key` for key-pair/JWT logins, RS256 signed, issuer
  `ACCOUNT.USER.SHA256:<fingerprint>`): a wrong one gets Snowflake's login error (390100 /
  390144), HTTP 200 with `success: false`.

What the emulator does not cover (see connectors/README.md): results are always inline (no
chunked result download), DuckDB's types and arithmetic stand in for Snowflake's.

Run: python fakesnow_json.py --port 45911 [--user U --password P] [--public-key key.pub]
GET /billrun-shim/health answers {"ok": true, "version": <sha256 of this file>}.
"""

from __future__ import annotations

import argparse
import base64
import decimal
import gzip
import hashlib
import json
import secrets
import sys
from typing import Any, Callable

import pyarrow as pa

# exact decimal text for NUMBER(38, s): no rounding at 28 digits
decimal.getcontext().prec = 80

VERSION = hashlib.sha256(open(__file__, "rb").read()).hexdigest()

Send = Callable[[dict], Any]


def _epoch_text(total_ns: int, scale: int = 9) -> str:
    """Nanoseconds since the epoch as Snowflake's `seconds.fraction` text (exact)."""
    neg = total_ns < 0
    secs, frac = divmod(abs(total_ns), 1_000_000_000)
    text = f"{secs}.{frac:09d}"
    return "-" + text if neg and total_ns != 0 else text


def _cell(value: Any, col_type: str, scale: int | None) -> str | None:
    if value is None:
        return None
    if col_type == "fixed":
        if isinstance(value, decimal.Decimal):
            s = scale if scale is not None else max(0, -value.as_tuple().exponent)
            return format(value.quantize(decimal.Decimal(1).scaleb(-s)) if s else value.to_integral_exact(), "f")
        if isinstance(value, bool):
            return "1" if value else "0"
        if isinstance(value, int):
            if scale:
                return format(decimal.Decimal(value).scaleb(0).quantize(decimal.Decimal(1).scaleb(-scale)), "f")
            return str(value)
        if isinstance(value, float):
            # DuckDB answered with a double where Snowflake has NUMBER: keep the exact binary value
            # visible rather than pretending to an exactness the emulator does not have
            return repr(value)
        return str(value)
    if col_type == "real":
        return repr(float(value))
    if col_type == "boolean":
        return "1" if value else "0"
    if col_type == "date":
        import datetime

        return str((value - datetime.date(1970, 1, 1)).days)
    if col_type in ("timestamp_ntz", "timestamp_ltz", "timestamp_tz"):
        # fakesnow's Arrow answer: struct {epoch (s), fraction (ns)[, timezone]}; a NULL
        # timestamp is a struct of nulls
        if value.get("epoch") is None:
            return None
        total = int(value["epoch"]) * 1_000_000_000 + int(value["fraction"])
        text = _epoch_text(total)
        if col_type == "timestamp_tz":
            text += f" {int(value.get('timezone', 1440))}"
        return text
    if col_type == "time":
        return _epoch_text(int(value))
    if col_type == "binary":
        return bytes(value).hex().upper()
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def arrow_to_json_rowset(b64: str, rowtype: list[dict]) -> list[list[str | None]]:
    if not b64:
        return []
    reader = pa.ipc.open_stream(base64.b64decode(b64))
    table = reader.read_all()
    columns = []
    for i, rt in enumerate(rowtype):
        t = rt["type"].lower()
        scale = rt.get("scale")
        columns.append([_cell(v, t, scale) for v in table.column(i).to_pylist()])
    return [list(row) for row in zip(*columns)] if columns else [[] for _ in range(table.num_rows)]


def _login_error(code: str, message: str) -> dict:
    return {"data": {"nextAction": "RETRY_LOGIN", "authnMethod": "USERNAME_PASSWORD"}, "code": code,
            "message": message, "success": False, "headers": None}


class Shim:
    def __init__(self, app: Any, user: str | None, password: str | None, public_key: bytes | None):
        self.app = app
        self.user = user
        self.password = password
        self.public_key = public_key

    def check_login(self, data: dict) -> dict | None:
        """None when the credentials are accepted, else Snowflake's error answer."""
        if self.user is None:
            return None
        login = str(data.get("LOGIN_NAME", ""))
        if data.get("AUTHENTICATOR") == "SNOWFLAKE_JWT":
            if self.public_key is None or login.upper() != self.user.upper():
                return _login_error("390144", "JWT token is invalid.")
            import jwt
            from cryptography.hazmat.primitives import serialization

            key = serialization.load_pem_public_key(self.public_key)
            der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            fp = "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode()
            account = str(data.get("ACCOUNT_NAME", "")).upper()
            try:
                claims = jwt.decode(data.get("TOKEN", ""), key, algorithms=["RS256"], options={"verify_aud": False})
            except Exception:
                return _login_error("390144", "JWT token is invalid.")
            if claims.get("iss") != f"{account}.{login.upper()}.{fp}" or claims.get("sub") != f"{account}.{login.upper()}":
                return _login_error("390144", "JWT token is invalid.")
            return None
        if login != self.user or data.get("PASSWORD") != self.password:
            return _login_error("390100", "Incorrect username or password was specified.")
        return None

    async def __call__(self, scope: dict, receive: Callable, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/billrun-shim/health":
            await _json(send, 200, {"ok": True, "version": VERSION})
            return
        if path not in ("/session/v1/login-request", "/queries/v1/query-request"):
            await self.app(scope, receive, send)
            return

        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"content-encoding", b"content-length")]
        if dict(scope["headers"]).get(b"content-encoding", b"").lower() == b"gzip":
            body = gzip.decompress(body)

        if path == "/session/v1/login-request":
            doc = json.loads(body)
            data = doc.setdefault("data", {})
            if data.get("SESSION_PARAMETERS") is None:
                data["SESSION_PARAMETERS"] = {}
            refused = self.check_login(data)
            if refused is not None:
                await _json(send, 200, refused)
                return
            body = json.dumps(doc).encode()

        headers.append((b"content-length", str(len(body)).encode()))
        inner_scope = dict(scope, headers=headers)
        sent = False

        async def inner_receive() -> dict:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        status = 200
        chunks: list[bytes] = []

        async def capture(msg: dict) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            elif msg["type"] == "http.response.body":
                chunks.append(msg.get("body", b""))

        await self.app(inner_scope, inner_receive, capture)
        out = b"".join(chunks)
        if path == "/queries/v1/query-request":
            try:
                doc = json.loads(out)
            except ValueError:
                doc = None
            data = doc.get("data") if isinstance(doc, dict) else None
            if isinstance(doc, dict) and doc.get("success") is False:
                # Snowflake's error answers carry the query id; the Rust driver requires it
                if not isinstance(data, dict):
                    data = doc["data"] = {}
                data.setdefault("queryId", "01b00000-0000-0000-0000-" + secrets.token_hex(6))
                out = json.dumps(doc).encode()
            elif isinstance(data, dict) and data.get("queryResultFormat") == "arrow":
                rowset = arrow_to_json_rowset(data.pop("rowsetBase64", "") or "", data.get("rowtype") or [])
                data["queryResultFormat"] = "json"
                data["rowset"] = rowset
                data["returned"] = len(rowset)
                data["total"] = len(rowset)
                out = json.dumps(doc).encode()
        await _raw(send, status, out)


async def _json(send: Send, status: int, doc: dict) -> None:
    await _raw(send, status, json.dumps(doc).encode())


async def _raw(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=45911)
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--public-key", help="PEM public key accepted for SNOWFLAKE_JWT logins of --user")
    a = p.parse_args()
    import uvicorn
    from fakesnow.server import app

    public_key = open(a.public_key, "rb").read() if a.public_key else None
    uvicorn.run(Shim(app, a.user, a.password, public_key), host=a.host, port=a.port, log_level="warning")


if __name__ == "__main__":
    sys.exit(main())
