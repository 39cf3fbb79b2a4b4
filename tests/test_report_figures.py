"""Issue 25 item 6 (second half): the report's figures name classes, show the adversarial prediction and say
"not broken" / "not attacked" where there is no adversarial image; attacks are listed in the order they ran."""

import pytest
import torch

import robustkit
from robustkit.eval.report import _class_name, _plot_examples, load_run, write_report


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    # pgd first and weak, then apgd-ce: the cascade makes "after apgd-ce" the cumulative number
    rec = robustkit.benchmark(clf, dataset="digits", eps=0.1, attacks=["pgd", "apgd-ce"],
                              attack_options={"pgd": {"steps": 2}}, n_examples=32, batch_size=32, checks=False,
                              run_dir=tmp / "run", progress=False)
    return clf, rec, tmp / "run"


def test_attacks_keep_the_order_they_ran_in_record_and_summary(run):
    _, rec, path = run
    loaded = robustkit.BenchmarkRecord.load(path / "record.json")  # per_attack comes back key-sorted from JSON
    assert [a["name"] for a in loaded.attacks] == ["pgd", "apgd-ce"] == loaded.attack_names()
    lines = str(loaded).splitlines()
    assert lines.index(next(l for l in lines if l.startswith("after pgd"))) < \
        lines.index(next(l for l in lines if l.startswith("after apgd-ce")))
    assert loaded.per_attack["apgd-ce"]["worst_of_m"].value <= loaded.per_attack["pgd"]["worst_of_m"].value


def test_the_run_stores_the_predictions_the_model_makes(run):
    clf, rec, path = run
    data = load_run(path)
    x, y = robustkit.load_dataset("digits", split="test", n_examples=32)
    with torch.no_grad():
        assert torch.equal(data.first_shard_x_adv["pred:clean"][:, 0], clf(x).argmax(1))
        for name in ("pgd", "apgd-ce"):
            pred = data.first_shard_x_adv[f"pred:{name}"][:, 0]
            attacked = pred >= 0
            for i, r in enumerate(data.first_shard_records):
                assert bool(attacked[i]) == (r["attacks"][name] is not None)
            assert torch.equal(pred[attacked], clf(data.first_shard_x_adv[name][attacked]).argmax(1))


def test_examples_figure_shows_predictions_and_says_why_there_is_no_image(run, tmp_path):
    _, _, path = run
    data = load_run(path)
    x, _ = robustkit.load_dataset("digits", split="test", n_examples=8)
    png, shown = _plot_examples(data, x, tmp_path / "examples.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for s, r in zip(shown, data.first_shard_records):
        assert s["pred_clean"] is not None
        if s["status"] == "misclassified clean":
            assert s["pred_clean"] != s["label"] and not s["has_adv"] and s["pred_adv"] is None
        elif s["status"].startswith("broken by"):
            assert s["has_adv"] and s["pred_adv"] != s["label"]
        else:  # robust: whatever the last attack returned is still classified right
            assert s["pred_adv"] in (None, s["label"])
    assert any(s["status"].startswith("broken by") for s in shown)


def test_class_names_and_the_report_of_an_old_run_without_predictions(run, tmp_path):
    assert _class_name("cifar10", 3) == "cat" and _class_name("cifar10c", 9) == "truck"
    assert _class_name("digits", 7) == "7"
    _, _, path = run
    from safetensors.torch import load_file, save_file

    old = tmp_path / "old"
    import shutil

    shutil.copytree(path, old)
    tensors = {k: v for k, v in load_file(str(old / "shards" / "shard_00000.pt")).items() if not k.startswith("pred:")}
    save_file(tensors, str(old / "shards" / "shard_00000.pt"))  # as written before predictions were stored
    md = write_report(old)
    assert (md.parent / "examples.png").is_file()
    _, shown = _plot_examples(load_run(old), None, tmp_path / "e.png")
    assert all(s["pred_clean"] is None and s["pred_adv"] is None for s in shown)
