"""Threat models for defenses that adapt at test time (Croce et al., ICML 2022), used by :func:`benchmark`.

A test-time-adapting defense (TEA, TENT, BN: :mod:`robustkit.defenses.adaptation`) carries *state*: the
adapted parameters, the optimiser's moments and step count, and for TEA the SGLD replay buffer. Which state
the attacker faces, and what the defense learns from the attacked batches, is part of the threat model, and
every record names it (``config.tta_threat_model`` and each attack protocol's ``test_time_threat_model``):

``episodic``
    Every batch (one shard of ``batch_size`` consecutive examples) meets the defense in its initial state.
    That whole state (parameters + optimiser + SGLD buffer) is restored before every attack query, before
    the clean pass and before every re-evaluation, so all of them — and the score — evaluate one function.
    (The defense's own ``reset()`` keeps TEA's buffer, as the authors' code does; here it is restored too,
    or clean and post-attack scores would see different buffers.)

``continual``
    The test set streams in its fixed order, one batch at a time, and the defense is never reset: batch
    ``k`` is attacked (and its clean accuracy measured) given the state the defense reached after the
    batches before it, restored before every query and re-evaluation of batch ``k``; then the defense
    adapts once on the adversarial batch, as a deployed model would, and carries that state on. The
    batch it adapts on is the strongest attack's (fewest examples right on the first draw; ties: the
    earlier attack). The state after every batch is saved in the run directory (``tta_state/``), so a
    killed run resumes where it stopped, with the same numbers: the defense's random stream is saved too.
    Shards run in order in one process (``executor="inline"``).

The papers' batch is 200 (TENT's and TEA's CIFAR-10 configs): :data:`DEFAULT_TTA_BATCH_SIZE`, the
harness's default for such defenses.

Reference:
    Croce, Gowal, Brunner, Shelhamer, Hein, Cemgil, Evaluating the Adversarial Robustness of Adaptive
    Test-time Defenses, ICML 2022.

Example (TENT on the tiny digits model; a few seconds)::

    >>> import robustkit
    >>> tent = robustkit.create_defense("tent.tiny_cnn.digits", pretrained=True)
    >>> rec = robustkit.benchmark(tent, dataset="digits", eps=0.1, attacks=["pgd"], n_examples=24, batch_size=12,
    ...                           checks=False, tta_threat_model="continual")
    >>> rec.attacks[0]["test_time_threat_model"], rec.batch_size
    ('continual', 12)
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..classifier import Classifier
from ..errors import InputError
from ..utils import progress_bar
from .runner import RunDir, atomic_write_bytes

if TYPE_CHECKING:
    from .benchmark import _Job

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_TTA_BATCH_SIZE", "PinnedStateDefense", "TTA_THREAT_MODELS", "run_continual", "stream_accuracy"]

TTA_THREAT_MODELS = ("episodic", "continual")
#: TENT's and TEA's CIFAR-10 batch (``TEST.BATCH_SIZE`` / ``OPTIM.BATCH_SIZE``: 200).
DEFAULT_TTA_BATCH_SIZE = 200


def check_threat_model(defense: Classifier, threat_model: str | None) -> str | None:
    """The threat model a benchmark of ``defense`` uses: None for a defense that does not adapt; for one
    that does, ``threat_model`` (default ``"episodic"``), which must be one of :data:`TTA_THREAT_MODELS`."""
    if not defense.traits.adapts_at_test_time:
        if threat_model is not None:
            raise InputError(f"tta_threat_model={threat_model!r} applies to defenses that adapt at test time; "
                             f"{type(defense).__name__} does not (traits.adapts_at_test_time is False)")
        return None
    threat_model = "episodic" if threat_model is None else threat_model
    if threat_model not in TTA_THREAT_MODELS:
        raise InputError(f"tta_threat_model must be one of {TTA_THREAT_MODELS}, got {threat_model!r}")
    if not (callable(getattr(defense, "snapshot_state", None)) and callable(getattr(defense, "restore_state", None))):
        raise InputError(f"{type(defense).__name__} adapts at test time but has no snapshot_state()/restore_state(), "
                         "so its state cannot be pinned for the episodic or continual threat model")
    return threat_model


class PinnedStateDefense(Classifier):
    """A test-time-adapting defense whose ``reset()`` restores a pinned state (parameters + optimiser + buffer).

    The attacks and the harness call ``reset()`` before every query, clean pass and re-evaluation; with this
    wrapper each of them starts from exactly the pinned state. :meth:`pin` pins the current state
    (continual threat model); the initial pin is the state at construction (episodic).

    Shape:
        that of the wrapped defense.

    Traits:
        those of the wrapped defense.

    Example::

        >>> import torch, robustkit
        >>> tea = robustkit.create_defense("tea.tiny_cnn.digits", pretrained=True, buffer_size=32, sgld_steps=1)
        >>> pinned = PinnedStateDefense(tea)
        >>> _ = pinned(torch.rand(8, 1, 8, 8)); int(tea.adam_step)
        1
        >>> pinned.reset(); int(tea.adam_step)
        0
    """

    def __init__(self, defense: Classifier):
        if not defense.traits.adapts_at_test_time:
            raise InputError(f"{type(defense).__name__} does not adapt at test time: nothing to pin")
        check_threat_model(defense, "episodic")  # raises for a defense whose state cannot be snapshot
        super().__init__(defense.num_classes, defense.input_shape, defense.traits)
        self.defense = defense
        self.name = getattr(defense, "name", type(defense).__name__)
        self._pinned = defense.snapshot_state()

    @property
    def base_classifier(self) -> Classifier | None:
        """The wrapped defense's static model (for transfer attacks)."""
        return getattr(self.defense, "base_classifier", None)

    def pin(self) -> None:
        """Make the defense's current state the one ``reset()`` restores."""
        self._pinned = self.defense.snapshot_state()

    def pinned_state(self) -> dict[str, torch.Tensor]:
        """A copy of the pinned state."""
        return {k: v.clone() for k, v in self._pinned.items()}

    def load_pinned_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore ``state`` into the defense and pin it."""
        self.defense.restore_state(state)
        self.pin()

    def reset(self) -> None:
        self.defense.restore_state(self._pinned)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.defense.logits(x)


# --------------------------------------------------------------------------------------------- continual

def _rng(defense: Classifier, device: torch.device) -> torch.Generator | None:
    gen = getattr(defense, "generator", None)  # TEA's private stream (its SGLD draws)
    return gen(device) if callable(gen) else None


def _state_path(run: RunDir, index: int) -> Path:
    return run.path / "tta_state" / f"before_shard_{index:05d}.pt"


def _save_state(path: Path, model: PinnedStateDefense, device: torch.device) -> None:
    rng = _rng(model.defense, device)
    payload = {"state": {k: v.cpu() for k, v in model.pinned_state().items()},
               "rng": rng.get_state() if rng is not None else None}
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_state(path: Path, model: PinnedStateDefense, device: torch.device) -> None:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model.load_pinned_state({k: v.to(device) for k, v in payload["state"].items()})
    rng = _rng(model.defense, device)
    if rng is not None and payload["rng"] is not None:
        rng.set_state(payload["rng"])


def strongest_batch(records: list[dict], tensors: dict[str, torch.Tensor], attacks: list[str]) -> str:
    """The attack whose adversarial batch left the fewest examples right on the first draw (ties: earliest)."""
    def right(name: str) -> int:
        return sum(r["attacks"][name]["correct"][0] for r in records if r["attacks"][name] is not None)

    return min((a for a in attacks if a in tensors), key=lambda a: (right(a), attacks.index(a)))


def run_continual(job: "_Job", device: torch.device, progress: bool | None = None) -> None:
    """Process ``job``'s shards in stream order, the defense carrying its state from each to the next.

    ``job.defense`` is a :class:`PinnedStateDefense`. Before shard ``k`` the state saved after shard ``k-1``
    is loaded (shard 0: the initial state); after it, the defense adapts once on the strongest attack's
    adversarial batch and that state is saved before the shard's results are, so a kill between the two
    only repeats shard ``k``. The defense is left in the state it came in with.
    """
    from .benchmark import process_shard
    from ..attacks.base import eval_mode

    model = job.defense
    if not isinstance(model, PinnedStateDefense):
        raise InputError("run_continual needs the defense wrapped in a PinnedStateDefense")
    run = RunDir.open(job.run_dir, job.config, job.shards)
    pending = run.pending()
    if not pending:
        return
    first = pending[0].index
    if [s.index for s in pending] != list(range(first, len(run.shards))):
        raise InputError(f"continual run {job.run_dir}: shards {[s.index for s in pending]} are pending, but a "
                         "stream can only resume at a suffix; the run folder was written by another process")
    model.to(device)
    initial = model.pinned_state()  # put back at the end: the stream's state does not leak out of the run
    if first > 0:
        path = _state_path(run, first)
        if not path.is_file():
            raise InputError(f"continual run {job.run_dir}: the state before shard {first} ({path}) is missing")
        _load_state(path, model, device)
    bar = progress_bar(total=len(run.shards), initial=first, enabled=progress, desc="benchmark (continual)",
                       unit="batch")
    try:
        for shard in pending:
            lease = run.claim(shard, lease_timeout=job.lease_timeout)
            if lease is None:
                raise InputError(f"continual run {job.run_dir}: {shard.name} is held by another worker; a stream "
                                 "runs in one process (executor='inline')")
            try:
                with eval_mode(model):
                    records, tensors, meta = process_shard(job, shard, device)
                    name = strongest_batch(records, tensors, job.attacks)
                    model.reset()
                    with torch.no_grad():
                        model(tensors[name].to(device))  # the deployed defense adapts on what it was sent
                    model.pin()
                meta["tta"] = {"threat_model": "continual", "adapted_on": name,
                               "adam_step_after": int(model.pinned_state().get("adam_step", torch.tensor(-1)))}
                meta["forwards"] += tensors[name].shape[0]  # the adaptation forward, counted like any other
                _save_state(_state_path(run, shard.index + 1), model, device)
                run.write_shard(shard, records, tensors, meta)
            finally:
                lease.release()
            log.info("continual: %s done; the defense adapted on its %s batch", shard.name, name)
            bar.update(1)
    finally:
        bar.close()
        model.load_pinned_state(initial)


# ------------------------------------------------------------------------------------------- clean streams

def stream_accuracy(defense: Classifier, x: torch.Tensor, y: torch.Tensor, *, threat_model: str,
                    batch_size: int = DEFAULT_TTA_BATCH_SIZE, progress: bool | None = None) -> torch.Tensor:
    """Per-example correctness of ``defense`` on the clean stream ``(x, y)`` in order, in batches.

    ``episodic``: every batch from the initial state (restored in full, buffer included); ``continual``:
    the defense adapts on each batch and carries its state to the next (the usual TTA evaluation). The
    defense is left in its initial state afterwards. Returns a bool tensor ``[N]``.

    Example::

        >>> import robustkit
        >>> bn = robustkit.create_defense("bn.tiny_cnn.digits", pretrained=True)
        >>> x, y = robustkit.load_dataset("digits", n_examples=40)
        >>> stream_accuracy(bn, x, y, threat_model="continual", batch_size=20).shape
        torch.Size([40])
    """
    threat_model = check_threat_model(defense, threat_model)
    pinned = PinnedStateDefense(defense)
    initial = pinned.pinned_state()
    out = []
    bar = progress_bar(total=x.shape[0], enabled=progress, desc=f"clean stream ({threat_model})", unit="img")
    try:
        with torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                pinned.reset()
                out.append((pinned(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).cpu())
                if threat_model == "continual":
                    pinned.pin()
                bar.update(min(batch_size, x.shape[0] - i))
    finally:
        bar.close()
        pinned.load_pinned_state(initial)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)
