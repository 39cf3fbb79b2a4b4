"""Seeded, bounded fuzz suite over robustkit's input surface (issue 21, items 4 and 6).

Every case states its expectation: a **typed** robustkit error (``Typed(InputError)``, with a phrase its
message must contain where it matters), or a **documented conversion** (``Converted(check)``, where
``check`` asserts what the conversion produced). A case that returns without the expected error (a silent
acceptance) or raises anything else (a raw error from inside a layer) fails, naming the case.

Categories (table-driven, one builder each): ``forward`` (Classifier.forward), ``wrap``
(wrap_classifier, DefenseTraits, predict/clean_accuracy arguments), ``labels``
(check_labels, attacks, benchmark), ``benchmark`` (benchmark()'s arguments), ``create``
(create_classifier / create_defense / create_score_model), ``dataset`` (load_dataset) and ``cli``
(every subcommand with bad values of its options: exit 2 and one line on stderr). The random part of
each category is drawn from ``random.Random(SEED)``, so a failure reproduces exactly.

``python tests/test_fuzz_inputs.py`` prints the figures (tried / typed / converted per category).
"""

from __future__ import annotations

import contextlib
import io
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn as nn

import robustkit
from robustkit import InputError, RegistryError, RobustkitError
from robustkit.cli import main
from robustkit.data import load_dataset

SEED = 20261207
K, SHAPE = 5, (3, 4, 4)  # the tiny classifier: 5 classes, 3x4x4 images


@dataclass(frozen=True)
class Typed:
    """Expect ``error`` (a robustkit error class) whose message contains ``phrase``."""

    error: type[Exception] = InputError
    phrase: str = ""


@dataclass(frozen=True)
class Converted:
    """Expect a return value; ``check(value)`` asserts the documented conversion."""

    check: Callable[[Any], None]


@dataclass(frozen=True)
class Case:
    category: str
    label: str
    call: Callable[[], Any]
    expect: Typed | Converted


def run_case(case: Case) -> str:
    """Run one case; return ``"typed"`` or ``"converted"``, or raise AssertionError naming the case."""
    try:
        value = case.call()
    except RobustkitError as e:
        if not isinstance(case.expect, Typed):
            raise AssertionError(f"[{case.category}] {case.label}: expected a conversion, got {e!r}") from e
        if not isinstance(e, case.expect.error):
            raise AssertionError(f"[{case.category}] {case.label}: expected {case.expect.error.__name__}, "
                                 f"got {e!r}") from e
        if case.expect.phrase not in str(e):
            raise AssertionError(f"[{case.category}] {case.label}: message {str(e)!r} lacks "
                                 f"{case.expect.phrase!r}") from e
        if "\n" in str(e):
            raise AssertionError(f"[{case.category}] {case.label}: message is not one line: {str(e)!r}")
        return "typed"
    except Exception as e:  # a raw error: the defect this suite exists to catch
        raise AssertionError(f"[{case.category}] {case.label}: raw {type(e).__name__}: {e}") from e
    if isinstance(case.expect, Typed):
        raise AssertionError(f"[{case.category}] {case.label}: silently accepted (returned {type(value).__name__})")
    case.expect.check(value)
    return "converted"


# ------------------------------------------------------------------------------------------ fixtures

def tiny_classifier(dtype: torch.dtype = torch.float32) -> robustkit.Classifier:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, K))
    return robustkit.wrap_classifier(net.to(dtype), mean=(0.5,) * 3, std=(0.25,) * 3, input_shape=SHAPE)


def images(n: int = 4, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed)).to(dtype)


def labels(n: int = 4) -> torch.Tensor:
    return torch.arange(n) % K


# ------------------------------------------------------------------------------------ classifier forward

def _close_to_float32(clf: robustkit.Classifier, x: torch.Tensor, atol: float) -> Callable[[Any], None]:
    want = clf(x.float()).detach()

    def check(out: Any) -> None:
        assert out.dtype == torch.float32 and out.shape == (x.shape[0], K)
        assert torch.allclose(out.detach(), want, atol=atol), (out - want).abs().max()

    return check


def forward_cases(rng: random.Random) -> list[Case]:
    clf = tiny_classifier()
    x = images()
    cases: list[Case] = []

    def add(label: str, fn: Callable[[], Any], expect: Typed | Converted) -> None:
        cases.append(Case("forward", label, fn, expect))

    # documented conversions: other floating precisions become the classifier's dtype (values rounded)
    for dtype, atol in ((torch.float16, 1e-2), (torch.bfloat16, 5e-2), (torch.float64, 1e-5),
                        (torch.float8_e4m3fn, 0.5), (torch.float8_e5m2, 0.5)):
        xd = x.to(dtype)
        add(f"images {dtype}", lambda xd=xd: clf(xd), Converted(_close_to_float32(clf, xd, atol)))
    x64 = x.double().requires_grad_(True)

    def grad_through_conversion() -> torch.Tensor:
        clf(x64).sum().backward()
        return x64.grad

    add("float64 images keep their gradient", grad_through_conversion,
        Converted(lambda g: (g.dtype == torch.float64 and g.shape == x64.shape and bool(g.abs().sum() > 0))
                  or pytest.fail("no gradient through the dtype conversion")))
    clf64 = tiny_classifier(torch.float64)
    add("float32 images into a float64 model", lambda: clf64(x),
        Converted(lambda out: out.dtype == torch.float64 or pytest.fail(str(out.dtype))))
    # refused dtypes
    for dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool, torch.complex64,
                  torch.uint16, torch.uint32):
        xd = (x * 255).to(dtype) if dtype != torch.complex64 else x.to(dtype)
        add(f"images {dtype}", lambda xd=xd: clf(xd), Typed(InputError, "floating-point"))
    # not a tensor
    for label, obj in (("list", x.tolist()), ("numpy", x.numpy()), ("None", None), ("str", "x"), ("int", 3),
                       ("tuple of tensors", (x, x))):
        add(f"images as {label}", lambda obj=obj: clf(obj), Typed(InputError, "torch.Tensor"))
    add("sparse images", lambda: clf(x.to_sparse()), Typed(InputError, "dense"))
    add("meta images", lambda: clf(torch.empty(4, *SHAPE, device="meta")), Typed(InputError, "dense"))
    add("images on another device than the model", lambda: tiny_classifier().to("meta")(x),
        Typed(InputError, "classifier is on meta"))
    # shapes
    for shape in [(), (4,), SHAPE, (4, 3, 4), (1, 4, 3, 4, 4), (4, 1, 4, 4), (4, 3, 4, 5), (4, 4, 4, 3),
                  (4, 3, 8, 8), (4, 3, 4, 4, 1), (1, 1, 1, 1, 1, 1)]:
        add(f"images of shape {shape}", lambda shape=shape: clf(torch.rand(shape)), Typed(InputError, "shape"))
    # values
    for label, value in (("NaN", math.nan), ("+Inf", math.inf), ("-Inf", -math.inf)):
        def bad(value=value) -> torch.Tensor:
            y = x.clone()
            y[1, 2, 3, 0] = value
            return clf(y)
        add(f"images with {label}", bad, Typed(InputError, "NaN/Inf"))
    above, below = x.clone(), x.clone()
    above[0, 0, 0, 0], below[3, 2, 1, 0] = 1 + 1e-4, -1e-4
    for label, t in (("0-255 floats", x * 255), ("[-1, 1] floats", x * 2 - 1), ("normalised", (x - 0.5) / 0.25),
                     ("just above 1", above), ("just below 0", below)):
        add(f"images as {label}", lambda t=t: clf(t), Typed(InputError, "[0, 1]"))
    # seeded random corruptions: a random dtype, shape edit or out-of-range value per case
    edits = ("dtype", "shape", "range", "nonfinite")
    for i in range(60):
        kind = rng.choice(edits)
        if kind == "dtype":
            dtype = rng.choice([torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool])
            t, phrase = images(3, seed=i).mul(255).to(dtype), "floating-point"
        elif kind == "shape":
            shape = [rng.randint(1, 3), *SHAPE]
            axis = rng.randrange(1, 4)
            shape[axis] += rng.choice([-1, 1, 2])
            t, phrase = torch.rand(*shape), "shape"
        elif kind == "range":
            t = images(3, seed=i)
            t.view(-1)[rng.randrange(t.numel())] = rng.choice([-1, 1]) * (1 + 10 ** rng.uniform(-4, 4))
            phrase = "[0, 1]"
        else:
            t = images(3, seed=i)
            t.view(-1)[rng.randrange(t.numel())] = rng.choice([math.nan, math.inf, -math.inf])
            phrase = "NaN/Inf"
        add(f"random #{i}: {kind}", lambda t=t: clf(t), Typed(InputError, phrase))
    return cases


# ------------------------------------------------------------------------- wrap_classifier / predict

def wrap_cases(rng: random.Random) -> list[Case]:
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, K))
    W = robustkit.wrap_classifier
    cases: list[Case] = []

    def add(label: str, fn: Callable[[], Any], expect: Typed | Converted) -> None:
        cases.append(Case("wrap", label, fn, expect))

    for v in ("344", ("a", 4, 4), (3.5, 4, 4), (3, 0, 4), (3, -4, 4), (3, 16), 48, (True, 4, 4), None, (3, 4, 4, 1)):
        add(f"input_shape={v!r}", lambda v=v: W(nn.Sequential(nn.Flatten(), nn.Linear(48, K)), input_shape=v),
            Typed(InputError, "input_shape"))
    add("input_shape the network cannot take", lambda: W(net, input_shape=(1, 4, 4)), Typed(InputError, "input_shape"))
    for what in ("mean", "std"):
        for v in ("abc", (0.5, 0.5), (math.nan,), [[0.5], ["x"]], object()):
            add(f"{what}={v!r}", lambda v=v, what=what: W(net, input_shape=SHAPE, **{what: v}), Typed(InputError, what))
    for v in (0, -1, (0.5, 0.0, 0.5)):
        add(f"std={v!r}", lambda v=v: W(net, input_shape=SHAPE, std=v), Typed(InputError, "std"))
    for v in (1, 0, "5", True, 2.5):
        add(f"num_classes={v!r}", lambda v=v: W(net, input_shape=SHAPE, num_classes=v), Typed(InputError, "num_classes"))
    add("num_classes that the network does not return", lambda: W(net, input_shape=SHAPE, num_classes=7)(images()),
        Typed(InputError, "logits"))
    for v in ("x", {"stochastic": True}, 1):
        add(f"traits={v!r}", lambda v=v: W(net, input_shape=SHAPE, traits=v), Typed(InputError, "traits"))
    for v in (None, "net", lambda x: x, tiny_classifier()):
        add(f"module={type(v).__name__}", lambda v=v: W(v, input_shape=SHAPE), Typed(InputError, "module"))
    for label, kw in (("forward_passes=0", {"forward_passes": 0}), ("gradient='none'", {"gradient": "none"}),
                      ("stochastic=1", {"stochastic": 1}), ("batch_dependent='yes'", {"batch_dependent": "yes"})):
        add(f"DefenseTraits({label})", lambda kw=kw: robustkit.DefenseTraits(**kw), Typed(InputError))
    clf = tiny_classifier()
    for v in ("foo", "cuda:99", 2.5):
        add(f"predict device={v!r}", lambda v=v: robustkit.eval.predict(clf, images(), device=v), Typed(InputError, "device"))
    for v in (0, -1, 1.5):
        add(f"predict batch_size={v!r}", lambda v=v: robustkit.eval.predict(clf, images(), batch_size=v),
            Typed(InputError, "batch_size"))
    add("clean_accuracy with int32 labels and float16 images",
        lambda: robustkit.eval.clean_accuracy(clf, images().half(), labels().int()),
        Converted(lambda acc: 0 <= acc.value <= 1 or pytest.fail(str(acc))))
    for i in range(12):  # seeded: random garbage in one of the three sizes
        shape: list[Any] = list(SHAPE)
        shape[rng.randrange(3)] = rng.choice([0, -rng.randint(1, 9), rng.random() + 1, str(rng.randint(1, 9)), None])
        add(f"random input_shape #{i} {shape}", lambda shape=tuple(shape): W(net, input_shape=shape),
            Typed(InputError, "input_shape"))
    return cases


# ------------------------------------------------------------------------------------------------ labels

def label_cases(rng: random.Random) -> list[Case]:
    clf, x = tiny_classifier(), images()
    y = labels()
    cases: list[Case] = []

    def add(label: str, fn: Callable[[], Any], expect: Typed | Converted) -> None:
        cases.append(Case("labels", label, fn, expect))

    def as_int64(out: Any) -> None:
        assert out.dtype == torch.int64 and out.tolist() == y.tolist(), out

    pgd = robustkit.attacks.make_attack("pgd", eps=0.05, steps=1)
    for dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.uint16, torch.uint32, torch.uint64):
        yd = y.to(dtype)
        add(f"check_labels {dtype}", lambda yd=yd: robustkit.check_labels(yd, 4, K), Converted(as_int64))
        add(f"attack with {dtype} labels", lambda yd=yd: pgd(clf, x, yd),
            Converted(lambda r: r.x_adv.shape == x.shape or pytest.fail("attack result has the wrong shape")))
    bad: list[tuple[str, Any, str]] = [
        ("float32", y.float(), "integer"), ("float64", y.double(), "integer"), ("float16", y.half(), "integer"),
        ("bool", y.bool(), "integer"), ("complex", y.to(torch.complex64), "integer"),
        ("list", y.tolist(), "torch.Tensor"), ("numpy", y.numpy(), "torch.Tensor"), ("None", None, "torch.Tensor"),
        ("shape [N, 1]", y[:, None], "shape"), ("shape [N + 1]", torch.arange(5) % K, "shape"),
        ("shape []", torch.tensor(1), "shape"), ("shape [N - 1]", y[:3], "shape"), ("one-hot", torch.eye(K)[y], "shape"),
        ("-1", torch.tensor([0, -1, 1, 2]), "lie in"), ("K", torch.tensor([0, K, 1, 2]), "lie in"),
        ("255 as uint8", torch.tensor([0, 255, 1, 2], dtype=torch.uint8), "lie in"),
        ("sparse", y.to_sparse(), "dense"), ("meta", torch.empty(4, dtype=torch.int64, device="meta"), "dense"),
    ]
    for i in range(24):  # seeded: random out-of-range values in random integer dtypes
        dtype = rng.choice([torch.int8, torch.int16, torch.int32, torch.int64])
        v = labels().to(dtype)
        v[rng.randrange(4)] = rng.choice([-1, 1]) * rng.randint(K if dtype != torch.int8 else K, 127)
        if 0 <= int(v.min()) and int(v.max()) < K:
            continue
        bad.append((f"random #{i} {dtype}", v, "lie in"))
    for label, v, phrase in bad:
        add(f"check_labels {label}", lambda v=v: robustkit.check_labels(v, 4, K), Typed(InputError, phrase))
        add(f"attack with labels {label}", lambda v=v: pgd(clf, x, v), Typed(InputError, phrase))
    for label, v, phrase in bad[:8]:
        add(f"benchmark with labels {label}",
            lambda v=v: robustkit.benchmark(clf, dataset="tiny", data=(x, v), eps=0.05, attacks=["pgd"],
                                            checks=False), Typed(InputError, phrase))
    return cases


# ------------------------------------------------------------------------------------------- benchmark()

def benchmark_cases(rng: random.Random, tmp: Path) -> list[Case]:
    clf, x, y = tiny_classifier(), images(), labels()
    a_file = tmp / "a_file"
    a_file.write_text("not a folder")
    good = dict(dataset="tiny", data=(x, y), eps=0.05, attacks=["pgd"], checks=False, batch_size=4,
                attack_options={"pgd": {"steps": 2}})
    cases: list[Case] = []

    def add(label: str, expect: Typed | Converted, model: Any = clf, **overrides: Any) -> None:
        kw = {**good, **overrides}
        cases.append(Case("benchmark", label, lambda: robustkit.benchmark(model, **kw), expect))

    # eps against the threat model and the data range
    add("Linf eps 8 (0-255 units)", Typed(InputError, "did you mean 8/255"), eps=8)
    add("Linf eps '16'", Typed(InputError, "did you mean 16/255"), eps="16")
    add("Linf eps 1", Typed(InputError, ">= 1"), eps=1.0)
    add("Linf eps 300", Typed(InputError, ">= 1"), eps=300)
    diameter = math.sqrt(math.prod(SHAPE))
    add("L2 eps beyond the image diameter", Typed(InputError, "largest distance"), threat_model="L2", eps=diameter)
    add("L2 eps 128", Typed(InputError, "did you mean 128/255"), threat_model="L2", eps=128)
    for bad_eps in (0, -0.1, math.nan, math.inf, -math.inf, "abc", "8/0", "", None, [], True, torch.tensor(0.1), "1e999"):
        add(f"eps={bad_eps!r}", Typed(InputError, "eps"), eps=bad_eps)
    for v in ("linf", "L1", "Linfinity", None, 2, ""):
        add(f"threat_model={v!r}", Typed(InputError, "threat_model"), threat_model=v)
    for v in (5, "", ",", "pgd,pgd", ["pgd", 3], "nonexistent", ["PGD"], None, ("pgd", None)):
        add(f"attacks={v!r}", Typed(InputError, "attack"), attacks=v)
    for name in ("n_examples", "batch_size", "n_reeval", "probe_size", "workers"):
        for v in (0, -1, 2.5, True, "8", [4]):
            extra = {"executor": "processes"} if name == "workers" else {}
            add(f"{name}={v!r}", Typed(InputError, name), **{name: v}, **extra)
    # None is the documented default of batch_size (64, or 200 for TTA), n_reeval and probe_size (10 and 16, or
    # the registry entry's default budget's)
    for v in ("yes", 1, None):
        add(f"entry_budget={v!r}", Typed(InputError, "entry_budget"), entry_budget=v)
    add("n_examples beyond the data", Typed(InputError, "n_examples"), n_examples=5)
    for v in (-1, 1.5, True, "0", 2 ** 64, None):
        add(f"seed={v!r}", Typed(InputError, "seed"), seed=v)
    for v in (a_file, str(a_file), 5, "", "   "):
        add(f"run_dir={v!r}", Typed(InputError, "run_dir"), run_dir=v)
    for v in (a_file, 5):
        add(f"data_dir={v!r}", Typed(InputError, "data_dir"), data_dir=v)
    for name in ("dataset", "split"):
        for v in ("", 5, None):
            add(f"{name}={v!r}", Typed(InputError, name), **{name: v})
    for v in ([0, 0, 1, 2], [-1, 0, 1, 2], ["a", "b", "c", "d"], 5, "abcd", [0.0, 1.0, 2.0, 3.0], [0, 1],
              torch.arange(4), [True, False, 2, 3]):
        add(f"indices={v!r}", Typed(InputError, "indices"), indices=v)
    for label, v in (("x alone", x), ("(x,)", (x,)), ("(x, y, y)", (x, y, y)), ("dict", {"x": x, "y": y}),
                     ("(list, y)", (x.tolist(), y)), ("(x, list)", (x, y.tolist())), ("uint8 images", (x.mul(255).byte(), y)),
                     ("wrong shape", (torch.rand(4, 1, 4, 4), y)), ("NaN images", (x.clone().fill_(math.nan), y)),
                     ("0-255 images", (x * 255, y)), ("float labels", (x, y.float())), ("labels too few", (x, y[:2]))):
        add(f"data={label}", Typed(InputError), data=v)
    for v in ("foo", "cuda:99", "gpu", 3.5, True, [], "cpu:x"):
        add(f"device={v!r}", Typed(InputError, "device"), device=v)
    if not torch.cuda.is_available():
        add("device='cuda' without CUDA", Typed(InputError, "CUDA is not available"), device="cuda")
    for name in ("checks", "cascade"):
        for v in ("yes", 1, None, 0.0):
            add(f"{name}={v!r}", Typed(InputError, name), **{name: v})
    for v in ("no", 1):
        add(f"progress={v!r}", Typed(InputError, "progress"), progress=v)
    for v in ([], "steps=2", {"steps": 0}, {"bogus": 1}, {"loss": "l1"}, {"eot": True}):
        add(f"check_options={v!r}", Typed(InputError), check_options=v)
    for v in ([], "pgd.steps=2", {"pgd": 5}, {3: {"steps": 2}}, {"pgd": {"bogus": 1}}, {"pgd": {"steps": 0}},
              {"pgd": {"steps": "many"}}):
        add(f"attack_options={v!r}", Typed(InputError), attack_options=v)
    for v in ("threads", "", None, "Processes"):
        add(f"executor={v!r}", Typed(InputError, "executor"), executor=v)
    for v in (0, -5, math.nan, math.inf, "10", True):
        add(f"lease_timeout={v!r}", Typed(InputError, "lease_timeout"), lease_timeout=v)
    add("slurm='x'", Typed(InputError, "slurm"), slurm="x")
    add("slurm without the submitit executor", Typed(InputError, "slurm"), slurm={"partition": "gpu"})
    add("workers with the inline executor", Typed(InputError, "workers"), workers=4)
    add("data_dir with data given", Typed(InputError, "data_dir"), data_dir=str(tmp))
    for v in ("Linf", "val", "TEST"):
        add(f"split={v!r}", Typed(InputError, "split"), split=v)
    other = robustkit.wrap_classifier(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, K)), input_shape=(3, 8, 8))
    for label, v in (("an nn.Module", nn.Linear(2, 2)), ("another input shape", other), ("a string", "resnet20")):
        add(f"base_classifier={label}", Typed(InputError, "base_classifier"), base_classifier=v)
    for label, v in (("nn.Module", nn.Linear(2, 2)), ("None", None), ("str", "tiny_cnn.digits")):
        add(f"defense={label}", Typed(InputError, "defense"), model=v)
    add("unknown dataset 'Digits!'", Typed(InputError, "did you mean digits"), data=None, dataset="Digits!")
    # seeded random budgets: numbers >= 1 in 0-255 units under Linf, and beyond the diameter under L2
    for i in range(12):
        k = rng.randint(1, 255)
        add(f"random Linf eps #{i} = {k}", Typed(InputError, f"did you mean {k}/255"), eps=k)
        e = diameter * (1 + rng.random() * 10)
        add(f"random L2 eps #{i} = {e:.3g}", Typed(InputError, "largest distance"), threat_model="L2", eps=e)

    # documented conversions: the benchmark runs, on float32 images and int64 labels
    def ran(n: int) -> Callable[[Any], None]:
        def check(rec: Any) -> None:
            assert rec.n_examples == n and rec.eps == 0.05 and rec.robust["single_draw"].n == n
        return check

    add("float64 images and int32 labels", Converted(ran(4)), data=(x.double(), y.int()))
    add("float16 images and uint8 labels", Converted(ran(4)), data=(x.half(), y.byte()))
    add("eps as '0.05' string", Converted(ran(4)), eps="0.05")
    return cases


# --------------------------------------------------------------------------------- create_* (registries)

def create_cases(rng: random.Random, tmp: Path) -> list[Case]:
    from robustkit.defenses import create_defense
    from robustkit.diffusion import create_score_model

    cases: list[Case] = []
    creators = (("classifier", robustkit.create_classifier, "tiny_cnn.digits"),
                ("defense", create_defense, "tent.tiny_cnn.digits"),
                ("score model", create_score_model, "tiny_unet.digits"))
    missing = tmp / "missing.pt"
    for kind, create, name in creators:
        def add(label: str, fn: Callable[[], Any], expect: Typed | Converted, kind: str = kind) -> None:
            cases.append(Case("create", f"{kind}: {label}", fn, expect))

        for v in ("yes", 1, 0, None, 1.0, "False", [True]):
            add(f"pretrained={v!r}", lambda v=v, c=create, n=name: c(n, pretrained=v),
                Typed(InputError, "pretrained must be a bool"))
        misspelt = {name.upper(), name.replace(".", "-"), name.replace("_", ""), name.replace(".", "_").title(),
                    name.replace(".", " . ")}
        for m in sorted(misspelt):
            add(f"misspelt {m!r}", lambda m=m, c=create: c(m), Typed(RegistryError, f"did you mean {name}"))
        for v in (5, None, ["tiny_cnn.digits"], b"tiny_cnn.digits"):
            add(f"name={v!r}", lambda v=v, c=create: c(v), Typed(InputError, "name must be a string"))
        # seeded random typos: one character dropped, doubled or swapped
        for i in range(6):
            j = rng.randrange(len(name) - 1)
            op = rng.choice(("drop", "double", "swap"))
            typo = (name[:j] + name[j + 1:] if op == "drop" else name[:j] + name[j] + name[j:] if op == "double"
                    else name[:j] + name[j + 1] + name[j] + name[j + 2:])
            if typo == name:
                continue
            add(f"random typo #{i} {typo!r}", lambda t=typo, c=create: c(t), Typed(RegistryError, "unknown"))
    for kind, create, name in creators[::2]:  # those taking checkpoint=
        cases.append(Case("create", f"{kind}: checkpoint=5", lambda c=create, n=name: c(n, checkpoint=5),
                          Typed(InputError, "checkpoint")))
        cases.append(Case("create", f"{kind}: missing checkpoint", lambda c=create, n=name: c(n, checkpoint=missing),
                          Typed(RobustkitError)))
        cases.append(Case("create", f"{kind}: pretrained and checkpoint",
                          lambda c=create, n=name: c(n, pretrained=True, checkpoint=missing), Typed(InputError, "either")))
    # defense options against their typed config fields and the builder's annotations
    options = {"tiny_diffpure.digits": {"t_star": "0.1", "num_train_steps": 10 ** 20, "beta_min": None, "clamp": 1,
                                        "sampler": "SDE", "dt": math.nan, "seed": "x", "n_samples": 2.5},
               "tiny_rdc.digits": {"stride": 2.5, "beta_max": "20", "seed": [1], "num_timesteps": True,
                                   "log_prior": 0.5},
               "tiny_contrastive_purification.digits": {"guidance_scale": math.inf, "loss": "InfoNCE",
                                                        "online_head": "yes", "head_hidden": 1.5, "seed": 10 ** 20},
               "tent.tiny_cnn.digits": {"lr": "1e-3", "steps": True, "episodic": 0, "betas": 0.9, "eps": math.nan}}
    for name, opts in options.items():
        for key, value in opts.items():
            cases.append(Case("create", f"defense {name} {key}={value!r}",
                              lambda n=name, k=key, v=value: create_defense(n, **{k: v}), Typed(InputError, key)))
    cases.append(Case("create", "list_classifiers(5)", lambda: robustkit.list_classifiers(5), Typed(InputError, "pattern")))
    cases.append(Case("create", "defense with an unknown option",
                      lambda: create_defense("tent.tiny_cnn.digits", steps_typo=3), Typed(InputError)))
    return cases


# ------------------------------------------------------------------------------------------ load_dataset

def dataset_cases(rng: random.Random, tmp: Path) -> list[Case]:
    (tmp / "a_file").write_text("x")
    cases: list[Case] = []

    def add(label: str, expect: Typed | Converted, **kw: Any) -> None:
        args = {"name": "digits", **kw}
        cases.append(Case("dataset", label, lambda: load_dataset(**args), expect))

    for v in ("Digits", "DIGITS", "cifar-10", "CIFAR10", "cifar10_c"):
        add(f"name={v!r}", Typed(InputError, "did you mean"), name=v)
    for v in ("mnist", "", 5, None, ["digits"]):
        add(f"name={v!r}", Typed(InputError, "dataset"), name=v)
    for v in ("val", "", "Test", 1, None):
        add(f"split={v!r}", Typed(InputError, "split"), split=v)
    for v in (0, -1, 10 ** 9, 2.5, True, "4"):
        add(f"n_examples={v!r}", Typed(InputError, "n_examples"), n_examples=v)
    for v in ([10 ** 9], [-1], [[0, 1]], ["a"], [0.5], 5, "012"):
        add(f"indices={v!r}", Typed(InputError, "indices"), indices=v)
    for v in (5, [1], "   "):
        add(f"data_dir={v!r}", Typed(InputError, "data_dir"), data_dir=v)
    add("data_dir naming a file", Typed(InputError, "names a file"), data_dir=tmp / "a_file")
    add("unknown option", Typed(InputError, "takes no option"), severity=3)
    for v in (0, 6, "3", 2.5):
        add(f"cifar10c severity={v!r}", Typed(InputError, "severity"), name="cifar10c", corruption="fog", severity=v,
            data_dir=tmp)
    for v in ("Fog", "snowy", ""):
        add(f"cifar10c corruption={v!r}", Typed(InputError, "corruption"), name="cifar10c", corruption=v, severity=3,
            data_dir=tmp)
    add("cifar10 from an empty folder", Typed(RobustkitError), name="cifar10", data_dir=tmp)
    for i in range(10):  # seeded: random out-of-range rows
        row = rng.choice([-1, 1]) * rng.randint(400, 10 ** 6)
        add(f"random indices #{i}", Typed(InputError, "indices"), indices=[0, row])

    def first_four(xy: Any) -> None:
        assert xy[0].dtype == torch.float32 and xy[1].dtype == torch.int64 and xy[1].tolist() == [0, 5, 0, 5]

    add("n_examples as numpy int", Converted(first_four), n_examples=np.int64(4))
    return cases


# --------------------------------------------------------------------------------------------------- CLI

def cli_cases(rng: random.Random, tmp: Path) -> list[Case]:
    a_file = tmp / "a_file"
    a_file.write_text("x")
    bench = ["bench", "--classifier", "tiny_cnn.digits", "--eps", "0.1", "--n-examples", "4", "--no-checks",
             "--attacks", "pgd"]
    bad_values = {
        "--n-examples": ("0", "-3", "x", "1.5", ""), "--batch-size": ("0", "-1", "a"), "--seed": ("-1", "x", str(2 ** 64)),
        "--n-reeval": ("0", "b"), "--device": ("foo", "cuda:99", "gpu", ""), "--workers": ("0", "-2"),
        "--probe-size": ("0", "z"), "--check-steps": ("0",), "--check-eot": ("-1",), "--check-square-queries": ("0",),
        "--threat-model": ("linf", "L1"), "--executor": ("threads",), "--eps": ("8", "255", "0", "-1", "abc", "8/0", "nan",
                                                                             "inf"),
        "--attacks": ("", "nonexistent", "pgd,pgd", ","), "--run-dir": (str(a_file), ""),
        "--dataset": ("Digits", "mnist", ""), "--data-dir": ("", str(a_file)),
        "--classifier": ("TINY_CNN.digits", "nope"), "--defense": ("tiny-diffpure.digits",),
        "--attack-option": ("pgd.steps", "pgd=3", "nope.steps=3", "pgd.bogus=1", ".steps=3"),
        "--check-loss": ("l1",), "--gradient": ("bpda",), "--score-model": ("x",), "--score-checkpoint": ("x",),
        "--checkpoint": (str(tmp / "missing.pt"), str(a_file)),
    }
    argvs: list[tuple[str, list[str]]] = []
    for flag, values in bad_values.items():
        for v in values:
            argv = [a for a in bench]
            if flag in argv:
                i = argv.index(flag)
                argv[i + 1] = v
            else:
                argv += [flag, v]
            argvs.append((f"bench {flag} {v!r}", argv))
    others = [
        ["accuracy", "tiny_cnn.digits", "--n-examples", "0"], ["accuracy", "tiny_cnn.digits", "--batch-size", "-1"],
        ["accuracy", "tiny_cnn.digits", "--device", "foo"], ["accuracy", "tiny_cnn.digits", "--split", "val"],
        ["accuracy", "tiny_cnn.digits", "--dataset", "Digits"], ["accuracy", "Tiny-CNN.digits"],
        ["accuracy", "tiny_cnn.digits", "--checkpoint", str(a_file)], ["accuracy", "tiny_cnn.digits", "--n-examples", "99999"],
        ["accuracy", "tiny_cnn.digits", "--data-dir", str(a_file), "--dataset", "cifar10"],
        ["list", "bogus"], ["list", "--pattern"], ["list", "--bogus"],
        ["report", str(a_file)], ["report", str(tmp / "missing")], ["report", str(tmp)],
        ["demo", "--eps", "8"], ["demo", "--n-examples", "0"], ["demo", "--device", "foo"], ["demo", "--seed", "x"],
        ["train-diffusion", "--out", str(tmp / "t"), "--steps", "0"],
        ["train-diffusion", "--out", str(tmp / "t"), "--lr", "-1"],
        ["train-diffusion", "--out", str(tmp / "t"), "--lr", "nan"],
        ["train-diffusion", "--out", str(tmp / "t"), "--ema-decay", "1.5"],
        ["train-diffusion", "--out", str(tmp / "t"), "--p-uncond", "2"],
        ["train-diffusion", "--out", str(tmp / "t"), "--device", "foo"],
        ["train-diffusion", "--out", str(tmp / "t"), "--max-minutes", "0"],
        ["train-diffusion", "--out", str(tmp / "t"), "--checkpoint-every", "0"],
        ["train-diffusion", "--out", str(tmp / "t"), "--samples-per-class", "-1"],
        ["train-diffusion", "nope.digits", "--out", str(tmp / "t")], ["train-diffusion"],
        ["train-diffusion", "--out", str(a_file), "--steps", "1"],
        ["make-cifar10c", "--out", str(tmp / "c"), "--n-examples", "0"],
        ["make-cifar10c", "--out", str(tmp / "c"), "--seed", "-1"],
        ["make-cifar10c", "--out", str(tmp / "c"), "--corruptions", "snowy"],
        ["corruption-sweep", "--severity", "0"], ["corruption-sweep", "--severity", "6"],
        ["corruption-sweep", "--methods", "bogus"], ["corruption-sweep", "--device", "foo"],
        ["corruption-sweep", "--n-examples", "-1"], ["corruption-sweep", "--classifier", "Resnet20.cifar10"],
        ["bogus-command"], ["-v", "-q", "list"], ["list", "-v", "-q"], ["--nonsense"], ["bench"],
        ["accuracy", "tiny_cnn.digits", "--dataset", ""], ["accuracy", ""], ["report", ""], ["list", "--pattern", " "],
        ["corruption-sweep", "--classifier", ""], ["train-diffusion", "--out", ""], ["make-cifar10c", "--out", " "],
        ["bench", "--eps", "0.1"], ["bench", "--classifier", "tiny_cnn.digits"],
    ]
    argvs += [(" ".join(a), a) for a in others]
    # seeded: random garbage for random bench options
    flags = sorted(bad_values)
    for i in range(20):
        flag = rng.choice([f for f in flags if f.startswith(("--n-", "--batch", "--seed", "--probe", "--check-s"))])
        v = rng.choice(["-" + str(rng.randint(1, 99)), "0" if flag != "--seed" else "-0.5",
                        rng.choice("xyz") * rng.randint(1, 3), f"{rng.random():.2f}"])
        argvs.append((f"random #{i}: bench {flag} {v}", [*bench, flag, v]))

    def run_cli(argv: list[str]) -> Callable[[], Any]:
        def call() -> None:
            err, out = io.StringIO(), io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                code = main(argv)
            lines = err.getvalue().strip().splitlines()
            if code != 2 or len(lines) != 1 or "Traceback" in err.getvalue() or "error:" not in lines[0]:
                raise AssertionError(f"exit {code}, stderr {err.getvalue()!r}")
            raise _CliRefused(lines[0])
        return call

    return [Case("cli", label, run_cli(argv), Typed(_CliRefused)) for label, argv in argvs]


class _CliRefused(RobustkitError):
    """Stands for "exit 2 with one line on stderr" so CLI cases count as typed like the others."""


# ------------------------------------------------------------------------------------------------ runner

def all_cases(tmp: Path) -> dict[str, list[Case]]:
    rng = random.Random(SEED)
    return {"forward": forward_cases(rng), "wrap": wrap_cases(rng), "labels": label_cases(rng), "benchmark": benchmark_cases(rng, tmp),
            "create": create_cases(rng, tmp), "dataset": dataset_cases(rng, tmp), "cli": cli_cases(rng, tmp)}


CATEGORIES = ("forward", "wrap", "labels", "benchmark", "create", "dataset", "cli")


@pytest.mark.parametrize("category", CATEGORIES)
def test_fuzz_category(category: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBUSTKIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ROBUSTKIT_OFFLINE", "1")
    torch.manual_seed(0)
    cases = all_cases(tmp_path)[category]
    failures, counts = [], {"typed": 0, "converted": 0}
    for case in cases:
        try:
            counts[run_case(case)] += 1
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures)
    assert counts["typed"] + counts["converted"] == len(cases) >= 20


def test_the_harness_catches_silent_acceptance_and_raw_errors() -> None:
    with pytest.raises(AssertionError, match="silently accepted"):
        run_case(Case("meta", "accepts", lambda: 1, Typed(InputError)))
    with pytest.raises(AssertionError, match="raw RuntimeError"):
        run_case(Case("meta", "raw", lambda: (_ for _ in ()).throw(RuntimeError("inside a layer")), Typed()))
    with pytest.raises(AssertionError, match="lacks"):
        run_case(Case("meta", "wrong message", lambda: (_ for _ in ()).throw(InputError("x")), Typed(InputError, "y")))


if __name__ == "__main__":  # figures for the closing note
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        os.environ.update(ROBUSTKIT_HOME=str(Path(d) / "home"), ROBUSTKIT_OFFLINE="1")
        total = {"tried": 0, "typed": 0, "converted": 0, "failed": 0}
        for cat, cases in all_cases(Path(d)).items():
            c = {"typed": 0, "converted": 0, "failed": 0}
            for case in cases:
                try:
                    c[run_case(case)] += 1
                except AssertionError as e:
                    c["failed"] += 1
                    print("  FAIL", e)
            print(f"{cat:10s} tried {len(cases):4d}  typed {c['typed']:4d}  converted {c['converted']:3d}  "
                  f"failed {c['failed']}")
            for k in c:
                total[k] += c[k]
            total["tried"] += len(cases)
        print(f"{'total':10s} tried {total['tried']:4d}  typed {total['typed']:4d}  converted {total['converted']:3d}  "
              f"failed {total['failed']}")
