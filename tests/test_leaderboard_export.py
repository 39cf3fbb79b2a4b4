"""``robustkit export robustbench``: RobustBench model_info files from real run directories."""

from __future__ import annotations

import json

import pytest
import torch

import robustkit
from robustkit import Classifier, DefenseTraits, cli
from robustkit.leaderboard import Entry, EntryError, EntryMetadata
from robustkit.leaderboard.robustbench import MODEL_INFO_KEYS, eps_string, export_robustbench, percent


class Noisy(Classifier):
    def __init__(self, base):
        super().__init__(10, (1, 8, 8), DefenseTraits(stochastic=True, gradient="exact"))
        self.base = base

    def logits(self, x):
        out = self.base(x)
        return out + torch.randn_like(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-runs")
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    robustkit.benchmark(clf, dataset="digits", eps="8/255", attacks=["pgd"], attack_options={"pgd": {"steps": 2}},
                        n_examples=10, batch_size=10, checks=False, run_dir=root / "det", progress=False)
    robustkit.benchmark(Noisy(clf), dataset="digits", eps=0.1, attacks=["pgd"], attack_options={"pgd": {"steps": 1}},
                        n_examples=8, batch_size=8, n_reeval=2, checks=False, run_dir=root / "sto", progress=False)
    return {"det": root / "det", "sto": root / "sto"}


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    d = tmp_path / "cwd"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


META = {"paper_title": "Tiny Digits Are Robust", "authors": "Ada Lovelace, Charles Babbage", "venue": "ICML 2024",
        "link": "https://example.org/tiny", "additional_data": False, "reported": 0.7123}


def test_eps_and_percent_strings():
    assert eps_string(8 / 255) == "8/255" and eps_string(4 / 255) == "4/255" and eps_string(1 / 255) == "1/255"
    assert eps_string(0.5, "L2") == "0.5" and eps_string(0.2, "L2") == "0.2"  # 0.2 = 51/255, but L2
    assert eps_string(0.1) == "0.1"
    assert percent(0.5953) == "59.53" and percent(1.0) == "100.00" and percent(0.0) == "0.00"
    assert percent(2 / 3) == "66.67"


def test_cli_export_robustbench(runs, tmp_path, cwd, capsys):
    meta_file = tmp_path / "meta.json"
    meta_file.write_text(json.dumps(META))
    out = tmp_path / "model_info"
    assert cli.main(["export", "robustbench", str(runs["det"]), "--out", str(out), "--metadata", str(meta_file),
                     "--name-suffix", "TinyCNN", "--external", "12.5", "--external-footnote", "Broken by Z."]) == 0
    captured = capsys.readouterr()
    path = out / "digits" / "Linf" / "Lovelace2024Tiny_TinyCNN.json"
    assert captured.out.strip() == str(path) and captured.err == ""
    info = json.loads(path.read_text())
    raw = json.loads((runs["det"] / "record.json").read_text())
    assert list(info) == [k for k in MODEL_INFO_KEYS if k in info]  # RobustBench's key order
    assert info == {
        "link": "https://example.org/tiny", "name": "Tiny Digits Are Robust",
        "authors": "Ada Lovelace, Charles Babbage", "additional_data": False, "number_forward_passes": 1,
        "dataset": "digits", "venue": "ICML 2024", "architecture": raw["defense_config"]["config"]["architecture"],
        "eps": "8/255", "clean_acc": f"{100 * raw['clean']['single_draw']['value']:.2f}", "reported": "71.23",
        "autoattack_acc": f"{100 * raw['robust']['single_draw']['value']:.2f}", "external": "12.50",
        "footnote": "Broken by Z. Robust accuracy under pgd (Linf eps=0.0313725, 2 steps), not AutoAttack.",
        "unreliable": False}
    assert list(cwd.iterdir()) == []  # nothing written into the working directory

    # same content again: fine; other content: refused unless --overwrite
    assert cli.main(["export", "robustbench", str(runs["det"]), "--out", str(out), "--metadata", str(meta_file),
                     "--name-suffix", "TinyCNN", "--external", "12.5", "--external-footnote", "Broken by Z."]) == 0
    capsys.readouterr()
    args = ["export", "robustbench", str(runs["det"]), "--out", str(out), "--metadata", str(meta_file),
            "--name-suffix", "TinyCNN"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists with other content" in err[0] and "--overwrite" in err[0]
    assert json.loads(path.read_text())["external"] == "12.50"  # untouched
    assert cli.main(args + ["--overwrite"]) == 0
    assert "external" not in json.loads(path.read_text())
    assert json.loads(path.read_text())["footnote"].startswith("Robust accuracy under pgd")


def test_absent_keys_are_omitted(runs, tmp_path):
    res = export_robustbench(runs["det"], tmp_path, EntryMetadata(name="Anon2024Model"))
    info = json.loads(res.path.read_text())
    assert res.path == tmp_path / "digits" / "Linf" / "Anon2024Model.json" and res.violations == []
    assert set(info) == {"number_forward_passes", "dataset", "architecture", "eps", "clean_acc", "autoattack_acc",
                         "footnote", "unreliable"}
    assert info["footnote"] == "Robust accuracy under pgd (Linf eps=0.0313725, 2 steps), not AutoAttack."


def test_stochastic_defense_gets_a_note(runs, tmp_path, cwd, capsys):
    out = tmp_path / "mi"
    assert cli.main(["export", "robustbench", str(runs["sto"]), "--out", str(out), "--name", "Noisy2024Logits"]) == 0
    captured = capsys.readouterr()
    assert "robustkit: note: Noisy2024Logits breaks RobustBench's rules (randomized defense" in captured.err
    assert "not a RobustBench submission" in captured.err
    info = json.loads((out / "digits" / "Linf" / "Noisy2024Logits.json").read_text())
    e = Entry.from_run_dir(runs["sto"])
    assert info["autoattack_acc"] == f"{100 * e.robust['worst_of_m'].value:.2f}"
    assert info["clean_acc"] == f"{100 * e.clean['worst_of_m'].value:.2f}"
    assert info["footnote"].endswith("Randomized defense: robust accuracy is worst-of-2 (each adversarial example "
                                     "re-classified 2 times).")
    assert info["eps"] == "0.1"
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize("extra, message", [
    ([], "'tiny_cnn.digits' is not a RobustBench model name"),  # no metadata: the registry name has a dot
    (["--name", "../evil"], "expected a name"),
    (["--name", "a/b"], "expected a name"),
    (["--external", "10"], "--external and --external-footnote go together"),
    (["--metadata", "/nonexistent/meta.json"], "does not exist"),
    (["--authors", "Ada Lovelace", "--paper-title", "Tiny", "--venue", "ICML 2024", "--name-suffix", "../x"],
     "expected a name"),
])
def test_export_user_errors(runs, tmp_path, cwd, capsys, extra, message):
    out = tmp_path / "out"
    assert cli.main(["export", "robustbench", str(runs["det"]), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("robustkit: error: ") and message in err[0]
    assert not out.exists() and list(cwd.iterdir()) == []


def test_export_refuses_unfinished_run(runs, tmp_path):
    import shutil

    run = shutil.copytree(runs["det"], tmp_path / "run")
    (run / "record.json").unlink()
    with pytest.raises(EntryError, match="not finished"):
        export_robustbench(run, tmp_path / "out", EntryMetadata(name="X2024Y"))
    assert not (tmp_path / "out").exists()


def test_footnote_names_non_autoattack_attacks(runs):
    import dataclasses

    from robustkit.leaderboard.robustbench import model_info

    e = Entry.from_run_dir(runs["det"], EntryMetadata(name="Anon2024Model"))
    assert "not AutoAttack" in model_info(e)["footnote"]
    aa = dataclasses.replace(e, attacks=tuple(dataclasses.replace(a, name="autoattack-standard") for a in e.attacks))
    assert "footnote" not in model_info(aa)
