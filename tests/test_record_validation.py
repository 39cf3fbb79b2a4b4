"""Records are validated on load (issue 21 item 3): schema, versions, aggregates, and a seeded fuzz.

Every bad record file must give a :class:`RecordError` whose one-line message names the file (and, for a
field-level problem, the field); a documented conversion (the migration of early schema-1 records) must
load; nothing else may load. ``report`` must refuse a record its per-example results do not give.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import shutil
from pathlib import Path

import pytest

import robustkit
from robustkit.errors import RobustkitError
from robustkit.eval.corruption_sweep import SweepResult
from robustkit.eval.record import SCHEMA_VERSION, BenchmarkRecord, RecordError, load_run_record
from robustkit.eval.report import write_report
from robustkit.eval.stats import wilson_interval

RECORDS = Path(__file__).resolve().parent.parent / "docs" / "results" / "records"
# JSON files in docs/results/records that are not robustkit records: outputs of scripts under bench/ and
# scripts/ (their own ad-hoc layouts, read by no robustkit loader), identified by their top-level keys.
SCRIPT_OUTPUTS = {
    "bench/compare_backbones.py": {"settings", "resolved", "torch", "threads", "recipe", "configs", "judge", "rows"},
    "scripts/eval_score_model.py": {"settings", "weights", "loss_examples", "torch", "threads", "losses", "judge",
                                    "judge_real_accuracy", "samples", "elapsed_s"},
    "scripts/eval_tta_adversarial.py (clean stream)": {"batch_size", "clean", "dataset", "defense", "n_examples",
                                                       "protocol", "seconds", "seed", "software", "split",
                                                       "tta_threat_model"},
}
STOCHASTIC_RECORD = RECORDS / "rdc_digits_bpda_ce.json"  # n_reeval = 4, a real stochastic run
CONVERTED = "<documented conversion>"


# ------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory) -> dict[str, Path]:
    """Two finished tiny runs (16 digits, PGD then APGD-CE): with and without the cascade."""
    root = tmp_path_factory.mktemp("records")
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    out = {}
    for key, cascade in (("cascade", True), ("standalone", False)):
        robustkit.benchmark(clf, dataset="digits", eps=0.1, attacks=["pgd", "apgd-ce"], n_examples=16, batch_size=8,
                            attack_options={"pgd": {"steps": 3}, "apgd-ce": {"steps": 3}}, cascade=cascade,
                            checks=False, run_dir=root / key, progress=False)
        out[key] = root / key
    return out


def _write(path: Path, d) -> Path:
    path.write_text(json.dumps(d, indent=2))
    return path


def _one_line_naming(e: BaseException, path: Path) -> str:
    msg = str(e)
    assert "\n" not in msg, f"multi-line message: {msg!r}"
    assert str(path) in msg, f"message does not name the file: {msg!r}"
    return msg


# ------------------------------------------------------------------------------------- committed records

def test_every_committed_record_loads_and_validates():
    """Each JSON under docs/results/records is a valid BenchmarkRecord or SweepResult, or a known script output."""
    kinds = {"benchmark": 0, "sweep": 0, "script": 0}
    for f in sorted(RECORDS.glob("*.json")):
        d = json.loads(f.read_text())
        if "cells" in d:
            r = SweepResult.from_json(f)
            assert SweepResult.from_json(r.to_json()) == r
            kinds["sweep"] += 1
        elif "schema_version" in d:
            r = BenchmarkRecord.load(f)
            assert BenchmarkRecord.from_json(r.to_json()) == r
            assert r.to_dict() == {**d, "traits": {"batch_dependent": False, "generative": False, **d["traits"]}}
            kinds["benchmark"] += 1
        else:
            assert any(set(d) == keys for keys in SCRIPT_OUTPUTS.values()), f"{f.name}: unknown JSON layout"
            kinds["script"] += 1
    assert kinds["benchmark"] >= 40 and kinds["sweep"] >= 1, kinds


def test_early_schema_1_record_is_migrated():
    d = json.loads(STOCHASTIC_RECORD.read_text())
    assert "batch_dependent" not in d["traits"]  # written before the trait existed
    assert BenchmarkRecord.from_dict(d).traits["batch_dependent"] is False


@pytest.mark.parametrize("version, match", [(SCHEMA_VERSION + 1, "newer than this robustkit reads"),
                                            (0, "never written"), ("1", "expected an integer"),
                                            (True, "expected an integer")])
def test_schema_version_outside_what_robustkit_reads_is_refused(tmp_path, version, match):
    d = json.loads(STOCHASTIC_RECORD.read_text())
    path = _write(tmp_path / "future.json", {**d, "schema_version": version})
    with pytest.raises(RecordError, match=match) as exc:
        BenchmarkRecord.load(path)
    msg = _one_line_naming(exc.value, path)
    assert "record.schema_version" in msg


def test_messages_name_file_and_field(tmp_path):
    d = json.loads(STOCHASTIC_RECORD.read_text())
    d["robust"]["majority"]["n"] = 31
    path = _write(tmp_path / "r.json", d)
    with pytest.raises(RecordError) as exc:
        BenchmarkRecord.load(path)
    assert str(exc.value) == f"{path}: record.robust.majority.n: 31 differs from n_examples=32"


def test_wilson_interval_is_recomputed(tmp_path):
    d = json.loads(STOCHASTIC_RECORD.read_text())
    d["clean"]["single_draw"]["ci_low"] -= 0.01  # a plausible but wrong interval
    with pytest.raises(RecordError, match=r"record\.clean\.single_draw\.ci_low: .* gives .* \(Wilson 0\.95"):
        BenchmarkRecord.load(_write(tmp_path / "r.json", d))


def test_file_level_problems(tmp_path):
    good = STOCHASTIC_RECORD.read_text()
    cases = {"empty": ("", "empty file"), "cut": (good[: len(good) // 2], "truncated"),
             "nan": (good.replace('"eps": 0.1', '"eps": NaN', 1), "NaN is not allowed"),
             "dup": (good.replace('"eps": 0.1', '"eps": 0.1, "eps": 0.2', 1), "duplicate key 'eps'")}
    for name, (text, match) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        with pytest.raises(RecordError, match=match) as exc:
            BenchmarkRecord.load(path)
        _one_line_naming(exc.value, path)
    latin = tmp_path / "latin1.json"
    latin.write_bytes(b'{"defense": "caf\xe9"}')
    with pytest.raises(RecordError, match="not UTF-8"):
        BenchmarkRecord.load(latin)
    with pytest.raises(RecordError, match="no such file"):
        BenchmarkRecord.load(tmp_path / "missing.json")
    with pytest.raises(RecordError, match="is a directory"):
        BenchmarkRecord.load(tmp_path)


def test_save_refuses_what_load_would_refuse(tmp_path):
    rec = BenchmarkRecord.load(STOCHASTIC_RECORD)
    bad = dataclasses.replace(rec, cost={**rec.cost, "wall_seconds": math.nan})
    with pytest.raises(RecordError, match=r"record\.cost\.wall_seconds: expected a finite number"):
        bad.save(tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()
    assert BenchmarkRecord.load(rec.save(tmp_path / "good.json")) == rec
    # a check's diagnostic that could not be measured is kept as text, not refused (documented in to_json)
    checks = [dataclasses.replace(c, details={**c.details, "gap": math.nan, "ratio": [math.inf]}) for c in rec.checks]
    saved = BenchmarkRecord.load(dataclasses.replace(rec, checks=checks).save(tmp_path / "nan_details.json"))
    assert saved.checks[0].details["gap"] == "nan" and saved.checks[0].details["ratio"] == ["inf"]


def test_sweep_result_is_validated(tmp_path):
    d = json.loads((RECORDS / "tea_sweep_resnet56.json").read_text())
    d["cells"][3]["correct"] = d["cells"][3]["n"] + 1
    path = _write(tmp_path / "sweep.json", d)
    with pytest.raises(RecordError, match=r"sweep\.cells\[3\]\.correct: expected an integer in \[0, 1000\]") as exc:
        SweepResult.from_json(path)
    _one_line_naming(exc.value, path)


# --------------------------------------------------------------------------- record vs per-example results

def test_run_record_matches_its_examples(run_dirs):
    for run in run_dirs.values():
        assert load_run_record(run) == BenchmarkRecord.load(run / "record.json")


def _copy(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst))


def _set_stat(stat: dict, correct: int) -> None:
    """A self-consistent accuracy (value and Wilson interval recomputed): only the examples can refute it."""
    lo, hi = wilson_interval(correct, stat["n"], stat["confidence"])
    stat.update(correct=correct, value=correct / stat["n"], ci_low=lo, ci_high=hi)


def test_report_refuses_a_record_its_examples_do_not_give(run_dirs, tmp_path):
    run = _copy(run_dirs["standalone"], tmp_path / "run")
    d = json.loads((run / "record.json").read_text())
    for p in d["robust"]:  # one robust example fewer under every protocol: internally still consistent
        _set_stat(d["robust"][p], d["robust"][p]["correct"] - 1 if d["robust"][p]["correct"] else 1)
    _write(run / "record.json", d)
    BenchmarkRecord.load(run / "record.json")  # the record alone cannot tell
    with pytest.raises(RecordError, match=r"disagrees with the per-example results .*robust\.single_draw: claimed"):
        write_report(run)
    assert not (run / "report").exists()


# ------------------------------------------------------------------------------------------------- fuzz

_TYPE_SWAPS = {"number": ["8", True, None, [1], {"a": 1}], "string": [3, False, None, ["x"], {}],
               "boolean": [0, 1, "true", None], "object": [[], "x", 1, None], "array": [{}, "x", 1, None]}


def _kind(v) -> str:
    return ("boolean" if isinstance(v, bool) else "number" if isinstance(v, (int, float)) else
            "string" if isinstance(v, str) else "array" if isinstance(v, list) else "object")


def _typed_paths(d: dict) -> list[tuple]:
    """Paths whose type the schema fixes (free-form option / details / config values are not among them)."""
    paths = [(k,) for k in d]
    for k in ("clean", "robust"):
        paths += [(k, p, f) for p in d[k] for f in d[k][p]]
    paths += [("per_attack", a, p, f) for a in d["per_attack"] for p in d["per_attack"][a]
              for f in d["per_attack"][a][p]]
    paths += [("traits", k) for k in d["traits"]]
    paths += [("checks", i, k) for i, c in enumerate(d["checks"]) for k in ("name", "status", "message", "blocking",
                                                                             "details")]
    paths += [("attacks", i, k) for i, a in enumerate(d["attacks"]) for k in ("name", "eps", "norm", "steps", "eot")
              if k in a]
    paths += [("cost", k) for k in ("forward_passes", "wall_seconds", "gpu_hours", "device") if k in d["cost"]]
    return paths


def _get(d, path):
    for k in path:
        d = d[k]
    return d


def _put(d, path, value) -> None:
    _get(d, path[:-1])[path[-1]] = value


def _mutate(rng: random.Random, base: dict) -> tuple[str, str | None, str]:
    """One bad file's text: (category, JSON text or None for raw bytes, what the message must name)."""
    d = copy.deepcopy(base)
    cat = rng.choice(["wrong type", "out of range", "unknown name", "inconsistent aggregate", "wrong keys",
                      "NaN/Inf", "truncation", "garbage bytes", "version"])
    if cat == "wrong type":
        path = rng.choice(_typed_paths(d))
        _put(d, path, rng.choice(_TYPE_SWAPS[_kind(_get(d, path))]))
        return cat, json.dumps(d), "record"
    if cat == "out of range":
        path, value = rng.choice([
            (("n_examples",), 0), (("eps",), rng.choice([-0.1, 0.0, 1.5])), (("n_reeval",), 0),
            (("batch_size",), -4), (("seed",), 2**70), (("traits", "forward_passes"), 0),
            (("clean", rng.choice(list(d["clean"])), "value"), 1.25),
            (("robust", "worst_of_m", "correct"), -1), (("robust", "majority", "correct"), d["n_examples"] + 3),
            (("clean", "single_draw", "confidence"), 1.5), (("cost", "wall_seconds"), -1.0),
            (("config_hash",), "abc"), (("created_utc",), "yesterday")])
        _put(d, path, value)
        return cat, json.dumps(d), "record." + path[0]
    if cat == "unknown name":
        where = rng.choice(["protocol", "threat_model", "gradient", "status", "norm"])
        if where == "protocol":
            group = rng.choice([d["clean"], d["robust"], *d["per_attack"].values()])
            old = rng.choice(list(group))
            group["best_of_m"] = group.pop(old)
        elif where == "threat_model":
            d["threat_model"] = rng.choice(["Linf2", "linf", "L1"])
        elif where == "gradient":
            d["traits"]["gradient"] = "magic"
        elif where == "status":
            rng.choice(d["checks"])["status"] = "ok"
        else:
            rng.choice(d["attacks"])["norm"] = "L1"
        return cat, json.dumps(d), "record"
    if cat == "inconsistent aggregate":
        kind = rng.choice(["count", "n", "unreliable", "reeval", "per-attack name"])
        if kind == "count":  # a count beyond what the other protocols / groups allow, value and CI recomputed
            group = rng.choice(["robust", "per_attack"])
            stats = d["robust"] if group == "robust" else rng.choice(list(d["per_attack"].values()))
            target = d["clean"]["single_draw"]["correct"] + 1
            if target > d["n_examples"]:
                target = d["n_examples"]
                for p in d["clean"]:
                    _set_stat(d["clean"][p], d["n_examples"] - 1)
            _set_stat(stats["worst_of_m"], target)
        elif kind == "n":
            stats = rng.choice([d["clean"], d["robust"]])
            stats["majority"]["n"] = d["n_examples"] - 1
        elif kind == "unreliable":
            d["unreliable"] = not d["unreliable"]
        elif kind == "reeval":  # several draws of a deterministic defense
            d["traits"]["stochastic"] = False
            d["n_reeval"] = max(2, d["n_reeval"])
        else:
            d["attacks"][0]["name"] = "never-ran"
        return cat, json.dumps(d), "record"
    if cat == "wrong keys":
        kind = rng.choice(["drop", "add", "rename"])
        base_traits = d["traits"]
        container = rng.choice([d, base_traits, d["clean"]["majority"], d["checks"][0], d["robust"]])
        key = rng.choice(sorted(container))
        if kind == "drop":
            del container[key]
            if container is base_traits and key in ("batch_dependent", "generative"):
                return cat, json.dumps(d), CONVERTED  # the documented migration of early schema-1 records
        elif kind == "add":
            container["extra_" + key] = 1
        else:
            container[key.upper() + "_"] = container.pop(key)
        return cat, json.dumps(d), "record"
    if cat == "NaN/Inf":  # any number, free-form ones included
        numbers = []
        stack = [((), d)]
        while stack:
            path, v = stack.pop()
            if isinstance(v, dict):
                stack += [((*path, k), x) for k, x in v.items()]
            elif isinstance(v, list):
                stack += [((*path, i), x) for i, x in enumerate(v)]
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                numbers.append(path)
        _put(d, rng.choice(numbers), rng.choice([math.nan, math.inf, -math.inf]))
        return cat, json.dumps(d), "NaN" if "NaN" in json.dumps(d) else "Infinity"
    text = json.dumps(d, indent=2)
    if cat == "truncation":
        return cat, text[: rng.randrange(0, len(text.rstrip()))], "<file>: "
    if cat == "garbage bytes":
        return cat, None, "<file>: "
    d["schema_version"] = rng.choice([SCHEMA_VERSION + 1, 10**6])
    return cat, json.dumps(d), "schema_version"


def fuzz_records(bases: list[dict], tmp_path: Path, n: int, seed: int = 0) -> dict[str, dict[str, int]]:
    """Run ``n`` seeded mutations; returns per category {tried, typed, converted}; raises on a defect."""
    rng = random.Random(seed)
    figures: dict[str, dict[str, int]] = {}
    for i in range(n):
        cat, text, must_name = _mutate(rng, rng.choice(bases))
        path = tmp_path / f"case_{i:04d}.json"
        if text is None:
            blob = bytearray(rng.randbytes(rng.randrange(1, 400)))
            # at least one control byte: JSON allows none anywhere, so every splice is invalid (otherwise a
            # splice that lands inside a free-text string and happens to be valid UTF-8 is a valid record)
            blob[len(blob) // 2] = 0x01
            if rng.random() < 0.5:  # garbage spliced into a real record
                good = json.dumps(rng.choice(bases)).encode()
                at = rng.randrange(len(good))
                blob = bytearray(good[:at]) + blob + bytearray(good[at:])
            path.write_bytes(bytes(blob))
        else:
            path.write_text(text)
        fig = figures.setdefault(cat, {"tried": 0, "typed": 0, "converted": 0})
        fig["tried"] += 1
        try:
            rec = BenchmarkRecord.load(path)
        except RecordError as e:
            assert must_name != CONVERTED, f"case {i} ({cat}): the documented conversion was refused: {e}"
            msg = _one_line_naming(e, path).replace(str(path), "<file>")
            assert must_name in msg, f"case {i} ({cat}): {msg!r} does not name {must_name!r}"
            fig["typed"] += 1
            continue
        except RobustkitError as e:  # typed, but not the record error
            raise AssertionError(f"case {i} ({cat}): {type(e).__name__} instead of RecordError: {e}") from e
        except Exception as e:  # noqa: BLE001 - a raw traceback is the defect this fuzz looks for
            raise AssertionError(f"case {i} ({cat}): raw {type(e).__name__}: {e}\n{path.read_bytes()[:300]!r}") from e
        if must_name == CONVERTED and rec.traits["batch_dependent"] is False:
            fig["converted"] += 1
            continue
        raise AssertionError(f"case {i} ({cat}): silently accepted: {path.read_bytes()[:300]!r}")
    return figures


def test_fuzz_record_files(run_dirs, tmp_path):
    """600 seeded bad record files: each a RecordError naming the file, or the documented migration
    (a dropped ``traits.batch_dependent``); 0 raw tracebacks, 0 silent acceptances."""
    bases = [json.loads((run / "record.json").read_text()) for run in run_dirs.values()]
    bases.append(json.loads((RECORDS / "purification_digits_undefended.json").read_text()))  # with checks
    bases.append(json.loads(STOCHASTIC_RECORD.read_text()))  # n_reeval = 4
    for b in bases:
        b["traits"].setdefault("batch_dependent", False)  # the fuzz tests the current layout
    figures = fuzz_records(bases, tmp_path, n=600)
    print("record fuzz (tried/typed/converted):", {k: tuple(v.values()) for k, v in sorted(figures.items())})
    assert sum(f["tried"] for f in figures.values()) == 600
    assert all(f["typed"] + f["converted"] == f["tried"] for f in figures.values())
    assert len(figures) == 9


def test_fuzz_conversion_migrates(tmp_path):
    """The one documented conversion: a schema-1 record without traits.batch_dependent loads with False."""
    rng = random.Random(1)
    converted = 0
    for f in rng.sample(sorted(p for p in RECORDS.glob("*.json") if "schema_version" in json.loads(p.read_text())), 10):
        d = json.loads(f.read_text())
        d["traits"].pop("batch_dependent", None)
        rec = BenchmarkRecord.load(_write(tmp_path / f.name, d))
        assert rec.traits["batch_dependent"] is False
        converted += 1
    assert converted == 10


def _flip_example(rng: random.Random, run: Path) -> str:
    """Damage one per-example result in place; returns what was done."""
    shards = sorted((run / "shards").glob("shard_*.jsonl"))
    f = rng.choice(shards)
    lines = [json.loads(s) for s in f.read_text().splitlines() if s.strip()]
    r = rng.choice(lines)
    ran = [a for a, v in r["attacks"].items() if v is not None]
    kind = rng.choice(["clean", "correct", "valid", "distance", "drop", "duplicate"] if ran else
                      ["clean", "drop", "duplicate"])
    if kind == "clean":
        r["clean"] = [not c for c in r["clean"]]
    elif kind == "correct":
        v = r["attacks"][rng.choice(ran)]
        v["correct"] = [not c for c in v["correct"]]
    elif kind == "valid":
        r["attacks"][rng.choice(ran)]["valid"] = False
    elif kind == "distance":
        r["attacks"][rng.choice(ran)]["distance"] = 0.5
    elif kind == "drop":
        lines.remove(r)
    else:
        lines.append(copy.deepcopy(r))
    f.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return kind


def test_fuzz_aggregates_against_examples(run_dirs, tmp_path):
    """60 seeded damages to a run's per-example results or aggregates: load_run_record refuses every one."""
    rng = random.Random(2)
    tried = typed = 0
    for i in range(60):
        run = _copy(run_dirs[rng.choice(sorted(run_dirs))], tmp_path / f"run_{i}")
        if rng.random() < 0.5:
            what = _flip_example(rng, run)
        else:  # a self-consistent but false aggregate
            d = json.loads((run / "record.json").read_text())
            group = rng.choice(["clean", "robust", *[f"per_attack.{a}" for a in d["per_attack"]]])
            stats = d[group] if "." not in group else d["per_attack"][group.split(".", 1)[1]]
            c = stats["single_draw"]["correct"]
            for p in stats:
                _set_stat(stats[p], c - 1 if c else 1)
            _write(run / "record.json", d)
            what = f"record {group}"
        tried += 1
        try:
            load_run_record(run)
        except RecordError as e:
            _one_line_naming(e, run / "record.json")
            typed += 1
        else:
            raise AssertionError(f"case {i} ({what}): accepted")
    print(f"aggregate fuzz: tried {tried}, typed {typed}, converted 0")
    assert tried == typed == 60


def _mutate_sweep(rng: random.Random, base: dict) -> tuple[str, str]:
    d = copy.deepcopy(base)
    cat = rng.choice(["wrong type", "out of range", "unknown name", "inconsistent aggregate", "wrong keys",
                      "NaN/Inf", "truncation", "version"])
    cell = rng.choice(d["cells"])
    if cat == "wrong type":
        path = rng.choice([("severity",), ("methods",), ("corruptions",), ("cells",), ("schema_version",)]
                          + [("cells", d["cells"].index(cell), k) for k in cell])
        _put(d, path, rng.choice(_TYPE_SWAPS[_kind(_get(d, path))]))
    elif cat == "out of range":
        key, value = rng.choice([("correct", cell["n"] + 1), ("correct", -1), ("n", 0), ("low", -0.1),
                                 ("high", 1.5), ("seconds", -1.0)])
        cell[key] = value
    elif cat == "unknown name":
        if rng.random() < 0.5:
            cell["corruption"] = "gaussian_blur_v2"
        else:
            d["corruptions"][rng.randrange(len(d["corruptions"]))] = "not_a_corruption"
    elif cat == "inconsistent aggregate":
        kind = rng.choice(["ci", "severity", "duplicate", "missing"])
        if kind == "ci":
            cell["low"] = max(0.0, cell["low"] - 0.02)
        elif kind == "severity":
            cell["severity"] = 3
        elif kind == "duplicate":
            d["cells"].append(copy.deepcopy(cell))
        else:
            d["cells"].remove(cell)
    elif cat == "wrong keys":
        container = rng.choice([d, cell])
        key = rng.choice(sorted(k for k in container if k not in ("protocol", "method_info")))
        if rng.random() < 0.5:
            del container[key]
        else:
            container["extra_" + key] = 1
    elif cat == "NaN/Inf":
        cell[rng.choice(["low", "high", "seconds"])] = rng.choice([math.nan, math.inf])
    elif cat == "truncation":
        text = json.dumps(d)
        return cat, text[: rng.randrange(len(text))]
    else:
        d["schema_version"] = rng.choice([SCHEMA_VERSION + 1, 0])
    return cat, json.dumps(d)


def test_fuzz_sweep_result_files(tmp_path):
    """200 seeded bad corruption-sweep files: each a RecordError naming the file; 0 raw, 0 accepted."""
    base = json.loads((RECORDS / "tea_sweep_resnet56.json").read_text())
    rng = random.Random(3)
    figures: dict[str, list[int]] = {}
    for i in range(200):
        cat, text = _mutate_sweep(rng, base)
        path = tmp_path / f"sweep_{i:03d}.json"
        path.write_text(text)
        fig = figures.setdefault(cat, [0, 0])
        fig[0] += 1
        try:
            SweepResult.from_json(path)
        except RecordError as e:
            _one_line_naming(e, path)
            fig[1] += 1
        except Exception as e:  # noqa: BLE001 - a raw traceback is the defect this fuzz looks for
            raise AssertionError(f"case {i} ({cat}): raw {type(e).__name__}: {e}") from e
        else:
            raise AssertionError(f"case {i} ({cat}): silently accepted")
    print("sweep fuzz (tried/typed):", figures)
    assert all(t == ok for t, ok in figures.values()) and sum(t for t, _ in figures.values()) == 200


def test_every_record_field_is_checked():
    """Each field of this schema version has its own check: a wrong type in any of them is refused, named."""
    from robustkit.eval import record as record_module

    d = json.loads(STOCHASTIC_RECORD.read_text())
    assert set(record_module._RECORD_FIELDS) == set(BenchmarkRecord.__dataclass_fields__)
    for name in record_module._RECORD_FIELDS:
        bad = {**d, name: "x" if isinstance(d[name], list) else [["x"]]}
        with pytest.raises(RecordError, match=rf"record\.{name}\b"):
            BenchmarkRecord.from_dict(bad)
