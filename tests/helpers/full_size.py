"""FLUX.1 [dev] and SDXL base at their released configurations, with random weights, nothing downloaded.

For bench/gpu.py (the real thing, built on a GPU in bfloat16) and for tests that need the real
widths (a few layers on the CPU, or everything on the meta device, which holds no memory). Keyword
overrides change a configuration: `flux1_dev_pipeline(transformer=dict(num_layers=1))`.

FLUX.1 [dev]: the 12B transformer (19 double and 38 single blocks, 3072 wide), T5-XXL's encoder
and CLIP-L, the 16-channel autoencoder, as black-forest-labs/FLUX.1-dev's configs give them.
SDXL base: the UNet, autoencoder and two text encoders of bot/engine/archs/sdxl/. The tokenizers
are the bot's CLIP tokenizer and the small T5 tokenizer of tests/helpers/tiny_dit.py, T5's token
table sized to it (1,000 rows instead of 32,128).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import torch

FLUX_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                        guidance_embeds=True, axes_dims_rope=(16, 56, 56))
T5_XXL = dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, feed_forward_proj="gated-gelu",
              relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
              dropout_rate=0.0, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
VAE16 = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
             up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
             latent_channels=16, norm_num_groups=32, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
             use_quant_conv=False, use_post_quant_conv=False, force_upcast=True)


@contextlib.contextmanager
def building(device: str | torch.device, dtype: torch.dtype) -> Iterator[None]:
    """New modules are made on `device` in `dtype`: a 12B transformer never exists in float32 or
    on the CPU on its way to the GPU."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(before)


def sdxl_config(component: str) -> dict:
    """A component's configuration from bot/engine/archs/sdxl/, as keyword arguments."""
    from bot.engine.single_file import ARCHS_DIR

    name = "scheduler_config.json" if component == "scheduler" else "config.json"
    config = json.loads((ARCHS_DIR / "sdxl" / component / name).read_text(encoding="utf-8"))
    return {key: value for key, value in config.items() if not key.startswith("_") and key != "architectures"}


def flux1_dev_pipeline(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, *,
                       transformer: dict | None = None, t5: dict | None = None, clip: dict | None = None,
                       vae: dict | None = None):
    from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

    from bot.engine.single_file import CLIP_TOKENIZER_DIR
    from tests.helpers.tiny_dit import flux1_scheduler, t5_tokenizer

    t5_tokens = t5_tokenizer()
    with building(device, dtype):
        denoiser = FluxTransformer2DModel(**{**FLUX_TRANSFORMER, **(transformer or {})})
        text_encoder_2 = T5EncoderModel(T5Config(**{**T5_XXL, "vocab_size": len(t5_tokens), **(t5 or {})}))
        # CLIP-L is SDXL's first text encoder too.
        text_encoder = CLIPTextModel(CLIPTextConfig(**{**sdxl_config("text_encoder"), **(clip or {})}))
        autoencoder = AutoencoderKL(**{**VAE16, **(vae or {})})
    return FluxPipeline(scheduler=flux1_scheduler("dev"), vae=autoencoder, text_encoder=text_encoder,
                        tokenizer=CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER_DIR)),
                        text_encoder_2=text_encoder_2, tokenizer_2=t5_tokens, transformer=denoiser)


def sdxl_pipeline(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, *,
                  unet: dict | None = None, clip: dict | None = None, vae: dict | None = None):
    """`clip` overrides both text encoders."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from bot.engine.single_file import arch_info, load_tokenizers

    with building(device, dtype):
        denoiser = UNet2DConditionModel.from_config({**sdxl_config("unet"), **(unet or {})})
        autoencoder = AutoencoderKL.from_config({**sdxl_config("vae"), **(vae or {})})
        text_encoder = CLIPTextModel(CLIPTextConfig(**{**sdxl_config("text_encoder"), **(clip or {})}))
        text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(**{**sdxl_config("text_encoder_2"), **(clip or {})}))
    return StableDiffusionXLPipeline(
        vae=autoencoder, text_encoder=text_encoder, text_encoder_2=text_encoder_2, unet=denoiser,
        scheduler=EulerDiscreteScheduler.from_config(sdxl_config("scheduler")),
        force_zeros_for_empty_prompt=True, **load_tokenizers(arch_info("sdxl")))
