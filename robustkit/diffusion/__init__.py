"""Diffusion core: ScoreModel backbones, the VP schedule, differentiable solvers, checkpoint loaders.

The network / schedule / solver split of diffusers, in score_sde's continuous time t ∈ [0, 1]. Nothing
here uses ``torch.no_grad()``: grad mode belongs to the caller, because attacks differentiate through it.
"""

from .diffussm import DiffuSSM, DiffuSSMConfig, S4DLayer
from .dit import DiT, DiTConfig
from .adm import ADMConfig, ADMScoreModel, ADMUNet, load_guided_diffusion
from .diffusers_loader import DiffusersScoreModel, from_diffusers
from .edm import EDMConfig, EDMPrecond, EDMScoreModel, SongUNet, load_edm
from .ncsnpp import NCSNpp
from .schedule import DiscreteVPSchedule, Marginal, VPSDE
from .score_model import ScoreModel
from .score_sde import ScoreSDEConfig, ScoreSDEScoreModel, get_score_sde_config, load_score_sde
from .solvers import ddim, ddim_indices, ddpm_ancestral, euler_maruyama, probability_flow_euler, time_grid
from .unet import ClassifierFreeGuidance, UNet, UNetConfig
from .train import (DiffusionTrainConfig, TrainResult, denoising_loss, load_trained, sample_images, save_image_grid,
                    train)
from .zoo import ScoreModelConfig, create_score_model, list_score_models, score_model_config
from .quality import TIMES, class_conditional_accuracy, loss_per_t

__all__ = [
    "ScoreModel", "VPSDE", "DiscreteVPSchedule", "Marginal",
    "euler_maruyama", "probability_flow_euler", "ddpm_ancestral", "ddim", "ddim_indices", "time_grid",
    "NCSNpp", "ScoreSDEConfig", "ScoreSDEScoreModel", "get_score_sde_config", "load_score_sde",
    "ADMConfig", "ADMUNet", "ADMScoreModel", "load_guided_diffusion",
    "EDMConfig", "SongUNet", "EDMPrecond", "EDMScoreModel", "load_edm",
    "DiffusersScoreModel", "from_diffusers",
    "UNet", "UNetConfig", "ClassifierFreeGuidance",
    "DiT", "DiTConfig", "DiffuSSM", "DiffuSSMConfig", "S4DLayer",
    "DiffusionTrainConfig", "TrainResult", "train", "load_trained", "denoising_loss", "sample_images",
    "save_image_grid",
    "ScoreModelConfig", "create_score_model", "list_score_models", "score_model_config",
    "TIMES", "loss_per_t", "class_conditional_accuracy",
]
