"""``robustkit report``: Markdown + PNG report of finished benchmark run directories."""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

import robustkit
from robustkit import cli
from robustkit.cli import report as report_cli
from robustkit.errors import InputError
from robustkit.eval.record import RecordError
from robustkit.eval.report import RunNotFinishedError, _fmt_eps, write_report
from robustkit.eval.runner import RunConfigError

pytest.importorskip("matplotlib", reason="robustkit report needs matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
OPTIONS = {"apgd-ce": {"steps": 5}, "pgd": {"steps": 5}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Two digits runs (eps 0.05 and 0.1, two short attacks) and one 3-channel run on custom data."""
    root = tmp_path_factory.mktemp("runs")
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    out = {}
    for key, eps in (("a", 0.05), ("b", 0.1)):
        robustkit.benchmark(clf, dataset="digits", eps=eps, attacks=["apgd-ce", "pgd"], attack_options=OPTIONS,
                            n_examples=32, batch_size=16, checks=False, run_dir=root / key, progress=False)
        out[key] = root / key
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    rgb = robustkit.wrap_classifier(net, input_shape=(3, 6, 6), num_classes=3)
    x = torch.rand(6, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    y = rgb(x).argmax(1).detach()  # all clean-correct, so the attack runs on every example
    robustkit.benchmark(rgb, dataset="custom-rgb", data=(x, y), eps=8 / 255, attacks=["pgd"],
                        attack_options={"pgd": {"steps": 2}}, batch_size=6, checks=False, run_dir=root / "rgb",
                        progress=False)
    out["rgb"] = root / "rgb"
    out["rgb_data"] = (x.numpy(), y.numpy())
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("report"))
    return dst


def _edit_shards(run: Path, edit) -> None:
    for f in sorted((run / "shards").glob("shard_*.jsonl")):
        lines = [edit(json.loads(s)) for s in f.read_text().splitlines() if s.strip()]
        f.write_text("".join(json.dumps(r) + "\n" for r in lines))


def _rerecord(run: Path, n_reeval: int) -> None:
    """Rewrite record.json with the aggregates of the (edited) shards, as benchmark() would have."""
    import dataclasses

    from robustkit.eval.record import BenchmarkRecord
    from robustkit.leaderboard.examples import aggregate_examples, load_run_examples

    rec = BenchmarkRecord.load(run / "record.json")
    manifest, examples = load_run_examples(run)
    agg = aggregate_examples(examples, manifest["config"]["attacks"], cascade=rec.cascade, n_reeval=n_reeval,
                             eps=rec.eps)
    rec = dataclasses.replace(rec, n_reeval=n_reeval, traits={**rec.traits, "stochastic": n_reeval > 1},
                              clean=agg.clean, robust=agg.robust, per_attack=agg.per_attack)
    rec.save(run / "record.json")


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) after checking the signature and decoding the whole image."""
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    w, h = struct.unpack(">II", data[16:24])
    img = imread(path)
    assert img.shape[:2] == (h, w) and img.shape[2] in (3, 4)
    assert img.std() > 0.01, f"{path.name} is blank"
    return w, h


def _stat(d: dict) -> str:
    return f"{100 * d['value']:.2f}% [{100 * d['ci_low']:.2f}, {100 * d['ci_high']:.2f}]"


def test_fmt_eps():
    assert _fmt_eps(8 / 255) == "0.03137 (8/255)"
    assert _fmt_eps(0.1) == "0.1"
    assert _fmt_eps(0.5) == "0.5"  # 0.5 = 127.5/255 is not an /255 budget


def test_single_run_report(runs, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    md_path = write_report(runs["b"])
    assert md_path == runs["b"] / "report" / "report.md"
    md = md_path.read_text()
    raw = json.loads((runs["b"] / "record.json").read_text())  # independent of BenchmarkRecord

    assert md.startswith("# Robustness report: tiny_cnn.digits on digits/test, Linf eps = 0.1\n")
    assert "UNRELIABLE" not in md
    for p in ("single_draw", "majority", "worst_of_m"):
        assert _stat(raw["clean"][p]) in md
        assert _stat(raw["robust"][p]) in md
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| after ")}
    assert list(rows) == ["after apgd-ce", "after pgd"]
    for name in ("apgd-ce", "pgd"):
        assert _stat(raw["per_attack"][name]["worst_of_m"]) in rows[f"after {name}"]
    assert raw["config_hash"] in md and raw["created_utc"] in md
    assert f"| torch | {torch.__version__} |" in md
    assert f"| forward NFE | {raw['cost']['forward_nfe']} |" in md
    assert "| step_size |" in md and "| seed |" in md  # attack protocol table
    assert "sanity checks were **not run**" in md
    assert "| adversarial_validity | pass | yes |" in md
    assert "Skipped: one run given" in md and "accuracy_vs_eps.png" not in md
    assert "Clean images not shown" not in md  # digits reloads and reproduces every recorded distance

    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links == ["accuracy_per_attack.png", "examples.png"]
    for link in links:
        assert not Path(link).is_absolute()
        w, h = _png_size(md_path.parent / link)
        assert 300 <= w <= 3000 and 150 <= h <= 2000
    # clean / adversarial / perturbation rows: clearly taller than the adversarial-only grid
    assert _png_size(md_path.parent / "examples.png")[1] > 400
    assert sorted(p.name for p in md_path.parent.iterdir()) == ["accuracy_per_attack.png", "examples.png",
                                                               "report.md"]
    assert list(cwd.iterdir()) == []


def test_examples_table_matches_shard(runs):
    md = write_report(runs["a"]).read_text()
    lines = [json.loads(s) for s in (runs["a"] / "shards" / "shard_00000.jsonl").read_text().splitlines()]
    table = [line for line in md.splitlines() if re.match(r"\| \d+ \| \d+ \|", line)]
    assert len(table) == 8
    for line, r in zip(table, lines[:8]):
        index, label, attack, outcome = [c.strip() for c in line.strip("|").split("|")]
        assert (int(index), int(label)) == (r["index"], r["label"])
        if not all(r["clean"]):
            assert outcome == "misclassified clean"
        elif all(a is not None and all(a["correct"]) for a in r["attacks"].values()):
            assert outcome == "robust" and attack == "pgd"
        else:
            first = next(n for n, a in r["attacks"].items() if a is not None and not all(a["correct"]))
            assert outcome == f"broken by {first}" and attack == first


def test_accuracy_vs_eps(runs, tmp_path):
    out = tmp_path / "out"
    md_path = write_report([runs["b"], runs["a"]], out)
    assert md_path == out / "report.md"
    md = md_path.read_text()
    assert "![robust accuracy vs eps](accuracy_vs_eps.png)" in md
    eps_rows = [line for line in md.splitlines() if re.match(r"\| 0\.\d+ \| 32 \|", line)]
    assert [r.split("|")[1].strip() for r in eps_rows] == ["0.05", "0.1"]  # sorted by eps
    for row, key in zip(eps_rows, ("a", "b")):
        raw = json.loads((runs[key] / "record.json").read_text())
        assert _stat(raw["robust"]["worst_of_m"]) in row and row.split("|")[-2].strip() == key
    assert md.startswith("# Robustness report: tiny_cnn.digits on digits/test, Linf eps = 0.1\n")  # first given
    for name in ("accuracy_per_attack.png", "accuracy_vs_eps.png", "examples.png"):
        w, h = _png_size(out / name)
        assert w >= 300 and h >= 150
    assert not (runs["b"] / "report" / "accuracy_vs_eps.png").exists()  # only into out_dir


def test_mismatched_runs_are_refused(runs, tmp_path):
    other = _copy(runs["a"], tmp_path / "other")
    rec = json.loads((other / "record.json").read_text())
    rec["dataset"] = "cifar10"
    (other / "record.json").write_text(json.dumps(rec))
    with pytest.raises(InputError, match="dataset"):
        write_report([runs["b"], other], tmp_path / "out")
    with pytest.raises(InputError, match="distinct eps"):
        write_report([runs["a"], runs["a"]], tmp_path / "out")
    with pytest.raises(InputError, match="at least one"):
        write_report([], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unfinished_and_invalid_runs(runs, tmp_path, monkeypatch, capsys):
    unfinished = _copy(runs["a"], tmp_path / "unfinished")
    (unfinished / "record.json").unlink()
    (unfinished / "shards" / "shard_00001.jsonl").unlink()
    with pytest.raises(RunNotFinishedError, match=r"1/2 shards finished.*re-run robustkit bench with the same "
                                                  r"--run-dir to resume"):
        write_report(unfinished)
    assert not (unfinished / "report").exists()
    with pytest.raises(RunConfigError, match="not a directory"):
        write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunConfigError, match="no manifest.json"):
        write_report(tmp_path / "empty")
    broken = _copy(runs["a"], tmp_path / "broken")
    (broken / "record.json").write_text('{"schema_version": 1}')
    with pytest.raises(RecordError):
        write_report(broken)

    monkeypatch.chdir(tmp_path)
    assert cli.main(["report", str(unfinished)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("robustkit: error: ") and "--run-dir to resume" in err[0]


def test_unreliable_flag_on_top(runs, tmp_path):
    bad = _copy(runs["a"], tmp_path / "bad")
    rec = json.loads((bad / "record.json").read_text())
    rec["unreliable"] = True
    rec["checks"].insert(0, {"name": "gradients", "status": "fail", "blocking": True, "details": {},
                             "message": "input gradients are zero | on 16/16 probes"})
    (bad / "record.json").write_text(json.dumps(rec))
    md = write_report(bad).read_text()
    head = md.split("## Accuracy")[0]
    assert "**UNRELIABLE: a blocking sanity check failed (gradients).**" in head
    assert "| gradients | FAIL | yes | input gradients are zero \\| on 16/16 probes |" in md
    assert "sanity checks were **not run**" not in md


def test_clean_images_not_matching_run_are_not_shown(runs, tmp_path):
    from robustkit.data import load_dataset

    _, pool = load_dataset("digits", n_examples=200)
    same_label = {}
    for i, label in enumerate(pool.tolist()):
        same_label.setdefault(label, []).append(i)
    for name, remap in (("shifted", lambda i: i + 2),  # other labels
                        ("swapped", lambda i: next(j for j in same_label[int(pool[i])] if j > i))):  # same labels
        moved = _copy(runs["a"], tmp_path / name)
        man = json.loads((moved / "manifest.json").read_text())
        man["config"]["indices"] = [remap(i) for i in man["config"]["indices"]]
        (moved / "manifest.json").write_text(json.dumps(man))
        md_path = write_report(moved)
        md = md_path.read_text()
        reason = ("the labels of dataset 'digits' differ from those of the run" if name == "shifted" else
                  "the dataset images do not reproduce the recorded perturbation distances")
        assert f"Clean images not shown: {reason}" in md
        assert _png_size(md_path.parent / "examples.png")[1] < 300  # adversarial row only


def test_three_channel_custom_data(runs, tmp_path, monkeypatch):
    from matplotlib.image import imread

    from robustkit import data

    md_path = write_report(runs["rgb"], tmp_path / "rgb")
    md = md_path.read_text()
    assert "eps = 0.03137 (8/255)" in md.splitlines()[0]
    assert "Clean images not shown: dataset 'custom-rgb' could not be loaded" in md
    assert len(re.findall(r"\| \d+ \| \d \| pgd \|", md)) == 6
    img = imread(md_path.parent / "examples.png")
    rgb = img[..., :3]
    assert (rgb.max(-1) - rgb.min(-1)).max() > 0.1  # coloured pixels: shown as RGB, not grayscale
    assert img.shape[0] < 300  # adversarial row only

    # once the dataset can be loaded, its images are verified against the run and shown with the perturbation
    monkeypatch.setitem(data.DATASETS, "custom-rgb", lambda split, data_dir: runs["rgb_data"])
    md_path = write_report(runs["rgb"], tmp_path / "rgb-clean")
    assert "Clean images not shown" not in md_path.read_text()
    assert _png_size(md_path.parent / "examples.png")[1] > 400


def test_cli_report(runs, tmp_path, monkeypatch, capsys):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    if report_cli not in cli.SUBCOMMANDS:  # until the subcommand is registered in robustkit/cli/__init__.py
        monkeypatch.setattr(cli, "SUBCOMMANDS", (*cli.SUBCOMMANDS, report_cli))
    assert cli.main(["report", str(runs["a"])]) == 0
    assert capsys.readouterr().out.strip() == str(runs["a"] / "report" / "report.md")
    out = tmp_path / "multi"
    assert cli.main(["report", str(runs["a"]), str(runs["b"]), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.md")
    assert (out / "accuracy_vs_eps.png").exists()
    assert list(cwd.iterdir()) == []


def test_examples_use_the_strictest_protocol(runs, tmp_path):
    draws = _copy(runs["a"], tmp_path / "draws")

    def two_draws(r: dict) -> dict:  # the deterministic run as a stochastic one with M = 2 identical draws
        return {**r, "clean": r["clean"] * 2, "attacks": {a: v and {**v, "correct": v["correct"] * 2}
                                                          for a, v in r["attacks"].items()}}

    _edit_shards(draws, two_draws)
    f = draws / "shards" / "shard_00000.jsonl"
    lines = [json.loads(s) for s in f.read_text().splitlines()]
    lines[0]["clean"] = [True, False]  # right on one draw, wrong on the other: not clean under worst-of-M
    f.write_text("".join(json.dumps(r) + "\n" for r in lines))
    _rerecord(draws, n_reeval=2)
    md = write_report(draws).read_text()
    row = next(line for line in md.splitlines() if line.startswith(f"| {lines[0]['index']} | {lines[0]['label']} |"))
    assert row.rstrip().endswith("| misclassified clean |")
