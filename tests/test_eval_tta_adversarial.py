"""scripts/eval_tta_adversarial.py: the adversarial evaluation of source/BN/TENT/TEA end to end, tiny."""

from __future__ import annotations

import argparse
import json

import pytest

from scripts.eval_tta_adversarial import evaluate, table


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: threads only add contention


@pytest.mark.parametrize("method", ["tent", "source"])
def test_records_and_table(method, shared_dir, tmp_path):
    args = argparse.Namespace(method=method, classifier="resnet20.cifar10",
                              checkpoint=str(shared_dir / "models" / "resnet20-12fca82f.th"),
                              data_dir=str(shared_dir / "data" / "cifar10"), eps="8/255", n_examples=6, batch_size=3,
                              steps=2, step_size=2 / 255, eot=1, n_reeval=2, seed=0, no_checks=True,
                              out_dir=str(tmp_path))
    rec = evaluate(args)
    saved = json.loads((tmp_path / f"{method}.json").read_text())
    assert saved["n_examples"] == rec.n_examples == 6 and saved["batch_size"] == 3
    protocols = {a["name"]: a for a in saved["attacks"]}
    assert protocols["pgd-eot"]["steps"] == 2 and protocols["pgd-eot"]["gradient"] == "exact"
    assert protocols["transfer"]["source"] == "resnet20.cifar10"
    if method == "tent":  # the batch threat model is declared for the adapting method only
        assert protocols["pgd-eot"]["batch_threat_model"]["batch_size"] == 3
    else:
        assert "batch_threat_model" not in protocols["pgd-eot"]
    # the worst case over both attacks is never above either attack alone
    robust = saved["robust"]["single_draw"]["value"]
    assert robust <= min(saved["per_attack"][a]["single_draw"]["value"] for a in ("transfer", "pgd-eot"))
    rows = table(tmp_path).splitlines()
    assert len(rows) == 3 and rows[2].startswith(f"| {method} | single_draw |")


def test_threat_model_records_and_clean_stream(shared_dir, tmp_path):
    from scripts.eval_tta_adversarial import clean_stream

    common = dict(method="tent", classifier="resnet20.cifar10",
                  checkpoint=str(shared_dir / "models" / "resnet20-12fca82f.th"),
                  data_dir=str(shared_dir / "data" / "cifar10"), batch_size=3, seed=0, out_dir=str(tmp_path))
    out = clean_stream(argparse.Namespace(clean_stream=6, tta_threat_model="continual", **common))
    saved = json.loads((tmp_path / "clean_tent_continual.json").read_text())
    assert saved["n_examples"] == 6 and saved["tta_threat_model"] == "continual" and saved["batch_size"] == 3
    assert saved["clean"]["n"] == 6 and saved["clean"] == out["clean"]
    args = argparse.Namespace(eps="8/255", n_examples=6, steps=1, step_size=2 / 255, eot=1, n_reeval=1,
                              no_checks=True, tta_threat_model="continual", **common)
    evaluate(args)
    rec = json.loads((tmp_path / "tent_continual.json").read_text())
    assert {a["test_time_threat_model"] for a in rec["attacks"]} == {"continual"}
    assert table(tmp_path).splitlines()[2].startswith("| tent_continual | single_draw |")
