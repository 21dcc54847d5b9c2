"""The tiny diffusion-transformer pipelines other tests build on (tests/helpers/tiny_dit.py): each family's
folder loads back as its own pipeline class and draws the very pixels the builder's pipeline draws, and
the locally trained tokenizers keep the layouts the pipelines rely on."""

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from tests.helpers.tiny_dit import qwen_tokenizer, save_tiny_dit, t5_tokenizer, tiny_dit_pipeline

PIPELINE_CLASSES = {
    "sd3": "StableDiffusion3Pipeline",
    "flux1-dev": "FluxPipeline",
    "flux1-schnell": "FluxPipeline",
    "flux2-klein": "Flux2KleinPipeline",
    "zimage": "ZImagePipeline",
    "qwenimage": "QwenImagePipeline",
}


def draw(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    result = pipe(prompt="a red circle", height=64, width=64, num_inference_steps=2,
                  generator=torch.Generator("cpu").manual_seed(1), output_type="pil")
    return np.asarray(result.images[0])


@pytest.mark.parametrize("family", list(PIPELINE_CLASSES))
def test_a_saved_family_loads_back_as_its_pipeline_and_draws_the_same_pixels(family, tmp_path):
    folder = save_tiny_dit(family, tmp_path / family)
    loaded = DiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    assert type(loaded).__name__ == PIPELINE_CLASSES[family]
    pixels = draw(loaded)
    assert pixels.shape == (64, 64, 3) and pixels.std() > 1  # an image, not a flat fill
    assert np.array_equal(pixels, draw(tiny_dit_pipeline(family)))


def test_the_local_tokenizers_keep_the_layouts_the_pipelines_rely_on():
    t5 = t5_tokenizer()
    assert len(t5) == 1000 and t5.convert_tokens_to_ids(["<pad>", "</s>", "<unk>", "<extra_id_0>"]) == [0, 1, 2, 999]
    assert t5("a red circle").input_ids[-1] == t5.eos_token_id and t5.unk_token_id not in t5("a red circle").input_ids

    qwen = qwen_tokenizer()
    assert (qwen.pad_token, qwen.eos_token) == ("<|endoftext|>", "<|im_end|>")
    chat = qwen.apply_chat_template([{"role": "user", "content": "a red circle"}], tokenize=False,
                                    add_generation_prompt=True, enable_thinking=False)
    assert chat == "<|im_start|>user\na red circle<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    # Qwen-Image drops the tokens of its template's system part: they must be exactly that many.
    pipe = tiny_dit_pipeline("qwenimage")
    template, drop = pipe.prompt_template_encode, pipe.prompt_template_encode_start_idx
    ids = qwen(template.format("a red circle")).input_ids
    assert qwen.decode(ids[drop:]).startswith("a red circle<|im_end|>")
