"""bench/compare_backbones.py: matched digits configs, and the whole train → evaluate pipeline on a tiny budget,
including resumption of an interrupted run and a rerun that does not retrain."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `bench` is importable

from bench.bench_backbone_scaling import build, count_params  # noqa: E402
from bench.compare_backbones import BACKBONES, MATCHED_DIGITS, TIMING_NAME, main  # noqa: E402
from robustkit.diffusion import TIMES  # noqa: E402

TINY = ["--steps", "3", "--loss-examples", "12", "--draws", "1", "--per-class", "2", "--sample-steps", "2"]


def test_matched_digits_parameter_counts_are_equal_within_5_percent():
    counts = {name: count_params(build(cfg)) for name, cfg in MATCHED_DIGITS.items()}
    assert set(counts) == set(BACKBONES)
    assert max(counts.values()) / min(counts.values()) <= 1.05, counts
    assert all(cfg.input_shape == (1, 8, 8) and cfg.num_classes == 10 for cfg in MATCHED_DIGITS.values())


def _table_rows(text: str) -> list[str]:
    return [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")][1:]


def test_pipeline_trains_resumes_evaluates_and_reruns_without_retraining(tmp_path, capsys):
    out, js = tmp_path / "runs", tmp_path / "cmp.json"
    # An interrupted run: the time limit stops every backbone after its first step; nothing is evaluated.
    assert main(TINY + ["--out", str(out), "--max-minutes", "1e-9"]) is None
    assert "rerun the same command" in capsys.readouterr().out
    for name in BACKBONES:
        assert json.loads((out / name / TIMING_NAME).read_text())["steps"] == 1

    # Rerunning continues from the checkpoints, finishes, and evaluates.
    rows = main(TINY + ["--out", str(out), "--json", str(js)])
    text = capsys.readouterr().out
    assert _table_rows(text)[:3] == list(BACKBONES) and len(_table_rows(text)) == 4  # + the zero predictor
    record = json.loads(js.read_text())
    assert [r["backbone"] for r in record["rows"]] == list(BACKBONES)
    for r in record["rows"]:
        assert r["steps"] == 3 and r["train_s"] > 0 and r["gflops_per_image"] > 0
        assert r["params"] == count_params(build(MATCHED_DIGITS[r["backbone"]]))
        assert [x["t"] for x in r["losses"]] == list(TIMES)
        assert all(set(x) == {"t", "cond", "uncond", "zero"} for x in r["losses"])
        assert r["sample_accuracy"]["n"] == 20 and 0 <= r["sample_accuracy"]["low"] <= r["sample_accuracy"]["high"] <= 1
        timing = json.loads((out / r["backbone"] / TIMING_NAME).read_text())
        assert [c[0] for c in timing["chunks"]] == [1, 2]  # resumed at step 1, not restarted
        assert (out / r["backbone"] / "eval_samples.png").exists()
    # every backbone's loss is measured on the same noise draws: the zero predictor's loss is identical
    zero = [[x["zero"] for x in r["losses"]] for r in record["rows"]]
    assert zero[0] == zero[1] == zero[2]

    # A rerun of a finished comparison trains nothing (no checkpoint rewritten) and measures the same.
    stamps = {n: (out / n / "checkpoint.pt").stat().st_mtime_ns for n in BACKBONES}
    again = main(TINY + ["--out", str(out)])
    assert {n: (out / n / "checkpoint.pt").stat().st_mtime_ns for n in BACKBONES} == stamps
    assert [(r.steps, r.train_s, r.losses) for r in again] == [(r.steps, r.train_s, r.losses) for r in rows]


def test_recipe_overrides_reach_the_trainer_and_the_record(tmp_path):
    out, js = tmp_path / "runs", tmp_path / "cmp.json"
    main(TINY + ["--out", str(out), "--json", str(js), "--backbones", "unet",
                 "--warmup", "1", "--lr", "1e-3", "--ema", "0.9"])
    recipe = json.loads(js.read_text())["recipe"]
    assert (recipe["steps"], recipe["warmup_steps"], recipe["lr"], recipe["ema_decay"]) == (3, 1, 1e-3, 0.9)
    saved = json.loads((out / "unet" / "train_config.json").read_text())
    assert (saved["warmup_steps"], saved["lr"], saved["ema_decay"]) == (1, 1e-3, 0.9)
