"""Run-directory integrity, liveness and faults (issue 21 items 1, 2, 9).

Every damaged shard is recomputed with a warning naming it or refused with a typed error, never
aggregated; a dead worker's lease is taken over at once on its host; a failed write names its path and
leaves nothing partial, and the run then resumes to the identical result.
"""

import errno
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import robustkit
from helpers import run_numbers, run_per_example
from robustkit.errors import InputError, RobustkitError
from robustkit.eval import benchmark
from robustkit.eval import runner as runner_mod
from robustkit.eval.runner import (RunConfigError, RunDir, RunIntegrityError, RunIOError, holder_is_gone,
                                   make_shards, process_start_time, this_process)

pytestmark = pytest.mark.usefixtures("one_thread")

KW = dict(dataset="digits", eps=0.1, attacks=["pgd"], attack_options={"pgd": {"steps": 2}}, n_examples=24,
          batch_size=8, checks=False, seed=3)


@pytest.fixture(scope="module")
def clf():
    return robustkit.create_classifier("tiny_cnn.digits", pretrained=True)


@pytest.fixture(scope="module")
def reference(clf, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    rec = benchmark(clf, run_dir=run_dir, **KW)
    return rec, run_dir


def _ledger_fix(run_dir, name):
    """Rewrite the ledger entry of shard ``name`` so its sizes and hashes match the files as they are now
    (a consistent forgery: only the content checks can catch what was changed)."""
    ledger = run_dir / "shards" / f"{name}.ledger.json"
    entry = json.loads(ledger.read_text())
    for f in entry["files"]:
        data = (run_dir / "shards" / f).read_bytes()
        entry["files"][f] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    ledger.write_text(json.dumps(entry, sort_keys=True) + "\n")  # the form robustkit writes


def _damage(run_dir, kind):
    """Damage shard 1 in one way; returns the file the warning must name."""
    d = run_dir / "shards"
    jsonl = d / "shard_00001.jsonl"
    if kind == "missing":
        jsonl.unlink()
    elif kind == "truncated":
        data = jsonl.read_bytes()
        jsonl.write_bytes(data[: len(data) // 2])
    elif kind == "edited":
        lines = [json.loads(s) for s in jsonl.read_text().splitlines()]
        lines[0]["attacks"]["pgd"]["correct"] = [not lines[0]["attacks"]["pgd"]["correct"][0]]
        jsonl.write_text("".join(json.dumps(r) + "\n" for r in lines))
    elif kind == "edited_meta":
        meta = d / "shard_00001.meta.json"
        meta.write_text(meta.read_text().replace('"forwards": ', '"forwards": 1'))
        return meta
    elif kind == "duplicated_lines":
        lines = jsonl.read_text().splitlines()
        jsonl.write_text("\n".join(lines[:4] + lines[:4]) + "\n")
    elif kind == "duplicated_shard":  # shard 0's files and ledger entry copied over shard 1's
        for suffix in (".jsonl", ".meta.json", ".pt", ".ledger.json"):
            shutil.copy(d / f"shard_00000{suffix}", d / f"shard_00001{suffix}")
        return d / "shard_00001.ledger.json"
    elif kind == "other_indices":  # lines of other examples, with a ledger entry forged to match them
        lines = [json.loads(s) for s in jsonl.read_text().splitlines()]
        for r in lines:
            r["index"] += 100
        jsonl.write_text("".join(json.dumps(r) + "\n" for r in lines))
        _ledger_fix(run_dir, "shard_00001")
    else:
        raise AssertionError(kind)
    return jsonl


DAMAGE = {"missing": r"jsonl is missing", "truncated": r"jsonl has \d+ bytes, its ledger entry says \d+ \(truncated\?\)",
          "edited": r"jsonl (has \d+ bytes|differs).*edited\?", "edited_meta": r"meta\.json (has \d+ bytes|differs).*edited\?",
          "duplicated_lines": r"jsonl (has \d+ bytes|differs).*(truncated|edited)\?",
          "duplicated_shard": r"ledger\.json: shard does not match the manifest",
          "other_indices": r"jsonl holds examples \[108, 109, 110, \.\.\., 115\] \(8\), the manifest says \[8, 9, 10, \.\.\., 15\]"}


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_shard_is_refused_then_recomputed_with_a_warning(clf, reference, tmp_path, caplog, kind):
    ref, ref_dir = reference
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir, run_dir)
    (run_dir / "record.json").unlink()
    named = _damage(run_dir, kind)
    run = RunDir(run_dir, json.loads((run_dir / "manifest.json").read_text())["config"], make_shards(24, 8))
    with pytest.raises(RunIntegrityError, match=r"shard_00001\." + DAMAGE[kind]):  # never aggregated as it is
        run.read_shard(run.shards[1])
    run.read_shard(run.shards[0])  # the others are fine
    with caplog.at_level(logging.WARNING, logger="robustkit.eval.runner"):
        rec = benchmark(clf, run_dir=run_dir, **KW)
    warned = [r.getMessage() for r in caplog.records if "recomputing shard_00001" in r.getMessage()]
    assert len(warned) == 1 and str(named) in warned[0], [r.getMessage() for r in caplog.records]
    assert run_numbers(rec) == run_numbers(ref)
    assert rec.n_examples == 24 == rec.robust["worst_of_m"].n == len(run_per_example(run_dir))
    assert run_per_example(run_dir) == run_per_example(ref_dir)
    aside = list((run_dir / "damaged").glob("*/shard_00001.ledger.json"))
    assert len(aside) == 1  # moved aside for inspection, never deleted
    assert not any(p.name.endswith(".tmp") for p in run_dir.rglob("*"))


def test_damage_after_the_workers_finished_raises_instead_of_aggregating(clf, reference, tmp_path, monkeypatch):
    """Between the workers and the aggregation nothing is recomputed: a shard damaged then is refused."""
    _, ref_dir = reference
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir, run_dir)
    import importlib

    bm = importlib.import_module("robustkit.eval.benchmark")
    real = bm._execute

    def execute_then_damage(job, *a, **k):
        real(job, *a, **k)
        _damage(run_dir, "edited")

    monkeypatch.setattr(bm, "_execute", execute_then_damage)
    with pytest.raises(RunIntegrityError, match=r"shard_00001\.jsonl has \d+ bytes, its ledger entry says \d+ \(edited\?\)"):
        benchmark(clf, run_dir=run_dir, **KW)


def test_shards_without_a_ledger_entry_are_recomputed(clf, reference, tmp_path):
    """A run killed between its data files and its ledger entry (or written by an older robustkit)."""
    ref, ref_dir = reference
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir, run_dir)
    entry = run_dir / "shards" / "shard_00002.ledger.json"
    entry.unlink()
    stamp = (run_dir / "shards" / "shard_00000.jsonl").stat().st_mtime_ns
    rec = benchmark(clf, run_dir=run_dir, **KW)
    assert entry.exists() and run_numbers(rec) == run_numbers(ref)
    assert (run_dir / "shards" / "shard_00000.jsonl").stat().st_mtime_ns == stamp  # done shards untouched


def test_an_edited_manifest_is_refused_with_a_typed_error(clf, reference, tmp_path):
    _, ref_dir = reference
    cases = {
        "config edited, hash kept": lambda m: {**m, "config": {**m["config"], "seed": 4}},
        "shards edited": lambda m: {**m, "shards": [[0, 12], [12, 24]]},
        "shards not pairs": lambda m: {**m, "shards": [0, 8, 16]},
        "version": lambda m: {**m, "manifest_version": 99},
        "not an object": lambda m: [m],
        "no config": lambda m: {k: v for k, v in m.items() if k != "config"},
    }
    for what, edit in cases.items():
        run_dir = tmp_path / what.replace(" ", "_").replace(",", "")
        shutil.copytree(ref_dir, run_dir)
        m = json.loads((run_dir / "manifest.json").read_text())
        (run_dir / "manifest.json").write_text(json.dumps(edit(m)))
        with pytest.raises(RunConfigError, match="manifest.json"):
            benchmark(clf, run_dir=run_dir, **KW)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(InputError, match="names a file, not a directory"):  # refused before anything is done
        benchmark(clf, run_dir=tmp_path / "a_file", **KW)


def test_a_damaged_checks_file_is_rerun_not_trusted(clf, tmp_path, caplog):
    kw = {**KW, "checks": True, "probe_size": 8, "check_options": {"steps": 2, "square_queries": 20}}
    run_dir = tmp_path / "run"
    first = benchmark(clf, run_dir=run_dir, **kw)
    (run_dir / "record.json").unlink()
    for bad in ('{"asked": 1', '{"checks": [{"name": 1}], "asked": ' + json.dumps(
            json.loads((run_dir / "checks.json").read_text())["asked"]) + ', "seconds": 1}'):
        (run_dir / "checks.json").write_text(bad)
        with caplog.at_level(logging.WARNING, logger="robustkit.eval.benchmark"):
            again = benchmark(clf, run_dir=run_dir, **kw)
        assert any("checks.json is damaged" in r.getMessage() for r in caplog.records)
        assert [c.status for c in again.checks] == [c.status for c in first.checks]
        caplog.clear()


# ------------------------------------------------------------------------------------------------ faults

class _FailingFile:
    """A file whose writes fail with ``err`` after ``allow`` bytes (the rest of the write is lost)."""

    def __init__(self, f, err, allow):
        self.f, self.err, self.allow = f, err, allow

    def write(self, data):
        self.f.write(data[: self.allow])
        raise OSError(self.err, os.strerror(self.err))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _fail_writes_after(monkeypatch, n_ok, err):
    """Let the first ``n_ok`` file writes of the runner succeed, fail every later one with ``err``."""
    count = {"n": 0}
    real_open = open

    def fake_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        if "w" in mode:
            count["n"] += 1
            if count["n"] > n_ok:
                return _FailingFile(f, err, allow=10)
        return f

    monkeypatch.setattr(runner_mod, "open", fake_open, raising=False)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_failed_write_is_typed_names_its_path_leaves_nothing_partial_and_resumes(clf, reference, tmp_path,
                                                                                   monkeypatch, err):
    """Disk full (ENOSPC) and a read-only directory (EROFS, or EACCES for a directory without write
    permission; simulated, as the tests may run as root) during shard 2's files."""
    ref, ref_dir = reference
    run_dir = tmp_path / "run"
    # manifest (1 write), leases (1 write per claim), shard files (4 per shard): shard 0 and part of shard 1
    _fail_writes_after(monkeypatch, n_ok=1 + 5 + 2, err=err)
    with pytest.raises(RunIOError) as e:
        benchmark(clf, run_dir=run_dir, **KW)
    assert isinstance(e.value, RobustkitError) and isinstance(e.value, OSError) and e.value.errno == err
    assert "shard_00001" in str(e.value) and str(run_dir) in str(e.value) and "\n" not in str(e.value)
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
    assert sorted(p.name for p in (run_dir / "shards").iterdir()) == sorted(
        f"shard_00000{s}" for s in (".jsonl", ".ledger.json", ".meta.json", ".pt"))  # nothing of shard 1
    assert not list((run_dir / "leases").iterdir())
    monkeypatch.undo()
    rec = benchmark(clf, run_dir=run_dir, **KW)
    assert run_numbers(rec) == run_numbers(ref) and run_per_example(run_dir) == run_per_example(ref_dir)


FSIZE_SCRIPT = """
import resource, sys, torch, robustkit
torch.set_num_threads(1)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
try:
    robustkit.benchmark(clf, run_dir=sys.argv[1], **{KW})
except robustkit.errors.RobustkitError as e:
    print(type(e).__name__, e.errno, e, file=sys.stderr)
    sys.exit(3)
"""


def test_a_file_size_limit_is_typed_leaves_nothing_partial_and_resumes(clf, tmp_path):
    """RLIMIT_FSIZE in a subprocess (Python ignores SIGXFSZ, so the write fails with EFBIG): a limit
    above the manifest's and per-example files' sizes but below the x_adv file's."""
    kw = {**KW, "batch_size": 24}  # one shard whose x_adv file (24 digits) is the largest file
    ref_dir = tmp_path / "ref"
    ref = benchmark(clf, run_dir=ref_dir, **kw)
    sizes = {p.name: p.stat().st_size for p in (ref_dir / "shards").iterdir()}
    limit = max((ref_dir / "manifest.json").stat().st_size, *(v for k, v in sizes.items() if k[-3:] != ".pt")) + 1
    assert limit < sizes["shard_00000.pt"]
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", FSIZE_SCRIPT.replace("{KW}", repr(kw)), str(run_dir), str(limit)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 3, out.stderr[-2000:]
    assert out.stderr.startswith(f"RunIOError {errno.EFBIG} ") and "shard_00000.pt" in out.stderr, out.stderr
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
    assert not list((run_dir / "shards").iterdir()) and not list((run_dir / "leases").iterdir())
    rec = benchmark(clf, run_dir=run_dir, **kw)
    assert run_numbers(rec) == run_numbers(ref) and run_per_example(run_dir) == run_per_example(ref_dir)


# ---------------------------------------------------------------------------------------------- liveness

def test_a_lease_records_its_holder_and_a_gone_holder_is_recognised(tmp_path):
    run = RunDir.open(tmp_path / "r", {"a": 1}, make_shards(10, 5))
    lease = run.claim(run.shards[0])
    held = json.loads(lease.path.read_text())
    me = this_process()
    assert {k: held[k] for k in me} == me and me["start_time"] == process_start_time(os.getpid())
    assert holder_is_gone(held) is None  # this very process
    lease.release()

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    alive = {**me, "pid": child.pid, "start_time": process_start_time(child.pid)}
    assert holder_is_gone(alive) is None
    assert "another process" in holder_is_gone({**alive, "start_time": alive["start_time"] - 1})  # pid reused
    child.kill()
    child.wait()
    assert "is gone" in holder_is_gone(alive)
    assert holder_is_gone({**alive, "host": "elsewhere"}) is None  # another host: judged by its heartbeat
    assert holder_is_gone({**alive, "pid_namespace": "pid:[1]"}) is None  # another container
    assert "rebooted" in holder_is_gone({**alive, "boot_id": "0" * 32})
    assert holder_is_gone("garbage") is None and holder_is_gone({"pid": -1}) is None


def test_a_dead_holders_lease_is_taken_over_at_once_and_logged(tmp_path, caplog):
    run = RunDir.open(tmp_path / "r", {"a": 1}, make_shards(10, 5))
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = {**this_process(), "pid": child.pid, "start_time": 1, "token": "t"}
    path = tmp_path / "r" / "leases" / "shard_00000.lease"
    path.parent.mkdir()
    path.write_text(json.dumps(dead))
    (tmp_path / "r" / "shards").mkdir()
    orphan = tmp_path / "r" / "shards" / ".shard_00000.jsonl.0123.tmp"  # fresh: written just before the kill
    orphan.write_text("half")
    other = {**dead, "host": "elsewhere"}
    (path.parent / "shard_00001.lease").write_text(json.dumps(other))
    with caplog.at_level(logging.WARNING, logger="robustkit.eval.runner"):
        lease = run.claim(run.shards[0], lease_timeout=3600)
        assert run.claim(run.shards[1], lease_timeout=3600) is None  # another host's, heart-beating
    assert lease is not None and not orphan.exists()
    assert [r.getMessage() for r in caplog.records] == [
        f"took over shard_00000 from pid {child.pid} on {dead['host']}: process {child.pid} is gone"]
    lease.release()
    old = time.time() - 120
    os.utime(path.parent / "shard_00001.lease", (old, old))
    taken = run.claim(run.shards[1], lease_timeout=60)  # its heartbeat is older than the timeout
    assert taken is not None
    taken.release()
    assert not list(path.parent.iterdir())


def test_a_takeover_never_removes_a_lease_installed_meanwhile(tmp_path):
    lease = tmp_path / "x.lease"
    lease.write_text(json.dumps({"token": "new"}))
    assert not RunDir._take_over(lease, {"token": "old"})  # judged dead, but replaced since
    assert json.loads(lease.read_text()) == {"token": "new"} and len(list(tmp_path.iterdir())) == 1
    assert RunDir._take_over(lease, {"token": "new"}) and not lease.exists()


def test_benchmark_validates_lease_timeout(clf, tmp_path):
    for bad in (0, -1, float("nan"), "60", True):
        with pytest.raises(robustkit.InputError, match="lease_timeout"):
            benchmark(clf, run_dir=tmp_path / "r", lease_timeout=bad, **KW)


KILL_SCRIPT = """
import logging, sys, time, torch, robustkit
torch.set_num_threads(1)
logging.basicConfig(level=logging.WARNING, format="%(created).3f %(message)s")
clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
print(f"{time.time():.3f} ready", file=sys.stderr, flush=True)
robustkit.benchmark(clf, dataset="digits", eps=0.1, attacks=["pgd"], attack_options={"pgd": {"steps": 200}},
                    n_examples=60, batch_size=10, seed=5, checks=False, run_dir=sys.argv[1])
"""


def test_rerun_after_sigkill_takes_the_dead_workers_shard_over_within_5s(tmp_path):
    """The default lease timeout (60 s) must not delay a re-run on the same host: the lease of the killed
    process is taken over at once. Latency = from the re-run's call of benchmark() to the takeover
    (its start-up, importing torch, is not the runner's and is reported apart)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run_dir = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(run_dir)], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (run_dir / "leases" / "shard_00001.lease").exists():  # one shard done, at work on the next
        assert p.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    leases = [f.name for f in (run_dir / "leases").iterdir()]
    held = [f for f in leases if not (run_dir / "shards" / f.replace(".lease", ".ledger.json")).exists()]
    assert len(held) == 1, leases  # the dead worker's lease of an unfinished shard, fresh
    shard = held[0].removesuffix(".lease")
    t_launch = time.time()
    out = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(run_dir)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    stamps = {line.split(" ", 1)[1]: float(line.split(" ", 1)[0]) for line in out.stderr.splitlines()
              if line[:1].isdigit()}
    took = [m for m in stamps if m.startswith(f"took over {shard} from pid ")]
    assert len(took) == 1 and took[0].endswith("is gone"), out.stderr
    latency = stamps[took[0]] - stamps["ready"]
    print(f"takeover latency {latency:.3f} s after benchmark() started ({stamps['ready'] - t_launch:.1f} s start-up)")
    assert latency < 5.0
    recs = run_per_example(run_dir)
    assert [r["index"] for r in recs] == list(range(60))  # nothing lost, nothing duplicated


def test_cli_lease_timeout_is_passed_and_checked(capsys, tmp_path, monkeypatch):
    from robustkit.cli import main

    seen = {}
    real = robustkit.cli.bench.benchmark

    def spy(*a, **k):
        seen["lease_timeout"] = k["lease_timeout"]
        return real(*a, **k)

    monkeypatch.setattr(robustkit.cli.bench, "benchmark", spy)
    args = ["bench", "--classifier", "tiny_cnn.digits", "--eps", "0.1", "--attacks", "pgd", "--attack-option",
            "pgd.steps=2", "--n-examples", "8", "--batch-size", "8", "--no-checks", "--run-dir", str(tmp_path / "r")]
    assert main([*args, "--lease-timeout", "5"]) == 0 and seen["lease_timeout"] == 5.0
    assert main(args) == 0 and seen["lease_timeout"] == 60.0  # the default
    capsys.readouterr()
    assert main([*args, "--lease-timeout", "0"]) == 2
    err = capsys.readouterr().err
    assert "--lease-timeout: expected a positive number" in err and len(err.strip().splitlines()) == 1


def test_raw_readers_return_what_is_on_disk_and_read_shard_verifies(reference):
    _, ref_dir = reference
    run = RunDir.load(ref_dir)
    s = run.shards[2]
    records, meta = run.read_shard(s)
    assert records == run.read_records(s) and meta == run.read_meta(s)
    assert [r["index"] for r in records] == list(range(16, 24)) and run.read_tensors(s)["pgd"].shape == (8, 1, 8, 8)


def test_the_clean_pass_is_made_once(clf, tmp_path, monkeypatch, caplog):
    """Issue 26: a deterministic model's first whole-shard attack (cascade=False) already classified the
    clean inputs: its flags are the clean pass, with no second forward; the cascade still needs its own."""
    import importlib

    bm = importlib.import_module("robustkit.eval.benchmark")
    calls = []
    real = bm._predict_draws
    monkeypatch.setattr(bm, "_predict_draws", lambda *a: calls.append(a[1].shape[0]) or real(*a))
    x, y = robustkit.load_dataset("digits", n_examples=24)
    truth = (clf.eval()(x).argmax(1) == y).tolist()
    kw = {**KW, "attack_options": {"pgd": {"steps": 3}}}
    with caplog.at_level(logging.INFO, logger="robustkit.eval.benchmark"):
        once = benchmark(clf, run_dir=tmp_path / "once", cascade=False, **kw)
    assert calls == [] and sum("from pgd's own clean pass" in r.getMessage() for r in caplog.records) == 3
    assert [r["clean"] for r in run_per_example(tmp_path / "once")] == [[t] for t in truth]
    cascade = benchmark(clf, run_dir=tmp_path / "cascade", cascade=True, **kw)
    assert calls == [8, 8, 8]  # one clean pass per shard, to skip clean errors
    assert [r["clean"] for r in run_per_example(tmp_path / "cascade")] == [[t] for t in truth]
    assert once.clean == cascade.clean  # (robust differs: the cascade attacks a smaller batch, another PGD start)
