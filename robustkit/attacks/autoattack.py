"""AutoAttack through ``pyautoattack``: the original code of Croce & Hein, never a re-implementation.

Versions: ``standard`` (APGD-CE, APGD-T, FAB-T, Square), ``rand`` (APGD-CE + APGD-DLR with EOT 20, for
randomized defenses) and ``custom`` (any subset of ``apgd-ce, apgd-dlr, apgd-t, fab, fab-t, square``).
For stochastic defenses report the minimum of ``rand`` and ``standard`` (DiffPure's protocol); the
benchmark harness does that per example.

pyautoattack seeds the *global* torch RNG inside its attacks; robustkit runs it inside
``torch.random.fork_rng`` so the caller's RNG state is untouched. Its ``state_path`` resume is broken
upstream and is not used: robustkit's sharded runner provides resume.

pyautoattack also checks the model before attacking: five forwards to see whether it is randomized, one to
see whether it returns probabilities, and one under ``sys.settrace`` to see whether it computes gradients
in its forward. On a defense that costs a thousand network evaluations per image those seven forwards of
the whole batch, repeated by every call (every shard), are a large part of the bill, and robustkit's own
sanity checks (``stochasticity``, ``logits``, ``test_time_state`` in :mod:`robustkit.eval.checks`) test the
same things once per run, against the traits the defense declares. So ``upstream_checks=False`` (the
default) skips those forwards; pyautoattack's checks that need none (target counts, Square's success
rate) still run. ``upstream_checks=True`` restores them; the protocol records which.

Reference:
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020. Code: https://github.com/fra31/auto-attack (PyPI ``pyautoattack``).

Example::

    >>> import robustkit
    >>> from robustkit.attacks import AutoAttack
    >>> clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    >>> x, y = robustkit.load_dataset("digits", n_examples=8)
    >>> res = AutoAttack(eps=0.3, version="custom", attacks=("apgd-ce",), seed=0)(clf, x, y)
    >>> res.info["attack"], res.info["version"], res.robust_accuracy
    ('autoattack', 'custom', 0.0)
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import types
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn

from ..errors import InputError
from ..utils import check_positive_int, progress_bar
from .base import GRAD_COST, Attack, Norm, Perturbation

VERSIONS = ("standard", "rand", "custom")
SUB_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
_log = logging.getLogger(__name__)
_ACC_AFTER = re.compile(r"robust accuracy after ([A-Z-]+):\s+([0-9.]+)%")
_RUNNING = re.compile(r"^running ([a-z-]+)$")


class _CascadeLog(logging.Handler):
    """Follows pyautoattack's log: collects its 'robust accuracy after X' lines (the cascade it does not
    return) and moves a progress bar over the sub-attacks on its 'running X' and 'after X' lines."""

    def __init__(self, bar: Any):
        super().__init__(level=logging.DEBUG)
        self.after: dict[str, float] = {}
        self.bar = bar
        self.t0 = time.perf_counter()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        m = _RUNNING.search(message)
        if m:
            self.bar.set_postfix_str(m.group(1))
            _log.info("autoattack: running %s (%.0f s)", m.group(1), time.perf_counter() - self.t0)
            return
        m = _ACC_AFTER.search(message)
        if m:
            self.after[m.group(1).lower()] = float(m.group(2)) / 100.0
            self.bar.update(1)
            _log.info("autoattack: robust accuracy after %s: %s%% (%.0f s)", m.group(1), m.group(2),
                      time.perf_counter() - self.t0)


class AutoAttack(Attack):
    """AutoAttack (pyautoattack) as a robustkit :class:`~robustkit.attacks.base.Attack`.

    Args:
        eps, norm, seed: threat model and the seed pyautoattack uses for every sub-attack.
        version: ``"standard"``, ``"rand"`` or ``"custom"``.
        attacks: sub-attacks for ``version="custom"``: a sequence of names, or one string of
            comma-separated names (``"apgd-ce"``, ``"apgd-ce,square"``).
        eot: EOT iterations of APGD in ``rand`` (pyautoattack's default 20) and ``custom``.
        steps: iterations of APGD-CE / APGD-DLR / APGD-T (pyautoattack's default 100). A reduced budget
            for defenses too expensive for the real one; it is recorded in the protocol, and APGD's
            step-size checkpoints are rescaled to it exactly as pyautoattack does for ``n_iter``.
        square_queries: Square Attack's query budget (pyautoattack's default 5000 when None).
        fab_steps: iterations of FAB / FAB-T (pyautoattack's default 100 when None). FAB-T runs them for
            each of 9 target classes, so on an expensive defense it costs more than the rest of ``standard``.
        target_classes: how many of the highest-scoring wrong classes APGD-T and FAB-T each target
            (pyautoattack's default 9 when None): their cost is proportional to it.
        upstream_checks: run pyautoattack's own pre-attack checks, which cost seven forwards of the batch
            (see the module docstring); robustkit's sanity checks cover them.
        batch_size: pyautoattack's internal batch size.
    """

    name = "autoattack"

    def __init__(self, *, eps: float, norm: Norm = "Linf", version: str = "standard",
                 attacks: Sequence[str] | str | None = None, eot: int | None = None, steps: int | None = None,
                 square_queries: int | None = None, fab_steps: int | None = None,
                 target_classes: int | None = None, batch_size: int = 250, upstream_checks: bool = False,
                 seed: int = 0):
        super().__init__(eps=eps, norm=norm, seed=seed)
        if version not in VERSIONS:
            raise InputError(f"version must be one of {VERSIONS}, got {version!r}")
        if isinstance(attacks, str):  # "apgd-ce" or "apgd-ce,square": names, not characters
            attacks = [a.strip() for a in attacks.split(",")]
        if version == "custom":
            if not attacks:
                raise InputError("version='custom' needs attacks=(...) from " + ", ".join(SUB_ATTACKS))
            bad = [a for a in attacks if a not in SUB_ATTACKS]
            if bad:
                raise InputError(f"unknown AutoAttack sub-attack(s) {bad}; choose from {SUB_ATTACKS}")
        elif attacks is not None:
            raise InputError(f"attacks=... is only for version='custom' (version {version!r} fixes them)")
        check_positive_int("eot", eot, none_ok=True)
        check_positive_int("steps", steps, none_ok=True)
        self.version = version
        self.attacks = tuple(attacks) if attacks else None
        check_positive_int("square_queries", square_queries, none_ok=True)
        check_positive_int("fab_steps", fab_steps, none_ok=True)
        check_positive_int("target_classes", target_classes, none_ok=True)
        self.eot = eot
        self.steps = steps
        self.square_queries = square_queries
        self.fab_steps = fab_steps
        self.target_classes = target_classes
        self.batch_size = int(batch_size)
        if not isinstance(upstream_checks, bool):
            raise InputError(f"upstream_checks must be True or False, got {upstream_checks!r}")
        self.upstream_checks = upstream_checks

    def _build(self, model: nn.Module, device: torch.device):
        from pyautoattack import AutoAttack as _AA

        # its constructor announces "setting parameters for ... version" at INFO on every build, which
        # protocol() does too: not progress, so kept out of a verbose run's log
        upstream_log = logging.getLogger("auto-attack")
        level = upstream_log.level
        upstream_log.setLevel(logging.WARNING)
        try:
            aa = _AA(model, norm=self.norm, eps=self.eps, version=self.version, seed=self.seed, device=device,
                     attacks=list(self.attacks) if self.attacks else None)
        finally:
            upstream_log.setLevel(level)
        if self.eot is not None:
            aa.apgd.eot_iter = self.eot
        if self.steps is not None:
            for apgd in (aa.apgd, aa.apgd_targeted):
                _set_apgd_steps(apgd, self.steps)
        if self.square_queries is not None:
            aa.square.n_queries = self.square_queries
        if self.fab_steps is not None:
            aa.fab.n_iter = self.fab_steps
        if self.target_classes is not None:
            aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = self.target_classes
        return aa

    def protocol(self) -> dict[str, Any]:
        aa = self._build(nn.Identity(), torch.device("cpu"))
        subs = list(aa.attacks_to_run)
        uses_apgd = any(s in ("apgd-ce", "apgd-dlr") for s in subs)
        return {**super().protocol(), "version": self.version, "sub_attacks": subs,
                "steps": aa.apgd.n_iter, "restarts": aa.apgd.n_restarts,
                "eot": aa.apgd.eot_iter if uses_apgd else 1,
                "square_queries": aa.square.n_queries if "square" in subs else 0,
                "fab_steps": aa.fab.n_iter if any(s.startswith("fab") for s in subs) else 0,
                "target_classes": (aa.apgd_targeted.n_target_classes if any(s in ("apgd-t", "fab-t") for s in subs)
                                   else 0),
                "upstream_checks": self.upstream_checks,
                "implementation": f"pyautoattack {_pyautoattack_version()}"}

    def estimated_passes(self) -> float:
        """Every sub-attack on every example (the cascade only ever runs fewer): APGD-CE/DLR steps x EOT x
        restarts gradients, APGD-T and FAB-T steps x targets, FAB steps x (restarts), Square its queries."""
        p = self.protocol()
        grad = {"apgd-ce": p["steps"] * p["eot"] * p["restarts"], "apgd-dlr": p["steps"] * p["eot"] * p["restarts"],
                "apgd-t": p["steps"] * p["target_classes"], "fab": p["fab_steps"],
                "fab-t": p["fab_steps"] * p["target_classes"]}
        return sum(grad.get(s, 0) * GRAD_COST for s in p["sub_attacks"]) + p["square_queries"]

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> Perturbation:
        n_classes = getattr(model, "num_classes", None)
        if self.target_classes is not None and n_classes is not None and self.target_classes >= n_classes:
            raise InputError(f"target_classes={self.target_classes}: a {n_classes}-class model has only "
                             f"{n_classes - 1} wrong classes to target")
        aa = self._build(model, x.device)
        log = logging.getLogger("auto-attack")
        # one step per sub-attack; a cascade that breaks every example early skips the rest
        bar = progress_bar(total=len(aa.attacks_to_run), desc=f"autoattack ({self.version})", unit="attack")
        cascade = _CascadeLog(bar)
        old_level, old_propagate = log.level, log.propagate
        log.addHandler(cascade)
        # Lowered only so that our handler sees the cascade lines; records below the level the user had
        # configured must not reach the user's (root) handlers, so they propagate only if they would have.
        log.propagate = old_propagate and log.isEnabledFor(logging.DEBUG)
        log.setLevel(logging.DEBUG)
        devices = [x.device] if x.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), _upstream_checks(self.upstream_checks, n_classes):
                x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=self.batch_size)
        finally:
            bar.close()
            log.removeHandler(cascade)
            log.setLevel(old_level)
            log.propagate = old_propagate
        # fraction of the batch still robust after each sub-attack, in cascade order
        return Perturbation(x_adv, {"cascade": dict(cascade.after)})


_CHECKS_LOCK = threading.Lock()


@contextlib.contextmanager
def _upstream_checks(enabled: bool, n_classes: int | None) -> Iterator[None]:
    """Within the block, pyautoattack's ``run_standard_evaluation`` runs its forward-costing model checks
    only if ``enabled``. It calls them through its module's ``checks`` name, with no switch, so the name is
    pointed at a copy whose randomness and dynamic-defense checks do nothing. Its output-range check also
    returns the class count, which comes from the model when it has ``num_classes`` (no forward); for a
    bare module the real check runs for it. Serialised by a lock: the swap is process-wide."""
    if enabled:
        yield
        return
    import pyautoattack.autoattack as upstream

    real = upstream.checks
    quiet = types.SimpleNamespace(**{k: getattr(real, k) for k in dir(real) if not k.startswith("__")})
    quiet.check_randomized = lambda *args, **kwargs: None
    quiet.check_dynamic = lambda *args, **kwargs: None
    if n_classes is not None:
        quiet.check_range_output = lambda *args, **kwargs: n_classes
    with _CHECKS_LOCK:
        upstream.checks = quiet
        try:
            yield
        finally:
            upstream.checks = real


def _set_apgd_steps(apgd: Any, steps: int) -> None:
    """Give an already built pyautoattack APGD ``steps`` iterations. Its constructor derives the
    step-size schedule's checkpoint lengths from ``n_iter`` (22 %, 6 % and 3 % of it, at least 1), so they
    are derived again here; ``tests/test_autoattack.py`` compares the result with a freshly built APGD."""
    apgd.n_iter = apgd.n_iter_orig = steps
    apgd.n_iter_2 = max(int(0.22 * steps), 1)
    apgd.n_iter_min = max(int(0.06 * steps), 1)
    apgd.size_decr = max(int(0.03 * steps), 1)


def _pyautoattack_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pyautoattack")
    except PackageNotFoundError:  # pragma: no cover - installed from source
        return "unknown"
