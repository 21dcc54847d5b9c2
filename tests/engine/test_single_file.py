"""Shipped architecture configs and offline single-file loading (bot.engine.single_file)."""

import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

from accelerate import init_empty_weights  # noqa: E402
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: E402

from bot.engine.single_file import (  # noqa: E402
    ARCH_NAMES,
    ARCHS_DIR,
    CLIP_TOKENIZER_DIR,
    detect_arch,
    load_single_file,
    read_checkpoint_header,
)

# Parameter counts of the published models (diffusers / transformers classes), well known from
# their model cards and from counting the released weights.
SD15_UNET = 859_520_964
SD2_UNET = 865_910_724
SDXL_UNET = 2_567_463_684
SD_VAE = 83_653_863
CLIP_L_TEXT = 123_060_480
OPENCLIP_H_TEXT = 340_387_840
OPENCLIP_BIGG_TEXT_WITH_PROJECTION = 694_659_840

# An inpainting UNet differs only in its first convolution: 5 more input channels (mask and masked
# image latents) x 320 filters x 3x3. The SDXL refiner's UNet: 2.26 billion, the "2.3B" of its card.
INPAINT_EXTRA = 5 * 320 * 3 * 3
SDXL_REFINER_UNET = 2_259_526_660

EXPECTED_PARAMS = {
    "sd15": {"unet": SD15_UNET, "vae": SD_VAE, "text_encoder": CLIP_L_TEXT},
    "sd15-inpaint": {"unet": SD15_UNET + INPAINT_EXTRA, "vae": SD_VAE, "text_encoder": CLIP_L_TEXT},
    "sd21-inpaint": {"unet": SD2_UNET + INPAINT_EXTRA, "vae": SD_VAE, "text_encoder": OPENCLIP_H_TEXT},
    "sdxl-inpaint": {
        "unet": SDXL_UNET + INPAINT_EXTRA,
        "vae": SD_VAE,
        "text_encoder": CLIP_L_TEXT,
        "text_encoder_2": OPENCLIP_BIGG_TEXT_WITH_PROJECTION,
    },
    "sdxl-refiner": {"unet": SDXL_REFINER_UNET, "vae": SD_VAE, "text_encoder_2": OPENCLIP_BIGG_TEXT_WITH_PROJECTION},
    "sd21": {"unet": SD2_UNET, "vae": SD_VAE, "text_encoder": OPENCLIP_H_TEXT},
    "sd21-v": {"unet": SD2_UNET, "vae": SD_VAE, "text_encoder": OPENCLIP_H_TEXT},
    "sdxl": {
        "unet": SDXL_UNET,
        "vae": SD_VAE,
        "text_encoder": CLIP_L_TEXT,
        "text_encoder_2": OPENCLIP_BIGG_TEXT_WITH_PROJECTION,
    },
}

TEXT_CLASSES = {"CLIPTextModel": CLIPTextModel, "CLIPTextModelWithProjection": CLIPTextModelWithProjection}


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- shipped configs


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_shipped_arch_parameter_counts(arch):
    folder = ARCHS_DIR / arch
    index = _json(folder / "model_index.json")
    counts = {}
    with init_empty_weights():  # meta device: shapes only, no memory
        counts["unet"] = _count(UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet")))
        counts["vae"] = _count(AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae")))
        for name in ("text_encoder", "text_encoder_2"):
            if index.get(name, [None])[0] is None:
                continue
            cls = TEXT_CLASSES[index[name][1]]
            config = CLIPTextConfig.from_pretrained(folder, subfolder=name)
            assert config.architectures == [cls.__name__]
            counts[name] = _count(cls(config))
    assert counts == EXPECTED_PARAMS[arch]


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_shipped_arch_folder_is_consistent(arch):
    folder = ARCHS_DIR / arch
    info = _json(folder / "imagebot_arch.json")
    index = _json(folder / "model_index.json")
    scheduler = _json(folder / "scheduler" / "scheduler_config.json")
    unet = _json(folder / "unet" / "config.json")
    vae = _json(folder / "vae" / "config.json")

    assert set(info) >= {"pipeline", "native_size", "prediction_type", "tokenizers"}
    assert info["pipeline"] == index["_class_name"]
    assert info["prediction_type"] == scheduler["prediction_type"]
    assert index["scheduler"] == ["diffusers", scheduler["_class_name"]]
    # Native size = latent sample size x the VAE's downscaling (2 per level after the first).
    scale = 2 ** (len(vae["block_out_channels"]) - 1)
    assert info["native_size"] == [unet["sample_size"] * scale] * 2

    # One tokenizer entry per tokenizer slot of the pipeline, each a valid pad token.
    tokenizer_slots = {k for k, v in index.items() if k.startswith("tokenizer") and v[0] is not None}
    assert set(info["tokenizers"]) == tokenizer_slots
    vocab = _json(CLIP_TOKENIZER_DIR / "vocab.json")
    for options in info["tokenizers"].values():
        assert options["pad_token"] in vocab

    # Configs only: no weights, no tokenizer files (the tokenizer is shared).
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert all(f.endswith(".json") for f in files), files
    assert not any(f.startswith("tokenizer") for f in files), files
    # Every model component listed in model_index.json has its config.
    for name, value in index.items():
        if not isinstance(value, list) or value[0] is None or name.startswith("tokenizer"):
            continue
        expected = "scheduler/scheduler_config.json" if name == "scheduler" else f"{name}/config.json"
        assert expected in files
    # No safety checker: we ship no weights for it.
    if "safety_checker" in index:
        assert index["safety_checker"] == [None, None]
        assert index["feature_extractor"] == [None, None]


def test_arch_specific_settings():
    sd15 = _json(ARCHS_DIR / "sd15" / "imagebot_arch.json")
    assert sd15["tokenizers"] == {"tokenizer": {"pad_token": "<|endoftext|>"}}
    for arch, size, prediction in (("sd21", 512, "epsilon"), ("sd21-v", 768, "v_prediction")):
        info = _json(ARCHS_DIR / arch / "imagebot_arch.json")
        assert info["tokenizers"] == {"tokenizer": {"pad_token": "!"}}
        assert info["native_size"] == [size, size]
        assert info["prediction_type"] == prediction
    sdxl = _json(ARCHS_DIR / "sdxl" / "imagebot_arch.json")
    assert sdxl["tokenizers"] == {"tokenizer": {"pad_token": "<|endoftext|>"}, "tokenizer_2": {"pad_token": "!"}}
    assert sdxl["native_size"] == [1024, 1024]
    assert _json(ARCHS_DIR / "sdxl" / "model_index.json")["force_zeros_for_empty_prompt"] is True
    sdxl_vae = _json(ARCHS_DIR / "sdxl" / "vae" / "config.json")
    assert sdxl_vae["scaling_factor"] == 0.13025 and sdxl_vae["force_upcast"] is True
    for arch in ("sd15", "sd21", "sd21-v"):
        assert _json(ARCHS_DIR / arch / "vae" / "config.json")["scaling_factor"] == 0.18215
        scheduler = _json(ARCHS_DIR / arch / "scheduler" / "scheduler_config.json")
        assert (scheduler["beta_start"], scheduler["beta_end"], scheduler["beta_schedule"]) == (0.00085, 0.012, "scaled_linear")
        assert scheduler["steps_offset"] == 1


def test_shared_tokenizer_pad_tokens():
    sd1 = CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER_DIR))
    sd2 = CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER_DIR), pad_token="!")
    assert sd1("a cat", padding="max_length", max_length=6).input_ids == [49406, 320, 2368, 49407, 49407, 49407]
    assert sd2("a cat", padding="max_length", max_length=6).input_ids == [49406, 320, 2368, 49407, 0, 0]


# --------------------------------------------------------------------------- detection


def _meta(*shape):
    return torch.empty(*shape, device="meta")


# The keys diffusers' infer_diffusers_model_type looks at, with the real shapes.
V1_SKIP = "model.diffusion_model.output_blocks.11.0.skip_connection.weight"
CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
ATTN2_K = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
XL_OPENCLIP = "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"
XL_REFINER = "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias"


def fake_sd15():
    return {
        CONV_IN: _meta(320, 4, 3, 3),
        ATTN2_K: _meta(320, 768),
        V1_SKIP: _meta(320, 640, 1, 1),
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": _meta(77, 768),
    }


def fake_sd2():
    return {
        CONV_IN: _meta(320, 4, 3, 3),
        ATTN2_K: _meta(320, 1024),
        V1_SKIP: _meta(320, 640, 1, 1),
        "cond_stage_model.model.token_embedding.weight": _meta(49408, 1024),
    }


def fake_sdxl():
    return {
        CONV_IN: _meta(320, 4, 3, 3),
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": _meta(640, 2048),
        "model.diffusion_model.output_blocks.8.0.skip_connection.weight": _meta(320, 960, 1, 1),
        XL_OPENCLIP: _meta(1280),
        "conditioner.embedders.1.model.positional_embedding": _meta(77, 1280),
    }


@pytest.mark.parametrize(
    "make, expected", [(fake_sd15, "sd15"), (fake_sd2, "sd21-v"), (fake_sdxl, "sdxl")], ids=["sd15", "sd2", "sdxl"]
)
def test_detect_arch(make, expected):
    checkpoint = make()
    assert detect_arch(checkpoint) == expected
    # Bare shapes (what read_checkpoint_header gives) work the same as tensors.
    assert detect_arch({k: tuple(v.shape) for k, v in checkpoint.items()}) == expected


def test_detect_arch_inpainting_refiner_and_others():
    inpainting = fake_sd15()
    inpainting[CONV_IN] = _meta(320, 9, 3, 3)
    assert detect_arch(inpainting) == "sd15-inpaint"
    sd2_inpainting = fake_sd2()
    sd2_inpainting[CONV_IN] = _meta(320, 9, 3, 3)
    assert detect_arch(sd2_inpainting) == "sd21-inpaint"  # the SD 2 inpainting release is epsilon
    xl_inpainting = fake_sdxl()
    xl_inpainting[CONV_IN] = _meta(320, 9, 3, 3)
    assert detect_arch(xl_inpainting) == "sdxl-inpaint"

    refiner = {CONV_IN: _meta(384, 4, 3, 3), XL_REFINER: _meta(1280)}
    assert detect_arch(refiner) == "sdxl-refiner"

    odd = fake_sd15()
    odd[CONV_IN] = _meta(320, 8, 3, 3)
    with pytest.raises(ValueError, match="8 input channels"):
        detect_arch(odd)
    with pytest.raises(ValueError, match="supported architectures: sd15, sd21, sd21-v, sdxl, sdxl-refiner"):
        detect_arch({"some.random.weight": (3, 3)})
    with pytest.raises(ValueError, match="supported architectures"):
        detect_arch({})
    with pytest.raises(ValueError, match="no text encoder"):
        detect_arch({CONV_IN: (320, 4, 3, 3)})


def test_sd2_base_or_v_is_what_the_file_says():
    """Same tensors; the metadata or ComfyUI's v_pred marker decides, v-prediction when silent."""
    assert detect_arch(fake_sd2()) == "sd21-v"
    assert detect_arch(fake_sd2(), {"modelspec.prediction_type": "epsilon"}) == "sd21"
    assert detect_arch(fake_sd2(), {"modelspec.prediction_type": "v"}) == "sd21-v"
    assert detect_arch({**fake_sd2(), "v_pred": ()}, {"modelspec.prediction_type": "epsilon"}) == "sd21-v"


def test_read_checkpoint_header_reads_shapes_only(tmp_path):
    from safetensors.torch import save_file

    tensors = {k: torch.zeros(v.shape, dtype=torch.float16) for k, v in fake_sd15().items()}
    path = tmp_path / "fake.safetensors"
    save_file(tensors, str(path))
    header = read_checkpoint_header(path)
    assert header == {k: tuple(v.shape) for k, v in tensors.items()}
    assert detect_arch(header) == "sd15"


# --------------------------------------------------------------------------- loading


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny SD 1.x pipeline exported as a single file, plus a weightless config folder for it."""
    from tests.helpers.tiny import tiny_pipeline
    from training.to_single_file import ldm_state_dict

    root = tmp_path_factory.mktemp("tiny_single_file")
    pipe = tiny_pipeline()
    pipe.save_pretrained(root / "pipe", safe_serialization=True)
    config_dir = root / "config"
    for name in ("unet", "vae", "text_encoder"):
        (config_dir / name).mkdir(parents=True)
        (config_dir / name / "config.json").write_bytes((root / "pipe" / name / "config.json").read_bytes())
    (config_dir / "scheduler").mkdir()
    (config_dir / "scheduler" / "scheduler_config.json").write_bytes(
        (root / "pipe" / "scheduler" / "scheduler_config.json").read_bytes()
    )
    (config_dir / "model_index.json").write_bytes((root / "pipe" / "model_index.json").read_bytes())
    tensors = {k: v.detach().clone().contiguous() for k, v in ldm_state_dict(pipe.unet, pipe.vae, pipe.text_encoder).items()}
    return pipe, tensors, config_dir, root


def _assert_same_weights(a, b):
    for name in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys(), name
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"{name}.{key}"


def test_pickle_checkpoints_are_refused(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"not even looked at")
    with pytest.raises(ValueError, match="allow_pickle"):
        load_single_file(path, "sd15")


def test_pickle_checkpoint_loads_when_allowed(tiny_checkpoint, tmp_path):
    pipe, tensors, config_dir, _ = tiny_checkpoint
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": tensors}, path)  # the classic LDM .ckpt wrapping
    loaded = load_single_file(path, "sd15", config_dir=config_dir, allow_pickle=True)
    _assert_same_weights(pipe, loaded)


def test_load_single_file_with_config_dir_and_dtype(tiny_checkpoint, tmp_path):
    from safetensors.torch import save_file

    pipe, tensors, config_dir, _ = tiny_checkpoint
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    loaded = load_single_file(path, "sd15", config_dir=config_dir, torch_dtype=torch.float16)
    assert type(loaded).__name__ == "StableDiffusionPipeline"
    assert loaded.safety_checker is None and loaded.feature_extractor is None
    assert loaded.unet.dtype == loaded.vae.dtype == loaded.text_encoder.dtype == torch.float16
    assert loaded.tokenizer.pad_token == "<|endoftext|>"
    assert type(loaded.scheduler).__name__ == type(pipe.scheduler).__name__
    assert torch.equal(loaded.unet.conv_in.weight, pipe.unet.conv_in.weight.half())


def test_load_single_file_errors(tmp_path, tiny_checkpoint):
    with pytest.raises(FileNotFoundError):
        load_single_file(tmp_path / "missing.safetensors", "sd15")
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="unknown architecture"):
        load_single_file(path, "sd3")
    # A config folder that does not exist must not be mistaken for a hub repo id.
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_single_file(path, "sd15", config_dir=tmp_path / "nowhere")


def test_sdxl_loader_arguments(tmp_path, monkeypatch):
    """SDXL goes through StableDiffusionXLPipeline with two tokenizers and no safety-checker slot.

    No SDXL-sized weights exist offline, so this checks what load_single_file hands diffusers.
    """
    import diffusers

    calls = []

    def fake_from_single_file(path, **kwargs):
        calls.append((path, kwargs))
        return "pipeline"

    monkeypatch.setattr(diffusers.StableDiffusionXLPipeline, "from_single_file", fake_from_single_file)
    path = tmp_path / "xl.safetensors"
    path.write_bytes(b"")
    assert load_single_file(path, "sdxl", torch_dtype=torch.float16) == "pipeline"
    [(called_path, kwargs)] = calls
    assert called_path == str(path)
    assert kwargs["config"] == str(ARCHS_DIR / "sdxl")
    assert kwargs["local_files_only"] is True and kwargs["torch_dtype"] == torch.float16
    assert "safety_checker" not in kwargs
    assert kwargs["tokenizer"].pad_token == "<|endoftext|>" and kwargs["tokenizer_2"].pad_token == "!"
    assert kwargs["tokenizer"].model_max_length == kwargs["tokenizer_2"].model_max_length == 77


@pytest.mark.parametrize("arch, time_ids", [("sdxl", 6), ("sdxl-inpaint", 6), ("sdxl-refiner", 5)])
def test_sdxl_micro_conditioning_fits_the_shipped_unet(arch, time_ids):
    """The base conditions on (original size, crop, target size), the refiner on (original size,
    crop, aesthetic score): the pipeline checks its time ids against the UNet's embedding width."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    folder = ARCHS_DIR / arch
    index = _json(folder / "model_index.json")
    unet = _json(folder / "unet" / "config.json")
    encoder = _json(folder / "text_encoder_2" / "config.json")
    assert unet["projection_class_embeddings_input_dim"] == unet["addition_time_embed_dim"] * time_ids + encoder["projection_dim"]
    assert index.get("requires_aesthetics_score", False) == (time_ids == 5)
    if arch == "sdxl-refiner":
        assert index["_class_name"] == StableDiffusionXLImg2ImgPipeline.__name__
        assert index["text_encoder"] == index["tokenizer"] == [None, None]
        assert unet["cross_attention_dim"] == encoder["hidden_size"]  # the bigG encoder alone
