"""The leaderboard server: real uvicorn on 127.0.0.1 (free port), bad submissions, auth, limits, concurrency.

Every server started here binds to 127.0.0.1 on a port the OS picks and is shut down in a ``finally``;
every request has a timeout and every loop is bounded.
"""

from __future__ import annotations

import copy
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

import robustkit
from robustkit import cli
from robustkit.eval.stats import wilson_interval
from robustkit.leaderboard import Entry, load_run_entry
from robustkit.leaderboard.store import Store
from robustkit.leaderboard.submission import MIN_REEVAL_STOCHASTIC, build_submission, dumps

pytest.importorskip("starlette", reason="the leaderboard server needs starlette (pip install robustkit[leaderboard])")
pytest.importorskip("uvicorn", reason="the leaderboard server needs uvicorn (pip install robustkit[leaderboard])")

from robustkit.leaderboard.server import RateLimit, bind_socket, create_app, make_server  # noqa: E402

TIMEOUT = 30.0
MAX_BODY = 256 * 1024  # small limit for the tests' servers
HIGH = {"read": RateLimit(10**6, 10**6), "write": RateLimit(10**6, 10**6), "auth_failure": RateLimit(10**6, 10**6)}


# ------------------------------------------------------------------------------------------------ helpers

@contextmanager
def running_server(db: Path, **kwargs):
    """uvicorn in a thread on 127.0.0.1:<free port>; yields (host, port, store); always shut down."""
    app = create_app(db, **kwargs)
    sock = bind_socket("127.0.0.1", 0)
    server = make_server(app, sock)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        yield "127.0.0.1", sock.getsockname()[1], app.state.store
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)
        sock.close()
        assert not thread.is_alive(), "test server did not stop"


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, parsed JSON or raw text, headers) of one request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        ctype = resp.getheader("content-type", "")
        data = json.loads(raw) if ctype.startswith("application/json") else raw.decode("utf-8", "replace")
        return resp.status, data, dict(resp.getheaders())
    finally:
        conn.close()


def post(port, body, token, ctype="application/json", extra=None):
    headers = {"Content-Type": ctype}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    headers.update(extra or {})
    return request(port, "POST", "/api/submissions", body, headers)


class Noisy(robustkit.Classifier):
    def __init__(self, base):
        super().__init__(10, (1, 8, 8), robustkit.DefenseTraits(stochastic=True, gradient="exact"))
        self.base = base

    def logits(self, x):
        import torch

        out = self.base(x)
        return out + torch.randn_like(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("server-runs")
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    robustkit.benchmark(clf, dataset="digits", eps=0.1, attacks=["pgd", "apgd-ce"],
                        attack_options={"pgd": {"steps": 2}, "apgd-ce": {"steps": 2}}, n_examples=12, batch_size=6,
                        checks=False, run_dir=root / "det", progress=False)
    robustkit.benchmark(Noisy(clf), dataset="digits", eps=0.1, attacks=["pgd"], attack_options={"pgd": {"steps": 1}},
                        n_examples=8, batch_size=8, n_reeval=3, checks=False, run_dir=root / "sto", progress=False)
    robustkit.benchmark(clf, dataset="digits", eps=0.2, attacks=["pgd"], attack_options={"pgd": {"steps": 2}},
                        n_examples=8, batch_size=8, cascade=False, checks=False, run_dir=root / "nocascade",
                        progress=False)
    return {k: root / k for k in ("det", "sto", "nocascade")}


@pytest.fixture(scope="module")
def valid(runs):
    """A valid submission dict of the deterministic run."""
    entry, examples = load_run_entry(runs["det"])
    return build_submission(entry, examples)


# ------------------------------------------------------------------------------------- good submissions

def test_submit_read_filter_and_idempotency(runs, valid, tmp_path):
    with running_server(tmp_path / "board.db", max_body=MAX_BODY, limits=HIGH) as (_, port, store):
        token = store.create_token("alice")
        status, data, _ = post(port, dumps(valid), token)
        assert status == 201 and data["created"] is True and data["name"] == "tiny_cnn.digits"
        first = data
        status, data, _ = post(port, json.dumps(valid, indent=3).encode(), token)  # same content, other bytes
        assert status == 200 and data["created"] is False and data["id"] == first["id"]
        assert data["content_hash"] == first["content_hash"]
        bob = store.create_token("bob")
        for run in ("sto", "nocascade"):
            e, ex = load_run_entry(runs[run])
            status, data, _ = post(port, dumps(build_submission(e, ex)), bob)
            assert status == 201, data
        assert store.count() == 3

        status, data, _ = request(port, "GET", "/api/entries")
        assert status == 200 and data["total"] == 3 and data["count"] == 3
        boards = [r["entry"] for r in data["entries"]]
        ranked = [Entry.from_dict(b).board_accuracy for b in boards]
        assert ranked == sorted(ranked, reverse=True)  # default sort: board accuracy
        status, data, _ = request(port, "GET", "/api/entries?stochastic=true")
        assert [r["entry"]["stochastic"] for r in data["entries"]] == [True]
        assert data["entries"][0]["entry"]["n_reeval"] == 3
        status, data, _ = request(port, "GET", "/api/entries?submitter=bob&sort=submitted&limit=1")
        assert data["total"] == 2 and data["count"] == 1 and data["entries"][0]["submitter"] == "bob"
        status, data, _ = request(port, "GET", "/api/entries?dataset=cifar10")
        assert data["total"] == 0 and data["entries"] == []
        status, data, _ = request(port, "GET", "/api/entries?batch_dependent=false")
        assert data["total"] == 3 and not any(r["entry"]["batch_dependent"] for r in data["entries"])
        assert request(port, "GET", "/api/entries?batch_dependent=true")[1]["total"] == 0

        status, data, _ = request(port, "GET", f"/api/entries/{first['id']}")
        assert status == 200 and data["submitter"] == "alice"
        assert data["board"] == ["digits", "Linf", "0.1"] and data["ranked"] is False  # 12 images, --no-checks
        assert {p["code"] for p in data["not_ranked_because"]} == {"sample", "budget", "checks_skipped"}
        assert Entry.from_dict(data["entry"]) == Entry.from_dict(valid["entry"])
        s = data["examples_summary"]
        assert s["n_examples"] == 12 and sum(s["outcomes"].values()) == 12
        assert s["outcomes"]["robust"] == valid["entry"]["robust"]["worst_of_m"]["correct"]
        assert s["per_attack"]["pgd"]["attacked"] == valid["entry"]["clean"]["worst_of_m"]["correct"]
        status, data, _ = request(port, "GET", f"/api/entries/{first['id']}/examples")
        assert status == 200 and data["examples"] == valid["examples"]
        status, data, _ = request(port, "GET", "/healthz")
        assert status == 200 and data == {"status": "ok", "entries": 3}


def test_cli_submit_and_tokens(runs, tmp_path, capsys, monkeypatch):
    db = tmp_path / "board.db"
    assert cli.main(["serve", "--db", str(db), "--create-token", "carol"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("rk_") and Store(db).authenticate(token) == "carol"
    secret = token.split("_", 2)[2]  # rk_<id>_<secret>; the secret itself may contain '_'
    assert len(secret) == 43
    for f in tmp_path.glob("board.db*"):  # stored hashed, in the database and its WAL
        assert token.encode() not in f.read_bytes() and secret.encode() not in f.read_bytes()
    assert cli.main(["serve", "--db", str(db), "--create-token", "carol"]) == 2
    assert "already exists" in capsys.readouterr().err
    with running_server(db, max_body=MAX_BODY, limits=HIGH) as (_, port, store):
        url = f"http://127.0.0.1:{port}"
        assert cli.main(["submit", str(runs["det"]), "--server", url, "--token", token]) == 0
        out = capsys.readouterr().out
        assert out.startswith("tiny_cnn.digits: stored as entry 1 (") and f"{url}/api/entries/1" in out
        monkeypatch.setenv("ROBUSTKIT_TOKEN", token)
        assert cli.main(["submit", str(runs["det"]), "--server", url + "/"]) == 0
        assert "already stored as entry 1" in capsys.readouterr().out
        assert cli.main(["submit", str(runs["det"]), "--server", url, "--name", "Other2024Name"]) == 0
        assert "Other2024Name: updated entry 1" in capsys.readouterr().out  # same run: same entry, new name
        assert store.count() == 1 and store.get_entry(1).entry["name"] == "Other2024Name"
        before = store.digest()
        assert cli.main(["submit", str(runs["det"]), "--server", url, "--token", token + "x"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["robustkit: error: server refused the submission (401): invalid or revoked API token"]
        assert cli.main(["serve", "--db", str(db), "--revoke-token", "carol"]) == 0
        assert cli.main(["serve", "--db", str(db), "--list-tokens"]) == 0
        assert capsys.readouterr().out.strip().splitlines()[-1].endswith("revoked")
        assert cli.main(["submit", str(runs["sto"]), "--server", url]) == 2
        assert "invalid or revoked API token" in capsys.readouterr().err
        assert store.digest() != before  # the revocation changed the tokens table, nothing else
        assert store.count() == 1
    monkeypatch.delenv("ROBUSTKIT_TOKEN")
    assert cli.main(["submit", str(runs["det"]), "--server", "http://127.0.0.1:9"]) == 2
    assert "no API token" in capsys.readouterr().err
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    assert cli.main(["submit", str(runs["det"]), "--server", f"http://127.0.0.1:{dead}", "--token", token]) == 2
    assert "cannot reach" in capsys.readouterr().err
    assert cli.main(["submit", str(runs["det"]), "--server", "ftp://x", "--token", token]) == 2
    assert "http(s) URL" in capsys.readouterr().err


# -------------------------------------------------------------------------------------- bad submissions

def _bad_cases(valid: dict, revoked: str, token: str) -> list[tuple[str, bytes, dict | None, str, str | None]]:
    """(label, body, headers or None for the default valid ones, expected message fragment, token override)."""
    cases = []

    def body_case(label, body, fragment, headers=None, tok=None):
        cases.append((label, body, headers, fragment, tok))

    def mutated(label, fn, fragment):
        d = copy.deepcopy(valid)
        fn(d)
        body_case(label, dumps(d), fragment)

    # 1. malformed JSON and non-objects
    raw = dumps(valid)
    for i, (body, frag) in enumerate([
            (b"", "empty body"), (b"{", "not valid JSON"), (b"{]", "not valid JSON"), (b"nul", "not valid JSON"),
            (raw[:-1], "not valid JSON"), (raw + b"x", "not valid JSON"), (raw[: len(raw) // 2], "not valid JSON"),
            (b"{'format': 1}", "not valid JSON"), (b"\xff\xfe{}", "not UTF-8"), (b"\xc3\x28", "not UTF-8"),
            (b'{"a": NaN}', "NaN is not allowed"), (b'{"a": Infinity}', "Infinity is not allowed"),
            (b'{"a": -Infinity}', "-Infinity is not allowed"), (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
            (b"[" * 5000 + b"]" * 5000, "nests deeper"), (b"[" * 40 + b"]" * 40, "nests deeper"),
            (b"null", "submission: expected an object"), (b"[]", "submission: expected an object"),
            (b"1", "submission: expected an object"), (b'"x"', "submission: expected an object"),
            (b"{}", "missing fields"), (b"\x00", "not valid JSON"), (b"  ", "not valid JSON")]):
        body_case(f"malformed-{i}", body, frag)
    # NaN / Infinity written into otherwise valid submissions
    text = raw.decode()
    for i, key in enumerate(['"eps":', '"value":', '"distance":', '"gpu_hours":']):
        pos = text.index(key) + len(key)
        end = min(p for p in (text.index(",", pos), text.index("}", pos)) if p > 0)
        for const in ("NaN", "Infinity", "-Infinity"):
            body_case(f"const-{key}-{const}", (text[:pos] + const + text[end:]).encode(), "is not allowed")
    body_case("huge-number", text.replace('"n_reeval":1', '"n_reeval":1e999').encode(),
              "n_reeval: expected an integer")

    # 2. submission envelope
    mutated("no-format", lambda d: d.pop("format"), "missing fields ['format']")
    mutated("bad-format", lambda d: d.update(format="robustbench"), "submission.format")
    mutated("bad-version", lambda d: d.update(version=2), "submission.version: 2 is not supported")
    mutated("version-string", lambda d: d.update(version="1"), "submission.version: expected an integer")
    mutated("extra-key", lambda d: d.update(token="x"), "unknown fields ['token']")
    mutated("entry-list", lambda d: d.update(entry=[]), "entry: expected an object")
    mutated("examples-object", lambda d: d.update(examples={}), "examples: expected an array")
    mutated("examples-empty", lambda d: d.update(examples=[]), "no per-example records")

    # 3. every entry field: missing, and of a wrong type
    for key, value in valid["entry"].items():
        mutated(f"missing-{key}", lambda d, k=key: d["entry"].pop(k), f"missing fields ['{key}']")
        if value is None:  # nullable metadata: strings, a fraction, a boolean, an object
            wrong = [[1], "x"] if key == "external" else [[1], {"x": 1}]
        else:
            wrong = [123, [1]] if isinstance(value, str) else ["x", [1]]
        if isinstance(value, bool) or key == "additional_data":
            wrong.append(1)
        if isinstance(value, int) and not isinstance(value, bool):
            wrong.append(True)
        for j, w in enumerate(wrong):
            if key in ("per_attack", "clean", "robust", "software", "external") and w == [1]:
                continue
            mutated(f"type-{key}-{j}", lambda d, k=key, w=w: d["entry"].__setitem__(k, w), f"entry.{key}")

    # 4. ranges and accuracies
    for field, values in {"eps": [0, -0.1, 1.5], "n_reeval": [0, -1, 10**6], "n_examples": [0, -5, 11, 13],
                          "forward_passes_per_prediction": [0], "forward_nfe": [-1], "gpu_hours": [-1.0, 1e10],
                          "eot": [0], "seed": [2**70]}.items():
        for v in values:
            mutated(f"range-{field}-{v}", lambda d, f=field, v=v: d["entry"].__setitem__(f, v), "entry.")
    for group in ("clean", "robust"):
        for p in ("single_draw", "majority", "worst_of_m"):
            for label, change, frag in [("value>1", {"value": 1.5}, f"{group}.{p}.value"),
                                        ("value<0", {"value": -0.25}, f"{group}.{p}.value"),
                                        ("correct>n", {"correct": 13}, f"{group}.{p}.correct"),
                                        ("n", {"n": 24}, f"{group}.{p}.n"),
                                        ("ci", _outside(valid["entry"][group][p]), "does not contain"),
                                        ("confidence", {"confidence": 1.0}, "confidence")]:
                mutated(f"{group}-{p}-{label}", lambda d, g=group, p=p, c=change: d["entry"][g][p].update(c), frag)

            def shift(d, g=group, p=p):  # a self-consistent claim that the records do not support
                s = d["entry"][g][p]
                s["correct"] = s["correct"] - 1 if s["correct"] > 0 else 1
                s["value"] = s["correct"] / s["n"]
                s["ci_low"], s["ci_high"] = wilson_interval(s["correct"], s["n"])  # recomputed on parse
            mutated(f"{group}-{p}-disagrees", shift, "aggregates disagree with the per-example records")
    for attack in valid["entry"]["per_attack"]:
        def shift_attack(d, a=attack):
            s = d["entry"]["per_attack"][a]["worst_of_m"]
            s["correct"] = s["correct"] + 1 if s["correct"] < s["n"] else 0
            s["value"] = s["correct"] / s["n"]
            s["ci_low"], s["ci_high"] = wilson_interval(s["correct"], s["n"])
        mutated(f"per-attack-{attack}-disagrees", shift_attack, f"per_attack.{attack}.worst_of_m: claimed")

    # 5. per-example records
    def ex(label, fn, frag):
        mutated(f"example-{label}", lambda d: fn(d["examples"]), frag)
    first_attacked = next(i for i, r in enumerate(valid["examples"]) if r["attacks"]["pgd"] is not None)
    fa = first_attacked
    ex("short-draws", lambda e: e[0].update(clean=[]), "booleans")
    ex("long-draws", lambda e: e[0].update(clean=[True, True]), "booleans")
    ex("int-draws", lambda e: e[0].update(clean=[1]), "booleans")
    ex("string-draws", lambda e: e[0].update(clean="true"), "booleans")
    ex("no-index", lambda e: e[0].pop("index"), "missing fields ['index']")
    ex("dup-index", lambda e: e[1].update(index=e[0]["index"]), "appears twice")
    ex("neg-index", lambda e: e[0].update(index=-1), "index: expected an integer")
    ex("float-index", lambda e: e[0].update(index=1.5), "index: expected an integer")
    ex("neg-label", lambda e: e[0].update(label=-3), "label: expected an integer")
    ex("extra", lambda e: e[0].update(x_adv=[0.1]), "unknown fields ['x_adv']")
    ex("not-object", lambda e: e.__setitem__(0, [1, 2]), "examples[0]: expected an object")
    ex("missing-attack", lambda e: e[fa]["attacks"].pop("pgd"), "expected exactly the attacks")
    ex("extra-attack", lambda e: e[fa]["attacks"].update(square=None), "expected exactly the attacks")
    ex("hidden-attack", lambda e: e[fa]["attacks"].update(pgd=None), "null (skipped) although")
    ex("neg-distance", lambda e: e[fa]["attacks"]["pgd"].update(distance=-0.01), "distance")
    ex("str-distance", lambda e: e[fa]["attacks"]["pgd"].update(distance="0.1"), "distance")
    ex("over-budget", lambda e: e[fa]["attacks"]["pgd"].update(distance=0.5), "exceeds eps")
    ex("valid-int", lambda e: e[fa]["attacks"]["pgd"].update(valid=1), "valid: expected true or false")
    ex("invalid-unflagged", lambda e: e[fa]["attacks"]["pgd"].update(valid=False),
       "marked invalid but no blocking adversarial_validity check failed")
    ex("attack-draws", lambda e: e[fa]["attacks"]["pgd"].update(correct=[True, False]), "booleans")
    ex("dropped", lambda e: e.pop(), "records but the entry says n_examples=12")
    ex("duplicated", lambda e: e.append(copy.deepcopy(e[0])), "records but the entry says n_examples=12")
    ex("flipped", lambda e: e[fa]["clean"].__setitem__(0, not e[fa]["clean"][0]), "aggregates disagree")

    # 6. protocol rules and consistency flags
    mutated("stochastic-no-reeval", lambda d: d["entry"].update(stochastic=True),
            f"need at least {MIN_REEVAL_STOCHASTIC} for a worst-of-M")
    mutated("attack-norm", lambda d: d["entry"]["attacks"][0].update(norm="L2"), "uses the L2 norm")
    mutated("attack-eps", lambda d: d["entry"]["attacks"][0].update(eps=0.3), "has budget eps=0.3")
    mutated("eot", lambda d: d["entry"].update(eot=5), "eot=5 is not the largest EOT")
    mutated("external-higher", lambda d: d["entry"].update(external={"robust_accuracy": 1.0, "footnote": "x"}),
            "stronger (lower)")
    mutated("unreliable-flag", lambda d: d["entry"].update(unreliable=True), "unreliable must be true exactly")
    mutated("validity-fail", lambda d: d["entry"]["checks"][0].update(status="fail"), "unreliable must be true")
    mutated("validity-fail-flagged", lambda d: (d["entry"]["checks"][0].update(status="fail"),
                                                d["entry"].update(unreliable=True)),
            "adversarial_validity check failed but every adversarial example is marked valid")
    mutated("bad-check-status", lambda d: d["entry"]["checks"][0].update(status="ok"), "status: expected one of")

    # 7. path tricks and hostile strings in names
    for i, name in enumerate(["../../etc/passwd", "..", ".hidden", "a/b", "a\\b", "/abs", "a b", "", "%2e%2e",
                              "na\u00efve", "x" * 200, "a\x00b", "C:\\x", "a..b", "-flag"]):
        mutated(f"name-{i}", lambda d, n=name: d["entry"].update(name=n), "entry.name")
    for i, name in enumerate(["../x", "a/b", "..", "."]):
        mutated(f"dataset-{i}", lambda d, n=name: d["entry"].update(dataset=n), "entry.dataset")
        mutated(f"split-{i}", lambda d, n=name: d["entry"].update(split=n), "entry.split")
        mutated(f"check-name-{i}", lambda d, n=name: d["entry"]["checks"][0].update(name=n), "checks[0].name")
        mutated(f"attack-name-{i}", lambda d, n=name: d["entry"]["attacks"][0].update(name=n), "attacks[0].name")
    mutated("long-footnote", lambda d: d["entry"].update(footnote="x" * 5000), "longer than 4000")
    mutated("nul-footnote", lambda d: d["entry"].update(footnote="a\x00b"), "NUL")

    # 8. headers: auth, content type, encoding, sizes
    body_case("no-token", raw, "missing API token", tok="")
    unknown_id = "Bearer rk_" + "0" * 16 + "_" + "A" * 43
    for i, header in enumerate(["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Token abc", "bearer rk_x", token[:-1],
                                token + "a", f"Bearer {token[:-2]}zz", f"Bearer {token.upper()}", unknown_id,
                                f"Bearer {revoked}"]):
        frag = "invalid or revoked" if header.lower().startswith("bearer ") and header.strip().lower() != "bearer" \
            else "missing API token"
        body_case(f"auth-{i}", raw, frag, headers={"Authorization": header, "Content-Type": "application/json"})
    for i, ctype in enumerate(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""]):
        body_case(f"ctype-{i}", raw, "Content-Type must be application/json",
                  headers={"Authorization": f"Bearer {token}", **({"Content-Type": ctype} if ctype else {})})
    body_case("gzip", raw, "compressed bodies", headers={"Authorization": f"Bearer {token}",
                                                         "Content-Type": "application/json",
                                                         "Content-Encoding": "gzip"})
    big = dumps({**valid, "examples": valid["examples"] * (MAX_BODY // len(dumps(valid["examples"])) + 2)})
    assert len(big) > MAX_BODY
    body_case("oversize", big, "exceeds the limit")
    body_case("oversize-padding", raw[:-1] + b" " * MAX_BODY + b"}", "exceeds the limit")
    return cases


def _outside(stat: dict) -> dict:
    """An interval that does not contain the stat's value."""
    v = stat["value"]
    return {"ci_low": v + 0.01, "ci_high": 1.0} if v < 0.99 else {"ci_low": 0.0, "ci_high": v - 0.01}


def _assert_clear_4xx(label, status, data, fragment):
    assert 400 <= status < 500, f"{label}: status {status}: {data}"
    assert isinstance(data, dict) and isinstance(data.get("error"), str), f"{label}: {data!r}"
    assert data["status"] == status and len(data["error"]) >= 10, f"{label}: unclear message {data['error']!r}"
    assert "Traceback" not in data["error"] and len(data["error"]) < 2000
    assert fragment in data["error"], f"{label}: expected {fragment!r} in {data['error']!r}"


def test_bad_submissions_are_refused_cleanly(valid, tmp_path):
    with running_server(tmp_path / "board.db", max_body=MAX_BODY, limits=HIGH) as (_, port, store):
        token = store.create_token("mallory")
        store.create_token("revoked")
        revoked = store.create_token("revoked2")
        store.revoke_token("revoked2")
        assert post(port, dumps(valid), token)[0] == 201  # one good entry, so "unchanged" is not trivially empty
        before = store.digest()
        cases = _bad_cases(valid, revoked, token)
        assert len(cases) >= 200, len(cases)
        statuses = {}
        for label, body, headers, fragment, tok in cases:
            if headers is None:
                status, data, _ = post(port, body, token if tok is None else (tok or None))
            else:
                status, data, _ = request(port, "POST", "/api/submissions", body, headers)
            _assert_clear_4xx(label, status, data, fragment)
            statuses[status] = statuses.get(status, 0) + 1
        assert store.digest() == before and store.count() == 1
        assert set(statuses) == {400, 401, 413, 415, 422}, statuses
        # the good submission still goes through afterwards (nothing got wedged)
        status, data, _ = post(port, dumps(valid), token)
        assert status == 200 and data["created"] is False


STORE_V1_ENTRIES = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entries (id INTEGER PRIMARY KEY AUTOINCREMENT, content_hash TEXT NOT NULL UNIQUE,
    submitter TEXT NOT NULL, submitted_utc TEXT NOT NULL, name TEXT NOT NULL, defense TEXT NOT NULL,
    dataset TEXT NOT NULL, threat_model TEXT NOT NULL, eps REAL NOT NULL, stochastic INTEGER NOT NULL,
    adapts_at_test_time INTEGER NOT NULL, unreliable INTEGER NOT NULL, clean_accuracy REAL NOT NULL,
    robust_accuracy REAL NOT NULL, board_accuracy REAL NOT NULL, entry_json TEXT NOT NULL,
    summary_json TEXT NOT NULL, examples_zlib BLOB NOT NULL);
INSERT INTO meta VALUES ('store_version', '1');
"""


def test_a_version_1_store_is_migrated_with_its_entries(valid, tmp_path):
    """A database written before the batch_dependent column (store version 1) opens, gains the column filled
    from each entry's JSON (and, as version 3, each entry's identity and an empty audit log), and filters on
    it; its rows are untouched."""
    import sqlite3
    import zlib

    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.executescript(STORE_V1_ENTRIES)
    ident = ("defense_digest", "classifier", "score_model")
    e = {**{k: v for k, v in valid["entry"].items() if k not in ident}, "schema_version": 2}  # entry schema 2
    old = {k: v for k, v in e.items() if k not in ("batch_dependent", "batch_size")}  # an entry-schema-1 entry
    old["schema_version"] = 1
    for i, entry in enumerate([old, {**e, "batch_dependent": True}, {**e, "batch_dependent": False}]):
        con.execute("INSERT INTO entries VALUES (NULL, ?, 'alice', '2026-01-01T00:00:00+00:00', ?, ?, ?, ?, ?, 0, 0, "
                    "0, 0.9, 0.5, 0.5, ?, '{}', ?)",
                    (f"hash{i}", f"Old{i}", e["defense"], e["dataset"], e["threat_model"], e["eps"],
                     json.dumps(entry), zlib.compress(b"[]")))
    con.commit()
    con.close()
    store = Store(db)
    assert store.count() == 3
    rows, total = store.list_entries(batch_dependent=True)
    assert total == 1 and rows[0].entry["name"] == e["name"] and rows[0].content_hash == "hash1"
    assert {r.content_hash for r in store.list_entries(batch_dependent=False)[0]} == {"hash0", "hash2"}
    assert store.get_entry(rows[0].id).entry == {**e, "batch_dependent": True}  # the JSON is kept as it was
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT value FROM meta WHERE key = 'store_version'").fetchone()[0] == "3"
    by_hash = {r.content_hash: r.identity for r in store.list_entries()[0]}
    assert by_hash["hash0"] == by_hash["hash2"] != by_hash["hash1"]  # batch-dependent: its batch size is identity
    assert store.audit_log() == ([], 0)
    before = store.digest()
    assert Store(db).digest() == before  # opening it again migrates nothing


def test_bad_reads_and_routes(tmp_path):
    with running_server(tmp_path / "board.db", max_body=MAX_BODY, limits=HIGH) as (_, port, store):
        before = store.digest()
        for method, path, status, fragment in [
                ("GET", "/api/entries?limit=0", 400, "limit"), ("GET", "/api/entries?limit=abc", 400, "limit"),
                ("GET", "/api/entries?limit=100000", 400, "limit"), ("GET", "/api/entries?offset=-1", 400, "offset"),
                ("GET", "/api/entries?sort=id;DROP%20TABLE%20entries", 400, "sort"),
                ("GET", "/api/entries?stochastic=yes", 400, "stochastic"),
                ("GET", "/api/entries?batch_dependent=maybe", 400, "batch_dependent"),
                ("GET", "/api/entries?evil=1", 400, "unknown query parameter"),
                ("GET", "/api/entries?dataset=" + "x" * 300, 400, "dataset"),
                ("GET", "/api/entries/999", 404, "no entry with id 999"),
                ("GET", "/api/entries/999/examples", 404, "no entry"),
                ("GET", "/api/entries/abc", 404, "no route"), ("GET", "/api/entries/..%2f..%2fetc", 404, "no route"),
                ("GET", "/api/submissions", 405, "not allowed"), ("POST", "/api/entries", 405, "not allowed"),
                ("PUT", "/api/entries/1", 405, "not allowed"),
                ("DELETE", "/api/entries/1", 401, "missing API token"),
                ("GET", "/api/entries/99999999999999999999", 404, "no entry with id 9999"),
                ("GET", "/api/entries/9223372036854775808/examples", 404, "no entry"),
                ("GET", "/api/audit?limit=0", 400, "limit"), ("GET", "/api/audit?x=1", 400, "unknown query"),
                ("PUT", "/api/submissions", 405, "not allowed")]:
            code, data, _ = request(port, method, path, b"{}" if method in ("POST", "PUT") else None,
                                    {"Content-Type": "application/json"})
            assert code == status, (path, data)
            assert fragment in data["error"], (path, data)
        assert store.digest() == before


def test_body_limit_is_enforced_while_streaming(valid, tmp_path):
    """A chunked body (no Content-Length) is cut off at the limit, and a lying Content-Length is refused."""
    with running_server(tmp_path / "board.db", max_body=64 * 1024, limits=HIGH) as (_, port, store):
        token = store.create_token("streamer")
        before = store.digest()
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
            s.sendall(b"POST /api/submissions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Authorization: Bearer " + token.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"[" + b" " * 8190 + b"]"
            for _ in range(10):  # 80 KiB > 64 KiB: bounded
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            s.sendall(b"0\r\n\r\n")
            resp = b""
            deadline = time.monotonic() + TIMEOUT
            while b"\r\n\r\n" not in resp or not resp.rstrip().endswith(b"}"):
                part = s.recv(65536)
                if not part or time.monotonic() > deadline:
                    break
                resp += part
        head, _, body = resp.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), resp[:200]
        assert b"exceeds the limit of 65536 bytes" in body
        status, data, _ = post(port, b"x" * 10, token, extra={"Content-Length": str(10**9)})
        assert status in (400, 413)
        assert store.digest() == before


def test_rate_limits(valid, tmp_path):
    limits = {"read": RateLimit(5, 0.001), "write": RateLimit(2, 0.001), "auth_failure": RateLimit(3, 0.001)}
    with running_server(tmp_path / "board.db", max_body=MAX_BODY, limits=limits) as (_, port, store):
        token = store.create_token("eager")
        codes = [request(port, "GET", "/api/entries")[0] for _ in range(7)]
        assert codes == [200] * 5 + [429] * 2
        status, data, headers = request(port, "GET", "/api/entries")
        assert status == 429 and "rate limit" in data["error"] and int(headers["retry-after"]) >= 1
        codes = [post(port, dumps(valid), token)[0] for _ in range(3)]
        assert codes == [201, 200, 429]  # the third within the burst window is refused
        assert [post(port, dumps(valid), "rk_bad")[0] for _ in range(3)] == [401] * 3
        status, data, _ = post(port, dumps(valid), "rk_bad")  # more guesses from this address: throttled
        assert status == 429 and "failed authentications" in data["error"]
        patient = store.create_token("patient")  # a valid token from the same address is not locked out
        status, data, _ = post(port, dumps(valid), patient)
        assert status == 200 and data["action"] == "unchanged", data
        status, data, _ = post(port, dumps(valid), token)  # eager's own write budget is spent, not a lockout
        assert status == 429 and "writes by eager" in data["error"]
        assert store.count() == 1


# --------------------------------------------------------------------- concurrency and restarts (processes)

CLIENT = textwrap.dedent("""
    import http.client, json, random, sys
    port, token, seed, files = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    random.Random(seed).shuffle(files)
    out = []
    for f in files:
        body = open(f, "rb").read()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request("POST", "/api/submissions", body=body,
                     headers={"Content-Type": "application/json", "Authorization": "Bearer " + token})
        r = conn.getresponse()
        data = json.loads(r.read())
        conn.close()
        out.append([f, r.status, data.get("id"), data.get("content_hash")])
    print(json.dumps(out))
""")


@contextmanager
def cli_server(db: Path):
    """``python -m robustkit serve --db DB --port 0`` in a subprocess; yields its port; always stopped."""
    log = open(db.with_name(db.name + f".{time.monotonic_ns()}.log"), "w")
    proc = subprocess.Popen([sys.executable, "-m", "robustkit", "serve", "--db", str(db), "--host", "127.0.0.1",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=log, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(120)
        assert line and line[0].startswith("serving http://127.0.0.1:"), \
            f"server did not start: {line} {proc.poll()} {Path(log.name).read_text()}"
        port = int(line[0].strip().rsplit(":", 1)[1])
        deadline = time.monotonic() + 60
        while True:  # the socket is bound before the line is printed; wait until uvicorn answers
            try:
                if request(port, "GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "server did not answer"
            time.sleep(0.1)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
        proc.stdout.close()
        log.close()


def test_concurrent_submissions_and_restart(valid, tmp_path):
    """50 distinct valid submissions, each sent by 5 processes at once: all stored exactly once; a killed
    and restarted server still has every acknowledged entry."""
    db = tmp_path / "board.db"
    store = Store(db)
    tokens = [store.create_token(f"proc{i}") for i in range(5)]
    files = []
    for i in range(50):
        d = copy.deepcopy(valid)
        d["entry"]["name"] = f"Variant{i:02d}"
        d["entry"]["footnote"] = f"variant {i}"
        d["entry"]["defense_digest"] = hashlib.sha256(f"variant {i}".encode()).hexdigest()  # 50 identities
        f = tmp_path / f"sub{i:02d}.json"
        f.write_bytes(dumps(d))
        files.append(str(f))
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    with cli_server(db) as (proc, port):
        clients = [subprocess.Popen([sys.executable, str(script), str(port), tok, str(seed), *files],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for seed, tok in enumerate(tokens)]
        results = []
        for c in clients:
            out, err = c.communicate(timeout=300)
            assert c.returncode == 0, err
            results += json.loads(out)
        assert len(results) == 250
        assert {r[1] for r in results} <= {200, 201}, [r for r in results if r[1] not in (200, 201)][:3]
        created = [r for r in results if r[1] == 201]
        assert len(created) == 50 and len({r[0] for r in created}) == 50  # each body created exactly once
        ids = {}
        for f, _, entry_id, digest in results:
            ids.setdefault(f, set()).add((entry_id, digest))
        assert all(len(v) == 1 for v in ids.values())  # every sender got the same id and hash
        status, data, _ = request(port, "GET", "/api/entries?limit=500&sort=name")
        assert data["total"] == 50
        assert [r["entry"]["name"] for r in data["entries"]] == [f"Variant{i:02d}" for i in range(50)]
        snapshot = {r["id"]: (r["content_hash"], r["entry"]) for r in data["entries"]}
        proc.kill()  # no graceful shutdown: acknowledged writes must already be durable
        proc.wait(30)
    assert Store(db).count() == 50
    with cli_server(db) as (proc, port):
        status, data, _ = request(port, "GET", "/api/entries?limit=500&sort=name")
        assert {r["id"]: (r["content_hash"], r["entry"]) for r in data["entries"]} == snapshot
        status, data, _ = post(port, Path(files[7]).read_bytes(), tokens[0])
        assert status == 200 and data["created"] is False and data["id"] in snapshot
        status, data, _ = request(port, "GET", f"/api/entries/{data['id']}/examples")
        assert data["examples"] == valid["examples"]
    with cli_server(db) as (proc, port):  # after a graceful stop too
        assert request(port, "GET", "/healthz")[1]["entries"] == 50


# ------------------------------------------------------------------------------ identity and lifecycle

def test_identity_ignores_metadata_and_seed_but_not_what_was_evaluated(runs, valid):
    from robustkit.leaderboard import EntryMetadata

    e = Entry.from_dict(valid["entry"])
    renamed, _ = load_run_entry(runs["det"], EntryMetadata(name="Other2024Name", footnote="corrected"))
    assert renamed.identity() == e.identity() and renamed.content_hash() != e.content_hash()
    assert Entry.from_dict({**valid["entry"], "seed": 7}).identity() == e.identity()
    for change in ({"defense_digest": "b" * 64}, {"threat_model": "L2"}, {"eps": 0.2}, {"n_reeval": 2},
                   {"attacks": [{**a, "steps": 99} for a in valid["entry"]["attacks"]]}):
        changed = dataclasses_replace_dict(valid["entry"], change)
        assert changed.identity() != e.identity(), change
    assert e.defense_digest is not None and len(e.defense_digest) == 64


def dataclasses_replace_dict(d: dict, change: dict) -> Entry:
    """An entry with ``change`` applied, built without the schema's cross-field checks (identity only)."""
    import dataclasses

    e = Entry.from_dict(d)
    fields = dict(change)
    if "attacks" in fields:
        from robustkit.leaderboard import AttackSpec

        fields["attacks"] = tuple(AttackSpec(**a) for a in fields["attacks"])
    return dataclasses.replace(e, **fields)


def test_resubmit_updates_withdraw_and_audit_log(runs, valid, tmp_path):
    import sqlite3

    with running_server(tmp_path / "board.db", max_body=MAX_BODY, limits=HIGH) as (_, port, store):
        alice, bob = store.create_token("alice"), store.create_token("bob")
        status, first, _ = post(port, dumps(valid), alice)
        assert status == 201 and first["action"] == "create"
        renamed = json.loads(dumps(valid))
        renamed["entry"]["name"] = "Renamed2024Run"
        status, data, _ = post(port, dumps(renamed), alice)
        assert (status, data["action"], data["id"]) == (200, "update", first["id"])
        rows, total = store.list_entries()
        assert total == 1 and rows[0].entry["name"] == "Renamed2024Run"
        status, data, _ = post(port, dumps(valid), bob)  # bob's copy of alice's entry (other metadata)
        assert status == 403 and "belongs to alice" in data["error"]
        status, data, _ = request(port, "DELETE", f"/api/entries/{first['id']}", headers={"Authorization": f"Bearer {bob}"})
        assert status == 403 and "only its submitter" in data["error"]
        status, data, _ = request(port, "DELETE", "/api/entries/77", headers={"Authorization": f"Bearer {alice}"})
        assert status == 404
        for _ in range(2):  # withdrawing twice is harmless
            status, data, _ = request(port, "DELETE", f"/api/entries/{first['id']}",
                                      headers={"Authorization": f"Bearer {alice}"})
            assert status == 200 and data["withdrawn"] is True
        assert store.count() == 0 and request(port, "GET", "/api/entries")[1]["total"] == 0
        assert request(port, "GET", f"/api/entries/{first['id']}")[0] == 410
        assert request(port, "GET", f"/api/entries/{first['id']}/examples")[0] == 404
        assert "robustkit leaderboard" in request(port, "GET", "/")[1] and "Renamed2024Run" not in request(port, "GET", "/")[1]
        status, data, _ = post(port, dumps(valid), alice)  # back on the board, same id
        assert (status, data["action"], data["id"]) == (200, "reinstate", first["id"])
        status, log, _ = request(port, "GET", "/api/audit")
        assert [(r["action"], r["entry_id"], r["actor"]) for r in log["records"]] == [
            ("create", 1, "alice"), ("update", 1, "alice"), ("withdraw", 1, "alice"), ("reinstate", 1, "alice")]
        assert {r["identity"] for r in log["records"]} == {Entry.from_dict(valid["entry"]).identity()}
        with sqlite3.connect(store.path) as con:  # append-only, enforced by the database itself
            for sql in ("UPDATE audit SET actor = 'mallory'", "DELETE FROM audit"):
                with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                    con.execute(sql)
        assert request(port, "GET", "/api/audit")[1] == log


def test_cli_withdraw(valid, runs, tmp_path, capsys):
    db = tmp_path / "board.db"
    with running_server(db, max_body=MAX_BODY, limits=HIGH) as (_, port, store):
        token = store.create_token("dana")
        status, data, _ = post(port, dumps(valid), token)
        url = f"http://127.0.0.1:{port}"
        assert cli.main(["leaderboard", "withdraw", str(data["id"]), "--server", url, "--token", token]) == 0
        assert capsys.readouterr().out.strip() == f"withdrew entry {data['id']} ({url}/api/entries/{data['id']})"
        assert store.count() == 0
        assert cli.main(["leaderboard", "withdraw", "5", "--server", url, "--token", token + "x"]) == 2
        assert capsys.readouterr().err.strip() == ("robustkit: error: server refused the withdrawal (401): invalid or "
                                                   "revoked API token")


# ------------------------------------------------------------------------------- server robustness

def test_stalled_body_is_timed_out_and_disconnects_are_one_line(valid, tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="robustkit")  # an in-process CLI main() may have set it
    with running_server(tmp_path / "board.db", max_body=MAX_BODY, limits=HIGH, body_timeout=0.5) as (_, port, store):
        token = store.create_token("slow")
        before = store.digest()
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
            s.sendall(b"POST /api/submissions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Authorization: Bearer " + token.encode() + b"\r\nContent-Length: 1000\r\n\r\n{\"for")
            t0 = time.monotonic()
            answer = b""
            while b"stalled" not in answer and time.monotonic() - t0 < TIMEOUT:
                part = s.recv(4096)
                if not part:
                    break
                answer += part
            waited = time.monotonic() - t0
        assert answer.startswith(b"HTTP/1.1 408") and b"stalled" in answer, answer[:200]
        assert waited < 5
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:  # the client goes away
            s.sendall(b"POST /api/submissions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Authorization: Bearer " + token.encode() + b"\r\nContent-Length: 1000\r\n\r\n{\"for")
            time.sleep(0.1)
        deadline = time.monotonic() + 5
        while "disconnected" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert request(port, "GET", "/healthz")[0] == 200
        assert store.digest() == before
    assert "disconnected during POST /api/submissions" in caplog.text
    assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records), caplog.text


@pytest.mark.parametrize("args", [["--create-token", ""], ["--create-token", "  "], ["--revoke-token", ""]])
def test_serve_refuses_empty_token_names(tmp_path, capsys, args):
    db = tmp_path / "board.db"
    assert cli.main(["serve", "--db", str(db), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a submitter name" in err[0]
    assert not db.exists()  # refused before anything was created
