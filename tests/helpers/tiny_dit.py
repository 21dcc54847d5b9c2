"""Tiny diffusion-transformer pipelines with random weights: SD3, FLUX.1, FLUX.2 [klein], Z-Image, Qwen-Image.

The real diffusers pipeline classes with the real component classes, shrunk until two steps at 64x64 take
well under a second on a CPU. Each keeps what tells its family apart (text encoders, latent channels,
guidance kind, scheduler settings); everything else is small. Same seed, same weights.

The CLIP tokenizer is the one shipped with the bot; the T5 and Qwen tokenizers are trained here on a small
built-in English corpus, so nothing is ever downloaded.
"""

from __future__ import annotations

import functools
import json
import re
import string
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from transformers import T5Config, T5EncoderModel, T5TokenizerFast

from tests.helpers.tiny import clip_tokenizer, clip_tokenizer_with_pad, tiny_open_clip_text_encoder, tiny_text_encoder

# --- the training corpus ------------------------------------------------------------------------------
#
# Image prompts put together from word lists, plus a few plain sentences (one of them the system prompt
# Qwen-Image puts before every prompt, so its words become single tokens as in the real tokenizer).

COLORS = ("red orange yellow green blue purple pink brown black white grey golden silver teal crimson violet "
          "turquoise beige maroon navy olive amber ivory lavender").split()
SHAPES = ("circle square triangle star heart hexagon spiral cube sphere cone cylinder ring cross arrow diamond "
          "oval").split()
THINGS = ("cat dog horse bird fish owl fox wolf bear rabbit dragon robot astronaut knight wizard princess sailor "
          "farmer child woman man girl boy castle tower bridge house cottage lighthouse boat ship train car bicycle "
          "tree flower rose sunflower mushroom apple banana cake cup teapot lamp book clock guitar piano umbrella hat "
          "chair table window door mountain river lake ocean waterfall volcano island desert forest garden meadow city "
          "street village cloud moon sun planet galaxy elephant giraffe lion tiger zebra monkey penguin dolphin whale "
          "turtle frog snake butterfly bee spider deer squirrel mouse duck swan parrot eagle chicken cow sheep goat "
          "pig unicorn phoenix mermaid pirate ninja samurai soldier king queen chef doctor teacher musician dancer "
          "painter scientist explorer detective vampire ghost skeleton alien spaceship rocket airplane balloon "
          "helicopter submarine tractor truck bus motorcycle skateboard kite lantern candle crystal sword shield crown "
          "necklace mirror vase basket bottle pizza burger sandwich donut cookie pie coffee tea bread cheese "
          "strawberry cherry lemon watermelon pumpkin carrot tomato leaf cactus palm pine oak bamboo rainbow "
          "snowman fountain statue temple church pyramid windmill barn tent cabin palace stadium harbor canyon "
          "glacier cave valley hill beach jungle swamp field farm park road path staircase").split()
PLACES = ("on a beach|in a forest|under the stars|at sunset|at sunrise|in the rain|in the snow|on the moon|"
          "in a kitchen|on a table|in a field of flowers|by the sea|in a busy market|on a mountain top|"
          "in an old library|in a quiet room|underwater|in space|on a rooftop|in the desert|inside a cave|"
          "near a waterfall|behind a window|across the river|through the fog|during a storm|at midnight|"
          "in a neon city|on a frozen lake|among tall grass").split("|")
STYLES = ("photo|oil painting|watercolor painting|pencil sketch|digital art|3d render|pixel art|anime drawing|"
          "studio photograph|cinematic still|charcoal drawing|illustration|poster|postcard|mosaic|stained glass|"
          "clay sculpture|paper cutout|comic book panel|vintage photograph|isometric view|macro shot|"
          "long exposure|double exposure|line art|ink wash|pastel drawing|concept art|low poly model|"
          "embroidery").split("|")
ADJECTIVES = ("small large tiny giant old young happy sleepy shiny fluffy wooden glass metal stone paper bright dark "
              "colorful ancient futuristic cozy lonely smiling flying floating glowing broken striped spotted "
              "beautiful detailed simple soft sharp warm cold curious angry brave calm elegant fancy gentle grumpy "
              "hungry lazy magical mysterious noisy playful proud quiet rusty sparkling strange sweet tall tired "
              "ugly wild wise wet dry heavy light empty full round flat narrow wide huge little friendly scary "
              "cute silly fierce shy busy").split()
VERBS = ("sitting standing running jumping flying swimming sleeping reading eating drinking dancing singing "
         "painting playing walking climbing looking smiling waving holding riding hiding").split()
QWEN_IMAGE_SYSTEM = ("Describe the image by detailing the color, shape, size, texture, quantity, text, spatial "
                     "relationships of the objects and background:")
SENTENCES = [QWEN_IMAGE_SYSTEM] + """\
high quality, highly detailed, sharp focus, soft lighting, dramatic shadows, wide angle, close up, bokeh, masterpiece
the quick brown fox jumps over the lazy dog
a man and a woman are walking together along the river while their children play with a ball
two cats, three dogs and four birds sit in the garden next to each other
there is some text written on the sign: hello world, welcome home, open, closed
blurry, low resolution, worst quality, jpeg artifacts, watermark, deformed hands, extra fingers""".splitlines()


def corpus() -> list[str]:
    """About 400 lines, 490 distinct words; the same every time."""
    lines = list(SENTENCES)
    for i in range(2 * len(THINGS)):
        lines.append(f"a {ADJECTIVES[i % len(ADJECTIVES)]} {COLORS[i % len(COLORS)]} {THINGS[i % len(THINGS)]} "
                     f"{VERBS[i % len(VERBS)]} {PLACES[i % len(PLACES)]}, {STYLES[i % len(STYLES)]} "
                     f"of a {SHAPES[i % len(SHAPES)]}")
    return lines


# --- T5 ------------------------------------------------------------------------------------------------

T5_PIECES = 897  # + <pad>, </s>, <unk> and 100 sentinels: a vocabulary of 1,000


@functools.cache
def _t5_pieces() -> tuple[tuple[str, float], ...]:
    """Unigram pieces and scores trained on the corpus words, most likely first.

    The `tokenizers` Unigram trainer seeds its pieces from substrings repeated across *distinct*
    words, so a word seen in one form only would never become a piece: each word goes in twice in
    one string ("▁red▁red"), lower-case and capitalised. Pieces spanning two words are then dropped
    (the tokenizer splits on whitespace first, so they could never match). The characters the trainer
    adds at the end get tiny score steps in hash-set order, and its scores wobble in the last digits
    from run to run: one shared score for those characters and rounding make every run the same.
    """
    from tokenizers import Tokenizer, models, trainers

    words = re.findall(r"[A-Za-z0-9]+", " ".join(corpus()))
    doubled = [f"▁{w}▁{w}" for word in words for w in (word, word[:1].upper() + word[1:])]
    trainer = trainers.UnigramTrainer(
        vocab_size=T5_PIECES + 3, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
        initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation), show_progress=False)
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.train_from_iterator(doubled, trainer)
    pieces = [(piece, score) for piece, score in json.loads(tokenizer.to_str())["model"]["vocab"][3:]
              if "▁" not in piece[1:]]
    lowest = min(score for _, score in pieces)
    pieces = [(p, round(lowest if len(p) == 1 and s < lowest + 0.01 else s, 6)) for p, s in pieces]
    return tuple(sorted(pieces, key=lambda item: (-item[1], item[0])))


def t5_tokenizer() -> T5TokenizerFast:
    """A T5 tokenizer laid out like the real one: <pad> 0, </s> 1, <unk> 2, the pieces, then the 100
    sentinels in reverse (<extra_id_0> last). A new object each call (pipelines may change theirs)."""
    sentinels = [(f"<extra_id_{i}>", 0.0) for i in reversed(range(100))]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *_t5_pieces(), *sentinels]
    return T5TokenizerFast(vocab=vocab, extra_ids=100, model_max_length=512)


def tiny_t5_encoder(d_model: int = 32) -> T5EncoderModel:
    """A T5 v1.1-shaped encoder (gated GELU, as FLUX and SD3 use) over `t5_tokenizer`'s vocabulary."""
    config = T5Config(vocab_size=len(t5_tokenizer()), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2,
                      num_heads=4, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                      dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(config)


# --- Qwen ----------------------------------------------------------------------------------------------

QWEN_BPE_SIZE = 1000
# After the byte-level BPE vocabulary, in the order (and so with the relative ids) of Qwen2.5 and Qwen3.
# The <|...|> ones are special; the tool and thinking tags are plain added tokens, as in Qwen3.
QWEN_ADDED = (
    "<|endoftext|> <|im_start|> <|im_end|> <|object_ref_start|> <|object_ref_end|> <|box_start|> <|box_end|> "
    "<|quad_start|> <|quad_end|> <|vision_start|> <|vision_end|> <|vision_pad|> <|image_pad|> <|video_pad|> "
    "<tool_call> </tool_call> <|fim_prefix|> <|fim_middle|> <|fim_suffix|> <|fim_pad|> <|repo_name|> "
    "<|file_sep|> <tool_response> </tool_response> <think> </think>").split()
QWEN_PRETOKENIZE = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                    r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
# Qwen3's chat template without the tool calls: `enable_thinking=False` closes an empty thinking block.
QWEN3_CHAT_TEMPLATE = """\
{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- elif message.role == 'assistant' %}
        {%- set content = message.content %}
        {%- if '</think>' in content %}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""


def chat_texts() -> list[str]:
    """The corpus framed as the pipelines frame prompts (role names, Qwen-Image's system prompt), so
    those words are single tokens, as in the real vocabulary: Qwen-Image drops the first 34 tokens of
    its template, which holds only if they are."""
    return [f"system\n{QWEN_IMAGE_SYSTEM}\nuser\n{line}\nassistant\n" for line in corpus()]


@functools.cache
def _qwen_bpe() -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    """Byte-level BPE vocabulary and merges trained on the corpus with Qwen2's pre-tokenizer."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=QWEN_BPE_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(chat_texts(), trainer)
    model = json.loads(tokenizer.to_str())["model"]
    return tuple(model["vocab"].items()), tuple(tuple(merge) for merge in model["merges"])


def qwen_tokenizer():
    """A Qwen2 tokenizer (as Qwen2.5, Qwen2.5-VL and Qwen3 use): byte-level BPE, <|endoftext|> pads,
    <|im_end|> ends, the vision tokens Qwen2.5-VL's config points at, Qwen3's chat template.
    A new object each call."""
    from tokenizers import AddedToken
    from transformers import Qwen2TokenizerFast

    pieces, merges = _qwen_bpe()
    vocab = dict(pieces)
    vocab.update({token: len(pieces) + i for i, token in enumerate(QWEN_ADDED)})
    tokenizer = Qwen2TokenizerFast(
        vocab=vocab, merges=list(merges), unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        model_max_length=131072, chat_template=QWEN3_CHAT_TEMPLATE)
    tokenizer.add_tokens([AddedToken(token, special=token.startswith("<|"), normalized=False)
                          for token in QWEN_ADDED])
    return tokenizer


def qwen_ids(tokenizer) -> dict[str, int]:
    """The ids a Qwen text encoder's config names."""
    ids = tokenizer.convert_tokens_to_ids
    return dict(bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"))


def tiny_qwen3(tokenizer, hidden_size: int = 32, layers: int = 2, causal_lm: bool = False):
    """A Qwen3-shaped text encoder: `Qwen3Model` (Z-Image) or `Qwen3ForCausalLM` (FLUX.2 [klein])."""
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1, head_dim=hidden_size // 2,
        max_position_embeddings=1024, rope_theta=1_000_000.0, tie_word_embeddings=True, **qwen_ids(tokenizer))
    return Qwen3ForCausalLM(config) if causal_lm else Qwen3Model(config)


def tiny_qwen25_vl(tokenizer, hidden_size: int = 32):
    """A Qwen2.5-VL-shaped encoder (Qwen-Image's): multimodal rotary sections summing to half the head
    width, a one-block vision tower whose output width is the text width."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1_000_000.0},
                **qwen_ids(tokenizer))
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=hidden_size,
                  fullatt_block_indexes=[0])
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"))
    return Qwen2_5_VLForConditionalGeneration(config).eval()


# --- the pipelines -------------------------------------------------------------------------------------


def tiny_vae16(scaling_factor: float, shift_factor: float) -> AutoencoderKL:
    """The 16-channel, 8x-down autoencoder of SD3, FLUX.1 and Z-Image, without the quant convs."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(32, 32, 32, 32), layers_per_block=1,
        latent_channels=16, norm_num_groups=32, sample_size=64, scaling_factor=scaling_factor,
        shift_factor=shift_factor, use_quant_conv=False, use_post_quant_conv=False)


def tiny_sd3_pipeline(seed: int = 0):
    """SD3 (medium)-shaped: CLIP-L and a wider CLIP-G with projections, T5 (as wide as both CLIPs
    together, since SD3 pads the CLIP embeddings to T5's width), 2x2 patches over 16 channels."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=96, caption_projection_dim=32, pooled_projection_dim=32 + 64,
        pos_embed_max_size=24)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae16(scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=tiny_text_encoder(32, with_projection=True), tokenizer=clip_tokenizer(),
        text_encoder_2=tiny_open_clip_text_encoder(64, with_projection=True), tokenizer_2=clip_tokenizer_with_pad("!"),
        text_encoder_3=tiny_t5_encoder(96), tokenizer_3=t5_tokenizer())


def flux1_scheduler(variant: str) -> FlowMatchEulerDiscreteScheduler:
    """FLUX.1 [dev] shifts by image size; [schnell] does not shift at all."""
    if variant == "schnell":
        return FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                           base_image_seq_len=256, max_image_seq_len=4096)


def tiny_flux1_pipeline(seed: int = 0, variant: str = "dev"):
    """FLUX.1-shaped: CLIP-L (pooled) and T5, packed 2x2 latents of the 16-channel autoencoder, guidance
    distilled into an embedding for "dev", none for "schnell"."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    if variant not in ("dev", "schnell"):
        raise ValueError(f"FLUX.1 variant is 'dev' or 'schnell', not {variant!r}")
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        guidance_embeds=variant == "dev", axes_dims_rope=(4, 6, 6))
    return FluxPipeline(
        scheduler=flux1_scheduler(variant), vae=tiny_vae16(scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=tiny_text_encoder(32), tokenizer=clip_tokenizer(), text_encoder_2=tiny_t5_encoder(32),
        tokenizer_2=t5_tokenizer(), transformer=transformer)


# FLUX.2 [klein] feeds the transformer the hidden states after these text-encoder layers (9, 18, 27 by
# default), side by side: the tiny Qwen3 needs 27 layers for the pipeline's default to work.
KLEIN_TEXT_LAYERS = 27


def tiny_flux2_klein_pipeline(seed: int = 0, distilled: bool = True):
    """FLUX.2 [klein] 4B-shaped: Qwen3 causal LM (three of its layers' hidden states side by side),
    32-channel FLUX.2 autoencoder with 2x2 patches and batch-norm statistics, no guidance embedding;
    `distilled` as the released 4B (no classifier-free guidance), else like the base model."""
    from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline, Flux2Transformer2DModel

    torch.manual_seed(seed)
    tokenizer = qwen_tokenizer()
    hidden = 16
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=128, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=3 * hidden, timestep_guidance_channels=256,
        axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False)
    vae = AutoencoderKLFlux2(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(32, 32, 32, 32), layers_per_block=1,
        latent_channels=32, norm_num_groups=32, sample_size=64)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    text_encoder = tiny_qwen3(tokenizer, hidden_size=hidden, layers=KLEIN_TEXT_LAYERS, causal_lm=True)
    return Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              transformer=transformer, is_distilled=distilled)


def tiny_zimage_pipeline(seed: int = 0):
    """Z-Image (Turbo)-shaped: Qwen3 (its second-to-last hidden state, prompt tokens only), the FLUX.1
    autoencoder's 16 channels in 2x2 patches, caption and image refiner layers, fixed shift 3."""
    from diffusers import ZImagePipeline, ZImageTransformer2DModel

    torch.manual_seed(seed)
    tokenizer = qwen_tokenizer()
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=2, n_refiner_layers=1,
        n_heads=2, n_kv_heads=2, qk_norm=True, cap_feat_dim=32, axes_dims=[8, 4, 4], axes_lens=[1536, 512, 512])
    with torch.no_grad():  # learned in the real model; some diffusers versions leave them uninitialised
        transformer.x_pad_token.normal_(std=0.02)
        transformer.cap_pad_token.normal_(std=0.02)
    return ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False),
        vae=tiny_vae16(scaling_factor=0.3611, shift_factor=0.1159), text_encoder=tiny_qwen3(tokenizer, 32),
        tokenizer=tokenizer, transformer=transformer)


def tiny_qwenimage_pipeline(seed: int = 0):
    """Qwen-Image-shaped: Qwen2.5-VL text encoder, the causal video autoencoder (one frame, 16 channels,
    per-channel latent statistics), 2x2 patches, exponential dynamic shift with a terminal value."""
    from diffusers import AutoencoderKLQwenImage, QwenImagePipeline, QwenImageTransformer2DModel

    torch.manual_seed(seed)
    tokenizer = qwen_tokenizer()
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, guidance_embeds=False, axes_dims_rope=(4, 6, 6))
    vae = AutoencoderKLQwenImage(base_dim=16, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True, True])
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, base_image_seq_len=256,
        max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential")
    return QwenImagePipeline(scheduler=scheduler, vae=vae, text_encoder=tiny_qwen25_vl(tokenizer),
                             tokenizer=tokenizer, transformer=transformer)


BUILDERS = {
    "sd3": tiny_sd3_pipeline,
    "flux1-dev": functools.partial(tiny_flux1_pipeline, variant="dev"),
    "flux1-schnell": functools.partial(tiny_flux1_pipeline, variant="schnell"),
    "flux2-klein": tiny_flux2_klein_pipeline,
    "zimage": tiny_zimage_pipeline,
    "qwenimage": tiny_qwenimage_pipeline,
}


def tiny_dit_pipeline(family: str, seed: int = 0):
    """The tiny pipeline of a family named as in BUILDERS."""
    if family not in BUILDERS:
        raise ValueError(f"no tiny pipeline for {family!r}; there are: {', '.join(BUILDERS)}")
    return BUILDERS[family](seed=seed)


def save_tiny_dit(family: str, folder: Path, seed: int = 0) -> Path:
    """Write a family's tiny pipeline folder (diffusers format, safetensors) and return it."""
    tiny_dit_pipeline(family, seed).save_pretrained(folder, safe_serialization=True)
    return folder
