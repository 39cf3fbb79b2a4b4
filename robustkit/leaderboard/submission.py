"""Submissions: the upload format, strict parsing of untrusted bytes, protocol rules, content hash.

A submission is one JSON object::

    {"format": "robustkit-submission", "version": 1,
     "entry": {...Entry.to_dict()...}, "examples": [...per-example records...]}

:func:`parse_submission` turns raw request bytes into a checked :class:`Submission` or raises
:class:`SubmissionError` carrying an HTTP status (400 malformed, 422 well-formed but wrong) and one
clear message. Nothing the submitter claims is trusted: every aggregate is recomputed from the
per-example records and compared (:func:`robustkit.leaderboard.entry.verify_examples`), and the
protocol rules below are enforced. The content hash (SHA-256 of the canonical JSON of the normalised
entry and records) makes uploads idempotent.

Example::

    >>> from robustkit.leaderboard.submission import parse_submission, SubmissionError
    >>> try:
    ...     parse_submission(b'{"format": "robustkit-submission", "version": 1, "entry": NaN, "examples": []}')
    ... except SubmissionError as e:
    ...     print(e.status, e)
    400 body is not valid JSON: NaN is not allowed (JSON has no NaN or infinity)
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from ..errors import RobustkitError
from ..eval.runner import canonical_json
from ..eval.schema import Fields, json_depth_ok, no_duplicate_keys, no_json_constant
from .entry import Entry, EntryError, verify_examples
from .examples import summarize_examples
from .rules import ROBUSTBENCH_RULES

SUBMISSION_FORMAT = "robustkit-submission"
SUBMISSION_VERSION = 1
MAX_JSON_DEPTH = 32
# worst-of-M with M = 1 is the single draw: a stochastic defense must be re-evaluated to be accepted
MIN_REEVAL_STOCHASTIC = ROBUSTBENCH_RULES.min_reeval_stochastic


class SubmissionError(RobustkitError, ValueError):
    """A submission is refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Submission:
    entry: Entry
    examples: list[dict[str, Any]]
    content_hash: str
    summary: dict[str, Any]


def build_submission(entry: Entry, examples: list[dict[str, Any]]) -> dict[str, Any]:
    """The upload body (as a dict) for ``entry`` and its per-example records."""
    return {"format": SUBMISSION_FORMAT, "version": SUBMISSION_VERSION, "entry": entry.to_dict(),
            "examples": examples}


def parse_json(body: bytes) -> Any:
    """Strict JSON: UTF-8, no NaN / Infinity, no duplicate keys, nesting at most MAX_JSON_DEPTH."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SubmissionError(f"body is not UTF-8 ({e.reason} at byte {e.start})", 400) from e
    try:
        value = json.loads(text, parse_constant=no_json_constant, object_pairs_hook=no_duplicate_keys)
    except RecursionError as e:
        raise SubmissionError(f"body nests deeper than {MAX_JSON_DEPTH} levels", 400) from e
    except ValueError as e:  # JSONDecodeError is a ValueError, and so are our hooks' errors
        raise SubmissionError(f"body is not valid JSON: {e}", 400) from e
    if not json_depth_ok(value, MAX_JSON_DEPTH):
        raise SubmissionError(f"body nests deeper than {MAX_JSON_DEPTH} levels", 400)
    return value


def protocol_problems(entry: Entry) -> list[str]:
    """Rules a ranked entry must follow beyond the schema (empty when it follows them all)."""
    out = []
    if entry.stochastic and entry.n_reeval < MIN_REEVAL_STOCHASTIC:
        out.append(f"a stochastic defense must be re-evaluated: n_reeval={entry.n_reeval}, need at least "
                   f"{MIN_REEVAL_STOCHASTIC} for a worst-of-M accuracy (robustkit bench --n-reeval)")
    for a in entry.attacks:
        if a.norm != entry.threat_model:
            out.append(f"attack {a.name} uses the {a.norm} norm, the entry's threat model is {entry.threat_model}")
        if not math.isclose(a.eps, entry.eps, rel_tol=1e-6, abs_tol=1e-12):
            out.append(f"attack {a.name} has budget eps={a.eps:.6g}, the entry's eps is {entry.eps:.6g}")
    if entry.eot != max(a.eot for a in entry.attacks):
        out.append(f"eot={entry.eot} is not the largest EOT of the attacks ({max(a.eot for a in entry.attacks)})")
    if entry.external is not None and entry.external.robust_accuracy > entry.robust_accuracy.value + 1e-12:
        out.append(f"external robust accuracy {entry.external.robust_accuracy:.4f} is higher than this evaluation's "
                   f"{entry.robust_accuracy.value:.4f}; 'external' is for a stronger (lower) third-party result")
    return out


def check_submission(payload: Any) -> Submission:
    """Validate a parsed submission (see module docstring); raises :class:`SubmissionError` (422)."""
    f = Fields(payload, "submission", SubmissionError)
    f.exact_keys({"format", "version", "entry", "examples"})
    if payload["format"] != SUBMISSION_FORMAT:
        raise SubmissionError(f"submission.format: expected {SUBMISSION_FORMAT!r}, got {str(payload['format'])[:60]!r}")
    version = f.int("version", 0, 10**6)
    if version != SUBMISSION_VERSION:
        raise SubmissionError(f"submission.version: {version} is not supported (this server reads "
                              f"{SUBMISSION_VERSION})")
    try:
        entry = Entry.from_dict(payload["entry"])
    except EntryError as e:
        raise SubmissionError(str(e)) from e
    problems = protocol_problems(entry)
    if problems:
        raise SubmissionError("protocol rules broken: " + "; ".join(problems))
    try:
        examples = verify_examples(entry, payload["examples"])
    except EntryError as e:
        raise SubmissionError(str(e)) from e
    digest = hashlib.sha256(canonical_json({"entry": entry.to_dict(), "examples": examples}).encode()).hexdigest()
    return Submission(entry=entry, examples=examples, content_hash=digest,
                      summary=summarize_examples(examples, entry.attack_order, eps=entry.eps))


def parse_submission(body: bytes) -> Submission:
    """Raw request bytes → a checked :class:`Submission` (raises :class:`SubmissionError`)."""
    return check_submission(parse_json(body))


def board_columns(entry: Entry) -> dict[str, float]:
    return {"clean_accuracy": entry.clean_accuracy.value, "robust_accuracy": entry.robust_accuracy.value,
            "board_accuracy": entry.board_accuracy}


def dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
