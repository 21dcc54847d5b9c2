"""Which family a variant is, from what the model store can read without torch: a pipeline
folder's model_index.json and configs, a hub repository's name, or variant.toml's `family`."""

import json
from pathlib import Path

import pytest

import bot.engine.families as families
from bot.models.spec import VariantError, read_variant


def pipeline_folder(root: Path, class_name: str, configs: dict | None = None, **index) -> Path:
    root.mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": class_name, **index}), encoding="utf-8")
    for component, config in (configs or {}).items():
        (root / component).mkdir()
        (root / component / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (root / "variant.toml").write_text("", encoding="utf-8")
    return root


@pytest.mark.parametrize("class_name, configs, index, family", [
    ("StableDiffusionPipeline", {"text_encoder": {"hidden_act": "quick_gelu"}}, {}, "sd1"),
    ("StableDiffusionPipeline", {"text_encoder": {"hidden_act": "gelu"}}, {}, "sd2"),
    ("StableDiffusionXLPipeline", {}, {}, "sdxl"),
    ("StableDiffusion3Pipeline", {}, {}, "sd3"),
    ("FluxPipeline", {"transformer": {"guidance_embeds": True}}, {}, "flux1-dev"),
    ("FluxPipeline", {"transformer": {"guidance_embeds": False}}, {}, "flux1-schnell"),
    ("Flux2KleinPipeline", {}, {"is_distilled": True}, "flux2-klein"),
    ("Flux2KleinPipeline", {}, {"is_distilled": False}, "flux2-klein-base"),
    ("ZImagePipeline", {}, {}, "zimage"),
    ("QwenImagePipeline", {}, {}, "qwenimage"),
])
def test_a_pipeline_folder_is_its_family(tmp_path, class_name, configs, index, family):
    folder = pipeline_folder(tmp_path / "m", class_name, configs, **index)
    assert families.for_pipeline_folder(folder).name == family
    spec = read_variant(folder)
    traits = families.by_name(family).traits
    assert spec.defaults.family == traits
    assert (spec.defaults.steps, spec.defaults.guidance, spec.defaults.scheduler) == (
        traits.steps, traits.guidance, traits.scheduler)


def test_a_pipeline_of_no_known_family_is_refused_with_what_to_do(tmp_path):
    folder = pipeline_folder(tmp_path / "m", "HunyuanDiTPipeline")
    with pytest.raises(VariantError, match="'HunyuanDiTPipeline', which is no model family this bot runs.*family = "):
        read_variant(folder)
    (folder / "variant.toml").write_text('family = "sdxl"\n', encoding="utf-8")
    assert read_variant(folder).defaults.family.name == "sdxl"
    (folder / "variant.toml").write_text('family = "sd9"\n', encoding="utf-8")
    with pytest.raises(VariantError, match="unknown model family 'sd9'; known: sd1, sd2, sdxl, sd3, flux1-dev"):
        read_variant(folder)


@pytest.mark.parametrize("repo, family", [
    ("black-forest-labs/FLUX.1-dev", "flux1-dev"),
    ("black-forest-labs/FLUX.1-schnell", "flux1-schnell"),
    ("stabilityai/stable-diffusion-3.5-large", "sd3"),
    ("stabilityai/stable-diffusion-xl-base-1.0", "sdxl"),
    ("stabilityai/stable-diffusion-2-1", "sd2"),
    ("Tongyi-MAI/Z-Image-Turbo", "zimage"),
    ("Qwen/Qwen-Image", "qwenimage"),
    ("runwayml/stable-diffusion-v1-5", "sd1"),  # says nothing: the default family
])
def test_a_hub_variant_is_the_family_its_name_says(tmp_path, repo, family):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "variant.toml").write_text(f'repo = "{repo}"\n', encoding="utf-8")
    assert read_variant(folder).defaults.family.name == family


def test_a_family_default_the_family_cannot_use_is_refused(tmp_path):
    folder = pipeline_folder(tmp_path / "m", "FluxPipeline", {"transformer": {"guidance_embeds": True}})
    (folder / "variant.toml").write_text('[defaults]\nscheduler = "dpm++"\n', encoding="utf-8")
    with pytest.raises(VariantError, match="'dpm\\+\\+' is not a scheduler FLUX.1 \\[dev\\] can use"):
        read_variant(folder)
    (folder / "variant.toml").write_text('[defaults]\nwidth = 1000\n', encoding="utf-8")
    with pytest.raises(VariantError, match="multiple of 16 for FLUX.1 \\[dev\\], got 1000"):
        read_variant(folder)
    (folder / "variant.toml").write_text('[defaults]\nnegative_prompt = "blurry"\n', encoding="utf-8")
    with pytest.raises(VariantError, match="no negative prompt unless true_cfg"):
        read_variant(folder)
    (folder / "variant.toml").write_text('[defaults]\nnegative_prompt = "blurry"\ntrue_cfg = 4\n', encoding="utf-8")
    assert read_variant(folder).defaults.true_cfg == 4.0


def test_true_cfg_is_only_for_families_that_can_run_it(tmp_path):
    folder = pipeline_folder(tmp_path / "m", "Flux2KleinPipeline", {}, is_distilled=True)
    (folder / "variant.toml").write_text('[defaults]\ntrue_cfg = 4\n', encoding="utf-8")
    with pytest.raises(VariantError, match="FLUX.2 \\[klein\\] models cannot: remove it"):
        read_variant(folder)
