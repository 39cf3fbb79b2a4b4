"""benchmark(): protocols from traits, stochastic re-evaluation, records, run directories, resume."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn as nn

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
        benchmark(other, **kw)
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
import sys, robustkit
clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
robustkit.benchmark(clf, dataset="digits", eps=0.1, attacks=["pgd", "apgd-ce"],
                    attack_options={"pgd": {"steps": 8}, "apgd-ce": {"steps": 8}}, n_examples=200, batch_size=10,
                    seed=7, checks=False, run_dir=sys.argv[1], lease_timeout=0.5)
"""


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_equals_uninterrupted(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    ref_dir = tmp_path / "ref"
    subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(ref_dir)], check=True, env=env)
    reference = BenchmarkRecord.load(ref_dir / "record.json")
    rng = random.Random(0)
    kills = 0
    for trial in range(3):
        run_dir = tmp_path / f"killed{trial}"
        for _ in range(3):  # several kills per trial, at random instants
            p = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(run_dir)], env=env)
            time.sleep(rng.uniform(1.0, 4.0))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
            p.wait()
        time.sleep(0.6)  # let the dead worker's lease go stale
        subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(run_dir)], check=True, env=env)
        resumed = BenchmarkRecord.load(run_dir / "record.json")
        assert (resumed.clean, resumed.robust, resumed.per_attack) == \
            (reference.clean, reference.robust, reference.per_attack)
        recs = [json.loads(line) for f in sorted((run_dir / "shards").glob("*.jsonl")) for line in f.read_text().splitlines()]
        ref = [json.loads(line) for f in sorted((ref_dir / "shards").glob("*.jsonl")) for line in f.read_text().splitlines()]
        assert [r["index"] for r in recs] == list(range(200))  # nothing lost, nothing duplicated
        assert recs == ref
        assert not list((run_dir / "shards").glob(".*tmp"))
    assert kills >= 3


@pytest.mark.slow
def test_process_executor_equals_inline(clf, tmp_path):
    kw = dict(dataset="digits", eps=0.1, attacks=["pgd"], attack_options={"pgd": {"steps": 5}}, n_examples=40,
              batch_size=10, checks=False)
    inline = benchmark(clf, **kw)
    procs = benchmark(clf, executor="processes", workers=2, run_dir=tmp_path / "p", **kw)
    assert (procs.clean, procs.robust) == (inline.clean, inline.robust)
