"""Upload a finished run to a leaderboard server (``robustkit submit``); standard library only.

Example::

    >>> from robustkit.leaderboard.client import submission_url
    >>> submission_url("http://127.0.0.1:8000/")
    'http://127.0.0.1:8000/api/submissions'
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ..errors import RobustkitError
from .entry import EntryMetadata, load_run_entry
from .submission import build_submission, dumps


class SubmitError(RobustkitError, RuntimeError):
    """The server refused the submission or could not be reached; the message says which and why."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def submission_url(server: str) -> str:
    parts = urllib.parse.urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SubmitError(f"server must be an http(s) URL like http://127.0.0.1:8000, got {server!r}")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/api/submissions", "", ""))


def _call(url: str, server: str, token: str, method: str, body: bytes | None, what: str,
          timeout: float) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - scheme checked by the caller
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            message = json.loads(raw)["error"]
        except (ValueError, KeyError, TypeError):
            message = raw[:200].decode("utf-8", "replace") or e.reason
        raise SubmitError(f"server refused the {what} ({e.code}): {message}", e.code) from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise SubmitError(f"cannot reach {server}: {reason}") from e


def post_submission(server: str, token: str, body: bytes, *, timeout: float = 300.0) -> dict[str, Any]:
    """POST ``body`` (JSON bytes); the server's JSON answer on 200/201, else :class:`SubmitError`."""
    return _call(submission_url(server), server, token, "POST", body, "submission", timeout)


def withdraw_entry(server: str, token: str, entry_id: int, *, timeout: float = 60.0) -> dict[str, Any]:
    """Withdraw entry ``entry_id`` (the token must be its submitter's); the server's JSON answer."""
    if isinstance(entry_id, bool) or not isinstance(entry_id, int) or entry_id < 1:
        raise SubmitError(f"entry id must be a positive integer, got {entry_id!r}")
    url = submission_url(server).rsplit("/api/submissions", 1)[0] + f"/api/entries/{entry_id}"
    return _call(url, server, token, "DELETE", None, "withdrawal", timeout)


def submit_run(run_dir: str | os.PathLike, server: str, token: str, metadata: EntryMetadata | None = None,
               *, timeout: float = 300.0) -> dict[str, Any]:
    """Build the entry of ``run_dir`` (checked against its per-example records) and upload both.

    Returns the server's answer: ``{"id", "content_hash", "created", "name", "url"}``.
    """
    entry, examples = load_run_entry(run_dir, metadata)
    return post_submission(server, token, dumps(build_submission(entry, examples)), timeout=timeout)
