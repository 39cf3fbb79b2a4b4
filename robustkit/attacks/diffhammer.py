"""DiffHammer (Wang et al., NeurIPS 2024): a selective attack on stochastic diffusion purification.

Averaging the gradient over purification draws (EOT) mixes draws that can be broken with draws that
cannot, and the average can point nowhere ("gradient dilemma"). DiffHammer instead, at every iteration:

1. **evaluates** ``n_eval`` fresh purifications of the current iterate: each one's loss ``ℓ_j`` and the
   loss gradient with respect to its *purified image* ``g_j`` (a classifier backward only); an example
   is broken under the **N-evaluation protocol** if any of the evaluations made during the attack
   misclassifies it (an attacker who may resubmit);
2. **selects** (E-step), per example, the draw ``a`` with the largest expected loss after a step along
   it, ``Σ_b elu(ℓ_b + eps · ⟨unit(g_a), g_b⟩)``, and weights every draw by
   ``w_b = sigmoid(λ (ℓ_b + ⟨unit(g_a), g_b⟩))`` (λ = 5): draws that share the selected draw's
   vulnerability count, the others fade;
3. **grafts** (M-step) the weighted mean ``ḡ = Σ w_b g_b / Σ w_b`` onto one exact backward pass through
   the selected draw's own purification (the same noise, replayed), so N draws cost N purification
   forwards (made anyway to evaluate) and one purification backward, not N;
4. steps along the grafted gradient with momentum ``v g + (1 − v) g_prev``, ``v = (i + 1)^(−α)``
   (α = 0.5), and projects.

The ``n_eval`` evaluations of an iteration are purified as one batch of ``n_eval · B`` rows (at most
``eot_batch``) when the defense allows it (:func:`~robustkit.attacks.base.batches_draws`); their noise is drawn
in the same order either way, so the evaluations are the same draw for draw.

``unit`` is ``sign`` for Linf and ``g/‖g‖₂`` for L2. The loss is Carlini–Wagner's margin (the official
first restart's). The returned point is, per example, the iterate at which an evaluation first broke
it (else the last iterate); ``info["n_evaluation"]`` holds the N-evaluation outcome: the examples that
survived all ``n_eval × (steps + 1)`` evaluations, beside the harness's own single-draw verification.

Needs a :class:`~robustkit.defenses.PurifiedClassifier` whose purifier can replay its randomness
(``draw_noise`` / ``purify_with_noise``, DiffPure and its variants) and draws one purification per
forward (``n_samples = 1``). The purification is differentiated exactly through robustkit's solvers
(flat memory); the official code differentiates its DDPM/DDIM chain by hand.

Differences from the official code (Ka1b0/DiffHammer @ 1010822, ``attacker.py``): one restart with a
fixed-size step (the official default runs APGD's step-size schedule over three restarts with CW, CE
and DLR losses); the evaluations' noise is drawn from the attack's seeded generator instead of
re-seeding the global RNG; with ``n_eot = 1`` (the official default) the cosine-similarity mixing of
several selected draws reduces to the weights above, which is what is implemented.

Reference:
    Wang et al., "DiffHammer: Rethinking the Robustness of Diffusion-Based Adversarial Purification",
    NeurIPS 2024, github.com/Ka1b0/DiffHammer.

Example::

    >>> import torch, robustkit
    >>> from robustkit.attacks import DiffHammer
    >>> d = robustkit.create_defense("tiny_diffpure.digits", pretrained=True, t_star=0.02)
    >>> x, y = robustkit.load_dataset("digits", n_examples=4)
    >>> res = DiffHammer(eps=0.1, steps=2, n_eval=2)(d, x, y)
    >>> sorted(res.info["n_evaluation"])
    ['evaluations', 'n_eval', 'survived']
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError
from ..utils import check_positive_int
from .base import (EOT_BATCH, Attack, EotBatch, Norm, Perturbation, batches_draws, check_eot_batch, draws_per_forward,
                   project)
from .pgd import ascent_step, margin_loss, random_start


def purified_parts(model: nn.Module) -> tuple[nn.Module, Any, nn.Module]:
    """``(counter, purifier, classifier)`` of the attacked model, which must be a
    :class:`~robustkit.defenses.PurifiedClassifier` with a replayable purifier and one sample per forward
    (``counter`` is the harness's counting wrapper, or the model itself)."""
    from ..defenses.purification import PurifiedClassifier

    inner = getattr(model, "model", model)
    if not isinstance(inner, PurifiedClassifier):
        raise InputError(f"this attack targets diffusion purification: it needs a PurifiedClassifier, got "
                         f"{type(inner).__name__}")
    purifier = inner.purifier
    if not (hasattr(purifier, "draw_noise") and hasattr(purifier, "purify_with_noise")):
        raise InputError(f"this attack replays purifications with fixed noise: {type(purifier).__name__} has no "
                         "draw_noise/purify_with_noise")
    if inner.n_samples != 1:
        raise InputError(f"this attack draws one purification per evaluation; the defense votes over "
                         f"n_samples={inner.n_samples} (build it with n_samples=1)")
    return model, purifier, inner.classifier


def count(counter: nn.Module, forwards: int = 0, backwards: int = 0) -> None:
    """Add to the harness's per-example cost counters (full model passes), when attacked through it."""
    if hasattr(counter, "forwards"):
        counter.forwards += forwards
        counter.backwards += backwards


def unit(g: torch.Tensor, norm: Norm) -> torch.Tensor:
    """``sign(g)`` (Linf) or ``g/‖g‖₂`` over the last dimension (L2)."""
    if norm == "Linf":
        return g.sign()
    return g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def stacked_draws(model: nn.Module, x: torch.Tensor, noises: list, max_batch: EotBatch):
    """Yield ``(x repeated e times, the e noises stacked, e)``: the purifications of ``noises`` (one per draw, in
    order) grouped into forwards of at most ``max_batch`` rows when the defense evaluates draws as one batch
    (:func:`~robustkit.attacks.base.batches_draws`), else one per draw (its own noise, as drawn)."""
    per = draws_per_forward(x, len(noises), max_batch) if batches_draws(model) else 1
    for s in range(0, len(noises), per):
        chunk = noises[s:s + per]
        if len(chunk) == 1:
            yield x, chunk[0], 1
        else:
            yield x.repeat(len(chunk), *([1] * (x.dim() - 1))), type(chunk[0]).cat(chunk), len(chunk)


def select_rows(noises: list, index: torch.Tensor):
    """The noise whose row ``i`` is row ``i`` of ``noises[index[i]]`` (one replayable draw per example)."""
    rows = torch.arange(index.shape[0], device=index.device)

    def pick(tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(tensors)[index, rows]

    first = noises[0]
    return type(first)(pick([n.init for n in noises]),
                       tuple(pick([n.steps[k] for n in noises]) for k in range(len(first.steps))))


class DiffHammer(Attack):
    """DiffHammer (module docstring).

    Args:
        eps, norm, seed: see :class:`~robustkit.attacks.base.Attack`.
        steps: attack iterations (each: one grafted exact backward and ``n_eval`` evaluations).
        n_eval: purifications evaluated per iteration (the official default 10).
        step_size: step length (default ``2.5 · eps / steps``, robustkit's PGD default).
        lam: the E-step temperature λ (official 5).
        alpha: the momentum exponent α (official 0.5).
        random_start: start from a uniform point of the ball (official: yes).
        eot_batch: the most rows (evaluations × examples) of one batched purification, for a defense that
            evaluates draws as one batch (the evaluations are the same draw for draw), as PGD's ``eot_batch``.
    """

    name = "diffhammer"

    def __init__(self, *, eps: float, norm: Norm = "Linf", steps: int = 50, n_eval: int = 10,
                 step_size: float | None = None, lam: float = 5.0, alpha: float = 0.5, random_start: bool = True,
                 eot_batch: EotBatch = EOT_BATCH, seed: int = 0):
        super().__init__(eps=eps, norm=norm, seed=seed)
        check_positive_int("steps", steps)
        check_positive_int("n_eval", n_eval)
        self.eot_batch = check_eot_batch(eot_batch)
        self.steps, self.n_eval = steps, n_eval
        self.step_size = float(step_size) if step_size is not None else 2.5 * self.eps / steps
        if self.step_size <= 0 and self.eps > 0:
            raise InputError(f"step_size must be positive, got {step_size!r}")
        for name, v in (("lam", lam), ("alpha", alpha)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise InputError(f"{name} must be a number >= 0, got {v!r}")
        self.lam, self.alpha = float(lam), float(alpha)
        self.random_start = bool(random_start)

    def protocol(self) -> dict[str, Any]:
        return {**super().protocol(), "steps": self.steps, "n_eval": self.n_eval, "step_size": self.step_size,
                "lam": self.lam, "alpha": self.alpha, "loss": "margin", "random_start": self.random_start,
                "restarts": 1, "eot": 1, "eot_batch": self.eot_batch,
                "graft": "weighted purified-image gradient on one exact backward of the selected draw"}

    def _evaluate(self, model, purifier, classifier, x_adv: torch.Tensor, y: torch.Tensor,
                  generator: torch.Generator):
        """``n_eval`` purifications of ``x_adv``: their noise, losses ``[n, B]``, gradients with respect to
        the purified images ``[n, B, d]`` and misclassification ``[n, B]``."""
        noises = [purifier.draw_noise(x_adv, generator) for _ in range(self.n_eval)]
        losses, grads, wrong = [], [], []
        for xs, noise, e in stacked_draws(model, x_adv, noises, self.eot_batch):
            with torch.no_grad():
                p = purifier.purify_with_noise(xs, noise)
            with torch.enable_grad():
                p = p.detach().requires_grad_(True)
                logits = classifier.logits(p)
                loss = margin_loss(logits, y.repeat(e))
                (g,) = torch.autograd.grad(loss.sum(), p)
            losses.append(loss.detach().view(e, -1))
            grads.append(g.flatten(1).view(e, x_adv.shape[0], -1))
            wrong.append((logits.detach().argmax(1) != y.repeat(e)).view(e, -1))
        return noises, torch.cat(losses), torch.cat(grads), torch.cat(wrong)

    def _em(self, losses: torch.Tensor, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The selected draw per example ``[B]`` and the weighted gradient ``[B, d]`` (module docstring)."""
        u = unit(grads, self.norm)                                      # [n, B, d]
        delta = torch.einsum("abd,cbd->acb", u, grads)                  # [a, b(draw), B]: ⟨unit(g_a), g_b⟩
        expected = F.elu(losses.unsqueeze(0) + self.eps * delta).sum(1)  # [a, B]
        sel = expected.argmax(0)                                         # [B]
        rows = torch.arange(grads.shape[1], device=grads.device)
        r = u[sel, rows]                                                 # [B, d]
        w = torch.sigmoid(self.lam * (losses + (r.unsqueeze(0) * grads).sum(-1)))  # [n, B]
        g = (w.unsqueeze(-1) * grads).sum(0) / w.sum(0).unsqueeze(-1).clamp_min(1e-12)
        return sel, g

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> Perturbation:
        counter, purifier, classifier = purified_parts(model)
        x_adv = random_start(x, self.eps, self.norm, generator) if self.random_start else x.clone()
        expand = (-1, *([1] * (x.dim() - 1)))
        broken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        best = x_adv.clone()
        past = None
        evaluations = 0
        for it in range(self.steps + 1):
            noises, losses, grads, wrong = self._evaluate(model, purifier, classifier, x_adv, y, generator)
            count(counter, forwards=self.n_eval * x.shape[0])
            evaluations += self.n_eval
            newly = wrong.any(0) & ~broken
            best = torch.where(newly.view(expand), x_adv, best)
            broken |= newly
            if it == self.steps or broken.all():
                break
            sel, g = self._em(losses, grads)
            replay = select_rows(noises, sel)
            with torch.enable_grad():
                xa = x_adv.detach().requires_grad_(True)
                p = purifier.purify_with_noise(xa, replay)
                (grad,) = torch.autograd.grad(p, xa, g.view_as(p))
            count(counter, forwards=x.shape[0], backwards=x.shape[0])
            if past is not None:
                v = (it + 1) ** -self.alpha
                grad = v * grad + (1 - v) * past
            past = grad
            x_adv = project(x_adv + ascent_step(grad, self.norm, self.step_size), x, self.eps, self.norm).detach()
        out = torch.where(broken.view(expand), best, x_adv)
        info = {"n_evaluation": {"n_eval": self.n_eval, "evaluations": evaluations,
                                 "survived": (~broken).tolist()}}
        return Perturbation(out, info)
