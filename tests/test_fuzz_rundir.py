"""Fuzz suite, run-directory category (issue 21): a seeded, bounded set of damaged run directories.

Each case copies a finished run directory, damages one thing (a file deleted, truncated, bit-flipped,
emptied, appended to, a JSON field set to a wrong value or deleted, JSON lines duplicated, dropped or
swapped, one shard's file copied over another's, a folder replaced by a file, a stale or garbage
lease), removes ``record.json`` and resumes. The outcome must be either a typed robustkit error, or a
documented recovery: a warning naming what was found (a damaged shard moved aside and recomputed,
damaged checks re-run, a lease taken over) and a result identical to the undamaged run. A raw
exception fails the test at once; a resume that accepts damage without a word counts as silent and
fails the test. The figures (tried / typed / recovered) are printed.
"""

import copy
import json
import logging
import random
import shutil
import time

import pytest

import robustkit
from helpers import run_numbers, run_per_example
from robustkit.errors import RobustkitError
from robustkit.eval import benchmark

pytestmark = pytest.mark.usefixtures("one_thread")

KW = dict(dataset="digits", eps=0.1, attacks=["pgd"], attack_options={"pgd": {"steps": 2}}, n_examples=16,
          batch_size=8, seed=11, checks=True, probe_size=4,
          check_options={"steps": 2, "square_queries": 5}, lease_timeout=0.5)
CASES = 80
BAD_VALUES = [None, -1, 0, 1e308, "x", True, [], {}, [1, 2]]


@pytest.fixture(scope="module")
def clf():
    return robustkit.create_classifier("tiny_cnn.digits", pretrained=True)


def _json_paths(obj, prefix=()):
    """Every (path of keys/indices) inside a JSON value."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _json_paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:4]):
            out += _json_paths(v, (*prefix, i))
    return out


def _set(obj, path, value, delete=False):
    for key in path[:-1]:
        obj = obj[key]
    if delete:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value


def _mutate(run_dir, rng):
    """Damage ``run_dir`` in one random way; returns a description."""
    shards = run_dir / "shards"
    files = ["manifest.json", "checks.json"] + [f"shards/shard_0000{i}{s}" for i in (0, 1)
                                                 for s in (".jsonl", ".meta.json", ".ledger.json", ".pt")]
    kind = rng.choice(["delete", "truncate", "flip", "empty", "append", "json_set", "json_delete", "lines",
                       "copy_other_shard", "dir_is_file", "lease"])
    name = rng.choice(files)
    f = run_dir / name
    if kind in ("json_set", "json_delete") and f.suffix == ".pt":
        kind = "flip"
    if kind == "lines" and f.suffix != ".jsonl":
        kind = "truncate"
    if kind == "delete":
        f.unlink()
    elif kind == "truncate":
        data = f.read_bytes()
        f.write_bytes(data[: rng.randrange(len(data))])
    elif kind == "flip":
        data = bytearray(f.read_bytes())
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
        f.write_bytes(bytes(data))
    elif kind == "empty":
        f.write_bytes(b"")
    elif kind == "append":
        f.write_bytes(f.read_bytes() + rng.choice([b"\n", b"{}", b"garbage", b'{"index": 3}\n']))
    elif kind in ("json_set", "json_delete"):
        lines = f.read_text().splitlines() if f.suffix == ".jsonl" else [f.read_text()]
        line = rng.randrange(len(lines))
        doc = json.loads(lines[line])
        path = rng.choice(_json_paths(doc))
        value = rng.choice([v for v in BAD_VALUES if v != _get(doc, path)])
        _set(doc, path, copy.deepcopy(value), delete=kind == "json_delete")
        name += f" line {line}: {'.'.join(map(str, path))}" + ("" if kind == "json_delete" else f"={value!r}")
        lines[line] = json.dumps(doc)
        f.write_text("\n".join(lines) + "\n")
    elif kind == "lines":
        lines = f.read_text().splitlines()
        how = rng.choice(["duplicate", "drop", "swap"])
        i, j = rng.sample(range(len(lines)), 2)
        if how == "duplicate":
            lines.insert(j, lines[i])
        elif how == "drop":
            del lines[i]
        else:
            lines[i], lines[j] = lines[j], lines[i]
        f.write_text("\n".join(lines) + "\n")
        kind += f" ({how})"
    elif kind == "copy_other_shard":
        suffix = rng.choice([".jsonl", ".meta.json", ".ledger.json", ".pt", "all"])
        for s in ([".jsonl", ".meta.json", ".ledger.json", ".pt"] if suffix == "all" else [suffix]):
            shutil.copy(shards / f"shard_00000{s}", shards / f"shard_00001{s}")
        name = f"shard_00000{suffix} over shard_00001"
    elif kind == "dir_is_file":
        name = rng.choice(["shards", "leases"])
        shutil.rmtree(run_dir / name)
        (run_dir / name).write_text("not a folder")
    elif kind == "lease":  # shard 1 unfinished, its lease left by a dead or silent worker
        (shards / "shard_00001.ledger.json").unlink()
        lease = run_dir / "leases" / "shard_00001.lease"
        how = rng.choice(["dead pid", "garbage", "empty", "other host"])
        from robustkit.eval.runner import this_process

        me = this_process()
        content = {"dead pid": json.dumps({**me, "pid": 2 ** 22 + rng.randrange(1000), "token": "x"}),
                   "garbage": "\x00{not json", "empty": "",
                   "other host": json.dumps({**me, "host": "elsewhere", "token": "x"})}[how]
        lease.write_text(content)
        name = how
    return f"{kind}: {name}"


def _get(doc, path):
    for key in path:
        doc = doc[key]
    return doc


def test_fuzz_damaged_run_directories(clf, tmp_path, caplog):
    ref_dir = tmp_path / "ref"
    ref = benchmark(clf, run_dir=ref_dir, **KW)
    rng = random.Random(21)
    tried, typed, recovered, silent = 0, 0, 0, []
    t0 = time.perf_counter()
    for case in range(CASES):
        run_dir = tmp_path / f"case{case}"
        shutil.copytree(ref_dir, run_dir)
        (run_dir / "record.json").unlink()
        what = _mutate(run_dir, rng)
        tried += 1
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="robustkit"):
            try:
                rec = benchmark(clf, run_dir=run_dir, **KW)
            except RobustkitError as e:
                assert "\n" not in str(e) and str(e), (what, e)
                typed += 1
                continue
        warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        same = run_numbers(rec) == run_numbers(ref) and run_per_example(run_dir) == run_per_example(ref_dir)
        assert same, f"{what}: resumed to another result"
        if warned or (what.startswith("delete: ") and (run_dir / what.split(": ")[1]).exists()):
            recovered += 1  # said so, or a missing file recomputed
        else:
            silent.append(what)
        shutil.rmtree(run_dir)
    seconds = time.perf_counter() - t0
    print(f"run-directory fuzz: tried {tried}, typed {typed}, recovered {recovered}, silent {len(silent)} "
          f"({seconds:.0f} s)")
    assert not silent, silent
    assert typed > 0 and recovered > 0  # both outcomes are exercised
