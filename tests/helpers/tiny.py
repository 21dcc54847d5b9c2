"""Tiny Stable Diffusion pipelines with random weights, for the tests and benchmarks.

The real diffusers classes at a size that runs in well under a second on a CPU, with the real CLIP
tokenizer shipped with the bot. Same seed, same weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from bot.engine.single_file import CLIP_TOKENIZER_DIR


def tiny_unet(sample_size: int = 8, cross_attention_dim: int = 32) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    )


def tiny_text_encoder(hidden_size: int = 32, with_projection: bool = False):
    """A CLIP-L-shaped text encoder (quick_gelu, pad = end of text); `with_projection` as SDXL and SD3's first."""
    from transformers import CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        projection_dim=hidden_size,
    )
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def clip_tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER_DIR))


def tiny_pipeline(seed: int = 0, sample_size: int = 8) -> StableDiffusionPipeline:
    """A Stable Diffusion 1.x-shaped pipeline: 8x8 latents (64 px) by default, random weights."""
    torch.manual_seed(seed)
    unet = tiny_unet(sample_size=sample_size)
    vae = tiny_vae()
    text_encoder = tiny_text_encoder()
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_pipeline(folder: Path, seed: int = 0, sample_size: int = 8) -> Path:
    """Write a tiny pipeline folder (diffusers format, safetensors) and return it."""
    tiny_pipeline(seed=seed, sample_size=sample_size).save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_lora(base_folder: Path, out_folder: Path, seed: int = 1, rank: int = 4) -> Path:
    """A LoRA (peft, diffusers file layout) with random non-zero weights over a tiny pipeline.

    peft starts LoRA B matrices at zero (no effect until trained); these get random values so
    the adapter visibly changes the images, as a trained one would.
    """
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = StableDiffusionPipeline.from_pretrained(str(base_folder), local_files_only=True)
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                        target_modules=["to_k", "to_q", "to_v", "to_out.0"])
    pipe.unet.add_adapter(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in pipe.unet.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    out_folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(str(out_folder), unet_lora_layers=layers, safe_serialization=True)
    return out_folder


def save_tiny_upscaler(path: Path, arch: str = "esrgan", scale: int = 2, seed: int = 0) -> Path:
    """Random-weight upscaling networks of the ESRGAN family, in the layouts model sites ship:
    "esrgan" an RRDBNet (ESRGAN) with one block of 8 filters; "compact" Real-ESRGAN's
    SRVGGNetCompact with two convolutions of 8 filters (cheap enough for 768 px images on a CPU).
    A .safetensors path is saved as safetensors, a .pth path as a pickled state dict."""
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    if arch == "esrgan":
        network = ESRGAN(num_filters=8, num_blocks=1, scale=scale)
    else:
        network = Compact(num_feat=8, num_conv=2, upscale=scale)
    state = {key: value.contiguous() for key, value in network.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path
# --- the other families: SD 2.x, SDXL base and refiner, inpainting ------------------------------------
#
# Each is the real pipeline class with the family's distinguishing parts kept (text encoder kind,
# prediction type, micro-conditioning, input channels) and everything else shrunk. The two SDXL
# text encoders get different widths, as the real ones have (768 and 1280): single-file loading
# tells them apart by width.

SD2_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                     steps_offset=1)


def tiny_open_clip_text_encoder(hidden_size: int = 32, with_projection: bool = False):
    """An OpenCLIP-shaped text encoder as diffusers stores it: gelu, pad token "!" (id 0)."""
    from transformers import CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0,
        projection_dim=hidden_size,
    )
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def tiny_sd2_pipeline(seed: int = 0, v_prediction: bool = True, in_channels: int = 4):
    """An SD 2.x-shaped pipeline: OpenCLIP text encoder (penultimate layer), linear projections,
    upcast attention, v-prediction (like 2.1-768) or epsilon (like 2.1-base)."""
    from diffusers import StableDiffusionInpaintPipeline

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4), use_linear_projection=True, upcast_attention=True,
        norm_num_groups=32,
    )
    vae = tiny_vae()
    text_encoder = tiny_open_clip_text_encoder(32)
    scheduler = DPMSolverMultistepScheduler(
        **SD2_SCHEDULER, prediction_type="v_prediction" if v_prediction else "epsilon")
    cls = StableDiffusionInpaintPipeline if in_channels == 9 else StableDiffusionPipeline
    return cls(vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer_with_pad("!"), unet=unet,
               scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def clip_tokenizer_with_pad(pad_token: str) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER_DIR), pad_token=pad_token)


def _tiny_sdxl_unet(cross_attention_dim: int, text_embeds_dim: int, time_ids: int, in_channels: int = 4):
    return UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=time_ids * 8 + text_embeds_dim,
        cross_attention_dim=cross_attention_dim, norm_num_groups=32,
    )


def _sdxl_scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")


def tiny_sdxl_pipeline(seed: int = 0, in_channels: int = 4):
    """An SDXL base-shaped pipeline: a CLIP-L-style and a wider OpenCLIP-bigG-style text encoder
    (with projection), `text_time` micro-conditioning (original size, crop, target size)."""
    from diffusers import StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline

    torch.manual_seed(seed)
    unet = _tiny_sdxl_unet(cross_attention_dim=32 + 64, text_embeds_dim=64, time_ids=6, in_channels=in_channels)
    vae = tiny_vae()
    text_encoder = tiny_text_encoder(32)
    text_encoder_2 = tiny_open_clip_text_encoder(64, with_projection=True)
    cls = StableDiffusionXLInpaintPipeline if in_channels == 9 else StableDiffusionXLPipeline
    return cls(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=clip_tokenizer(),
               tokenizer_2=clip_tokenizer_with_pad("!"), unet=unet, scheduler=_sdxl_scheduler(),
               force_zeros_for_empty_prompt=True)


def tiny_sdxl_refiner_pipeline(seed: int = 0):
    """An SDXL refiner-shaped pipeline: only the OpenCLIP-bigG-style encoder, aesthetic-score
    micro-conditioning (original size, crop, score), an image-to-image pipeline."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    torch.manual_seed(seed)
    unet = _tiny_sdxl_unet(cross_attention_dim=64, text_embeds_dim=64, time_ids=5)
    vae = tiny_vae()
    text_encoder_2 = tiny_open_clip_text_encoder(64, with_projection=True)
    return StableDiffusionXLImg2ImgPipeline(
        vae=vae, text_encoder=None, text_encoder_2=text_encoder_2, tokenizer=None,
        tokenizer_2=clip_tokenizer_with_pad("!"), unet=unet, scheduler=_sdxl_scheduler(),
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)


def tiny_sd15_inpaint_pipeline(seed: int = 0):
    """An SD 1.x inpainting-shaped pipeline: 9 input channels (latents, mask, masked image)."""
    from diffusers import StableDiffusionInpaintPipeline

    torch.manual_seed(seed)
    unet = tiny_unet()
    unet = UNet2DConditionModel.from_config({**unet.config, "in_channels": 9})
    plain = tiny_pipeline(seed)
    return StableDiffusionInpaintPipeline(
        vae=plain.vae, text_encoder=plain.text_encoder, tokenizer=plain.tokenizer, unet=unet,
        scheduler=plain.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def save_pipeline(pipe, folder: Path) -> Path:
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
