"""training.to_single_file: diffusers pipeline -> single-file LDM checkpoint, and back through the bot's loader."""

import json
import os
import shutil

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from accelerate import init_empty_weights  # noqa: E402
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from bot.engine.single_file import ARCHS_DIR, detect_arch, load_single_file, read_checkpoint_header  # noqa: E402
from bot.models.families import read_safetensors_header  # noqa: E402
from tests.helpers.tiny import save_tiny_pipeline  # noqa: E402
from training.to_single_file import export_single_file, ldm_state_dict, main, unet_to_ldm  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved tiny pipeline, its single-file export, and a weightless config folder for reloading it."""
    root = tmp_path_factory.mktemp("export")
    pipe_dir = save_tiny_pipeline(root / "pipe")
    exported = export_single_file(pipe_dir, root / "out" / "tiny.safetensors")

    # What a shipped arch folder looks like, at the tiny size: configs only, no weights, no tokenizer.
    config_dir = root / "config"
    config_dir.mkdir()
    shutil.copy(pipe_dir / "model_index.json", config_dir)
    for name in ("unet", "vae", "text_encoder"):
        (config_dir / name).mkdir()
        shutil.copy(pipe_dir / name / "config.json", config_dir / name)
    (config_dir / "scheduler").mkdir()
    shutil.copy(pipe_dir / "scheduler" / "scheduler_config.json", config_dir / "scheduler")
    return pipe_dir, exported, config_dir


def _generate(pipe):
    return pipe(
        "a red cube on a table",
        num_inference_steps=3,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images


def test_round_trip_through_single_file(tiny):
    pipe_dir, exported, config_dir = tiny
    original = StableDiffusionPipeline.from_pretrained(pipe_dir, safety_checker=None, requires_safety_checker=False)
    reloaded = load_single_file(exported, "sd15", config_dir=config_dir)

    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(original, name).state_dict(), getattr(reloaded, name).state_dict()
        assert a.keys() == b.keys(), name
        for key in a:
            # Also catches weights the loader silently skipped (they would still be on "meta").
            assert b[key].device.type == "cpu", f"{name}.{key} not loaded"
            assert torch.equal(a[key], b[key]), f"{name}.{key}"

    first, second = _generate(original), _generate(reloaded)
    assert first.shape == (1, 64, 64, 3)
    assert np.array_equal(first, second)


def test_export_layout(tiny):
    _, exported, _ = tiny
    tensors = load_file(str(exported))
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model.")
    assert all(k.startswith(prefixes) for k in tensors)
    # The tiny UNet: 2 levels x 2 layers, attention only in the first down / last up level.
    assert tensors["model.diffusion_model.input_blocks.1.1.proj_in.weight"].shape[0] == 32
    assert "model.diffusion_model.input_blocks.4.1.proj_in.weight" not in tensors
    assert "model.diffusion_model.input_blocks.3.0.op.weight" in tensors
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in tensors  # up level without attention
    assert "model.diffusion_model.output_blocks.5.1.proj_out.weight" in tensors
    assert "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight" in tensors
    # VAE mid-block attention as 1x1 convolutions, like the original.
    for side in ("encoder", "decoder"):
        for layer in ("q", "k", "v", "proj_out"):
            assert tensors[f"first_stage_model.{side}.mid.attn_1.{layer}.weight"].shape == (32, 32, 1, 1)
    assert tensors["first_stage_model.decoder.up.3.block.0.conv1.weight"].shape[0] == 32
    assert tensors["cond_stage_model.transformer.text_model.embeddings.position_ids"].tolist() == [list(range(77))]
    assert all(v.dtype == torch.float32 for k, v in tensors.items() if not k.endswith("position_ids"))
    # Detection goes by structure, not by size: the tiny model is an SD 1.x one too.
    assert detect_arch(read_checkpoint_header(exported)) == "sd15"


def test_export_half_and_cli(tiny, tmp_path, capsys):
    pipe_dir, exported, _ = tiny
    full = load_file(str(exported))
    out = tmp_path / "half.safetensors"
    assert main([str(pipe_dir), str(out), "--half"]) == 0
    assert "wrote" in capsys.readouterr().out
    half = load_file(str(out))
    assert half.keys() == full.keys()
    for key, value in half.items():
        if key.endswith("position_ids"):
            assert value.dtype == torch.int64
        else:
            assert value.dtype == torch.float16
            assert torch.equal(value, full[key].half())
    # Written atomically: only the finished file is left behind, with ordinary permissions.
    assert [p.name for p in tmp_path.iterdir()] == ["half.safetensors"]
    reference = tmp_path / "reference"
    reference.write_bytes(b"")
    assert out.stat().st_mode & 0o777 == reference.stat().st_mode & 0o777
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "modelspec.architecture": "stable-diffusion-v1",
                                "modelspec.prediction_type": "epsilon"}


def test_export_refuses_what_is_no_stable_diffusion_family(tiny):
    pipe_dir, _, _ = tiny
    pipe = StableDiffusionPipeline.from_pretrained(pipe_dir, safety_checker=None, requires_safety_checker=False)
    with pytest.raises(NotImplementedError, match="no text encoder"):
        ldm_state_dict(pipe.unet, pipe.vae, None)


def _meta_models(arch):
    folder = ARCHS_DIR / arch
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder"))
    return unet, vae, text_encoder


def test_full_size_sd15_export_matches_original_layout():
    """Export a real-size SD 1.5 (meta device, no memory) and compare with the known original file."""
    unet, vae, text_encoder = _meta_models("sd15")
    tensors = ldm_state_dict(unet, vae, text_encoder)
    count = lambda prefix: sum(k.startswith(prefix) for k in tensors)  # noqa: E731
    # v1-5-pruned-emaonly.safetensors: 1131 tensors = 686 UNet + 248 VAE + 197 text encoder.
    assert (count("model.diffusion_model."), count("first_stage_model."), count("cond_stage_model.")) == (686, 248, 197)
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    assert shapes["model.diffusion_model.input_blocks.11.0.in_layers.2.weight"] == (1280, 1280, 3, 3)
    assert shapes["model.diffusion_model.input_blocks.9.0.op.weight"] == (1280, 1280, 3, 3)
    assert shapes["model.diffusion_model.output_blocks.2.1.conv.weight"] == (1280, 1280, 3, 3)
    assert shapes["model.diffusion_model.output_blocks.8.2.conv.weight"] == (640, 640, 3, 3)
    assert shapes["model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight"] == (320, 768)
    assert shapes["model.diffusion_model.middle_block.2.emb_layers.1.weight"] == (1280, 1280)
    assert shapes["model.diffusion_model.time_embed.0.weight"] == (1280, 320)
    assert shapes["model.diffusion_model.out.2.weight"] == (4, 320, 3, 3)
    assert shapes["first_stage_model.decoder.mid.attn_1.proj_out.weight"] == (512, 512, 1, 1)
    assert shapes["first_stage_model.decoder.up.0.block.0.nin_shortcut.weight"] == (128, 256, 1, 1)
    assert shapes["first_stage_model.encoder.down.2.block.0.nin_shortcut.weight"] == (512, 256, 1, 1)
    assert shapes["first_stage_model.quant_conv.weight"] == (8, 8, 1, 1)
    assert shapes["cond_stage_model.transformer.text_model.final_layer_norm.weight"] == (768,)
    assert detect_arch(tensors) == "sd15"

    # diffusers' own LDM -> diffusers conversion gives back exactly the model's parameters.
    for model, convert in ((unet, convert_ldm_unet_checkpoint), (vae, convert_ldm_vae_checkpoint)):
        back = convert(tensors, dict(model.config))
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in back.items()} == expected


def test_unet_mapping_generalises_to_sdxl_layout():
    """3 levels, 10-deep transformers, label_emb: the config-driven mapping still inverts diffusers'."""
    folder = ARCHS_DIR / "sdxl"
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet"))
    ldm = unet_to_ldm(unet.state_dict(), unet.config)
    assert len(ldm) == 1680  # tensors in the UNet of sd_xl_base_1.0.safetensors
    assert tuple(ldm["label_emb.0.0.weight"].shape) == (1280, 2816)
    assert "input_blocks.7.1.transformer_blocks.9.attn1.to_q.weight" in ldm
    assert "output_blocks.5.2.conv.weight" in ldm
    back = convert_ldm_unet_checkpoint({"model.diffusion_model." + k: v for k, v in ldm.items()}, dict(unet.config))
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in unet.state_dict().items()}


def _meta_pipeline_parts(arch):
    """UNet, VAE and text encoders of a shipped architecture at full size, on the meta device."""
    from transformers import CLIPTextModelWithProjection

    folder = ARCHS_DIR / arch
    index = json.loads((folder / "model_index.json").read_text())
    classes = {"CLIPTextModel": CLIPTextModel, "CLIPTextModelWithProjection": CLIPTextModelWithProjection}
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae"))
        encoders = [classes[index[name][1]](CLIPTextConfig.from_pretrained(folder, subfolder=name))
                    if index.get(name, [None])[0] else None for name in ("text_encoder", "text_encoder_2")]
    return unet, vae, *encoders


@pytest.mark.parametrize("arch, diffusers_type, expected_shapes", [
    ("sd21-v", "v2", {
        "cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight": (3072, 1024),
        "cond_stage_model.model.positional_embedding": (77, 1024),
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320),  # linear projections
    }),
    ("sdxl", "xl_base", {
        "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
        "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight": (3840, 1280),
        "conditioner.embedders.1.model.text_projection": (1280, 1280),
        "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
    }),
    ("sdxl-refiner", "xl_refiner", {
        "conditioner.embedders.0.model.transformer.resblocks.31.mlp.c_fc.weight": (5120, 1280),
        "conditioner.embedders.0.model.text_projection": (1280, 1280),
        "model.diffusion_model.label_emb.0.0.weight": (1536, 2560),
        "model.diffusion_model.input_blocks.0.0.weight": (384, 4, 3, 3),
    }),
    ("sdxl-inpaint", "xl_inpaint", {"model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)}),
])
def test_full_size_exports_are_what_diffusers_recognises_as_the_published_models(arch, diffusers_type,
                                                                                 expected_shapes):
    """Real-size SD 2.x, SDXL base, refiner and inpainting exports (meta device, no memory): diffusers'
    own detector, written for the published files, names the same family, and its converters read
    every text encoder tensor back into the model's own shapes."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint, infer_diffusers_model_type

    unet, vae, text_encoder, text_encoder_2 = _meta_pipeline_parts(arch)
    prediction = "v_prediction" if arch == "sd21-v" else "epsilon"
    tensors = ldm_state_dict(unet, vae, text_encoder, text_encoder_2, prediction)
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    for key, shape in expected_shapes.items():
        assert shapes[key] == shape, key
    assert infer_diffusers_model_type(tensors) == diffusers_type
    assert detect_arch(tensors, {"modelspec.prediction_type": "v" if prediction == "v_prediction" else "epsilon"}) == arch

    open_clip, prefix = {"sd21-v": (text_encoder, "cond_stage_model.model."),
                         "sdxl": (text_encoder_2, "conditioner.embedders.1.model."),
                         "sdxl-refiner": (text_encoder_2, "conditioner.embedders.0.model."),
                         "sdxl-inpaint": (text_encoder_2, "conditioner.embedders.1.model.")}[arch]
    back = convert_open_clip_checkpoint(open_clip, tensors, prefix=prefix)
    own = {k.removeprefix("text_model."): tuple(v.shape) for k, v in open_clip.state_dict().items()
           if not k.endswith("position_ids")}
    assert {k.removeprefix("text_model."): tuple(v.shape) for k, v in back.items()} == own
    back_unet = convert_ldm_unet_checkpoint(tensors, dict(unet.config))
    assert {k: tuple(v.shape) for k, v in back_unet.items()} == {k: tuple(v.shape) for k, v in unet.state_dict().items()}


@pytest.mark.parametrize("family, make, architecture", [
    ("sd2", "tiny_sd2_pipeline", "stable-diffusion-v2-768-v"),
    ("sdxl", "tiny_sdxl_pipeline", "stable-diffusion-xl-v1-base"),
])
def test_cli_exports_sd2_and_sdxl_folders_with_their_family_in_the_metadata(tmp_path, capsys, family, make,
                                                                             architecture):
    from tests.helpers import tiny as tiny_models

    folder = tiny_models.save_pipeline(getattr(tiny_models, make)(), tmp_path / family)
    out = tmp_path / f"{family}.safetensors"
    assert main([str(folder), str(out)]) == 0
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["modelspec.architecture"] == architecture
    assert detect_arch(*read_safetensors_header(out)) == {"sd2": "sd21-v", "sdxl": "sdxl"}[family]
