"""benchmark(): protocols from traits, stochastic re-evaluation, records, run directories, resume."""

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import robustkit
from robustkit import Classifier, DefenseTraits, InputError
from robustkit.eval import BenchmarkRecord, RecordError, RunConfigError, benchmark, parse_eps
from robustkit.eval.benchmark import derive_seed, resolve_attacks


@pytest.fixture(scope="module")
def clf():
    return robustkit.create_classifier("tiny_cnn.digits", pretrained=True)


class Noisy(Classifier):
    """The digits model with Gaussian logit noise: a stand-in for a randomized defense."""

    def __init__(self, base, sigma=1.5, declare=True):
        super().__init__(10, (1, 8, 8), DefenseTraits(stochastic=declare, gradient="exact"))
        self.base, self.sigma = base, sigma

    def logits(self, x):
        out = self.base(x)
        return out + self.sigma * torch.randn_like(out)


def test_parse_eps_and_seeds():
    assert parse_eps("8/255") == pytest.approx(8 / 255) and parse_eps(0.5) == 0.5
    for bad in ("abc", "1/0", -1, 0, None, True):
        with pytest.raises(InputError):
            parse_eps(bad)
    assert derive_seed(0, 5, "a") == derive_seed(0, 5, "a") != derive_seed(0, 6, "a") != derive_seed(1, 5, "a")


def test_auto_attacks_follow_traits(clf):
    assert resolve_attacks(clf, "auto") == ["autoattack-standard"]
    assert resolve_attacks(Noisy(clf), "auto") == ["autoattack-rand", "autoattack-standard", "pgd-eot"]
    bpda = Noisy(clf)
    bpda.traits = DefenseTraits(stochastic=True, gradient="bpda")
    assert resolve_attacks(bpda, "auto") == ["autoattack-rand", "autoattack-standard"]
    tta = Noisy(clf)
    tta.traits = DefenseTraits(adapts_at_test_time=True)
    assert resolve_attacks(tta, "auto") == ["transfer", "pgd-eot"]
    assert resolve_attacks(clf, "pgd, apgd-ce") == ["pgd", "apgd-ce"]
    with pytest.raises(InputError):
        resolve_attacks(clf, ["pgd", "pgd"])


def test_bad_arguments(clf, tmp_path):
    with pytest.raises(InputError, match="unknown attack"):
        benchmark(clf, dataset="digits", eps=0.1, attacks=["nope"], n_examples=4, checks=False)
    with pytest.raises(InputError, match="threat_model"):
        benchmark(clf, dataset="digits", eps=0.1, threat_model="L1", n_examples=4, checks=False)
    with pytest.raises(InputError, match="Classifier"):
        benchmark(clf.net, dataset="digits", eps=0.1, n_examples=4, checks=False)
    with pytest.raises(InputError):
        benchmark(clf, dataset="digits", eps=0.1, n_examples=4, batch_size=0, checks=False)
    with pytest.raises(InputError, match="shape"):  # digits model on CIFAR-shaped data
        benchmark(clf, dataset="x", data=(torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)), eps=0.1)
    assert list(tmp_path.iterdir()) == []


def test_deterministic_record_matches_direct_attack(clf, tmp_path):
    x, y = robustkit.load_dataset("digits", n_examples=40)
    rec = benchmark(clf, dataset="digits", eps=0.1, attacks=["pgd"], attack_options={"pgd": {"steps": 10}},
                    n_examples=40, batch_size=40, seed=3, checks=False, cascade=False, run_dir=tmp_path / "run")
    from robustkit.attacks import make_attack

    direct = make_attack("pgd", eps=0.1, steps=10, seed=derive_seed(3, 0, "attack:pgd"))(clf, x, y)
    assert rec.robust["single_draw"].correct == int(direct.robust.sum())
    assert rec.clean["single_draw"].correct == int(direct.clean_correct.sum())
    # deterministic: one draw, all protocols equal
    assert rec.n_reeval == 1
    assert len({rec.robust[p].correct for p in ("single_draw", "majority", "worst_of_m")}) == 1
    assert rec.attacks[0]["steps"] == 10 and rec.attacks[0]["name"] == "pgd" and rec.attacks[0]["gradient"] == "exact"
    saved = BenchmarkRecord.load(tmp_path / "run" / "record.json")
    assert saved == rec
    assert rec.cost["forward_passes"] == direct.forwards + 40 * 2  # attack + clean and adversarial evaluation


def test_record_json_round_trip_is_strict(clf):
    rec = benchmark(clf, dataset="digits", eps=0.1, attacks=["pgd"], attack_options={"pgd": {"steps": 3}},
                    n_examples=16, batch_size=8, checks=False)
    d = json.loads(rec.to_json())
    assert BenchmarkRecord.from_dict(d) == rec
    for mutate in (lambda d: d.pop("robust"), lambda d: d.__setitem__("extra", 1),
                   lambda d: d["clean"]["single_draw"].pop("ci_low"),
                   lambda d: d.__setitem__("schema_version", 99),
                   lambda d: d["clean"]["single_draw"].__setitem__("correct", 999)):
        bad = json.loads(rec.to_json())
        mutate(bad)
        with pytest.raises(RecordError):
            BenchmarkRecord.from_dict(bad)
    with pytest.raises(RecordError):
        BenchmarkRecord.from_json("{not json")


def test_stochastic_protocols_and_per_example_minimum(clf):
    noisy = Noisy(clf, sigma=2.0)
    rec = benchmark(noisy, dataset="digits", eps=0.05, attacks=["pgd", "apgd-ce"],
                    attack_options={"pgd": {"steps": 5}, "apgd-ce": {"steps": 5}}, n_examples=48, batch_size=24,
                    n_reeval=7, seed=1, checks=False, cascade=False)
    assert rec.n_reeval == 7
    for kind in (rec.clean, rec.robust):
        assert kind["worst_of_m"].correct <= kind["single_draw"].correct
        assert kind["worst_of_m"].correct <= kind["majority"].correct
    assert rec.clean["worst_of_m"].correct < rec.clean["majority"].correct  # the noise matters
    for p in ("single_draw", "majority", "worst_of_m"):  # minimum over attacks, per example
        assert rec.robust[p].correct <= min(rec.per_attack[a][p].correct for a in ("pgd", "apgd-ce"))
    # reproducible from the seed, although the defense draws from the global RNG
    again = benchmark(noisy, dataset="digits", eps=0.05, attacks=["pgd", "apgd-ce"],
                      attack_options={"pgd": {"steps": 5}, "apgd-ce": {"steps": 5}}, n_examples=48, batch_size=24,
                      n_reeval=7, seed=1, checks=False, cascade=False)
    assert again.robust == rec.robust and again.per_attack == rec.per_attack


def test_cascade_gives_same_final_numbers_cheaper(clf):
    kw = dict(dataset="digits", eps=0.1, attacks=["pgd", "apgd-ce"], n_examples=48, batch_size=48, checks=False,
              attack_options={"pgd": {"steps": 10}, "apgd-ce": {"steps": 10}})
    full = benchmark(clf, cascade=False, **kw)
    casc = benchmark(clf, cascade=True, **kw)
    assert casc.robust == full.robust
    assert casc.cost["forward_passes"] < full.cost["forward_passes"]
    # cascade numbers are cumulative: non-increasing along the attack order
    seq = [casc.per_attack[a]["worst_of_m"].correct for a in ("pgd", "apgd-ce")]
    assert seq == sorted(seq, reverse=True)


def test_eot_on_a_deterministic_model_is_warned_about(clf, caplog):
    kw = dict(dataset="digits", eps=0.1, attacks=["pgd-eot"], n_examples=4, batch_size=4, checks=False)
    with caplog.at_level("WARNING", logger="robustkit.eval.benchmark"):
        benchmark(clf, attack_options={"pgd-eot": {"steps": 1, "eot": 3}}, **kw)
    assert any("pgd-eot runs EOT 3 on a deterministic model" in r.message for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="robustkit.eval.benchmark"):
        benchmark(clf, attack_options={"pgd-eot": {"steps": 1, "eot": 1}}, **kw)     # as advised: quiet
        benchmark(Noisy(clf), attack_options={"pgd-eot": {"steps": 1, "eot": 3}}, **kw)  # randomness to average
    assert not [r for r in caplog.records if "deterministic" in r.message]


def test_each_shard_logs_its_progress(clf, caplog):
    # long shards (an hour each on a diffusion defense) say what they are doing: clean, each attack, skips
    kw = dict(dataset="digits", attacks=["pgd", "apgd-ce"], n_examples=8, batch_size=4, checks=False,
              attack_options={"pgd": {"steps": 10}, "apgd-ce": {"steps": 2}})
    with caplog.at_level("INFO", logger="robustkit.eval.benchmark"):
        rec = benchmark(clf, eps=0.5, **kw)  # eps 0.5 breaks every digit: the cascade skips apgd-ce
    msgs = [r.getMessage() for r in caplog.records]
    for k, span in ((1, "0-3"), (2, "4-7")):
        where = f"shard {k}/2 (examples {span})"
        assert any(m.startswith(f"{where}: clean: ") and "(of 1; " in m for m in msgs)
        assert any(m.startswith(f"{where}: pgd on ") for m in msgs)
        assert any(m.startswith(f"{where}: pgd done: 0/") for m in msgs)
        assert f"{where}: apgd-ce skipped: every example already broken" in msgs
    assert rec.robust["single_draw"].correct == 0
    caplog.clear()
    with caplog.at_level("INFO", logger="robustkit.eval.benchmark"):
        benchmark(clf, eps=0.5, **{**kw, "checks": True, "probe_size": 4,
                                   "check_options": {"steps": 2, "square_queries": 10}})
    msgs = [r.getMessage() for r in caplog.records]
    for name in ("gradients", "unbounded_attack", "black_box", "transfer"):
        assert any(m.startswith(f"sanity checks on 4 examples: {name} ...") for m in msgs)
    assert any(m.startswith("sanity checks done (") and "unbounded_attack pass" in m for m in msgs)
    caplog.clear()
    with caplog.at_level("INFO", logger="robustkit.eval.benchmark"):
        benchmark(clf, eps=0.01, **kw)
    right = [m for m in caplog.records if ": apgd-ce done: " in m.getMessage()]
    assert len(right) == 2 and all(r.levelname == "INFO" for r in right)


def test_resume_skips_finished_shards_and_refuses_other_config(clf, tmp_path):
    run = tmp_path / "run"
    kw = dict(dataset="digits", eps=0.1, attacks=["pgd"], attack_options={"pgd": {"steps": 5}}, n_examples=32,
              batch_size=8, checks=False, run_dir=run)
    first = benchmark(clf, **kw)
    stamps = {p: p.stat().st_mtime_ns for p in (run / "shards").iterdir()}
    assert len([p for p in stamps if p.suffix == ".jsonl"]) == 4
    second = benchmark(clf, **kw)
    assert {p: p.stat().st_mtime_ns for p in (run / "shards").iterdir()} == stamps
    assert second.robust == first.robust
    with pytest.raises(RunConfigError, match="eps"):
        benchmark(clf, **{**kw, "eps": 0.2})
    other = robustkit.create_classifier("tiny_cnn.digits")  # random weights: same name, different digest
    with pytest.raises(RunConfigError, match="defense"):
        benchmark(other, allow_random_weights=True, **kw)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(RunConfigError, match="not empty"):
        benchmark(clf, **{**kw, "run_dir": tmp_path / "junk"})


def test_stale_lease_is_taken_over_and_live_lease_respected(clf, tmp_path):
    from robustkit.eval.runner import RunDir, make_shards

    run = RunDir.open(tmp_path / "r", {"a": 1}, make_shards(10, 5))
    s0 = run.shards[0]
    lease = run.claim(s0, lease_timeout=60)
    assert lease is not None and run.claim(s0, lease_timeout=60) is None  # held
    lease.release()
    held = run.claim(s0, lease_timeout=60)
    path = tmp_path / "r" / "leases" / "shard_00000.lease"
    held._stop.set()  # simulate a dead worker: no more heartbeats
    old = time.time() - 120
    os.utime(path, (old, old))
    taken = run.claim(s0, lease_timeout=60)
    assert taken is not None
    taken.release()


KILL_SCRIPT = """
import sys, torch, robustkit
torch.set_num_threads(1)  # steady shard times on a shared machine (two threads on two busy cores crawl)
clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
robustkit.benchmark(clf, dataset="digits", eps=0.1, attacks=["pgd", "apgd-ce"],
                    attack_options={"pgd": {"steps": 100}, "apgd-ce": {"steps": 100}}, n_examples=200,
                    batch_size=10, seed=7, checks=False, run_dir=sys.argv[1])  # the default lease timeout (60 s)
"""
KILL_SHARDS = 20


def _finished_shards(run_dir) -> int:
    d = run_dir / "shards"
    return len(list(d.glob("shard_*.ledger.json"))) if d.is_dir() else 0


def _kill_at_random_point(argv, env, run_dir, rng, timeout=300.0):
    """Start a run and SIGKILL it at a random instant once it is demonstrably working.

    Waits until the process has itself finished 2 or 3 shards (chosen at random; progress, not wall
    time, so a slow start-up on a loaded machine cannot let the run finish first), then sleeps a random
    fraction of the interval between its last two shard completions (so the kill lands anywhere in a
    shard: attacking, writing, renaming). Returns the finished-shard count at the kill, or None when
    the run ended on its own first (it must then have succeeded).
    """
    before = _finished_shards(run_dir)
    target = min(before + rng.choice((2, 3)), KILL_SHARDS - 1)
    p = subprocess.Popen(argv, env=env)
    deadline = time.monotonic() + timeout
    seen, stamps = before, [time.monotonic()]
    try:
        while p.poll() is None and seen < target:
            assert time.monotonic() < deadline, f"no progress past {seen} shards in {timeout:.0f} s"
            time.sleep(0.005)
            now = _finished_shards(run_dir)
            if now > seen:
                seen = now
                stamps.append(time.monotonic())
        if p.poll() is None:
            time.sleep(rng.uniform(0.0, 1.0) * (stamps[-1] - stamps[-2]))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            assert p.wait() == -signal.SIGKILL
            return _finished_shards(run_dir)
    finally:
        if p.poll() is None:  # an assertion above failed: do not leave the child running
            p.kill()
            p.wait()
    assert p.returncode == 0
    return None


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_equals_uninterrupted(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    ref_dir = tmp_path / "ref"
    subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(ref_dir)], check=True, env=env)
    reference = BenchmarkRecord.load(ref_dir / "record.json")
    ref = [json.loads(line) for f in sorted((ref_dir / "shards").glob("*.jsonl")) for line in f.read_text().splitlines()]
    rng = random.Random(0)
    kills = []
    for trial in range(3):
        run_dir = tmp_path / f"killed{trial}"
        trial_kills = []
        for _ in range(3):  # several kills per trial, at random instants of a working run
            at = _kill_at_random_point([sys.executable, "-c", KILL_SCRIPT, str(run_dir)], env, run_dir, rng)
            if at is not None:
                trial_kills.append(at)
        assert trial_kills, "every launch of this trial finished before it could be killed"
        assert all(0 < k < KILL_SHARDS for k in trial_kills)  # killed mid-run
        kills += trial_kills
        # at once: the dead worker's lease is taken over because its process is gone, not after 60 s
        out = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(run_dir)], env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "no heartbeat" not in out.stderr and out.stderr.count("took over") <= 1, out.stderr
        resumed = BenchmarkRecord.load(run_dir / "record.json")
        assert (resumed.clean, resumed.robust, resumed.per_attack) == \
            (reference.clean, reference.robust, reference.per_attack)
        recs = [json.loads(line) for f in sorted((run_dir / "shards").glob("*.jsonl")) for line in f.read_text().splitlines()]
        assert [r["index"] for r in recs] == list(range(200))  # nothing lost, nothing duplicated
        assert recs == ref
        assert not list((run_dir / "shards").glob(".*tmp"))
    assert len(kills) >= 6, kills  # of 9 launches; each kill waits for progress, so misses are rare


RESUME_SCRIPT = """
import sys, robustkit
clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
robustkit.benchmark(clf, dataset="digits", eps=0.1, attacks=["pgd"], attack_options={"pgd": {"steps": 5}},
                    n_examples=32, batch_size=8, checks=False, run_dir=sys.argv[1], lease_timeout=2.0)
"""


def test_restart_before_dead_workers_lease_expires_takes_its_shard_over(tmp_path):
    """A worker SIGKILLed mid-shard leaves its lease (fresh for lease_timeout) and a half-written temp
    file. A run restarted at once must wait for the lease to go stale and redo that shard, not skip it
    and then wait forever for nobody; the dead worker's temp file is cleaned up."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-c", RESUME_SCRIPT, str(run)], check=True, env=env, timeout=300)
    first = BenchmarkRecord.load(run / "record.json")
    for f in [*(run / "shards").glob("shard_00001.*"), run / "record.json"]:
        f.unlink()
    (run / "leases").mkdir(exist_ok=True)
    (run / "leases" / "shard_00001.lease").write_text('{"pid": -1}')  # the dead worker's, just now
    orphan = run / "shards" / ".shard_00001.pt.0123456789abcdef0123456789abcdef.tmp"
    orphan.write_bytes(b"half a safetensors file")
    subprocess.run([sys.executable, "-c", RESUME_SCRIPT, str(run)], check=True, env=env, timeout=300)
    again = BenchmarkRecord.load(run / "record.json")
    assert (again.clean, again.robust, again.per_attack) == (first.clean, first.robust, first.per_attack)
    assert (run / "shards" / "shard_00001.jsonl").exists()
    assert not orphan.exists() and not list((run / "leases").iterdir())


def test_manifest_temp_file_of_a_killed_run_does_not_brick_the_run_dir(clf, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".manifest.json.0123456789abcdef0123456789abcdef.tmp").write_text("{")  # killed mid-write
    rec = benchmark(clf, dataset="digits", eps=0.1, attacks=["pgd"], attack_options={"pgd": {"steps": 2}},
                    n_examples=8, batch_size=8, checks=False, run_dir=run)
    assert rec.n_examples == 8 and (run / "record.json").exists()


EXECUTOR_KW = dict(dataset="digits", eps=0.1, attacks=["pgd", "apgd-ce"],
                   attack_options={"pgd": {"steps": 5}, "apgd-ce": {"steps": 5}}, n_examples=40, batch_size=10,
                   seed=2, checks=False)


def _result(rec):
    """The record minus what legitimately differs between executors (timings, devices, creation time)."""
    d = dataclasses.asdict(rec)
    cost = d.pop("cost")
    d.pop("created_utc")
    d["passes"] = (cost["forward_passes"], cost["backward_passes"], cost["forward_nfe"], cost["backward_nfe"])
    return d


def _per_example(run_dir):
    return [json.loads(line) for f in sorted((run_dir / "shards").glob("*.jsonl")) for line in f.read_text().splitlines()]


@pytest.fixture(scope="module")
def inline_run(clf, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("inline") / "run"
    return benchmark(clf, run_dir=run_dir, **EXECUTOR_KW), run_dir


def _assert_same_as_inline(rec, run_dir, inline_run):
    inline, inline_dir = inline_run
    assert _result(rec) == _result(inline)
    assert BenchmarkRecord.load(run_dir / "record.json") == rec
    assert _per_example(run_dir) == _per_example(inline_dir)  # every example's flags and distances
    assert not list((run_dir / "leases").iterdir())


@pytest.mark.slow
def test_process_executor_equals_inline(clf, tmp_path, inline_run):
    run_dir = tmp_path / "p"
    rec = benchmark(clf, executor="processes", workers=2, run_dir=run_dir, **EXECUTOR_KW)
    _assert_same_as_inline(rec, run_dir, inline_run)


@pytest.mark.slow
def test_submitit_local_executor_equals_inline(clf, tmp_path, inline_run):
    """submitit's local executor runs the same job array as Slurm would (two array tasks here)."""
    run_dir = tmp_path / "s"
    rec = benchmark(clf, executor="submitit-local", workers=2, run_dir=run_dir, slurm={"timeout_min": 10},
                    **EXECUTOR_KW)
    _assert_same_as_inline(rec, run_dir, inline_run)
    assert len(list((run_dir / "submitit").glob("*_result.pkl"))) == 2  # two tasks ran and returned


TORCHRUN_SCRIPT = """
import json, os, sys, robustkit
clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
robustkit.benchmark(clf, run_dir=sys.argv[1], **json.loads(sys.argv[2]))  # executor="inline" on every rank
print("rank", os.environ["RANK"], "of", os.environ["WORLD_SIZE"], "done")
"""


@pytest.mark.slow
def test_two_torchrun_ranks_share_the_run_and_equal_inline(clf, tmp_path, inline_run):
    script = tmp_path / "bench_rank.py"
    script.write_text(TORCHRUN_SCRIPT)
    run_dir = tmp_path / "t"
    # torchrun would set OMP_NUM_THREADS=1; keep this process's thread count so float results match
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), str(run_dir), json.dumps(EXECUTOR_KW)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(line for line in out.stdout.splitlines() if line.startswith("rank")) == \
        ["rank 0 of 2 done", "rank 1 of 2 done"]
    _assert_same_as_inline(BenchmarkRecord.load(run_dir / "record.json"), run_dir, inline_run)


def test_evaluators_restore_the_callers_training_flags(clf):
    """benchmark(), predict() and the corruption sweep run in eval mode and hand the model back as it came:
    a model left in eval mode would silently stop updating, one switched to train mode would use batch
    statistics."""
    from robustkit.eval import clean_accuracy

    clf.train()
    next(iter(clf.net.children())).eval()  # mixed flags: restored per submodule, not by one recursive train()/eval()
    flags = [m.training for m in clf.modules()]
    x, y = robustkit.load_dataset("digits", n_examples=8)
    benchmark(clf, dataset="digits", eps=0.1, attacks=["pgd"], attack_options={"pgd": {"steps": 2}}, n_examples=8,
              checks=False)
    assert [m.training for m in clf.modules()] == flags
    clean_accuracy(clf, x, y)
    assert [m.training for m in clf.modules()] == flags
    clf.eval()


def test_a_config_holding_functions_or_objects_is_the_same_in_every_process():
    # wrap_classifier(adapt_state_dict=<function>) put "<function f at 0x7f…>" in the run config, so a
    # run of such a classifier could never be resumed by another process: names only, no addresses
    import subprocess
    import sys

    code = ("import json, robustkit\n"
            "from robustkit.eval.benchmark import describe_defense\n"
            "clf = robustkit.create_classifier('resnet20.cifar10')\n"
            "print(json.dumps(describe_defense(clf)['config'], sort_keys=True))\n")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert runs[0] == runs[1]
    cfg = json.loads(runs[0])
    assert cfg["adapt_state_dict"] == "robustkit.models.zoo.adapt_akamaster"
    from robustkit.eval.benchmark import _jsonable

    assert _jsonable({"obj": object()}) == {"obj": "<object object>"}
