"""The submission server: a small Starlette app over :class:`~robustkit.leaderboard.store.Store`.

Endpoints (JSON unless noted)::

    GET  /api/entries                 list; filters dataset, threat_model, name, submitter, stochastic,
                                      adapts_at_test_time, batch_dependent, unreliable (true/false);
                                      sort board|robust|clean|submitted|name; limit (1-500), offset
    GET  /api/entries/{id}            one entry with its per-example summary (410 once withdrawn)
                                      (every entry shown with "board" [dataset, threat model, eps],
                                      "ranked" and "not_ranked_because" [{code, message}])
    GET  /api/entries/{id}/examples   its per-example records
    POST /api/submissions             upload (Authorization: Bearer <token>); 201 new entry, 200 with
                                      "action": "update" / "reinstate" / "unchanged" when the entry's
                                      identity was already on the board (403: it belongs to another)
    DELETE /api/entries/{id}          withdraw it (its submitter's token; 403 for anyone else)
    GET  /api/audit                   the append-only audit log (limit, offset)
    GET  /healthz                     liveness
    GET  /  and  /entries/{id}        the web pages (HTML), see :mod:`robustkit.leaderboard.site`

Reads are public; writes need a token made by ``robustkit serve --db PATH --create-token NAME``.
Every refusal is a 4xx with ``{"error": "<one clear sentence>", "status": <code>}``: 400 malformed,
401 missing or invalid token, 403 not yours, 404, 405, 408 body stalled, 410 withdrawn, 413 body too large (checked against Content-Length and again
while streaming, so a chunked body cannot slip past), 415 not JSON, 422 well-formed but wrong,
429 rate-limited (with Retry-After). A refused submission leaves the database untouched.

Example (in-process, no network)::

    >>> import tempfile, os
    >>> from starlette.testclient import TestClient
    >>> with tempfile.TemporaryDirectory() as d:
    ...     client = TestClient(create_app(os.path.join(d, "b.db")))
    ...     listing = client.get("/api/entries").json()
    ...     r = client.post("/api/submissions", content=b"{}")
    >>> listing
    {'entries': [], 'count': 0, 'total': 0}
    >>> r.status_code, r.json()["error"][:19]
    (401, 'missing API token: ')
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import RobustkitError
from .entry import Entry
from .robustbench import ImportedClaim
from .rules import ROBUSTBENCH_RULES, RankingRules, board_key, ranking_problems
from .store import ConflictError, Store, StoreError
from .submission import SubmissionError, board_columns, parse_submission

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 64 * 1024 * 1024  # 64 MiB: ~200k examples x 10 re-evaluations x a few attacks
DEFAULT_BODY_TIMEOUT = 30.0  # seconds a request body may take between two chunks before the server gives up
MAX_PAGE = 500
MAX_ID = 2**63 - 1  # SQLite's largest integer: a larger id cannot exist (and must not reach the driver)


class ServeError(RobustkitError, RuntimeError):
    """The server cannot start (address in use, bad database path, missing web dependencies)."""


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: ``burst`` requests at once, refilled at ``per_second``."""

    burst: float
    per_second: float


DEFAULT_LIMITS = {"read": RateLimit(600, 50.0),  # per client address
                  "write": RateLimit(60, 1.0),  # per submitter token
                  "auth_failure": RateLimit(30, 0.5)}  # per client address: slows token guessing


class RateLimiter:
    """Token buckets per key; thread-safe; forgets idle keys so memory stays bounded."""

    def __init__(self, limit: RateLimit, max_keys: int = 10_000):
        self.limit, self.max_keys = limit, max_keys
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def _level(self, key: str, now: float) -> float:
        level, last = self._buckets.get(key, (self.limit.burst, now))
        return min(self.limit.burst, level + (now - last) * self.limit.per_second)

    def retry_after(self, key: str) -> float:
        """0 when a request is allowed now (and counts it), else seconds until one is."""
        now = time.monotonic()
        with self._lock:
            level = self._level(key, now)
            if level >= 1:
                self._buckets[key] = (level - 1, now)
                if len(self._buckets) > self.max_keys:
                    self._prune(now)
                return 0.0
            self._buckets[key] = (level, now)
            return (1 - level) / self.limit.per_second if self.limit.per_second > 0 else 3600.0

    def blocked(self, key: str) -> float:
        """Like :meth:`retry_after` but without spending: seconds until the bucket has a token."""
        now = time.monotonic()
        with self._lock:
            level = self._level(key, now)
        return 0.0 if level >= 1 else ((1 - level) / self.limit.per_second if self.limit.per_second > 0 else 3600.0)

    def _prune(self, now: float) -> None:
        full = [k for k in self._buckets if self._level(k, now) >= self.limit.burst]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) > self.max_keys:  # still too many: forget the oldest half
            for k in sorted(self._buckets, key=lambda k: self._buckets[k][1])[: len(self._buckets) // 2]:
                del self._buckets[k]


def _bool_param(value: str | None, name: str) -> bool | None:
    if value is None:
        return None
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise SubmissionError(f"query parameter {name}: expected true or false, got {value[:40]!r}", 400)


def _int_param(value: str | None, name: str, default: int, lo: int, hi: int) -> int:
    if value is None:
        return default
    if not value.isdigit() or not lo <= int(value) <= hi:
        raise SubmissionError(f"query parameter {name}: expected an integer in [{lo}, {hi}], got {value[:40]!r}", 400)
    return int(value)


def _str_param(value: str | None, name: str) -> str | None:
    if value is not None and (len(value) > 128 or not value.isprintable()):
        raise SubmissionError(f"query parameter {name}: expected a short printable string", 400)
    return value


def create_app(db_path: str | Path, *, max_body: int = DEFAULT_MAX_BODY,
               limits: dict[str, RateLimit] | None = None, pages: bool = True,
               body_timeout: float = DEFAULT_BODY_TIMEOUT, rules: RankingRules = ROBUSTBENCH_RULES,
               claims: Sequence[ImportedClaim] = ()):
    """The ASGI app serving the database at ``db_path`` (created when missing).

    ``body_timeout``: a request body that sends nothing for this many seconds is answered 408 (a
    stalled client cannot hold a worker). A client that disconnects mid-upload is logged at INFO in
    one line, never as a traceback. ``rules`` decide which entries the page ranks (the static site's
    function, :func:`robustkit.leaderboard.rules.ranking_problems`). ``claims``: RobustBench rows
    (:func:`robustkit.leaderboard.robustbench.load_claims`) the page shows on their boards, marked as
    not re-evaluated.
    """
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    store = Store(db_path)
    lim = {**DEFAULT_LIMITS, **(limits or {})}
    readers, writers, failures = (RateLimiter(lim["read"]), RateLimiter(lim["write"]),
                                  RateLimiter(lim["auth_failure"]))

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)

    def too_many(wait: float, what: str) -> JSONResponse:
        secs = max(1, int(wait + 0.999))
        return error(429, f"rate limit: too many {what}; retry in {secs} s", {"Retry-After": str(secs)})

    def ranked(d: dict[str, Any]) -> dict[str, Any]:
        """A stored row as the API shows it: with its board and the ranking decision of ``rules``."""
        e = Entry.from_dict(d["entry"])
        problems = ranking_problems(e, rules)
        return {**d, "board": list(board_key(e.dataset, e.threat_model, e.eps)), "ranked": not problems,
                "not_ranked_because": [{"code": p.code, "message": p.message} for p in problems]}

    def client_key(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    async def list_entries(request: Request) -> Response:
        wait = readers.retry_after(client_key(request))
        if wait:
            return too_many(wait, "requests")
        q = request.query_params
        known = {"dataset", "threat_model", "name", "submitter", "stochastic", "adapts_at_test_time",
                 "batch_dependent", "unreliable", "sort", "limit", "offset"}
        unknown = sorted(set(q) - known)
        if unknown:
            return error(400, f"unknown query parameter(s) {unknown}; known: {sorted(known)}")
        sort = q.get("sort", "board")
        if sort not in Store.SORTS:
            return error(400, f"query parameter sort: expected one of {sorted(Store.SORTS)}, got {sort[:40]!r}")
        kwargs = dict(dataset=_str_param(q.get("dataset"), "dataset"),
                      threat_model=_str_param(q.get("threat_model"), "threat_model"),
                      name=_str_param(q.get("name"), "name"), submitter=_str_param(q.get("submitter"), "submitter"),
                      stochastic=_bool_param(q.get("stochastic"), "stochastic"),
                      adapts_at_test_time=_bool_param(q.get("adapts_at_test_time"), "adapts_at_test_time"),
                      batch_dependent=_bool_param(q.get("batch_dependent"), "batch_dependent"),
                      unreliable=_bool_param(q.get("unreliable"), "unreliable"), sort=sort,
                      limit=_int_param(q.get("limit"), "limit", 100, 1, MAX_PAGE),
                      offset=_int_param(q.get("offset"), "offset", 0, 0, 2**31))
        rows, total = await run_in_threadpool(lambda: store.list_entries(**kwargs))
        return JSONResponse({"entries": [ranked(r.to_dict()) for r in rows], "count": len(rows), "total": total})

    async def get_entry(request: Request) -> Response:
        wait = readers.retry_after(client_key(request))
        if wait:
            return too_many(wait, "requests")
        entry_id = request.path_params["entry_id"]
        row = await run_in_threadpool(store.get_entry, entry_id) if entry_id <= MAX_ID else None
        if row is None:
            return error(404, f"no entry with id {str(entry_id)[:40]}")
        if row.withdrawn:
            return error(410, f"entry {entry_id} was withdrawn by its submitter (see /api/audit)")
        return JSONResponse(ranked(row.to_dict(with_summary=True)))

    async def get_examples(request: Request) -> Response:
        wait = readers.retry_after(client_key(request))
        if wait:
            return too_many(wait, "requests")
        entry_id = request.path_params["entry_id"]
        row = await run_in_threadpool(store.get_entry, entry_id) if entry_id <= MAX_ID else None
        examples = await run_in_threadpool(store.get_examples, entry_id) if row and not row.withdrawn else None
        if examples is None:
            return error(404, f"no entry with id {str(entry_id)[:40]}")
        return JSONResponse({"id": request.path_params["entry_id"], "examples": examples})

    async def authenticate(request: Request) -> str | Response:
        """The submitter of the request's bearer token, or the error response. A valid token is never
        refused for other clients' failures: failed attempts from an address are throttled, and only
        further *failed* attempts from it are answered 429 (the secret has 256 bits; throttling only
        keeps guessing traffic cheap)."""
        ip = client_key(request)
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        submitter = None
        if scheme.lower() == "bearer" and token.strip():
            submitter = await run_in_threadpool(store.authenticate, token.strip())
        if submitter is not None:
            return submitter
        wait = failures.retry_after(ip)
        if wait:
            return too_many(wait, "failed authentications from this address")
        if scheme.lower() != "bearer" or not token.strip():
            return error(401, "missing API token: send 'Authorization: Bearer <token>' (tokens are made by "
                              "'robustkit serve --db PATH --create-token NAME')", {"WWW-Authenticate": "Bearer"})
        return error(401, "invalid or revoked API token", {"WWW-Authenticate": "Bearer"})

    async def read_body(request: Request) -> bytes | Response:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                return error(400, f"invalid Content-Length {declared[:40]!r}")
            if int(declared) > max_body:
                return error(413, f"body of {int(declared)} bytes exceeds the limit of {max_body} bytes")
        chunks, size = [], 0
        stream = request.stream().__aiter__()
        while True:
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), timeout=body_timeout)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                log.info("request body from %s stalled for %.0f s: answered 408", client_key(request), body_timeout)
                return error(408, f"request body stalled: nothing received for {body_timeout:g} s",
                             {"Connection": "close"})
            size += len(chunk)
            if size > max_body:
                return error(413, f"body exceeds the limit of {max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def writer(request: Request) -> str | Response:
        """The authenticated submitter within their write budget, or the error response."""
        submitter = await authenticate(request)
        if isinstance(submitter, str):
            wait = writers.retry_after(submitter)
            if wait:
                return too_many(wait, f"writes by {submitter}")
        return submitter

    async def submit(request: Request) -> Response:
        submitter = await writer(request)
        if not isinstance(submitter, str):
            return submitter
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return error(415, f"Content-Type must be application/json, got {ctype[:60] or 'none'!r}")
        if request.headers.get("content-encoding", "identity").lower() != "identity":
            return error(415, "compressed bodies are not accepted; send plain JSON")
        body = await read_body(request)
        if not isinstance(body, bytes):
            return body
        size = len(body)
        if size == 0:
            return error(400, "empty body: expected a JSON submission")
        try:
            sub = await run_in_threadpool(parse_submission, body)
        except SubmissionError as e:
            return error(e.status, str(e))
        entry = sub.entry.to_dict()
        try:
            entry_id, action = await run_in_threadpool(
                lambda: store.add_entry(content_hash=sub.content_hash, submitter=submitter, entry=entry,
                                        board=board_columns(sub.entry), summary=sub.summary, examples=sub.examples,
                                        identity=sub.entry.identity()))
        except ConflictError as e:
            return error(e.status, str(e))
        log.info("submission %s by %s: entry %d (%s)", sub.content_hash[:12], submitter, entry_id, action)
        created = action == "create"
        return JSONResponse({"id": entry_id, "content_hash": sub.content_hash, "created": created, "action": action,
                             "name": sub.entry.name, "url": f"/api/entries/{entry_id}"},
                            status_code=201 if created else 200)

    async def withdraw(request: Request) -> Response:
        submitter = await writer(request)
        if not isinstance(submitter, str):
            return submitter
        entry_id = request.path_params["entry_id"]
        if entry_id > MAX_ID:
            return error(404, f"no entry with id {str(entry_id)[:40]}")
        try:
            row = await run_in_threadpool(store.withdraw, entry_id, submitter)
        except ConflictError as e:
            return error(e.status, str(e))
        log.info("entry %d withdrawn by %s", entry_id, submitter)
        return JSONResponse({"id": entry_id, "withdrawn": True, "identity": row.identity})

    async def audit(request: Request) -> Response:
        wait = readers.retry_after(client_key(request))
        if wait:
            return too_many(wait, "requests")
        q = request.query_params
        unknown = sorted(set(q) - {"limit", "offset"})
        if unknown:
            return error(400, f"unknown query parameter(s) {unknown}; known: ['limit', 'offset']")
        limit = _int_param(q.get("limit"), "limit", 100, 1, MAX_PAGE)
        offset = _int_param(q.get("offset"), "offset", 0, 0, 2**31)
        rows, total = await run_in_threadpool(lambda: store.audit_log(limit=limit, offset=offset))
        return JSONResponse({"records": rows, "count": len(rows), "total": total})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "entries": await run_in_threadpool(store.count)})

    async def index_page(request: Request) -> Response:
        from .site import render_index

        wait = readers.retry_after(client_key(request))
        if wait:
            return too_many(wait, "requests")
        rows, _ = await run_in_threadpool(lambda: store.list_entries(limit=10**6))
        return HTMLResponse(render_index([r.to_dict() for r in rows], link=lambda r: f"/entries/{r['id']}",
                                         script_url="/static/board.js", rules=rules, claims=claims),
                            headers=_PAGE_HEADERS)

    async def entry_page(request: Request) -> Response:
        from .site import render_entry

        wait = readers.retry_after(client_key(request))
        if wait:
            return too_many(wait, "requests")
        entry_id = request.path_params["entry_id"]
        row = await run_in_threadpool(store.get_entry, entry_id) if entry_id <= MAX_ID else None
        if row is None or row.withdrawn:
            return HTMLResponse("<!doctype html><title>Not found</title><p>No such entry.</p>", status_code=404)
        return HTMLResponse(render_entry(row.to_dict(with_summary=True), index_url="/",
                                         script_url="/static/board.js", rules=rules), headers=_PAGE_HEADERS)

    async def script(request: Request) -> Response:
        from .site import BOARD_JS

        return Response(BOARD_JS, media_type="text/javascript")

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return error(exc.status_code, {404: f"no route {request.url.path[:200]!r}",
                                       405: f"method {request.method} not allowed on {request.url.path[:200]!r}"}
                     .get(exc.status_code, str(exc.detail)), dict(exc.headers or {}))

    async def bad_request(request: Request, exc: SubmissionError) -> Response:
        return error(exc.status, str(exc))

    async def store_error(request: Request, exc: StoreError) -> Response:
        return error(400, str(exc))

    async def disconnected(request: Request, exc: ClientDisconnect) -> Response:
        log.info("client %s disconnected during %s %s", client_key(request), request.method, request.url.path[:200])
        return Response(status_code=499)  # nobody reads it; answering keeps the ASGI server from logging a traceback

    routes = [Route("/api/entries", list_entries, methods=["GET"]),
              Route("/api/entries/{entry_id:int}", get_entry, methods=["GET"]),
              Route("/api/entries/{entry_id:int}", withdraw, methods=["DELETE"]),
              Route("/api/audit", audit, methods=["GET"]),
              Route("/api/entries/{entry_id:int}/examples", get_examples, methods=["GET"]),
              Route("/api/submissions", submit, methods=["POST"]),
              Route("/healthz", health, methods=["GET"])]
    if pages:
        routes += [Route("/", index_page, methods=["GET"]),
                   Route("/entries/{entry_id:int}", entry_page, methods=["GET"]),
                   Route("/static/board.js", script, methods=["GET"])]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, SubmissionError: bad_request,
                                                       StoreError: store_error,
                                                       ClientDisconnect: disconnected})
    app.state.store = store
    return app


_PAGE_HEADERS = {"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
                                            "img-src 'self' data:",
                 "X-Content-Type-Options": "nosniff"}


def bind_socket(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A listening TCP socket (port 0: a free port, read it back with ``sock.getsockname()``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def make_server(app: Any, sock: socket.socket):
    """A ``uvicorn.Server`` for ``app``; run it with ``server.run(sockets=[sock])``."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
                            proxy_headers=False, server_header=False, limit_concurrency=256, timeout_keep_alive=5)
    return uvicorn.Server(config)


def serve(db_path: str | Path, sock: socket.socket, claims: Sequence[ImportedClaim] = ()) -> None:
    """Serve the database at ``db_path`` on ``sock`` until interrupted (SIGINT / SIGTERM)."""
    try:
        app = create_app(db_path, claims=claims)
    except ImportError as e:
        raise ServeError(f"the server needs the web extras ({e.name} is missing): pip install "
                         "'robustkit[leaderboard]'") from e
    make_server(app, sock).run(sockets=[sock])
