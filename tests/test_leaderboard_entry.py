"""robustkit.leaderboard.Entry: built from real run directories, strict schema, cross-checked aggregates."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import pytest
import torch

import robustkit
from robustkit import Classifier, DefenseTraits
from robustkit.eval.record import PROTOCOLS
from robustkit.eval.stats import wilson_interval
from robustkit.leaderboard import (ENTRY_SCHEMA_VERSION, Entry, EntryError, EntryMetadata, ExternalResult,
                                   aggregate_examples, load_run_entry, robustbench_name, summarize_examples)
from robustkit.leaderboard.examples import ExamplesError, validate_examples


class Noisy(Classifier):
    """The digits model with Gaussian logit noise: a randomized defense."""

    def __init__(self, base, sigma=2.0):
        super().__init__(10, (1, 8, 8), DefenseTraits(stochastic=True, gradient="exact", forward_passes=3))
        self.base, self.sigma = base, sigma

    def logits(self, x):
        out = self.base(x)
        return out + self.sigma * torch.randn_like(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lb-runs")
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    robustkit.benchmark(clf, dataset="digits", eps=8 / 255, attacks=["pgd", "apgd-ce"],
                        attack_options={"pgd": {"steps": 2}, "apgd-ce": {"steps": 2}}, n_examples=24, batch_size=12,
                        checks=False, run_dir=root / "det", progress=False)
    robustkit.benchmark(Noisy(clf), dataset="digits", eps=0.1, attacks=["pgd"], attack_options={"pgd": {"steps": 2}},
                        n_examples=16, batch_size=16, n_reeval=3, seed=1, checks=False, run_dir=root / "sto",
                        progress=False)
    return {"det": root / "det", "sto": root / "sto"}


def _raw(run):
    return json.loads((run / "record.json").read_text())


def test_entry_from_deterministic_run(runs):
    e = Entry.from_run_dir(runs["det"])
    raw = _raw(runs["det"])
    assert e.schema_version == ENTRY_SCHEMA_VERSION
    assert (e.name, e.defense, e.dataset, e.threat_model) == ("tiny_cnn.digits", "tiny_cnn.digits", "digits", "Linf")
    assert e.eps == pytest.approx(8 / 255) and e.n_examples == 24 and e.n_reeval == 1
    assert not e.stochastic and not e.adapts_at_test_time and e.gradient == "exact"
    assert not e.batch_dependent and e.batch_size == 12  # the run's shard size, recorded
    assert e.ranking_protocol == "single_draw" and e.robustbench_violations() == []
    # the manifest's run order, not the record's alphabetical order
    assert e.attack_order == ["pgd", "apgd-ce"] and list(raw["per_attack"]) == ["apgd-ce", "pgd"]
    pgd = e.attacks[0]
    assert (pgd.norm, pgd.eps, pgd.steps, pgd.eot) == ("Linf", pytest.approx(8 / 255), 2, 1)
    assert "steps" not in pgd.options and pgd.options["loss"] == "ce"
    for p in PROTOCOLS:
        assert e.robust[p].correct == raw["robust"][p]["correct"] and e.clean[p].n == 24
        assert e.robust[p].ci_low == raw["robust"][p]["ci_low"]
    assert e.robust_accuracy.value == raw["robust"]["single_draw"]["value"] == e.board_accuracy
    assert e.forward_nfe == raw["cost"]["forward_nfe"] and e.backward_nfe == raw["cost"]["backward_nfe"]
    assert e.gpu_hours == 0.0 and e.forward_passes_per_prediction == 1
    assert e.config_hash == raw["config_hash"] and e.software["torch"] == torch.__version__
    assert e.weights_sha256 == raw["defense_config"]["weights_sha256"]
    assert e.architecture.startswith("TinyCNN")
    assert [c.name for c in e.checks] == ["adversarial_validity"] and e.unreliable is False
    assert Entry.from_json(e.to_json()) == e and Entry.from_dict(json.loads(e.to_json())).content_hash() == \
        e.content_hash()


def test_stochastic_entry_ranks_worst_of_m(runs):
    e, examples = load_run_entry(runs["sto"])
    assert e.stochastic and e.n_reeval == 3 and e.ranking_protocol == "worst_of_m"
    assert e.forward_passes_per_prediction == 3 and e.forward_nfe == _raw(runs["sto"])["cost"]["forward_nfe"]
    assert e.robust_accuracy == e.robust["worst_of_m"]
    assert e.robust["worst_of_m"].value <= e.robust["majority"].value + 1e-12
    assert e.robust["worst_of_m"].value <= e.robust["single_draw"].value + 1e-12
    assert e.robustbench_violations() == ["randomized defense (RobustBench admits only deterministic models)"]
    assert all(len(r["clean"]) == 3 for r in examples)
    # with sigma=2 some clean predictions flip between draws: the summary counts them
    s = summarize_examples(examples, e.attack_order, eps=e.eps)
    assert s["unstable_clean"] == sum(1 for r in examples if len(set(r["clean"])) > 1)
    assert sum(s["outcomes"].values()) == 16
    assert s["outcomes"]["robust"] == e.robust["worst_of_m"].correct


def test_adaptive_violation_and_external():
    e = _entry_with(stochastic=False, adapts_at_test_time=True,
                    external={"robust_accuracy": 0.05, "footnote": "Evaluated by X et al. (2024).", "link": None})
    assert e.robustbench_violations() == ["test-time optimisation/adaptation (RobustBench admits only static models)"]
    assert e.board_accuracy == 0.05 < e.robust_accuracy.value


def test_schema_1_entries_are_read_as_per_example_with_no_batch_size():
    d = _entry_dict()
    del d["batch_dependent"], d["batch_size"]
    e = Entry.from_dict({**d, "schema_version": 1})
    assert (e.schema_version, e.batch_dependent, e.batch_size) == (3, False, None)
    assert (e.defense_digest, e.classifier, e.score_model) == (None, None, None)
    assert Entry.from_json(e.to_json()) == e
    with pytest.raises(EntryError, match="missing fields"):  # a schema-2 entry must carry both fields
        Entry.from_dict({**d, "schema_version": 2})


def test_batch_dependent_violation_and_badge():
    from robustkit.leaderboard.site import badges

    e = _entry_with(batch_dependent=True, batch_size=32)
    assert e.robustbench_violations() == ["predictions depend on the batch (RobustBench classifies each example "
                                          "on its own)"]
    assert "batch-dependent" in badges(e) and "batches of 32" in badges(e)
    assert "batch-dependent" not in badges(_entry_with())


def _entry_dict():
    """A small valid entry dict (digits-like numbers) built without a run."""
    from robustkit.eval.record import AccuracyStat

    flags = torch.tensor([True] * 6 + [False] * 2)
    stat = dataclasses.asdict(AccuracyStat.from_flags(flags))
    stats = {p: dict(stat) for p in PROTOCOLS}
    return {"schema_version": 2, "name": "Toy2024Entry", "defense": "toy", "dataset": "digits", "split": "test",
            "threat_model": "Linf", "eps": 0.1, "stochastic": False, "adapts_at_test_time": False,
            "batch_dependent": False, "batch_size": 8, "gradient": "exact",
            "attacks": [{"name": "pgd", "norm": "Linf", "eps": 0.1, "steps": 10, "eot": 1, "options": {"loss": "ce"}}],
            "eot": 1, "n_reeval": 1, "cascade": True, "seed": 0, "n_examples": 8, "clean": stats,
            "robust": {p: dict(stat) for p in PROTOCOLS}, "per_attack": {"pgd": {p: dict(stat) for p in PROTOCOLS}},
            "checks": [], "unreliable": False, "forward_passes_per_prediction": 1, "forward_nfe": 100,
            "backward_nfe": 80, "gpu_hours": 0.0, "wall_seconds": 1.5, "software": {"robustkit": "0.1.0"},
            "config_hash": "a" * 64, "weights_sha256": None, "created_utc": "2026-01-01T00:00:00+00:00",
            "paper_title": None, "link": None, "authors": None, "venue": None, "architecture": None,
            "additional_data": None, "reported": None, "footnote": None, "external": None}


def _entry_with(**changes):
    d = _entry_dict()
    d.update(changes)
    return Entry.from_dict(d)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("eps"), r"missing fields \['eps'\]"),
    (lambda d: d.update(extra=1), r"unknown fields \['extra'\]"),
    (lambda d: d.update(schema_version=4, defense_digest=None, classifier=None, score_model=None),
     "schema_version: 4 is not 3"),
    (lambda d: d.update(schema_version=3), r"missing fields \[.classifier., .defense_digest., .score_model.\]"),
    (lambda d: d.update(batch_size=0), r"entry\.batch_size: expected an integer"),
    (lambda d: d.pop("batch_dependent"), r"missing fields \['batch_dependent'\]"),
    (lambda d: d.update(eps="8/255"), r"entry\.eps: expected a number"),
    (lambda d: d.update(eps=math.nan), r"entry\.eps: expected a finite number"),
    (lambda d: d.update(eps=0), "positive budget"),
    (lambda d: d.update(eps=2.0), r"entry\.eps: expected a number in \[0, 1\]"),
    (lambda d: d.update(n_reeval=True), r"entry\.n_reeval: expected an integer"),
    (lambda d: d.update(stochastic=1), r"entry\.stochastic: expected true or false"),
    (lambda d: d.update(gradient="magic"), r"entry\.gradient: expected one of"),
    (lambda d: d.update(threat_model="L1"), r"entry\.threat_model"),
    (lambda d: d.update(name="../../etc/passwd"), r"entry\.name: expected a name"),
    (lambda d: d.update(dataset="a/b"), r"entry\.dataset: expected a name"),
    (lambda d: d.update(attacks=[]), "at least one attack"),
    (lambda d: d["robust"]["majority"].update(value=1.5), r"robust\.majority\.value"),
    (lambda d: d["robust"]["majority"].update(correct=9),
     r"robust\.majority\.correct: expected an integer in \[0, 8\]"),
    (lambda d: d["robust"]["majority"].update(n=9), r"robust\.majority\.n: 9 differs from n_examples=8"),
    (lambda d: d["clean"]["worst_of_m"].update(value=0.5), r"is not correct/n"),
    (lambda d: d["clean"]["worst_of_m"].update(ci_high=0.6), "does not contain the value"),
    (lambda d: d["clean"].pop("majority"), r"missing fields \['majority'\]"),
    (lambda d: d["per_attack"].update(other=d["per_attack"]["pgd"]), "per_attack: expected the attacks"),
    (lambda d: d.update(unreliable=True), "unreliable must be true exactly when"),
    (lambda d: d.update(config_hash="xyz"), "sha256"),
    (lambda d: d.update(external={"robust_accuracy": 0.1}), r"external: missing fields \['footnote'\]"),
    (lambda d: d.update(reported=-0.1), r"entry\.reported"),
    (lambda d: d["attacks"][0].update(options={"f": {"a": 1}}), r"options\.f: expected a string, number"),
    (lambda d: d["attacks"][0].update(options={"f": [1, [2]]}), r"options\.f: expected a string, number"),
    (lambda d: d["attacks"][0].update(options={"f": list(range(65))}), r"options\.f: more than 64 items"),
    (lambda d: d["checks"].append({"name": "g", "status": "warn", "message": "", "blocking": False,
                                   "details": {"x": math.inf}}), r"checks\[0\]\.details: not plain JSON"),
    (lambda d: d.update(checks=[{"name": "g", "status": "broken", "message": "", "blocking": True, "details": {}}]),
     r"checks\[0\]\.status"),
    (lambda d: d.update(software={"torch": 2}), r"software\.torch: expected a string"),
])
def test_from_dict_is_strict(mutate, message):
    d = _entry_dict()
    Entry.from_dict(d)  # the base is valid
    mutate(d)
    with pytest.raises(EntryError, match=message):
        Entry.from_dict(d)


def test_tampered_run_dir_is_refused(runs, tmp_path):
    run = shutil.copytree(runs["det"], tmp_path / "tampered")
    rec = _raw(run)
    for stat in rec["clean"].values():  # one more clean-correct example under every protocol, self-consistent
        # (value and Wilson interval too: record.json alone is checked on load), so only the examples refute it
        stat["correct"] -= 1 if stat["correct"] == 24 else -1
        stat["value"] = stat["correct"] / 24
        stat["ci_low"], stat["ci_high"] = wilson_interval(stat["correct"], 24)
    (run / "record.json").write_text(json.dumps(rec))
    with pytest.raises(EntryError, match=r"aggregates disagree.*clean\.single_draw: claimed"):
        Entry.from_run_dir(run)

    run2 = shutil.copytree(runs["det"], tmp_path / "unfinished")
    (run2 / "shards" / "shard_00001.jsonl").unlink()
    with pytest.raises(EntryError, match="shard_00001.jsonl is missing"):
        Entry.from_run_dir(run2)
    run3 = shutil.copytree(runs["det"], tmp_path / "norecord")
    (run3 / "record.json").unlink()
    with pytest.raises(EntryError, match="no record.json"):
        Entry.from_run_dir(run3)
    with pytest.raises(EntryError, match="not a directory"):
        Entry.from_run_dir(tmp_path / "nope")


def test_metadata_naming_and_validation(runs, tmp_path):
    assert robustbench_name("Weili Nie, Brandon Guo", 2022, "Diffusion Models for Adversarial Purification") == \
        "Nie2022Diffusion"
    assert robustbench_name("Chen and Dong", 2024, "Robust classification via a single diffusion model",
                            "EDM") == "Chen2024Robust_EDM"
    with pytest.raises(EntryError, match="cannot form a name"):
        robustbench_name("", 2024, "Title")
    meta = EntryMetadata(authors="Ada Lovelace, C. Babbage", venue="NeurIPS 2023", paper_title="Tiny digits",
                         name_suffix="TinyCNN", link="https://example.org/paper", additional_data=False,
                         reported=0.61, external=ExternalResult(0.02, "Broken by Z (2025)."))
    e = Entry.from_run_dir(runs["det"], meta)
    assert e.name == "Lovelace2023Tiny_TinyCNN" and e.venue == "NeurIPS 2023" and e.reported == 0.61
    assert e.board_accuracy == 0.02 and e.external.footnote == "Broken by Z (2025)."
    assert Entry.from_run_dir(runs["det"], EntryMetadata(name="Mine")).name == "Mine"
    f = tmp_path / "meta.json"
    f.write_text(json.dumps({"authors": "A B", "year": 2020, "paper_title": "x", "unknown": 1}))
    with pytest.raises(EntryError, match=r"unknown fields \['unknown'\]"):
        EntryMetadata.load(f)
    f.write_text('{"reported": NaN}')
    with pytest.raises(EntryError, match="not valid JSON"):
        EntryMetadata.load(f)
    f.write_text(json.dumps({"name": "../x"}))
    with pytest.raises(EntryError, match="expected a name"):
        EntryMetadata.load(f)


def _examples():
    return [{"index": 0, "label": 1, "clean": [True, True], "attacks": {"a": {"correct": [True, False], "distance": 0.1,
                                                                            "valid": True},
                                                                      "b": {"correct": [True, True], "distance": 0.05,
                                                                            "valid": True}}},
            {"index": 1, "label": 2, "clean": [False, False], "attacks": {"a": None, "b": None}},
            {"index": 2, "label": 3, "clean": [True, False], "attacks": {"a": {"correct": [False, False],
                                                                              "distance": 0.1, "valid": True},
                                                                        "b": None}}]


def test_aggregates_follow_benchmark_definitions():
    ex = validate_examples(_examples(), ["a", "b"], n_reeval=2, eps=0.1, cascade=True)
    agg = aggregate_examples(ex, ["a", "b"], cascade=True, n_reeval=2, eps=0.1)
    assert {p: s.correct for p, s in agg.clean.items()} == {"single_draw": 2, "majority": 1, "worst_of_m": 1}
    # example 0: attack a flips the second draw -> robust under single draw only
    assert {p: s.correct for p, s in agg.robust.items()} == {"single_draw": 1, "majority": 0, "worst_of_m": 0}
    assert agg.per_attack["a"]["single_draw"].correct == 1 and agg.n_invalid == 0


@pytest.mark.parametrize("mutate, message", [
    (lambda ex: ex[0].update(clean=[True]), r"examples\[0\]\.clean: expected an array of 2 booleans"),
    (lambda ex: ex[0].update(clean=[1, 1]), r"examples\[0\]\.clean"),
    (lambda ex: ex[1].update(index=0), "appears twice"),
    (lambda ex: ex[0]["attacks"].pop("b"), r"expected exactly the attacks"),
    (lambda ex: ex[0]["attacks"].update(a=None), r"attacks\.a: null \(skipped\) although"),
    (lambda ex: ex[0]["attacks"]["a"].update(distance=0.2), "exceeds eps"),
    (lambda ex: ex[0]["attacks"]["a"].update(distance=-1.0), r"distance: expected a number in \[0, inf\]"),
    (lambda ex: ex[0].update(label=-1), r"label: expected an integer"),
    (lambda ex: ex[0].update(extra=1), r"unknown fields \['extra'\]"),
])
def test_example_validation(mutate, message):
    ex = _examples()
    mutate(ex)
    with pytest.raises(ExamplesError, match=message):
        validate_examples(ex, ["a", "b"], n_reeval=2, eps=0.1, cascade=True)


def test_no_skips_without_cascade():
    with pytest.raises(ExamplesError, match="does not cascade"):
        validate_examples(_examples(), ["a", "b"], n_reeval=2, eps=0.1, cascade=False)


def test_attack_spec_keeps_every_setting():
    from robustkit.leaderboard import AttackSpec

    proto = {"attack": "autoattack", "norm": "Linf", "eps": 8 / 255, "seed": 3, "version": "rand",
             "sub_attacks": ["apgd-ce", "apgd-dlr"], "steps": 100, "restarts": 1, "eot": 20,
             "per_sub_attack": {"apgd-ce": 12}, "implementation": "pyautoattack 0.2.0"}
    spec = AttackSpec.from_protocol("autoattack-rand", proto, norm="L2", eps=0.5)
    assert (spec.name, spec.norm, spec.eps, spec.steps, spec.eot) == ("autoattack-rand", "Linf", 8 / 255, 100, 20)
    assert spec.options["sub_attacks"] == ["apgd-ce", "apgd-dlr"]
    assert spec.options["per_sub_attack"] == '{"apgd-ce": 12}'  # kept, as JSON text
    assert spec.describe() == "autoattack-rand (Linf eps=0.0313725, 100 steps, EOT 20)"
    d = _entry_dict()
    d["attacks"] = [dataclasses.asdict(dataclasses.replace(spec, norm="Linf", eps=0.1))]
    d["per_attack"] = {"autoattack-rand": d["per_attack"]["pgd"]}
    d["eot"] = 20
    assert Entry.from_dict(d).attacks[0].options == spec.options
    # a protocol without a budget takes the record's
    assert AttackSpec.from_protocol("x", {}, norm="L2", eps=0.5) == AttackSpec("x", "L2", 0.5, None, 1, {})


def test_wrap_classifier_name_reaches_the_entry(tmp_path):
    from robustkit import InputError, wrap_classifier

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    clf = wrap_classifier(net, input_shape=(1, 8, 8), name="Linear-AT")
    robustkit.benchmark(clf, dataset="digits", eps=0.1, attacks=["pgd"], attack_options={"pgd": {"steps": 1}},
                        n_examples=4, batch_size=4, checks=False, run_dir=tmp_path / "run", progress=False)
    e = Entry.from_run_dir(tmp_path / "run")
    assert (e.name, e.defense) == ("Linear-AT", "Linear-AT")
    assert wrap_classifier(net, input_shape=(1, 8, 8)).name == "Sequential"  # not "WrappedClassifier"
    for bad in ("", "  ", 7, "a\nb", "x" * 129):
        with pytest.raises(InputError, match="name must be"):
            wrap_classifier(net, input_shape=(1, 8, 8), name=bad)
