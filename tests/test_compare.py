"""Issue 25 item 6 (first half): str(record) is the summary table; `robustkit compare RUN_A RUN_B`."""

import pytest

import robustkit
from robustkit.cli import main
from robustkit.errors import InputError
from robustkit.eval.compare import compare_runs, plot_comparison

KW = dict(dataset="digits", n_examples=16, checks=False, progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    recs = {}
    for name, eps, steps in (("weak", 0.1, 1), ("strong", 0.1, 10), ("wide", 0.2, 1)):
        recs[name] = robustkit.benchmark(clf, eps=eps, attacks=["pgd"], attack_options={"pgd": {"steps": steps}},
                                         run_dir=tmp / name, **KW)
    recs["other_examples"] = robustkit.benchmark(clf, eps=0.1, attacks=["pgd"], run_dir=tmp / "other_examples",
                                                 indices=list(range(100, 116)), **KW)
    return tmp, recs


def test_str_of_a_record_is_its_summary_table(runs):
    _, recs = runs
    rec = recs["weak"]
    assert str(rec) == rec.summary()
    assert str(rec).splitlines()[0].startswith("tiny_cnn.digits on digits/test, Linf eps=0.1, n=16")
    assert "defense_config" not in str(rec)  # not the dataclass dump


def test_compare_prints_both_runs_with_intervals_and_the_difference(runs, capsys):
    tmp, recs = runs
    assert main(["compare", str(tmp / "weak"), str(tmp / "strong")]) == 0
    out = capsys.readouterr().out
    rows = {line[:30].strip(): line for line in out.splitlines() if line[:30].strip()}
    weak, strong = recs["weak"].robust["worst_of_m"], recs["strong"].robust["worst_of_m"]
    row = rows["robust (all attacks)"]
    assert f"{100 * weak.value:.2f}% [{100 * weak.ci_low:.1f}, {100 * weak.ci_high:.1f}]" in row
    assert f"{100 * strong.value:.2f}%" in row and f"{100 * (strong.value - weak.value):+.2f} pts" in row
    assert "A attack: " in out and "steps=1" in out and "B attack: " in out and "steps=10" in out
    assert strong.value <= weak.value  # ten steps break at least what one step breaks here


@pytest.mark.parametrize("other, message", [("wide", "eps (0.1 vs 0.2)"),
                                            ("other_examples", "the examples (same n, other indices)")])
def test_compare_refuses_runs_on_other_data_or_threat_model(runs, capsys, other, message):
    tmp, _ = runs
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compare_runs(tmp / "weak", tmp / other)
    assert main(["compare", str(tmp / "weak"), str(tmp / other)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert main(["compare", str(tmp / "weak"), str(tmp / "missing")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_compare_plot_is_a_png(runs, tmp_path):
    tmp, _ = runs
    png = plot_comparison(tmp / "weak", tmp / "strong", tmp_path / "c.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
