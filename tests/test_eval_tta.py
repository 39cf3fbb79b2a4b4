"""Test-time adaptation threat models (robustkit.eval.tta): episodic and continual, inside benchmark().

Every test uses the tiny digits CNN (8×8, BatchNorm) and a few PGD steps; the reference computations
replay the protocol by hand on fresh defenses.
"""

from __future__ import annotations

import json

import pytest
import torch

import robustkit
from robustkit import InputError
from robustkit.attacks import PGD
from robustkit.defenses import EnergyAdaptedClassifier, create_adapted_defense
from robustkit.eval.runner import RunDir
from robustkit.eval.tta import DEFAULT_TTA_BATCH_SIZE, PinnedStateDefense, stream_accuracy, strongest_batch

pytestmark = pytest.mark.usefixtures("one_thread")

PGD_OPTS = {"pgd": {"steps": 3, "random_start": False}}


@pytest.fixture(scope="module")
def digits():
    return robustkit.load_dataset("digits", n_examples=36)


def tea(**kw):
    return create_adapted_defense("tea.tiny_cnn.digits", pretrained=True, buffer_size=64, sgld_steps=2, **kw)


class Recording(EnergyAdaptedClassifier):
    """TEA that records the state every forward starts from (buffer checksum, Adam step)."""

    seen: list

    def logits(self, x):
        self.seen.append((float(self.sgld_buffer.double().sum()), int(self.adam_step)))
        return super().logits(x)


def recording_tea() -> Recording:
    m = Recording(robustkit.create_classifier("tiny_cnn.digits", pretrained=True), buffer_size=64, sgld_steps=2)
    m.seen = []
    return m


# ------------------------------------------------------------------------------------------------ episodic

def test_episodic_restores_the_buffer_before_every_query(digits):
    x, y = digits[0][:12], digits[1][:12]
    raw = recording_tea()
    PGD(eps=0.1, steps=3, step_size=0.03, random_start=False)(raw, x, y)
    # without pinning, reset() keeps TEA's evolving buffer (the authors' reset): queries see different buffers
    assert len({s for s, _ in raw.seen}) > 1 and {a for _, a in raw.seen} == {0}
    pinned_tea = recording_tea()
    initial = float(pinned_tea.sgld_buffer.double().sum())
    PGD(eps=0.1, steps=3, step_size=0.03, random_start=False)(PinnedStateDefense(pinned_tea), x, y)
    assert len(pinned_tea.seen) >= 5 and set(pinned_tea.seen) == {(initial, 0)}


def test_episodic_benchmark_matches_fresh_defense_per_batch(digits, tmp_path):
    x, y = digits
    rec = robustkit.benchmark(create_adapted_defense("tent.tiny_cnn.digits", pretrained=True), dataset="digits",
                              data=(x, y), eps=0.1, attacks=["pgd"], attack_options=PGD_OPTS, batch_size=12,
                              checks=False, run_dir=tmp_path)
    assert rec.attacks[0]["test_time_threat_model"] == "episodic"
    assert json.loads((tmp_path / "manifest.json").read_text())["config"]["tta_threat_model"] == "episodic"
    want = []
    for i in range(0, 36, 12):
        fresh = create_adapted_defense("tent.tiny_cnn.digits", pretrained=True)
        with torch.no_grad():
            want += (fresh(x[i:i + 12]).argmax(1) == y[i:i + 12]).tolist()
    assert rec.clean["single_draw"].correct == sum(want)


# ----------------------------------------------------------------------------------------------- continual

def test_continual_carries_the_state_and_adapts_on_the_adversarial_batch(digits, tmp_path):
    x, y = digits
    defense = create_adapted_defense("tent.tiny_cnn.digits", pretrained=True, lr=0.05)
    rec = robustkit.benchmark(defense, dataset="digits", data=(x, y), eps=0.1, attacks=["pgd"],
                              attack_options=PGD_OPTS, batch_size=12, checks=False, run_dir=tmp_path,
                              tta_threat_model="continual")
    assert rec.attacks[0]["test_time_threat_model"] == "continual"
    run = RunDir(tmp_path, {}, [])
    shards = robustkit.eval.runner.make_shards(36, 12)
    # replay by hand: a fresh TENT sees shard k's clean batch from the state the earlier x_adv batches left
    replay = create_adapted_defense("tent.tiny_cnn.digits", pretrained=True, lr=0.05)
    for k, shard in enumerate(shards):
        records = run.read_records(shard)
        x_adv = run.read_tensors(shard)["pgd"]
        state = replay.snapshot_state()
        with torch.no_grad():
            clean = (replay(x[shard.start:shard.stop]).argmax(1) == y[shard.start:shard.stop]).tolist()
            replay.restore_state(state)
            adv = (replay(x_adv).argmax(1) == y[shard.start:shard.stop]).tolist()
        assert [r["clean"][0] for r in records] == clean
        # robust = right on the clean batch and on x_adv, both from the carried state
        assert [r["attacks"]["pgd"]["correct"][0] for r in records] == [a and c for a, c in zip(adv, clean)]
        assert run.read_meta(shard)["tta"]["adapted_on"] == "pgd"
        saved = torch.load(tmp_path / "tta_state" / f"before_shard_{k + 1:05d}.pt", weights_only=True)["state"]
        assert int(saved["adam_step"]) == k + 1  # one adaptation step per streamed batch
        assert all(torch.allclose(saved[n], v, atol=1e-6) for n, v in replay.snapshot_state().items())
    # the defense that was passed in is back in its initial state: the stream does not leak out of the run
    assert int(defense.adam_step) == 0


def test_continual_differs_from_episodic_after_the_first_batch(digits):
    x, y = digits
    common = dict(dataset="digits", data=(x, y), eps=0.1, attacks=["pgd"], attack_options=PGD_OPTS, batch_size=12,
                  checks=False)
    epi = robustkit.benchmark(create_adapted_defense("tent.tiny_cnn.digits", pretrained=True, lr=0.2), **common)
    con = robustkit.benchmark(create_adapted_defense("tent.tiny_cnn.digits", pretrained=True, lr=0.2),
                              tta_threat_model="continual", **common)
    assert epi.config_hash != con.config_hash
    # the same first batch (same initial state); a large lr makes the carried state show later
    assert (epi.clean["single_draw"].correct, epi.robust["single_draw"].correct) != \
        (con.clean["single_draw"].correct, con.robust["single_draw"].correct)


def test_continual_resume_after_a_kill_gives_the_same_record(digits, tmp_path):
    x, y = digits[0][:24], digits[1][:24]
    common = dict(dataset="digits", data=(x, y), eps=0.1, attacks=["pgd"], attack_options=PGD_OPTS, batch_size=12,
                  checks=False, n_reeval=2, tta_threat_model="continual")
    full = robustkit.benchmark(tea(), run_dir=tmp_path / "a", **common)
    robustkit.benchmark(tea(), run_dir=tmp_path / "b", **common)
    (tmp_path / "b" / "shards" / "shard_00001.jsonl").unlink()  # as if killed after the state was saved but before shard 1 was written
    resumed = robustkit.benchmark(tea(), run_dir=tmp_path / "b", **common)
    a = [r for r in RunDir(tmp_path / "a", {}, []).read_records(robustkit.eval.runner.make_shards(24, 12)[1])]
    b = [r for r in RunDir(tmp_path / "b", {}, []).read_records(robustkit.eval.runner.make_shards(24, 12)[1])]
    assert a == b
    # TEA's random stream was restored with its state: the SGLD draws after the resume are the same
    end = [torch.load(tmp_path / r / "tta_state" / "before_shard_00002.pt", weights_only=True)["state"] for r in "ab"]
    assert torch.equal(end[0]["sgld_buffer"], end[1]["sgld_buffer"])
    assert resumed.clean == full.clean and resumed.robust == full.robust


# ------------------------------------------------------------------------------------------------ the rest

def test_strongest_batch_picks_fewest_right_first_draw():
    recs = [{"attacks": {"a": {"correct": [False, True]}, "b": {"correct": [False, False]}}},  # first draws count
            {"attacks": {"a": {"correct": [False]}, "b": {"correct": [True]}}},
            {"attacks": {"a": None, "b": None}}]  # skipped by a cascade
    t = {"a": torch.zeros(1), "b": torch.zeros(1)}
    assert strongest_batch(recs, t, ["b", "a"]) == "a"
    recs[1]["attacks"]["b"]["correct"] = [False]
    assert strongest_batch(recs, t, ["b", "a"]) == "b"  # tie: the earlier attack


def test_stream_accuracy_episodic_and_continual(digits):
    x, y = digits
    for threat in ("episodic", "continual"):
        tent = create_adapted_defense("tent.tiny_cnn.digits", pretrained=True, lr=0.2)
        got = stream_accuracy(tent, x, y, threat_model=threat, batch_size=12)
        ref = create_adapted_defense("tent.tiny_cnn.digits", pretrained=True, lr=0.2)
        want = []
        with torch.no_grad():
            for i in range(0, 36, 12):
                if threat == "episodic":
                    ref.reset()
                want += (ref(x[i:i + 12]).argmax(1) == y[i:i + 12]).tolist()
        assert got.tolist() == want
        assert int(tent.adam_step) == 0  # left in its initial state


def test_default_batch_is_the_papers_200():
    assert DEFAULT_TTA_BATCH_SIZE == 200
    x, y = robustkit.load_dataset("digits", n_examples=200)
    rec = robustkit.benchmark(create_adapted_defense("bn.tiny_cnn.digits", pretrained=True), dataset="digits",
                              data=(x, y), eps=0.1, attacks=["pgd"], attack_options={"pgd": {"steps": 1}},
                              checks=False)
    assert rec.batch_size == 200 and rec.attacks[0]["batch_threat_model"]["batch_size"] == 200
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    assert robustkit.benchmark(clf, dataset="digits", data=(x[:8], y[:8]), eps=0.1, attacks=["pgd"],
                               attack_options={"pgd": {"steps": 1}}, checks=False).batch_size == 64


def test_errors(digits):
    x, y = digits
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    with pytest.raises(InputError, match="adapt at test time"):
        robustkit.benchmark(clf, dataset="digits", data=(x, y), eps=0.1, tta_threat_model="episodic")
    tent = create_adapted_defense("tent.tiny_cnn.digits", pretrained=True)
    with pytest.raises(InputError, match="tta_threat_model must be one of"):
        robustkit.benchmark(tent, dataset="digits", data=(x, y), eps=0.1, tta_threat_model="online")
    with pytest.raises(InputError, match="executor must be 'inline'"):
        robustkit.benchmark(tent, dataset="digits", data=(x, y), eps=0.1, tta_threat_model="continual",
                            executor="processes")
    with pytest.raises(InputError, match="does not adapt"):
        PinnedStateDefense(clf)


def test_cli_names_the_threat_model(tmp_path, capsys):
    from robustkit.cli import main

    assert main(["bench", "--defense", "tent.tiny_cnn.digits", "--eps", "0.1", "--attacks", "pgd",
                 "--attack-option", "pgd.steps=2", "--n-examples", "24", "--batch-size", "12", "--no-checks",
                 "--tta-threat-model", "continual", "--run-dir", str(tmp_path / "run"), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["attacks"][0]["test_time_threat_model"] == "continual" and rec["batch_size"] == 12
    assert (tmp_path / "run" / "tta_state" / "before_shard_00002.pt").is_file()
