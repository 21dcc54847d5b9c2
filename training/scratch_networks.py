"""The networks train_scratch builds (a tiny AutoencoderKL, a UNet2DConditionModel, a small CLIP
text encoder), the sampling scheduler and pipeline, and the EMA of the trained weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from training.train_scratch import TrainingConfig

TEXT_POSITIONS = 77  # the text encoder's positions: CLIP's window, the SD 1.x layout


def build_vae(c: TrainingConfig):
    from diffusers import AutoencoderKL

    levels = len(c.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(c.vae_channels), layers_per_block=1, norm_num_groups=c.vae_norm_groups,
        sample_size=c.image_size,
    )


def build_unet(c: TrainingConfig, latent_size: int):
    from diffusers import UNet2DConditionModel

    levels, plain = len(c.unet_channels), c.unet_plain_levels
    down = ("DownBlock2D",) * plain + ("CrossAttnDownBlock2D",) * (levels - plain)
    up = ("CrossAttnUpBlock2D",) * (levels - plain) + ("UpBlock2D",) * plain
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4,
        block_out_channels=tuple(c.unet_channels), layers_per_block=c.unet_layers_per_block,
        down_block_types=down, up_block_types=up,
        cross_attention_dim=c.text_width, attention_head_dim=c.unet_attention_heads,
        norm_num_groups=c.unet_norm_groups,
    )


def build_text_encoder(c: TrainingConfig):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=c.text_width, intermediate_size=4 * c.text_width,
        num_hidden_layers=c.text_layers, num_attention_heads=c.text_heads, max_position_embeddings=TEXT_POSITIONS,
        hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        projection_dim=c.text_width,
    ))


def load_vae(path: str | Path):
    from diffusers import AutoencoderKL

    path = Path(path)
    if (path / "vae" / "config.json").is_file():
        path = path / "vae"
    return AutoencoderKL.from_pretrained(str(path))


def dpm_scheduler(c: TrainingConfig):
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        num_train_timesteps=c.num_train_timesteps, beta_start=c.beta_start, beta_end=c.beta_end,
        beta_schedule=c.beta_schedule, prediction_type="epsilon", algorithm_type="dpmsolver++", solver_order=2,
        steps_offset=1,  # what SD configs carry (diffusers warns otherwise); unused by "linspace" spacing
    )


def make_pipeline(c: TrainingConfig, vae, text_encoder, unet, tokenizer):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=dpm_scheduler(c), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class EMA:
    """Exponential moving average of parameters, with warm-up: decay_t = min(decay, (1 + t) / (10 + t))."""

    def __init__(self, parameters: Sequence[torch.nn.Parameter], decay: float) -> None:
        self.decay = decay
        self.steps = 0
        self.shadow = [p.detach().float().clone() for p in parameters]

    @torch.no_grad()
    def update(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in parameters], 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        for shadow, p in zip(self.shadow, parameters, strict=True):
            p.copy_(shadow.to(p.dtype))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "steps": self.steps, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError("the checkpoint's EMA does not match this model (different architecture?)")
        self.decay, self.steps = state["decay"], state["steps"]
        self.shadow = [s.to(t.device) for s, t in zip(state["shadow"], self.shadow)]
