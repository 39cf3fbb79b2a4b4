"""``robustkit.benchmark``: one entry point, protocols chosen from the defense's declared traits.

Example (the embedded default; a few seconds on a CPU)::

    >>> import robustkit
    >>> clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    >>> rec = robustkit.benchmark(clf, dataset="digits", eps=0.1, attacks=["apgd-ce"], n_examples=32,
    ...                           batch_size=16, checks=False)
    >>> rec.n_examples, rec.robust["single_draw"].n, rec.robust["worst_of_m"].value <= rec.clean["worst_of_m"].value
    (32, 32, True)

Protocols (``attacks="auto"``):

* deterministic → AutoAttack ``standard``;
* generative classifiers (``traits.generative``, logits that can saturate the softmax) get the same
  attacks, whose scale-free losses carry them: ``pgd-eot`` ascends the margin (its ``loss="auto"``),
  AutoAttack's APGD-DLR, APGD-T (targeted DLR), FAB-T and Square do not saturate, and the sanity checks
  use the margin loss. APGD-CE is blind on such a model and is only ever one attack of several;
* stochastic → AutoAttack ``rand`` + ``standard`` (+ ``pgd-eot`` when the defense has exact gradients),
  every final x_adv and every clean x re-classified ``n_reeval`` times and reported as single-draw,
  majority-of-M and worst-of-M accuracy; per example the minimum over all attacks;
* adapts at test time → transfer from the static base model + an adaptive ``pgd-eot`` through the
  adaptation, under the batch threat model: the unit of work is one shard (``batch_size`` consecutive
  examples in evaluation order, 200 by default as in TENT's and TEA's papers; the last may be smaller),
  attacked as a whole even with ``cascade``, and the defense's state is restored before the clean pass,
  before every attack query and before every re-evaluation. Which state is the test-time threat model
  (:mod:`robustkit.eval.tta`): ``episodic`` (default; the initial parameters, optimiser and SGLD buffer
  for every batch) or ``continual`` (the stream in order; each batch meets the state the earlier
  adversarial batches left, and the defense then adapts on its adversarial batch). The record's config
  and attack protocols carry ``tta_threat_model`` / ``test_time_threat_model``, ``batch_threat_model``
  and ``test_time_state``;
* batch-dependent (``traits.batch_dependent``: an example's prediction depends on the rest of its batch,
  without state, e.g. contrastive-guided purification) → ``pgd-eot``, which queries whole batches, then
  AutoAttack ``rand`` and ``standard`` (Bai et al., ICML 2024, report min(rand, standard); here the
  per-example minimum over all three). All run under the same batch threat model (whole shards, no reset
  needed). APGD
  queries only the points it has not broken yet, so the defense sees a smaller batch than the one scored:
  the record counts those queries (``partial_batch_queries``). Its adversarial examples are still scored
  as the whole batch, so adding it can only lower the reported accuracy.

Randomness: the attack seed and the torch RNG seen by a stochastic defense are derived from
(run seed, first example index of the shard, stage), and shard boundaries are fixed in the run
directory's manifest, so the answer does not depend on which worker ran a shard or in what order.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import re
import tempfile
import time
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from .. import __version__
from ..attacks import Attack, TransferAttack, make_attack, perturbation_norm
from ..attacks.base import batches_draws, eot_chunks, eval_mode
from ..classifier import Classifier, check_images, check_labels, module_placement, resolve_device
from ..errors import CheckpointError, InputError
from ..registry import random_weight_parts
from ..utils import check_bool, did_you_mean, progress_bar, state_digest
from .arguments import checked_benchmark
from .checks import plan_check_budget, run_checks, validate_check_options
from .record import PROTOCOLS, AccuracyStat, BenchmarkRecord, CheckResult, describe_budget
from .runner import (DEFAULT_LEASE_TIMEOUT, RunDir, RunIntegrityError, Shard, atomic_write_text, canonical_json,
                     make_shards)
from .tta import DEFAULT_TTA_BATCH_SIZE, PinnedStateDefense, check_threat_model, run_continual

log = logging.getLogger(__name__)

EXECUTORS = ("inline", "processes", "submitit", "submitit-local")


# ------------------------------------------------------------------------------------------------ helpers

def parse_eps(eps: float | str) -> float:
    """``8/255`` → 0.0313…; numbers pass through. Raises InputError for anything else."""
    if isinstance(eps, (int, float)) and not isinstance(eps, bool):
        value = float(eps)
    elif isinstance(eps, str):
        try:
            value = float(Fraction(eps.strip()))
        except (ValueError, ZeroDivisionError, OverflowError) as e:
            raise InputError(f"eps must be a number or a fraction like '8/255', got {eps!r}") from e
    else:
        raise InputError(f"eps must be a number or a fraction like '8/255', got {eps!r}")
    if not value > 0:
        raise InputError(f"eps must be positive, got {eps!r}")
    return value


def derive_seed(seed: int, index: int, stage: str) -> int:
    """A 63-bit seed from (run seed, example index, stage name), stable across machines and versions."""
    digest = hashlib.sha256(f"{seed}:{index}:{stage}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def resolve_attacks(defense: Classifier, attacks: str | Sequence[str]) -> list[str]:
    """The attack names for ``attacks`` ("auto", a comma-separated string or a list)."""
    t = defense.traits
    if attacks == "auto":
        if t.adapts_at_test_time:
            return ["transfer", "pgd-eot"]
        if t.batch_dependent:  # scored per example as min(pgd-eot, rand, standard), as Bai et al. report
            return ["pgd-eot", "autoattack-rand", "autoattack-standard"]
        if t.stochastic:
            return ["autoattack-rand", "autoattack-standard"] + (["pgd-eot"] if t.gradient == "exact" else [])
        return ["autoattack-standard"]
    names = [a.strip() for a in attacks.split(",")] if isinstance(attacks, str) else list(attacks)
    if not names or any(not isinstance(a, str) or not a for a in names):
        raise InputError(f"attacks must be 'auto' or attack names, got {attacks!r}")
    if len(set(names)) != len(names):
        raise InputError(f"attack names must be distinct, got {names}")
    return names


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _jsonable(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {k: _jsonable(x) for k, x in dataclasses.asdict(v).items()}
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if callable(v) and hasattr(v, "__qualname__"):  # a function or class: its name, not its address
        return f"{getattr(v, '__module__', None) or '?'}.{v.__qualname__}"
    # default reprs carry the object's memory address, which differs in every process: a run's config
    # (and hash) must not, or the run could never be resumed
    return _ADDRESS.sub("", repr(v))


def describe_defense(defense: Classifier) -> dict[str, Any]:
    """Name, class, config, traits and a digest of the weights: what makes two runs comparable."""
    cfg = getattr(defense, "config", None)
    return {"name": getattr(defense, "name", type(defense).__name__),
            "class": f"{type(defense).__module__}.{type(defense).__qualname__}",
            "config": _jsonable(cfg) if cfg is not None else None,
            "traits": dataclasses.asdict(defense.traits),
            "weights_sha256": state_digest(defense)}


def _software() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"robustkit": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("numpy", "pyautoattack", "torchattacks"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def protocol_correct(draws: list[bool], protocol: str) -> bool:
    """Whether an example counts as correct under ``protocol``, from its re-classifications ``draws``:
    ``"single_draw"`` (the first), ``"majority"`` (more than half) or ``"worst_of_m"`` (all of them)."""
    if protocol == "single_draw":
        return bool(draws[0])
    if protocol == "majority":
        return sum(draws) * 2 > len(draws)
    return all(draws)


# ------------------------------------------------------------------------------------------- shard work

@dataclasses.dataclass
class _Job:
    """Everything a worker needs (picklable for process / Slurm executors)."""

    defense: Classifier
    x: torch.Tensor
    y: torch.Tensor
    indices: list[int]
    attacks: list[str]
    attack_options: dict[str, dict[str, Any]]
    eps: float
    norm: str
    seed: int
    draws: int
    cascade: bool
    base_classifier: Classifier | None
    run_dir: str
    config: dict[str, Any]
    shards: list[Shard]
    lease_timeout: float


def _build_attack(job: _Job, name: str, seed: int) -> Attack:
    opts = dict(job.attack_options.get(name, {}))
    if name == "transfer":
        if job.base_classifier is None:
            raise InputError("the 'transfer' attack needs base_classifier= (or defense.base_classifier)")
        inner = opts.pop("attack", "autoattack-standard")
        return TransferAttack(job.base_classifier, make_attack(inner, eps=job.eps, norm=job.norm, seed=seed, **opts))
    return make_attack(name, eps=job.eps, norm=job.norm, seed=seed, **opts)


def _warn_eot_on_deterministic(names: list[str], attack_options: dict, eps: float, norm: str) -> None:
    """EOT averages gradients over the model's randomness; a deterministic model has none, so EOT > 1
    repeats the same gradient at EOT times the cost. Say so (the run proceeds as asked)."""
    for name in names:
        if name == "transfer" or name.startswith("torchattacks:"):
            continue
        eot = make_attack(name, eps=eps, norm=norm, seed=0, **attack_options.get(name, {})).protocol().get("eot")
        if isinstance(eot, int) and eot > 1:
            log.warning("%s runs EOT %d on a deterministic model: every EOT sample gives the same gradient, so "
                        "it costs %dx for nothing; pass %s.eot=1", name, eot, eot, name)


def _estimated_attack_passes(names: list[str], attack_options: dict[str, dict[str, Any]], eps: float, norm: str,
                             n_examples: int, draws: int) -> float | None:
    """Upper bound on the attacks' cost over the run, in forward-equivalents of the defense (every attack on
    every example, plus the clean and adversarial re-evaluations); None if an attack's cost is unknown
    (torchattacks). The transfer attack's source is the cheap undefended model: only its verification counts."""
    per_example = draws * (1 + len(names))
    for name in names:
        if name == "transfer":
            continue
        if name.startswith("torchattacks:"):
            return None
        estimate = make_attack(name, eps=eps, norm=norm, seed=0, **attack_options.get(name, {})).estimated_passes()
        if estimate is None:
            return None
        per_example += estimate
    return float(n_examples * per_example)


#: benchmark's defaults when neither the user nor the registry entry's default budget gives a value
DEFAULT_N_REEVAL = 10
DEFAULT_PROBE_SIZE = 16


@dataclasses.dataclass(frozen=True)
class BudgetPlan:
    """The run's budget once the registry entry's default budget (:class:`~robustkit.defenses.EvaluationBudget`)
    has filled what the user did not give. ``filled`` holds exactly what came from the entry (empty: nothing
    did), in the form stored in the record's ``defense_config["default_budget"]``."""

    n_examples: int | None
    n_reeval: int
    probe_size: int
    attack_options: dict[str, dict[str, Any]]
    check_options: dict[str, Any]
    filled: dict[str, Any]


def plan_budget(defense: Classifier, names: Sequence[str], *, n_examples: int | None, n_reeval: int | None,
                probe_size: int | None, attack_options: dict[str, dict[str, Any]] | None,
                check_options: dict[str, Any] | None = None, examples_chosen: bool, checks: bool = True,
                use_entry_budget: bool = True) -> BudgetPlan:
    """Merge the user's options with the default budget of the registry entry ``defense`` was built from.

    The user's values always win, key by key (an attack option the user gives replaces only that key);
    the entry fills ``n_examples`` only when the user chose no examples at all (``examples_chosen``: indices
    or data given), ``probe_size`` and check options only when the sanity checks run, and attack options
    only for the attacks in ``names``. Without an entry budget (a real entry, a model not from the
    registry, or ``use_entry_budget=False``) the presets and :data:`DEFAULT_N_REEVAL` /
    :data:`DEFAULT_PROBE_SIZE` apply.

    Example::

        >>> import robustkit
        >>> d = robustkit.create_defense("tiny_diffpure.digits", pretrained=True)
        >>> plan = plan_budget(d, ["pgd-eot"], n_examples=None, n_reeval=None, probe_size=None,
        ...                    attack_options={"pgd-eot": {"steps": 50}}, examples_chosen=False)
        >>> plan.attack_options["pgd-eot"]["steps"], plan.n_examples, sorted(plan.filled["attack_options"]["pgd-eot"])
        (50, 32, ['eot', 'step_size'])
    """
    options = {name: dict(opts) for name, opts in (attack_options or {}).items()}
    check_options = dict(check_options or {})
    cfg = getattr(defense, "defense_config", None)  # stamped by create_defense (robustkit.defenses.registry.stamp)
    budget = getattr(cfg, "default_budget", None) if use_entry_budget else None
    filled: dict[str, Any] = {}
    if budget is not None:
        if n_examples is None and not examples_chosen and budget.n_examples is not None:
            n_examples = filled["n_examples"] = budget.n_examples
        if n_reeval is None and budget.n_reeval is not None and defense.traits.stochastic:
            n_reeval = filled["n_reeval"] = budget.n_reeval
        if probe_size is None and budget.probe_size is not None and checks:
            probe_size = filled["probe_size"] = budget.probe_size
        extra_checks = {k: v for k, v in budget.check_options.items() if k not in check_options} if checks else {}
        if extra_checks:
            check_options.update(extra_checks)
            filled["check_options"] = extra_checks
        for name in names:
            extra = {k: v for k, v in budget.attack_options.get(name, {}).items() if k not in options.get(name, {})}
            if extra:
                options[name] = {**extra, **options.get(name, {})}
                filled.setdefault("attack_options", {})[name] = extra
    return BudgetPlan(n_examples=n_examples, n_reeval=DEFAULT_N_REEVAL if n_reeval is None else n_reeval,
                      probe_size=DEFAULT_PROBE_SIZE if probe_size is None else probe_size,
                      attack_options=options, check_options=check_options, filled=filled)


def _predict_draws(model: Classifier, x: torch.Tensor, y: torch.Tensor,
                   draws: int) -> tuple[list[list[bool]], list[list[int]]]:
    """``draws`` independent classifications per example (reset() before each): ([N][draws] correct flags,
    [N][draws] predicted classes). A defense that evaluates draws as one batch (:func:`batches_draws`: no
    test-time state, so reset() between its draws changes nothing) gets them in chunks of
    :data:`~robustkit.attacks.base.EOT_BATCH` rows, equal to the sequential forwards draw for draw."""
    cols = []
    with torch.no_grad():
        if batches_draws(model):
            model.reset()
            cols = [logits.argmax(2).cpu() for logits in eot_chunks(model, x, draws)]
        else:
            for _ in range(draws):
                model.reset()
                cols.append(model(x).argmax(1).cpu().unsqueeze(0))
    model.reset()
    pred = torch.cat(cols).T
    return (pred == y.cpu().view(-1, 1)).tolist(), pred.tolist()


def process_shard(job: _Job, shard: Shard, device: torch.device) -> tuple[list[dict], dict[str, torch.Tensor], dict]:
    """Attack one shard; returns per-example records, x_adv per attack, and the shard's cost."""
    model = job.defense.to(device)  # eval mode: set (and restored) by run_worker
    x = job.x[shard.start:shard.stop].to(device)
    y = job.y[shard.start:shard.stop].to(device)
    n = x.shape[0]
    t0 = time.perf_counter()
    where = f"shard {shard.index + 1}/{len(job.shards)} (examples {shard.start}-{shard.stop - 1})"
    # An adapting or batch-dependent defense's prediction depends on the whole batch: attack every example
    # of the shard together (the batch threat model), even those a cascade would skip, so the batch never
    # changes.
    per_batch = model.traits.batch_threat_model
    # The clean pass. A deterministic model's first attack, when it attacks the whole shard (no cascade,
    # or the batch threat model), classifies exactly these inputs first (reset() + one forward of the
    # batch, in eval mode): its clean flags are the clean pass, so it is not made twice. A stochastic
    # defense is re-classified n_reeval times from its own seed (the attack's one draw is not those), and
    # a cascade needs the clean flags before its first attack to skip clean errors.
    reuse_clean = not model.traits.stochastic and bool(job.attacks) and (per_batch or not job.cascade)
    clean: list[list[bool]] | None = None
    clean_pred: list[list[int]] | None = None
    if not reuse_clean:
        with _seeded(derive_seed(job.seed, shard.start, "clean"), device):
            clean, clean_pred = _predict_draws(model, x, y, job.draws)
        log.info("%s: clean: %d/%d right on the first draw (of %d; %.0f s)", where, sum(c[0] for c in clean), n,
                 job.draws, time.perf_counter() - t0)
    forwards, backwards = n * job.draws, 0  # the clean pass (made here or by the first attack)
    records = [{"index": job.indices[shard.start + i], "label": int(y[i]), "attacks": {}} for i in range(n)]
    alive = torch.tensor([any(protocol_correct(c, p) for p in PROTOCOLS) for c in clean] if clean is not None
                         else [True] * n, dtype=torch.bool)
    tensors: dict[str, torch.Tensor] = {}
    infos: dict[str, Any] = {}
    for name in job.attacks:
        todo = alive.nonzero().flatten() if job.cascade and not per_batch else torch.arange(n)
        x_adv_all = x.detach().clone()
        pred_all = torch.full((n, job.draws), -1, dtype=torch.int64)
        if not todo.numel():
            log.info("%s: %s skipped: every example already broken", where, name)
        else:
            t_attack = time.perf_counter()
            log.info("%s: %s on %d examples ...", where, name, todo.numel())
            ti = todo.to(device)
            attack = _build_attack(job, name, derive_seed(job.seed, shard.start, f"attack:{name}"))
            with _seeded(derive_seed(job.seed, shard.start, f"defense:{name}"), device):
                res = attack(model, x[ti], y[ti])
            if clean is None:  # reuse_clean: this first attack attacked the whole shard
                clean = [[flag] for flag in res.clean_correct.cpu().tolist()]
                # its clean pass kept flags only: the class is the label where right, unknown (-1) elsewhere
                clean_pred = [[int(label) if c[0] else -1] for c, label in zip(clean, y.cpu().tolist())]
                alive = torch.tensor([c[0] for c in clean], dtype=torch.bool)
                log.info("%s: clean: %d/%d right (from %s's own clean pass)", where, sum(c[0] for c in clean), n, name)
            forwards += res.forwards
            backwards += res.backwards
            infos[name] = res.info
            if per_batch:
                infos[name]["batch_threat_model"] = {
                    "batch_size": n, "composition": "one shard: consecutive examples in evaluation order, "
                    "attacked, re-evaluated and scored as one batch"
                    + ("; reset() before every query" if model.traits.adapts_at_test_time else "")}
            x_adv_all[ti] = res.x_adv
            if model.traits.stochastic:
                with _seeded(derive_seed(job.seed, shard.start, f"reeval:{name}"), device):
                    adv, adv_pred = _predict_draws(model, res.x_adv, y[ti], job.draws)
            else:
                # deterministic: re-classifying x_adv would repeat the attack's verification forward (a
                # fresh reset() + forward of these very points, same batch); its flags are the answer.
                # robust = clean-correct & correct on x_adv, and x_adv = x where clean is wrong, so it
                # equals "correct on x_adv" for every attacked example. Saves 1 forward per example
                # (~2% of PGD-20 on ResNet-20) toward the runner's 5% overhead budget (bench/bench_runner.py).
                adv = [[flag] for flag in res.robust.cpu().tolist()]
                adv_pred = [[p] for p in res.pred.cpu().tolist()]
            forwards += todo.numel() * job.draws  # the verification (or re-evaluation) forwards
            dist = perturbation_norm(res.x_adv, x[ti], job.norm).cpu()
            valid = (torch.isfinite(res.x_adv).flatten(1).all(1).cpu() & (dist <= job.eps * (1 + 1e-5) + 1e-7)
                     & (res.x_adv.flatten(1).amin(1).cpu() >= 0) & (res.x_adv.flatten(1).amax(1).cpu() <= 1))
            log.info("%s: %s done: %d/%d right on the first re-evaluation draw (%.0f s)", where, name,
                     sum(a[0] for a in adv), todo.numel(), time.perf_counter() - t_attack)
            for j, i in enumerate(todo.tolist()):
                records[i]["attacks"][name] = {"correct": adv[j], "distance": float(dist[j]), "valid": bool(valid[j])}
                pred_all[i] = torch.tensor(adv_pred[j], dtype=torch.int64)
                if job.cascade:
                    still = [protocol_correct(clean[i], p) and protocol_correct(adv[j], p) for p in PROTOCOLS]
                    alive[i] = alive[i] and any(still)
        for i in range(n):
            records[i]["attacks"].setdefault(name, None)  # None: skipped (already broken under every protocol)
        tensors[name] = x_adv_all
        tensors[f"pred:{name}"] = pred_all
    if clean is None:  # unreachable: reuse_clean implies a first attack on the whole (non-empty) shard
        raise RuntimeError(f"{where}: no clean pass was made")
    for i in range(n):
        records[i]["clean"] = clean[i]
    # next to each attack's x_adv, the predicted classes [n, draws] (-1: not attacked or not known), for the
    # report's figures
    tensors["pred:clean"] = torch.tensor(clean_pred, dtype=torch.int64)
    meta = {"forwards": forwards, "backwards": backwards, "seconds": time.perf_counter() - t0,
            "device": str(device), "attack_info": _jsonable(infos)}
    return records, tensors, meta


def run_worker(job: _Job, device: str | torch.device = "cpu", progress: bool | None = None) -> int:
    """Claim and process pending shards of ``job.run_dir`` until every shard is done; returns the number
    done here.

    Shards leased by other workers are waited for, and taken over (logged) as soon as their holder is
    known to be gone (same host: its process no longer exists) or its heartbeat is ``lease_timeout`` old
    (another host): a worker killed mid-shard never releases its lease, and a worker restarted right after
    the kill would otherwise skip the dead worker's shard and nobody would ever finish it.
    """
    device = torch.device(device)
    run = RunDir.open(job.run_dir, job.config, job.shards)
    done = 0
    pending = run.pending()
    bar = progress_bar(total=len(run.shards), initial=len(run.shards) - len(pending), enabled=progress,
                       desc="benchmark", unit="shard")
    fwd = 0
    poll = min(1.0, max(job.lease_timeout / 4, 0.05))
    try:
        while pending:
            claimed = False
            for shard in pending:
                lease = run.claim(shard, lease_timeout=job.lease_timeout)
                if lease is None:
                    continue
                claimed = True
                try:
                    with eval_mode(job.defense):
                        records, tensors, meta = process_shard(job, shard, device)
                    run.write_shard(shard, records, tensors, meta)
                finally:
                    lease.release()
                done += 1
                fwd += meta["forwards"]
                bar.update(1)
                bar.set_postfix(forward_passes=fwd, refresh=False)
            left = run.pending()
            if left and not claimed:  # all held by others: wait for them to finish or go stale
                time.sleep(poll)
            pending = left
    finally:
        bar.close()
    return done


def _process_worker(job: _Job, device: str) -> int:  # module-level: picklable for spawn
    return run_worker(job, device, progress=False)


class _SubmititWorker:
    """A Slurm task: runs :func:`run_worker`; on preemption submitit requeues it (finished shards persist)."""

    def __init__(self, job: _Job):
        self.job = job

    def __call__(self) -> int:
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        return run_worker(self.job, dev, progress=False)

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        return submitit.helpers.DelayedSubmission(_SubmititWorker(self.job))


def _follow_shards(job: _Job, finished: Callable[[], bool], progress: bool | None, workers: str) -> None:
    """Until ``finished()`` (which waits a second or so), a bar of the shards written by workers elsewhere
    (processes, Slurm tasks): without it the parent is silent for the whole run."""
    run = RunDir(Path(job.run_dir), job.config, job.shards)
    total = len(job.shards)
    with progress_bar(total=total, initial=total - len(run.pending()), enabled=progress,
                      desc=f"benchmark ({workers})", unit="shard", logger=log) as bar:
        while True:
            done = finished()
            bar.update(total - len(run.pending()) - bar.n)
            if done:
                return


def _execute(job: _Job, executor: str, workers: int | None, device: torch.device, progress: bool | None,
             slurm: dict[str, Any] | None) -> None:
    if executor == "inline":
        run_worker(job, device, progress)
    elif executor == "processes":
        import torch.multiprocessing as mp

        if workers is None:
            workers = max(torch.cuda.device_count(), 1)
        devices = [f"cuda:{i}" for i in range(workers)] if torch.cuda.is_available() else ["cpu"] * workers
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_process_worker, args=(job, d)) for d in devices]
        for p in procs:
            p.start()

        def finished() -> bool:  # waits up to ~1 s
            for p in procs:
                p.join(timeout=1.0 / len(procs))
            return not any(p.is_alive() for p in procs)

        _follow_shards(job, finished, progress, f"{len(procs)} processes")
        bad = [p.exitcode for p in procs if p.exitcode != 0]
        if bad:
            raise RuntimeError(f"{len(bad)} benchmark worker process(es) failed (exit codes {bad}); "
                               f"re-run with the same run_dir to resume")
    else:
        import submitit

        folder = Path(job.run_dir) / "submitit"
        ex = (submitit.LocalExecutor(folder=folder) if executor == "submitit-local"
              else submitit.AutoExecutor(folder=folder))
        ex.update_parameters(**(slurm or {}))
        with ex.batch():
            jobs = [ex.submit(_SubmititWorker(job)) for _ in range(workers or 1)]

        def finished() -> bool:
            if all(j.done() for j in jobs):
                return True
            time.sleep(1.0)
            return False

        _follow_shards(job, finished, progress, f"{len(jobs)} {executor} tasks")
        for j in jobs:
            j.result()
    # every worker returns only once all shards are written (under torchrun each rank is such a worker)
    left = RunDir(Path(job.run_dir), job.config, job.shards).pending()
    if left:
        raise RuntimeError(f"{len(left)} shard(s) still pending after the {executor!r} workers returned "
                           f"(first: {left[0].name}); re-run with the same run_dir to resume")


# ------------------------------------------------------------------------------------------- aggregate

def _shard_results(run: RunDir, attacks: list[str], draws: int) -> tuple[list[dict], list[dict]]:
    """Every shard's verified per-example records (in evaluation order) and metas.

    Raises RunIntegrityError when a shard fails its ledger check, a record lacks a field or an attack,
    or the records are not exactly the run's examples: a record's ``n_examples`` is then always the
    number of per-example results behind its statistics.
    """
    recs: list[dict] = []
    metas: list[dict] = []
    for s in run.shards:
        shard_recs, meta = run.read_shard(s)
        for r in shard_recs:
            atk = r.get("attacks")
            clean = r.get("clean")
            if (not isinstance(atk, dict) or sorted(atk) != sorted(attacks) or not isinstance(clean, list)
                    or len(clean) != draws or not all(isinstance(c, bool) for c in clean)
                    or not all(a is None or (isinstance(a, dict) and isinstance(a.get("correct"), list)
                                             and len(a["correct"]) in (1, draws) and isinstance(a.get("valid"), bool))
                               for a in atk.values())):
                raise RunIntegrityError(f"{run.path / 'shards' / s.name}.jsonl: example {r.get('index')} does not "
                                        f"hold {draws} clean draws and a result per attack {attacks}")
        if not all(k in meta for k in ("forwards", "backwards", "seconds", "device", "attack_info")):
            raise RunIntegrityError(f"{run.path / 'shards' / s.name}.meta.json lacks cost fields")
        recs += shard_recs
        metas.append(meta)
    want = run.config.get("indices")
    if want is not None and [r["index"] for r in recs] != want:
        raise RunIntegrityError(f"{run.path}: the shards hold {len(recs)} examples, not the run's {len(want)}")
    return recs, metas


def _aggregate(run: RunDir, attacks: list[str], cascade: bool) -> tuple[dict, dict, dict, CheckResult, dict]:
    recs, metas = _shard_results(run, attacks, run.config.get("n_reeval", 1))
    clean = {p: torch.tensor([protocol_correct(r["clean"], p) for r in recs], dtype=torch.bool) for p in PROTOCOLS}
    per_attack: dict[str, dict[str, AccuracyStat]] = {}
    cumulative = {p: clean[p].clone() for p in PROTOCOLS}
    invalid = 0
    for name in attacks:
        standalone = {}
        for p in PROTOCOLS:
            adv = torch.tensor([True if r["attacks"][name] is None
                                else protocol_correct(r["attacks"][name]["correct"], p) for r in recs],
                               dtype=torch.bool)
            cumulative[p] &= adv
            standalone[p] = clean[p] & adv
        invalid += sum(1 for r in recs if r["attacks"][name] is not None and not r["attacks"][name]["valid"])
        src = cumulative if cascade else standalone
        per_attack[name] = {p: AccuracyStat.from_flags(src[p]) for p in PROTOCOLS}
    if invalid:
        validity = CheckResult("adversarial_validity", "fail", f"{invalid} adversarial example(s) lie outside the "
                               "eps-ball or [0, 1] or contain NaN: the attack results are invalid", True)
    else:
        validity = CheckResult("adversarial_validity", "pass", "every adversarial example lies in the eps-ball "
                               "and in [0, 1], with no NaN", True)
    cost = {"forwards": 0, "backwards": 0, "seconds": 0.0, "devices": set()}
    for m in metas:
        cost["forwards"] += m["forwards"]
        cost["backwards"] += m["backwards"]
        cost["seconds"] += m["seconds"]
        cost["devices"].add(m["device"])
    cost["attack_info"] = _merge_n_evaluation(metas, len(recs))
    return ({p: AccuracyStat.from_flags(clean[p]) for p in PROTOCOLS},
            {p: AccuracyStat.from_flags(cumulative[p]) for p in PROTOCOLS}, per_attack, validity, cost)


def _merge_n_evaluation(metas: list[dict], n_total: int) -> dict[str, Any]:
    """The first shard's attack protocols, with an attack's per-shard N-evaluation outcome (DiffHammer's:
    an example counts as broken if any of the attack's N evaluations misclassified it) summed over all
    shards into ``{"n_eval", "evaluations", "robust", "n", "robust_accuracy"}``. Examples the attack did not
    attack (broken already, or wrong clean, under a cascade) count as not robust."""
    info = {name: dict(v) for name, v in (metas[0]["attack_info"] if metas else {}).items()}
    for name, first in info.items():
        if not isinstance(first.get("n_evaluation"), dict):
            continue
        shards = [m["attack_info"][name]["n_evaluation"] for m in metas
                  if isinstance(m["attack_info"].get(name, {}).get("n_evaluation"), dict)]
        robust = sum(sum(bool(v) for v in ne.get("survived", [])) for ne in shards)
        first["n_evaluation"] = {"n_eval": first["n_evaluation"].get("n_eval"),
                                 "evaluations": max(ne.get("evaluations", 0) for ne in shards),
                                 "robust": robust, "n": n_total,
                                 "robust_accuracy": robust / n_total if n_total else float("nan")}
    return info


def _stored_checks(path: Path, asked: dict[str, Any]) -> tuple[list[CheckResult], float, dict[str, float]] | None:
    """The checks a previous call stored in ``path`` for the same budget ``asked``; None when there are
    none, they were asked with another budget, or the file is damaged (then they are run again, warned)."""
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
        body = {k: v for k, v in stored.items() if k != "sha256"}
        if stored.get("sha256") != hashlib.sha256(canonical_json(body).encode()).hexdigest():
            raise ValueError("its sha256 does not match its content")
        if stored.get("asked") != asked:  # other budgets: checked again
            return None
        results = [CheckResult(**c) for c in stored["checks"]]
        seconds, cost = stored["seconds"], stored.get("cost", {})
        if (not all(isinstance(c.name, str) and c.status in ("pass", "warn", "fail", "skipped") for c in results)
                or isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not isinstance(cost, dict)
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in cost.values())):
            raise ValueError("unexpected values")
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        log.warning("%s is damaged (%s: %s); running the sanity checks again", path, type(e).__name__, e)
        return None
    return results, float(seconds), cost


# ------------------------------------------------------------------------------------------- entry point

@checked_benchmark  # arguments (eps vs threat model, device, ...) checked first; models kept in place
def benchmark(defense: Classifier, *, dataset: str, threat_model: str = "Linf", eps: float | str,
              attacks: str | Sequence[str] = "auto", n_examples: int | None = None, batch_size: int | None = None,
              seed: int = 0, n_reeval: int | None = None, run_dir: str | os.PathLike | None = None,
              split: str = "test",
              data_dir: str | os.PathLike | None = None, indices: Sequence[int] | None = None,
              data: tuple[torch.Tensor, torch.Tensor] | None = None, device: str | torch.device | None = None,
              checks: bool = True, probe_size: int | None = None,
              check_options: dict[str, int | str] | None = None,
              base_classifier: Classifier | None = None,
              cascade: bool = True, attack_options: dict[str, dict[str, Any]] | None = None,
              executor: str = "inline", workers: int | None = None, lease_timeout: float = DEFAULT_LEASE_TIMEOUT,
              slurm: dict[str, Any] | None = None, progress: bool | None = None,
              allow_random_weights: bool = False, tta_threat_model: str | None = None,
              entry_budget: bool = True) -> BenchmarkRecord:
    """Benchmark ``defense`` and return a :class:`~robustkit.eval.record.BenchmarkRecord`.

    Args:
        defense: any :class:`~robustkit.Classifier` (a plain model or a defense).
        dataset: a :func:`~robustkit.load_dataset` name (also used as the record's label when ``data`` is given).
        threat_model: ``"Linf"`` or ``"L2"``; eps: budget, a number or a string like ``"8/255"``.
        attacks: ``"auto"`` (from the traits), or names from :func:`robustkit.attacks.list_attacks`,
            ``"torchattacks:<Name>"`` and ``"transfer"``; run in the given order.
        n_examples: first n examples (or of ``indices``; default: all, or the entry's default budget's);
            batch_size: examples per shard (default 64; 200, the papers' batch, for a defense that adapts at
            test time).
        seed: the run seed; every attack and defense draw derives from it (see module docstring).
        n_reeval: re-classifications of every clean and adversarial example for stochastic defenses
            (default 10, or the entry's default budget's; 1 is used for deterministic ones).
        run_dir: kill-safe run directory; re-running with it resumes. None: a temporary directory.
        data: ``(x, y)`` tensors to use instead of loading ``dataset``; floating images of another precision
            are converted to the model's dtype and integer labels to int64 (see :func:`~robustkit.check_images`).
        checks: run the sanity checks on the first ``probe_size`` examples (default 16, or the entry's
            default budget's).
        check_options: budget of the checks' attacks, keys ``steps`` (20), ``eot`` (8 for a stochastic
            defense, else 1) and ``square_queries`` (1000), and their PGD ``loss`` (``"auto"``: the margin
            for a generative classifier, else ``"ce"``) (:func:`~robustkit.eval.checks.run_checks`). Keys
            not given are sized to the attack budget: halved in turn until the checks' estimated cost is
            at most 30% of the run's (:func:`~robustkit.eval.checks.plan_check_budget`). Recorded with
            every check (``details["protocol"]``, with the sizing); key ``probe_size`` overrides the
            argument of that name. Their measured cost is in the
            record's ``cost`` (``checks_seconds``, ``checks_forward_passes``, ``checks_fraction``).
        base_classifier: the undefended model, for the transfer check and the ``transfer`` attack
            (default: ``defense.base_classifier`` when present).
        cascade: later attacks skip examples already broken under every protocol (cheaper; per-attack
            numbers are then cumulative). False: every attack on every example.
        attack_options: per-attack keyword overrides, e.g. ``{"pgd-eot": {"steps": 50}}``.
        executor: ``"inline"`` (this process; also one worker per rank under torchrun), ``"processes"``
            (one per visible GPU, or ``workers`` CPU processes), ``"submitit"`` (Slurm job array, ``slurm``
            holds its parameters) or ``"submitit-local"``.
        lease_timeout: seconds without a heartbeat after which a shard leased by a worker on another
            host is taken over (60; a lease of a process gone from this host is taken over at once).
        allow_random_weights: benchmark a model built from the registry without trained weights (e.g.
            ``create_classifier(name)`` without ``pretrained=True``, never trained since). Refused by
            default with a :class:`~robustkit.CheckpointError` saying how to get the weights; when allowed,
            the record's ``defense_config["random_weights"]`` lists the random parts and its summary says so.
        tta_threat_model: for a defense that adapts at test time, ``"episodic"`` (default) or
            ``"continual"`` (:mod:`robustkit.eval.tta`; continual runs inline, shards in order).
        entry_budget: a defense built from a registry entry that declares a reduced default budget (a tiny
            teaching entry such as ``tiny_diffpure.digits``, :class:`~robustkit.defenses.EvaluationBudget`)
            uses it for every option not given here (:func:`plan_budget`; a warning lists what it filled in,
            the record's ``defense_config["default_budget"]`` stores it). False: the presets' full budget.
    """
    t_start = time.perf_counter()
    check_bool("allow_random_weights", allow_random_weights)
    random_parts = sorted({p.name: p for p in random_weight_parts(defense)}.values(), key=lambda p: p.name)
    if random_parts and not allow_random_weights:
        raise CheckpointError(f"{random_parts[0].name} has random weights (built without pretrained=True and never "
                              f"trained): {random_parts[0].how}; or pass allow_random_weights=True "
                              "(CLI: --random-weights) to benchmark it anyway")
    eps_value = parse_eps(eps)  # every argument was checked by @checked_benchmark (robustkit/eval/arguments.py)
    tta = check_threat_model(defense, tta_threat_model)
    if batch_size is None:
        batch_size = DEFAULT_TTA_BATCH_SIZE if tta is not None else 64
    if tta == "continual" and executor != "inline":
        raise InputError(f"the continual threat model streams the shards in order through one defense: "
                         f"executor must be 'inline', got {executor!r}")
    check_options = dict(check_options or {})
    validate_check_options(check_options)  # before any data is loaded
    names = resolve_attacks(defense, attacks)
    plan = plan_budget(defense, names, n_examples=n_examples, n_reeval=n_reeval,
                       probe_size=check_options.get("probe_size", probe_size), attack_options=attack_options,
                       check_options=check_options, examples_chosen=indices is not None or data is not None,
                       checks=checks, use_entry_budget=entry_budget)
    n_examples, n_reeval, probe_size = plan.n_examples, plan.n_reeval, plan.probe_size
    attack_options, check_options = plan.attack_options, plan.check_options
    if plan.filled:
        budget = defense.defense_config.default_budget
        log.warning("%s: the registry entry's reduced default budget is in use for what was not given (%s)%s; for "
                    "the presets' full budget give your own options, or pass entry_budget=False (robustkit bench "
                    "--full-budget)", defense.name, describe_budget(plan.filled),
                    f": {budget.note}" if budget.note else "")
    from ..attacks import list_attacks

    for a in names:
        if a != "transfer" and not a.startswith("torchattacks:") and a not in list_attacks():
            raise InputError(f"unknown attack {a!r}{did_you_mean(a, [*list_attacks(), 'transfer'])}; available: "
                             f"{', '.join(list_attacks())}, transfer, "
                             "torchattacks:<Name>")
    if not defense.traits.stochastic:
        _warn_eot_on_deterministic(names, attack_options or {}, eps_value, threat_model)
    if base_classifier is None:
        base_classifier = getattr(defense, "base_classifier", None)
    if data is not None:
        x, y = data
        x = check_images(x, defense.input_shape, dtype=module_placement(defense)[1])  # documented conversions
        y = check_labels(y, x.shape[0], defense.num_classes)
        if n_examples is not None:
            x, y = x[:n_examples], y[:n_examples]
        idx = list(indices) if indices is not None else list(range(x.shape[0]))
    else:
        from ..data import load_dataset

        x, y = load_dataset(dataset, split=split, n_examples=n_examples, data_dir=data_dir, indices=indices)
        idx = list(indices)[: x.shape[0]] if indices is not None else list(range(x.shape[0]))
        x = check_images(x, defense.input_shape, name=f"{dataset} images", dtype=module_placement(defense)[1])
        y = check_labels(y, x.shape[0], defense.num_classes)
    dev = resolve_device(device) if device is not None else next(
        (p.device for p in defense.parameters()), torch.device("cpu"))
    draws = n_reeval if defense.traits.stochastic else 1
    options = {k: _jsonable(v) for k, v in (attack_options or {}).items()}
    config = {"defense": describe_defense(defense), "dataset": dataset, "split": split, "indices": idx,
              "threat_model": threat_model, "eps": eps_value, "attacks": names, "attack_options": options,
              "seed": seed, "batch_size": batch_size, "n_reeval": draws, "cascade": cascade,
              "base_classifier": describe_defense(base_classifier) if base_classifier is not None else None}
    if random_parts:  # allowed, and said so in the record (its defense_config) and its summary
        config["defense"]["random_weights"] = [p.name for p in random_parts]
    if plan.filled:  # what came from the entry's reduced default budget (the attacks' protocols say what ran)
        config["defense"]["default_budget"] = _jsonable(plan.filled)
    if tta is not None:
        config["tta_threat_model"] = tta
        defense = PinnedStateDefense(defense)  # reset() restores the whole state (robustkit.eval.tta)
    tmp = None
    if run_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="robustkit-run-")
        run_dir = tmp.name
    try:
        shards = make_shards(x.shape[0], batch_size)
        run = RunDir.open(run_dir, config, shards)
        job = _Job(defense=defense, x=x.cpu(), y=y.cpu(), indices=idx, attacks=names, attack_options=attack_options or {},
                   eps=eps_value, norm=threat_model, seed=seed, draws=draws, cascade=cascade,
                   base_classifier=base_classifier, run_dir=str(run_dir), config=config, shards=run.shards,
                   lease_timeout=lease_timeout)

        check_results: list[CheckResult] = []
        checks_seconds = 0.0
        checks_cost: dict[str, float] = {}
        if checks:
            checks_file = Path(run_dir) / "checks.json"
            n_probe = min(int(check_options.get("probe_size", probe_size)), x.shape[0])
            budget, sizing = plan_check_budget(
                stochastic=defense.traits.stochastic, probe_size=n_probe, asked=check_options,
                attack_passes=_estimated_attack_passes(names, attack_options or {}, eps_value, threat_model,
                                                       x.shape[0], draws))
            asked = {**check_options, "probe_size": n_probe, "budget": budget}
            stored = _stored_checks(checks_file, asked)  # other budgets, or a damaged file: checked again
            if stored is not None:
                check_results, checks_seconds, checks_cost = stored
            else:
                t0 = time.perf_counter()
                probe = slice(0, asked["probe_size"])
                defense.to(dev)

                def note(name: str) -> None:
                    log.info("sanity checks on %d examples: %s ... (%.0f s in)", asked["probe_size"], name,
                             time.perf_counter() - t0)

                if sizing["attack_passes_estimate"] is None:
                    log.info("sanity checks: budget %s (an attack's cost is unknown, so not sized to it)", budget)
                elif sizing["estimated_fraction"] > sizing["max_fraction"]:
                    log.warning("sanity checks: even their smallest budget %s is an estimated %.0f%% of this run "
                                "(more than %.0f%%): the attack budget is small; pass --no-checks or a smaller "
                                "--probe-size to save time", budget, 100 * sizing["estimated_fraction"],
                                100 * sizing["max_fraction"])
                else:
                    log.info("sanity checks: budget %s, an estimated %.0f%% of this run", budget,
                             100 * sizing["estimated_fraction"])
                with _seeded(derive_seed(seed, 0, "checks"), dev):
                    check_results = run_checks(defense, x[probe].to(dev), y[probe].to(dev), eps=eps_value,
                                               norm=threat_model, seed=derive_seed(seed, 0, "checks-attacks"),
                                               base_classifier=base_classifier.to(dev) if base_classifier else None,
                                               progress=note, cost=checks_cost,
                                               **{"loss": check_options.get("loss", "auto"), **budget})
                check_results = [dataclasses.replace(c, details={**c.details, "protocol": {
                    **c.details["protocol"], "sizing": _jsonable(sizing)}}) for c in check_results]
                checks_seconds = time.perf_counter() - t0
                log.info("sanity checks done (%.0f s): %s", checks_seconds,
                         ", ".join(f"{c.name} {c.status}" for c in check_results))
                body = {"checks": [dataclasses.asdict(c) for c in check_results], "seconds": checks_seconds,
                        "asked": asked, "cost": checks_cost}
                body["sha256"] = hashlib.sha256(canonical_json(body).encode()).hexdigest()  # damage is seen
                atomic_write_text(checks_file, json.dumps(body, sort_keys=True) + "\n")

        run.repair()  # damaged shards are moved aside (with a warning) and recomputed
        if tta == "continual":
            run_continual(job, dev, progress)
        else:
            _execute(job, executor, workers, dev, progress, slurm)
        clean, robust, per_attack, validity, cost = _aggregate(run, names, cascade)
        check_results = [*check_results, validity]
        fp = defense.traits.forward_passes
        order = {name: k for k, name in enumerate(names)}  # read back from sorted JSON: put the run order back
        attack_protocols = [{"name": name, **{k: v for k, v in info.items()
                                              if k not in ("cascade", "broken_at_step", "n_examples",
                                                           "defended_after_attack")},
                             **({"test_time_threat_model": tta} if tta is not None else {})}
                            for name, info in sorted(cost["attack_info"].items(),
                                                     key=lambda kv: order.get(kv[0], len(names)))]
        sizes = {s.n for s in (*clean.values(), *robust.values())}
        if sizes != {x.shape[0]}:  # n_examples is always the number of per-example results behind the numbers
            raise RunIntegrityError(f"{run_dir}: statistics over {sorted(sizes)} examples, the run has {x.shape[0]}")
        devices = sorted(cost["devices"])
        wall = cost["seconds"] + checks_seconds
        record = BenchmarkRecord(
            defense=config["defense"]["name"], defense_config=config["defense"], config_hash=run.hash,
            traits=dataclasses.asdict(defense.traits), dataset=dataset, split=split, n_examples=x.shape[0],
            threat_model=threat_model, eps=eps_value, seed=seed, batch_size=batch_size, n_reeval=draws,
            cascade=cascade, attacks=attack_protocols, clean=clean, robust=robust, per_attack=per_attack,
            checks=check_results, unreliable=any(c.is_blocking_failure for c in check_results),
            cost={"forward_passes": cost["forwards"], "backward_passes": cost["backwards"],
                  "forward_passes_per_prediction": fp, "forward_nfe": cost["forwards"] * fp,
                  "backward_nfe": cost["backwards"] * fp, "attack_seconds": cost["seconds"],
                  "checks_seconds": checks_seconds, "wall_seconds": wall,
                  "checks_forward_passes": int(checks_cost.get("forwards", 0)),
                  "checks_backward_passes": int(checks_cost.get("backwards", 0)),
                  "checks_fraction": checks_seconds / wall if wall > 0 else 0.0,
                  "gpu_hours": wall / 3600 if any(d.startswith("cuda") for d in devices) else 0.0,
                  "device": ",".join(devices), "elapsed_seconds_this_call": time.perf_counter() - t_start},
            software=_software(), created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        if tmp is None:
            rank = int(os.environ.get("RANK", "0"))
            if rank == 0:
                record.save(Path(run_dir) / "record.json")
        return record
    finally:
        if tmp is not None:
            tmp.cleanup()
