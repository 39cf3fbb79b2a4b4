"""Seeded, bounded fuzz suite over the leaderboard (issue 21: "server requests" and "leaderboard entry
loaders").

Every case is bad input and must be refused: a loader raises its **typed** robustkit error (one line),
the server answers a **4xx** JSON error. A case that is accepted (a silent acceptance), raises anything
else, or makes the server answer 5xx fails, naming the case. The random part is drawn from
``random.Random(SEED)``, so a failure reproduces exactly; the whole suite takes a few seconds.

Categories: ``entry loaders`` (``Entry.from_dict`` / ``from_json``, ``EntryMetadata.load``,
``parse_submission``, RobustBench ``model_info`` claims, the SQLite store) and ``server requests``
(every route, method, id, query parameter, header and body, through the ASGI app in-process).

``python tests/test_fuzz_leaderboard.py`` prints the figures (tried / typed or 4xx per category).
"""

from __future__ import annotations

import copy
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

import robustkit
from robustkit import RobustkitError
from robustkit.leaderboard import Entry, EntryError, EntryMetadata, load_run_entry
from robustkit.leaderboard.robustbench import ImportedClaim, load_claims
from robustkit.leaderboard.store import Store, StoreError
from robustkit.leaderboard.submission import SubmissionError, build_submission, dumps, parse_submission

SEED = 20261207
N_RANDOM = 150  # random mutations per loader


@dataclass(frozen=True)
class Case:
    category: str
    label: str
    call: Callable[[], Any]
    error: type[Exception] = RobustkitError


def run_loader_case(case: Case) -> None:
    try:
        value = case.call()
    except case.error as e:
        assert "\n" not in str(e), f"[{case.category}] {case.label}: message is not one line: {str(e)!r}"
        return
    except Exception as e:  # noqa: BLE001 - the point: anything but the typed error is a defect
        raise AssertionError(f"[{case.category}] {case.label}: raw {type(e).__name__}: {e}") from e
    raise AssertionError(f"[{case.category}] {case.label}: silently accepted, returned {str(value)[:100]}")


# ---------------------------------------------------------------------------------- mutations of JSON

def _wrong_values(v: Any, key: str) -> list[Any]:
    """Values of a type the field never accepts (or out of every range), given its valid value ``v``."""
    if isinstance(v, bool):
        return ["true", 1, 0, [], {}]
    if isinstance(v, int):
        return ["3", 1.5, True, [], -(10**30), 10**30]
    if isinstance(v, float):
        return ["0.5", True, [], {}, math.nan, math.inf, -1e300, 1e300]
    if isinstance(v, str):
        return [1, True, [], {"a": 1}, "x" * 5000]
    if isinstance(v, list):
        return ["x", 3, True, {}, [None] * 3]
    if isinstance(v, dict):
        return ["x", 3, True, [], None]
    return [[], {"a": 1}, True, "x" * 5000, math.nan]  # a None-valued optional field


def _paths(d: Any, prefix: tuple = ()) -> list[tuple]:
    out = []
    if isinstance(d, dict):
        for k, v in d.items():
            out.append(prefix + (k,))
            out += _paths(v, prefix + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d[:3]):
            out.append(prefix + (i,))
            out += _paths(v, prefix + (i,))
    return out


def _get(d, path):
    for p in path:
        d = d[p]
    return d


def mutations(valid: dict, rng: random.Random, n: int, *, skip: Callable[[tuple, Any], bool] = lambda p, v: False):
    """``n`` (label, mutated copy) pairs: a wrong-typed or out-of-range value somewhere, a key removed, or an
    unknown key added. ``skip(path, value)`` excludes mutations the schema legitimately accepts."""
    paths = _paths(valid)
    out = []
    while len(out) < n:
        path = rng.choice(paths)
        d = copy.deepcopy(valid)
        parent, key = _get(d, path[:-1]), path[-1]
        kind = rng.random()
        if kind < 0.7:
            new = rng.choice(_wrong_values(parent[key], str(key)))
            if skip(path, new):
                continue
            parent[key] = new
            label = f"{'.'.join(map(str, path))} = {str(new)[:30]}"
        elif kind < 0.85 and isinstance(parent, dict):
            if skip(path, KeyError):
                continue
            del parent[key]
            label = f"{'.'.join(map(str, path))} removed"
        elif isinstance(parent, dict):
            if skip((*path[:-1], "unknown"), 1):
                continue
            parent[f"unknown_{rng.randrange(1000)}"] = 1
            label = f"unknown key beside {'.'.join(map(str, path))}"
        else:
            continue
        out.append((label, d))
    return out


def _entry_skip(path: tuple, new: Any) -> bool:
    """Mutations an entry accepts by design: free-form attack settings and check details, the open map of
    software versions, and setting an optional field to null."""
    if any(p in ("options", "details", "software") for p in path[:-1]) or path[-1:] in (("options",), ("details",)):
        return True
    if path == ("software",) and new == {}:
        return True
    if new is None and path[-1] in ("paper_title", "link", "authors", "venue", "architecture", "additional_data",
                                    "reported", "footnote", "external", "weights_sha256", "batch_size",
                                    "defense_digest", "classifier", "score_model", "steps"):
        return True
    return False


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    run = tmp_path_factory.mktemp("fuzz-run") / "run"
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    robustkit.benchmark(clf, dataset="digits", eps=0.1, attacks=["pgd"], attack_options={"pgd": {"steps": 1}},
                        n_examples=6, batch_size=6, checks=False, run_dir=run, progress=False)
    entry, examples = load_run_entry(run, EntryMetadata(paper_title="Fuzz", authors="A. B.", venue="X 2026",
                                                        reported=0.5, additional_data=False))
    return build_submission(entry, examples)


CLAIM = {"link": "https://arxiv.org/abs/1905.13736", "name": "Unlabeled Data", "authors": "Y. C.",
         "additional_data": True, "number_forward_passes": 1, "dataset": "cifar10", "venue": "NeurIPS 2019",
         "architecture": "WideResNet-28-10", "eps": "8/255", "clean_acc": "89.69", "reported": "62.5",
         "autoattack_acc": "59.53", "external": "55.00", "footnote": "x", "unreliable": False}


def loader_cases(valid: dict, tmp: Path) -> list[Case]:
    rng = random.Random(SEED)
    cases = []
    entry = valid["entry"]
    for label, d in mutations(entry, rng, N_RANDOM, skip=_entry_skip):
        cases.append(Case("entry loaders", f"Entry.from_dict: {label}", lambda d=d: Entry.from_dict(d), EntryError))
    for label, d in mutations(valid, rng, N_RANDOM, skip=lambda p, v: _entry_skip(p[1:], v) if p[:1] == ("entry",)
                              else False):
        body = json.dumps(d, allow_nan=True).encode()
        cases.append(Case("entry loaders", f"parse_submission: {label}", lambda b=body: parse_submission(b),
                          SubmissionError))
    for label, d in mutations(CLAIM, rng, 60, skip=lambda p, v: p[-1] in ("external", "footnote", "unreliable")
                              and v is KeyError):
        cases.append(Case("entry loaders", f"model_info claim: {label}",
                          lambda d=d: ImportedClaim.from_model_info(d, name="Carmon2019Unlabeled", threat_model="Linf",
                                                                    source="claim.json"), EntryError))
    text = dumps(valid)
    raw = [("empty", b""), ("not JSON", b"{"), ("truncated", text[: len(text) // 2]), ("NaN", b'{"a": NaN}'),
           ("Infinity", text.replace(b'"eps":0.1', b'"eps":Infinity')), ("top-level list", b"[1, 2]"),
           ("invalid UTF-8", b'{"a": "\xff\xfe"}'), ("duplicate key", b'{"format": 1, "format": 2}'),
           ("deep nesting", b"[" * 5000 + b"]" * 5000), ("wrong format", text.replace(b"robustkit-submission", b"x")),
           ("BOM", b"\xef\xbb\xbf" + text), ("NUL in a string", text.replace(b'"Fuzz"', b'"Fu\\u0000zz"'))]
    for label, body in raw:
        cases.append(Case("entry loaders", f"parse_submission: {label}", lambda b=body: parse_submission(b),
                          SubmissionError))
    for label, body in raw[:9]:
        cases.append(Case("entry loaders", f"Entry.from_json: {label}",
                          lambda b=body: Entry.from_json(b.decode("utf-8", "replace")), EntryError))
    for i, (label, body) in enumerate(raw[:9] + [("metadata: unknown field", b'{"title": "x"}'),
                                                 ("metadata: bad year", b'{"year": 99999}'),
                                                 ("metadata: bad name", b'{"name": "../x"}')]):
        p = tmp / f"meta{i}.json"
        p.write_bytes(body)
        cases.append(Case("entry loaders", f"EntryMetadata.load: {label}", lambda p=p: EntryMetadata.load(p),
                          EntryError))
    cases.append(Case("entry loaders", "EntryMetadata.load: missing file",
                      lambda: EntryMetadata.load(tmp / "nope.json"), EntryError))
    for i, (label, body) in enumerate(raw[:9]):
        root = tmp / f"mi{i}"
        (root / "cifar10" / "Linf").mkdir(parents=True)
        (root / "cifar10" / "Linf" / "Bad2020Model.json").write_bytes(body)
        cases.append(Case("entry loaders", f"load_claims: {label}", lambda r=root: load_claims(r), EntryError))
    cases.append(Case("entry loaders", "load_claims: not a model_info directory", lambda: load_claims(tmp), EntryError))
    for i, (label, body) in enumerate([("garbage", b"not a database" * 100), ("empty JSON", b"{}"),
                                       ("truncated SQLite header", b"SQLite format 3\x00" + b"\x00" * 50)]):
        p = tmp / f"store{i}.db"
        p.write_bytes(body)
        cases.append(Case("entry loaders", f"Store: {label}", lambda p=p: Store(p), StoreError))
    cases.append(Case("entry loaders", "Store: a directory", lambda: Store(tmp), StoreError))
    return cases


def test_entry_loaders_refuse_every_bad_input(valid, tmp_path):
    cases = loader_cases(valid, tmp_path)
    for case in cases:
        run_loader_case(case)
    FIGURES["entry loaders"] = (len(cases), len(cases))
    assert len(cases) >= 400


# ------------------------------------------------------------------------------------ server requests

def server_cases(valid: dict, token: str, other: str, rng: random.Random) -> list[tuple[str, str, str, dict, bytes]]:
    """(label, method, path, headers, body) of bad requests."""
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    out = []
    ids = ["99999999999999999999", "9223372036854775808", "9223372036854775807", "0", "-1", "abc", "1e5",
           "%00", "%F0%9F%98%80", "1.5", "0x10", " 1", "..%2f..%2fetc%2fpasswd", str(10**400)]
    for i in ids:
        for path in (f"/api/entries/{i}", f"/api/entries/{i}/examples", f"/entries/{i}"):
            out.append((f"GET {path}", "GET", path, {}, b""))
        out.append((f"DELETE /api/entries/{i}", "DELETE", f"/api/entries/{i}", {"Authorization": f"Bearer {token}"},
                    b""))
    out.append(("DELETE someone else's entry", "DELETE", "/api/entries/1", {"Authorization": f"Bearer {other}"}, b""))
    out.append(("DELETE without a token", "DELETE", "/api/entries/1", {}, b""))
    flag = ["", "yes", "2", "true;", "TRUE", "\u202e"]
    bad = {"limit": ["", "-1", "0", "501", "1e3", "9" * 40, "x", " 5"], "offset": ["", "-1", "1e3", "9" * 40, "x"],
           "sort": ["", "id", "DROP TABLE entries", "board;", "x" * 300], "stochastic": flag, "unreliable": flag,
           "batch_dependent": flag, "adapts_at_test_time": flag, "evil": ["1"], "limit[]": ["1"]}
    for _ in range(120):
        p = rng.choice(sorted(bad))
        v = rng.choice(bad[p])
        out.append((f"GET /api/entries?{p}={v[:20]}", "GET", "/api/entries", {"_params": {p: v}}, b""))
    for v in ("x" * 300, "a\x00b", "\u202e" * 2, "\n"):  # a text filter: any short printable string, else 400
        out.append((f"GET /api/entries?dataset={v[:20]!r}", "GET", "/api/entries", {"_params": {"dataset": v}}, b""))
    out.append(("GET /api/audit?limit=0", "GET", "/api/audit", {"_params": {"limit": "0"}}, b""))
    good = dumps(valid)
    for label, headers in [("no token", {"Content-Type": "application/json"}),
                           ("not bearer", {"Authorization": f"Basic {token}", "Content-Type": "application/json"}),
                           ("bad token", {"Authorization": "Bearer rk_0000000000000000_" + "a" * 43,
                                          "Content-Type": "application/json"}),
                           ("empty bearer", {"Authorization": "Bearer ", "Content-Type": "application/json"}),
                           ("text/plain", {**auth, "Content-Type": "text/plain"}),
                           ("gzip", {**auth, "Content-Encoding": "gzip"}),
                           ("bad Content-Length", {**auth, "Content-Length": "-5"})]:
        out.append((f"POST submission: {label}", "POST", "/api/submissions", headers, good))
    for label, d in mutations(valid, rng, 80, skip=lambda p, v: _entry_skip(p[1:], v) if p[:1] == ("entry",) else False):
        out.append((f"POST submission: {label}", "POST", "/api/submissions", auth, json.dumps(d).encode()))
    for label, body in [("empty", b""), ("not JSON", b"{"), ("NaN", b'{"a": NaN}'), ("deep", b"[" * 3000 + b"]" * 3000),
                        ("invalid UTF-8", b"\xff"), ("too large", b" " * (300 * 1024))]:
        out.append((f"POST submission body: {label}", "POST", "/api/submissions", auth, body))
    for method in ("PUT", "PATCH", "POST", "DELETE"):
        for path in ("/api/entries", "/healthz", "/api/audit", "/static/board.js", "/nope"):
            out.append((f"{method} {path}", method, path, {}, b""))
    return out


def test_server_requests_get_4xx_never_5xx(valid, tmp_path):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from robustkit.leaderboard.server import RateLimit, create_app

    high = RateLimit(10**6, 10**6)
    app = create_app(tmp_path / "board.db", max_body=256 * 1024, limits={"read": high, "write": high,
                                                                          "auth_failure": high})
    store = app.state.store
    token, other = store.create_token("fuzzer"), store.create_token("other")
    rng = random.Random(SEED)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post("/api/submissions", content=dumps(valid),
                        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        assert r.status_code == 201  # one good entry (id 1), so that the bad requests have something to break
        before = store.digest()
        cases = server_cases(valid, token, other, rng)
        statuses = []
        for label, method, path, headers, body in cases:
            headers = dict(headers)
            params = headers.pop("_params", None)
            r = client.request(method, path, params=params, headers=headers, content=body or None)
            statuses.append(r.status_code)
            assert 400 <= r.status_code < 500, (label, r.status_code, r.text[:200])
            if path.startswith("/api/"):
                err = r.json()
                assert set(err) == {"error", "status"} and "\n" not in err["error"], (label, err)
        assert store.digest() == before  # nothing was stored, changed or withdrawn
        assert client.get("/api/entries/1").status_code == 200
    FIGURES["server requests"] = (len(cases), sum(400 <= s < 500 for s in statuses))
    assert len(cases) >= 250


FIGURES: dict[str, tuple[int, int]] = {}


def test_figures_are_reported(capsys):
    """Prints tried / refused per category (the issue's closing note quotes them); run after the two above."""
    if len(FIGURES) < 2:
        pytest.skip("run with the two fuzz tests above (they fill the figures)")
    with capsys.disabled():
        for category, (tried, refused) in FIGURES.items():
            print(f"\nfuzz {category}: tried {tried}, refused with a typed error / 4xx {refused}, "
                  f"silently accepted 0, 5xx 0")
    assert all(tried == refused for tried, refused in FIGURES.values())


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q", "-s"]))
