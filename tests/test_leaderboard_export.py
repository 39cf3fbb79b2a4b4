"""``robustkit export robustbench``: RobustBench model_info files from real run directories."""

from __future__ import annotations

import json

import pytest
import torch

import robustkit
from robustkit import Classifier, DefenseTraits, cli
from robustkit.leaderboard import Entry, EntryError, EntryMetadata
from robustkit.leaderboard.robustbench import MODEL_INFO_KEYS, REQUIRED_KEYS, eps_string, export_robustbench, percent


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
    # a standard RobustBench evaluation: the whole digits test split, AutoAttack at its full budget, checks run
    # (a large eps so that APGD-CE breaks nearly everything and the later sub-attacks have little left: ~10 s)
    robustkit.benchmark(clf, dataset="digits", eps=0.3, attacks=["autoattack-standard"], n_examples=None,
                        batch_size=360, checks=True, probe_size=8,
                        check_options={"steps": 2, "square_queries": 20}, run_dir=root / "std", progress=False)
    return {"det": root / "det", "sto": root / "sto", "std": root / "std"}


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
    assert not Entry.from_run_dir(runs["std"]).ranking_problems()  # the fixture is a standard evaluation
    meta_file = tmp_path / "meta.json"
    meta_file.write_text(json.dumps(META))
    out = tmp_path / "model_info"
    args = ["export", "robustbench", str(runs["std"]), "--out", str(out), "--metadata", str(meta_file),
            "--name-suffix", "TinyCNN"]
    assert cli.main(args + ["--external", "12.5", "--external-footnote", "Broken by Z."]) == 0
    captured = capsys.readouterr()
    path = out / "digits" / "Linf" / "Lovelace2024Tiny_TinyCNN.json"
    assert captured.out.strip() == str(path) and captured.err == ""
    info = json.loads(path.read_text())
    raw = json.loads((runs["std"] / "record.json").read_text())
    assert list(info) == list(MODEL_INFO_KEYS)  # every key, in RobustBench's order
    assert info == {
        "link": "https://example.org/tiny", "name": "Tiny Digits Are Robust",
        "authors": "Ada Lovelace, Charles Babbage", "additional_data": False, "number_forward_passes": 1,
        "dataset": "digits", "venue": "ICML 2024", "architecture": raw["defense_config"]["config"]["architecture"],
        "eps": "0.3", "clean_acc": f"{100 * raw['clean']['single_draw']['value']:.2f}", "reported": "71.23",
        "autoattack_acc": f"{100 * raw['robust']['single_draw']['value']:.2f}", "external": "12.50",
        "footnote": "Broken by Z.", "unreliable": False}
    assert list(cwd.iterdir()) == []  # nothing written into the working directory

    # same content again: fine; other content: refused unless --overwrite
    assert cli.main(args + ["--external", "12.5", "--external-footnote", "Broken by Z."]) == 0
    capsys.readouterr()
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists with other content" in err[0] and "--overwrite" in err[0]
    assert json.loads(path.read_text())["external"] == "12.50"  # untouched
    assert cli.main(args + ["--overwrite"]) == 0
    info = json.loads(path.read_text())
    assert "external" not in info and info["footnote"] is None and list(info) == list(REQUIRED_KEYS) + [
        "footnote", "unreliable"]


def test_unknown_values_get_robustbench_placeholders(runs, tmp_path):
    res = export_robustbench(runs["std"], tmp_path, EntryMetadata(name="Anon2024Model"))
    info = json.loads(res.path.read_text())
    assert res.path == tmp_path / "digits" / "Linf" / "Anon2024Model.json" and res.violations == []
    assert {k: info[k] for k in ("link", "authors", "venue", "reported", "additional_data")} == {
        "link": "", "authors": "", "venue": "N/A", "reported": "", "additional_data": False}  # Standard.json's
    assert info["name"] == "tiny_cnn.digits (robustkit evaluation, no paper given)"
    assert info["architecture"] == "TinyCNN (2 conv + BN, 16/32 channels)"
    assert set(REQUIRED_KEYS) <= set(info)


def test_a_defense_is_exported_with_its_inner_classifier_architecture():
    from types import SimpleNamespace

    from robustkit.leaderboard.entry import _architecture

    def record(config):
        return SimpleNamespace(defense_config={"name": "purified(x)", "config": config})

    assert _architecture(record({"classifier": "tiny_cnn.digits", "score_model": "tiny_unet.digits"})) == \
        "TinyCNN (2 conv + BN, 16/32 channels)"
    assert _architecture(record({"classifier": "my_net", "score_model": None})) == "my_net"  # not registered
    assert _architecture(record({"architecture": "WideResNet-28-10", "classifier": "tiny_cnn.digits"})) == \
        "WideResNet-28-10"
    assert _architecture(record(None)) is None


def test_nonstandard_runs_are_refused_unless_allowed(runs, tmp_path, cwd, capsys):
    out = tmp_path / "mi"
    args = ["export", "robustbench", str(runs["det"]), "--out", str(out), "--name", "Tiny2024Subset"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Tiny2024Subset is not a standard RobustBench evaluation" in err[0]
    for reason in ("n = 10 of the test split, not the full digits test set (360)", "reduced attack budget",
                   "sanity checks skipped (--no-checks)", "--allow-nonstandard"):
        assert reason in err[0], reason
    assert not out.exists()
    assert cli.main(args + ["--allow-nonstandard"]) == 0
    captured = capsys.readouterr()
    assert "robustkit: note: Tiny2024Subset is a non-standard evaluation (n = 10" in captured.err
    info = json.loads((out / "digits" / "Linf" / "Tiny2024Subset.json").read_text())
    assert info["footnote"].startswith("Non-standard evaluation, not RobustBench's protocol: n = 10 of the test split")
    assert info["footnote"].endswith("Robust accuracy under pgd (Linf eps=0.0313725, 2 steps), not AutoAttack.")
    assert list(info) == [k for k in MODEL_INFO_KEYS if k != "external"]


def test_stochastic_defense_is_refused_then_footnoted(runs, tmp_path, cwd, capsys):
    out = tmp_path / "mi"
    args = ["export", "robustbench", str(runs["sto"]), "--out", str(out), "--name", "Noisy2024Logits"]
    assert cli.main(args) == 2
    assert "randomized defense (RobustBench admits only deterministic models)" in capsys.readouterr().err
    assert cli.main(args + ["--allow-nonstandard"]) == 0
    capsys.readouterr()
    info = json.loads((out / "digits" / "Linf" / "Noisy2024Logits.json").read_text())
    e = Entry.from_run_dir(runs["sto"])
    assert info["autoattack_acc"] == f"{100 * e.robust['worst_of_m'].value:.2f}"
    assert info["clean_acc"] == f"{100 * e.clean['worst_of_m'].value:.2f}"
    assert "Non-standard evaluation, not RobustBench's protocol: randomized defense" in info["footnote"]
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
    assert cli.main(["export", "robustbench", str(runs["std"]), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("robustkit: error: ") and message in err[0]
    assert not out.exists() and list(cwd.iterdir()) == []


def test_export_refuses_unfinished_run(runs, tmp_path):
    import shutil

    run = shutil.copytree(runs["det"], tmp_path / "run")
    (run / "record.json").unlink()
    with pytest.raises(EntryError, match="not finished"):
        export_robustbench(run, tmp_path / "out", EntryMetadata(name="X2024Y"), allow_nonstandard=True)
    assert not (tmp_path / "out").exists()


def test_robustbench_tools_accept_every_export(runs, tmp_path):
    """RobustBench's leaderboard, list, BibTeX and LaTeX functions (re-expressed in robustbench_oracle) read
    every export: standard ones with and without paper metadata, and non-standard ones (footnoted)."""
    import robustbench_oracle as rb

    out = tmp_path / "model_info"
    meta = EntryMetadata.from_dict({**META, "name_suffix": "TinyCNN"})
    exported = [export_robustbench(runs["std"], out, meta).name,
                export_robustbench(runs["std"], out, EntryMetadata(name="Anon2024Model")).name,
                export_robustbench(runs["det"], out, EntryMetadata(name="Sub2024Set"), allow_nonstandard=True).name,
                export_robustbench(runs["sto"], out, EntryMetadata(name="Noisy2024Logits"), allow_nonstandard=True).name]
    table = rb.generate_leaderboard(out, "digits", "Linf")
    assert len(table) == 4 and [r["rank"] for r in table] == [1, 2, 3, 4]
    best = [float(r["best"].rstrip("%")) for r in table]
    assert best == sorted(best, reverse=True)
    assert {r["unreliable"] for r in table} == {False} and all(r["venue"] for r in table)
    assert sum(r["footnote"] is not None and r["footnote"].startswith("Non-standard") for r in table) == 2
    lines = rb.list_available_models(out, "digits", "Linf")
    assert sorted(line.split(" | ")[1] for line in lines) == sorted(exported)
    assert "| [Tiny Digits Are Robust](https://example.org/tiny) |" in next(x for x in lines if "Lovelace" in x)
    bibtex = rb.get_leaderboard_bibtex(out, "digits", "Linf")  # entries without a venue ("N/A") are skipped
    assert bibtex == {"@article{Lovelace2024Tiny,\n\ttitle\t= {Tiny Digits Are Robust},\n\tauthor\t= {Ada Lovelace "
                      "and Charles Babbage},\n\tjournal\t= {ICML},\n\tyear\t= {2024}\n}\n"}
    latex = rb.get_leaderboard_latex(out, "digits", "Linf")
    assert len(latex) == 4 and latex[0].startswith("1 &\\citet{")
    assert any("\\citet{Lovelace2024Tiny} & " in row and "Lovelace2024Tiny\\_TinyCNN" in row for row in latex)
    # the oracle is not lenient: an export missing a key RobustBench reads fails there as it fails in RobustBench
    path = out / "digits" / "Linf" / "Anon2024Model.json"
    info = json.loads(path.read_text())
    del info["venue"]
    path.write_text(json.dumps(info))
    for tool in (rb.generate_leaderboard, rb.list_available_models, rb.get_leaderboard_bibtex, rb.get_leaderboard_latex):
        with pytest.raises(KeyError, match="venue"):
            tool(out, "digits", "Linf")


@pytest.mark.parametrize("authors, venue, title, name", [  # real RobustBench model_info files and their names
    ("Yair Carmon, Aditi Raghunathan, Ludwig Schmidt, Percy Liang, John C. Duchi", "NeurIPS 2019",
     "Unlabeled Data Improves Adversarial Robustness", "Carmon2019Unlabeled"),
    ("Kundu, Souvik and Nazemi, Mahdi and Beerel, Peter A. and Pedram, Massoud", "ASP-DAC 2021",
     "A Tunable Robust Pruning Framework Through Dynamic Network Rewiring of DNNs", "Kundu2021Tunable"),
    ("Seyed-Mohsen Moosavi-Dezfooli, Alhussein Fawzi, Jonathan Uesato, Pascal Frossard", "CVPR 2019",
     "Robustness via Curvature Regularization, and Vice Versa", "Moosavi-Dezfooli2019Robustness"),
    ("Jingfeng Zhang, Jianing Zhu, Gang Niu, Bo Han, Masashi Sugiyama, Mohan Kankanhalli", "ICLR 2021",
     "Geometry-aware Instance-reweighted Adversarial Training", "Zhang2021Geometry"),
    ("Motasem Alfarra, Juan C. Perez, Adel Bibi, Ali Thabet, Pablo Arbelaez, Bernard Ghanem", "arXiv, Jun 2020",
     "ClusTR: Clustering Training for Robustness\n", "Alfarra2020ClusTR"),
])
def test_automatic_name_follows_robustbench(authors, venue, title, name):
    meta = EntryMetadata(authors=authors, venue=venue, paper_title=title)
    from robustkit.leaderboard.entry import _default_name

    assert _default_name("whatever", meta) == name


# ------------------------------------------------------------------------------------------------ import

CARMON = {"link": "https://arxiv.org/abs/1905.13736", "name": "Unlabeled Data Improves Adversarial Robustness",
          "authors": "Yair Carmon, Aditi Raghunathan, Ludwig Schmidt, Percy Liang, John C. Duchi",
          "additional_data": True, "number_forward_passes": 1, "dataset": "digits", "venue": "NeurIPS 2019",
          "architecture": "WideResNet-28-10", "eps": "0.3", "clean_acc": "89.69", "reported": "62.5",
          "autoattack_acc": "59.53", "unreliable": False}
STANDARD = {"link": "https://github.com/RobustBench/robustbench/", "name": "Standardly trained model", "authors": "",
            "additional_data": False, "number_forward_passes": 1, "dataset": "digits", "venue": "N/A",
            "architecture": "WideResNet-28-10", "eps": "8/255", "clean_acc": "94.78", "reported": "0.0",
            "autoattack_acc": "0.0"}


def _model_info_dir(root, files):
    for rel, d in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(d if isinstance(d, str) else json.dumps(d, indent=2))
    return root


def test_import_robustbench_claims_onto_the_board(runs, tmp_path, capsys):
    import shutil

    src = tmp_path / "runs"
    shutil.copytree(runs["std"], src / "std")
    mi = _model_info_dir(tmp_path / "model_info", {
        "digits/Linf/Carmon2019Unlabeled.json": CARMON,
        "digits/Linf/Standard.json": STANDARD,
        "digits/Linf/Broken2020Claim.json": {**CARMON, "autoattack_acc": "40.00", "external": "12.30",
                                             "footnote": "Broken by an adaptive attack."},
        "digits/corruptions/Other.json": {"corruptions_acc": "70.0"}})  # not a board here: passed over
    assert cli.main(["leaderboard", "import", str(mi), "--into", str(src)]) == 0
    assert capsys.readouterr().out.strip() == f"imported 3 RobustBench claim(s) into {src / 'robustbench_claims'}"
    assert json.loads((src / "robustbench_claims" / "digits" / "Linf" / "Standard.json").read_text()) == STANDARD
    site = tmp_path / "site"
    assert cli.main(["leaderboard", "build", str(src), "--out", str(site)]) == 0
    capsys.readouterr()
    index = (site / "index.html").read_text()
    board = index.split('id="board-digits-Linf-0p3"')[1].split("</section>")[0]
    assert 'id="board-digits-Linf-0p3-ranked"' in board  # robustkit's own standard run is ranked ...
    claims = board.split('id="board-digits-Linf-0p3-imported"')[1]
    assert "imported, not re-evaluated by robustkit" in board  # ... RobustBench's rows sit beside it, marked
    assert claims.count('class="badge imported"') == 2 and claims.index("Carmon2019Unlabeled") < claims.index(
        "Broken2020Claim")  # by best known accuracy: 59.53 before 12.30
    assert '<td class="num" data-sort="12.3">12.30</td>' in claims
    assert 'id="board-digits-Linf-8-255-imported"' in index and "Standardly trained model" in index
    assert 'id="board-digits-Linf-8-255-ranked"' not in index
    pytest.importorskip("starlette")  # the live server shows the same claims
    from starlette.testclient import TestClient

    from robustkit.leaderboard.robustbench import load_claims
    from robustkit.leaderboard.server import create_app

    with TestClient(create_app(tmp_path / "board.db", claims=load_claims(mi))) as client:
        page = client.get("/").text
    assert page.count('class="badge imported"') == 3 and 'id="board-digits-Linf-0p3-imported"' in page
    assert cli.main(["serve", "--db", str(tmp_path / "b2.db"), "--port", "0", "--claims", str(tmp_path)]) == 2
    assert "not a model_info directory" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    ({"eps": "eight"}, "eps: expected a string like '8/255'"),
    ({"clean_acc": "101"}, "clean_acc: expected a percentage in [0, 100]"),
    ({"autoattack_acc": 59.53}, "autoattack_acc: expected a string"),
    ({"additional_data": "yes"}, "additional_data: expected true or false"),
    ({"number_forward_passes": 0}, "number_forward_passes: expected an integer"),
    ({"venue": None}, "venue: expected a value"),
    ({"extra": 1}, "unknown fields ['extra']"),
])
def test_import_refuses_a_bad_file_and_names_it(tmp_path, capsys, change, message):
    d = {**CARMON, **change}
    mi = _model_info_dir(tmp_path / "mi", {"digits/Linf/Good2020Model.json": CARMON,
                                           "digits/Linf/Bad2020Model.json": d})
    into = tmp_path / "runs"
    assert cli.main(["leaderboard", "import", str(mi), "--into", str(into)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Bad2020Model.json" in err[0] and message in err[0], err
    assert not into.exists()  # all or nothing
