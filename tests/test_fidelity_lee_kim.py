"""Lee & Kim's PGD-EOT (ICCV 2023) step rules against iterates computed by their official code.

The vectors (``$ROBUSTKIT_SHARED/specs/official/pgd_eot_l2/``, README section 7) are the official
``PGDL2`` / ``PGD`` iterates x_1..x_5 on a fixed affine classifier in float64. Every run listed in
``meta.json`` is checked, so a set computed the same way with another seed is checked by the same test.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import robustkit
from robustkit import InputError
from robustkit.attacks import PGD, make_attack, project

NORM_OF_CLASS = {"PGDL2": "L2", "PGD": "Linf"}  # the official class each run used


class _Affine(robustkit.Classifier):
    """f(x) = flatten(x) · Wᵀ + b, the official vectors' classifier (float64)."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor, input_shape):
        super().__init__(w.shape[0], input_shape)
        self.register_buffer("w", w.clone())
        self.register_buffer("b", b.clone())

    def logits(self, x):
        return x.flatten(1) @ self.w.T + self.b


@pytest.fixture(scope="module")
def official(shared_dir):
    from safetensors.torch import load_file

    folder = shared_dir / "specs" / "official" / "pgd_eot_l2"
    return json.loads((folder / "meta.json").read_text()), load_file(str(folder / "vectors.safetensors"))


def test_pgd_eot_preset_reproduces_the_official_iterates(official):
    meta, t = official
    x, y = t["x"], t["y"]
    assert x.dtype == torch.float64
    model = _Affine(t["classifier.W"], t["classifier.b"], x.shape[1:]).double()
    runs = meta["runs"]
    assert {"l2", "l2_eps0p2", "linf"} <= set(runs)
    for key, run in runs.items():
        norm = NORM_OF_CLASS[run["class"]]
        expected = t[f"{key}.x_iter"]
        for k in range(1, expected.shape[0] + 1):
            # the preset as the official test.py builds it, with its eot=1; early_stop=False: the official
            # attack returns the last iterate, and this is what we compare
            attack = make_attack("pgd-eot", eps=run["eps"], norm=norm, steps=k, eot=1, early_stop=False)
            assert attack.step_size == run["step_size"]
            # The affine map misclassifies both points clean, and Attack.__call__ returns x for those
            # (nothing to attack); the official code attacks them anyway. So the step rule is run as
            # __call__ runs it (perturb, then the projection), without that final masking.
            out = attack.perturb(model, x, y, torch.Generator().manual_seed(0))
            x_adv = project(out.x_adv, x, attack.eps, attack.norm)
            assert x_adv.dtype == torch.float64
            err = (x_adv - expected[k - 1]).abs().max().item()
            assert err <= 1e-5, f"{key} x_{k}: max |difference| {err:.2e}"
            assert torch.allclose((x_adv - x).flatten(1).norm(dim=1), torch.tensor(
                run["l2_dist_per_iter"][k - 1], dtype=torch.float64), atol=1e-6)


def test_l2_projection_binds_in_the_small_ball(official):
    meta, t = official
    it = t["l2_eps0p2.x_iter"]
    d = (it - t["x"]).flatten(2).norm(dim=2)
    assert (d[2:] <= 0.2 + 1e-9).all() and (d[:2] < 0.2).all()
    # the sign rule's unprojected step is 0.007·√d long: larger than the normalised rule's 0.007
    step = (it[0] - t["x"]).flatten(1).norm(dim=1)
    assert (step > 0.007 * math.sqrt(t["x"][0].numel()) * 0.9).all()


def test_l2_step_rules_differ_only_where_documented():
    g = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    sign = PGD(eps=0.5, norm="L2", step_size=0.007, l2_step="sign")._step(g)
    normalized = PGD(eps=0.5, norm="L2", step_size=0.007)._step(g)
    assert torch.equal(sign, 0.007 * g.sign())
    assert torch.allclose(normalized.flatten(1).norm(dim=1), torch.full((4,), 0.007))
    assert torch.equal(PGD(eps=0.1, step_size=0.01, l2_step="sign")._step(g),
                       PGD(eps=0.1, step_size=0.01)._step(g))  # Linf: always the sign
    assert make_attack("pgd-eot", eps=0.5, norm="L2").protocol()["l2_step"] == "sign"
    assert make_attack("pgd", eps=0.5, norm="L2").protocol()["l2_step"] == "normalized"
    assert "l2_step" not in make_attack("pgd-eot", eps=8 / 255).protocol()
    with pytest.raises(InputError, match="l2_step"):
        PGD(eps=0.5, norm="L2", l2_step="Sign")
