"""Diffusion core: ScoreModel backbones, the VP schedule, differentiable solvers, checkpoint loaders.

The network / schedule / solver split of diffusers, in score_sde's continuous time t ∈ [0, 1]. Nothing
here uses ``torch.no_grad()``: grad mode belongs to the caller, because attacks differentiate through it.
"""

from .adm import ADMConfig, ADMScoreModel, ADMUNet, load_guided_diffusion
from .diffusers_loader import DiffusersScoreModel, from_diffusers
from .edm import EDMConfig, EDMPrecond, EDMScoreModel, SongUNet, load_edm
from .ncsnpp import NCSNpp
from .schedule import DiscreteVPSchedule, Marginal, VPSDE
from .score_model import ScoreModel
from .score_sde import ScoreSDEConfig, ScoreSDEScoreModel, get_score_sde_config, load_score_sde
from .solvers import ddim, ddim_indices, ddpm_ancestral, euler_maruyama, probability_flow_euler, time_grid

__all__ = [
    "ScoreModel", "VPSDE", "DiscreteVPSchedule", "Marginal",
    "euler_maruyama", "probability_flow_euler", "ddpm_ancestral", "ddim", "ddim_indices", "time_grid",
    "NCSNpp", "ScoreSDEConfig", "ScoreSDEScoreModel", "get_score_sde_config", "load_score_sde",
    "ADMConfig", "ADMUNet", "ADMScoreModel", "load_guided_diffusion",
    "EDMConfig", "SongUNet", "EDMPrecond", "EDMScoreModel", "load_edm",
    "DiffusersScoreModel", "from_diffusers",
]
