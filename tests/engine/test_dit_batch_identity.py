"""On the CPU a diffusion-transformer family draws an image pixel-identical alone and in a batch
(the engine's batch-invariant mode, on by default there): SD 3.5, FLUX.1 dev and schnell, FLUX.2
klein, Z-Image and Qwen-Image as tiny random-weight pipelines through the real engine, with prompts
of different lengths (Qwen-Image pads them to the longest of the batch and masks the padding)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bot.config import EngineConfig, Limits
from bot.core.request import parse_prompt
from bot.core.resolve import resolve
from bot.engine.batch_invariance import batch_invariant, make_batch_invariant, make_pipeline_batch_invariant
from bot.engine.engine import Engine
from bot.models.registry import Registry
from tests.helpers.tiny_dit import BUILDERS, save_tiny_dit, tiny_dit_pipeline

LIMITS = Limits(min_side=32)
FAMILIES = list(BUILDERS)
TEXTS = ["a red circle on a blue background --seed 1 --n 2",
         "a dog --seed 2",
         "a small green tree standing in a field of flowers at sunset, oil painting of a quiet garden --seed 3"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("models")
    for family in FAMILIES:
        save_tiny_dit(family, models / family)
        (models / family / "variant.toml").write_text("[defaults]\nwidth = 64\nheight = 64\nsteps = 6\n",
                                                      encoding="utf-8")
    shutil.copytree(models / "flux1-dev", models / "flux-true-cfg")
    (models / "flux-true-cfg" / "variant.toml").write_text(
        "[defaults]\nwidth = 64\nheight = 64\nsteps = 6\ntrue_cfg = 3\n", encoding="utf-8")
    return models


def make_engine(store: Path, invariant: str = "auto") -> Engine:
    registry = Registry(store, rescan_seconds=0)
    registry.scan()
    return Engine(registry, EngineConfig(device="cpu", max_batch=8, batch_invariant=invariant), allow_download=False)


@pytest.fixture(scope="module")
def engine(store) -> Engine:
    return make_engine(store)


def requests(engine: Engine, model: str, extra: str = "") -> list:
    defaults = engine.registry.ready_defaults()
    return [resolve(parse_prompt(f"{text} {extra}"), defaults, model, LIMITS) for text in TEXTS]


@pytest.mark.parametrize("model, extra", [
    *[(family, "") for family in FAMILIES],
    ("sd3", "--no blurry, low quality"),
    ("zimage", "--cfg 4 --no blurry, low quality"),  # classifier-free guidance with a negative prompt
    ("qwenimage", "--cfg 4 --no blurry, low quality"),
    ("flux-true-cfg", "--no blurry"),
])
def test_an_image_is_pixel_identical_alone_or_in_a_batch(engine, model, extra):
    batch = requests(engine, model, extra)
    batches = engine.stats.batches
    batched = engine.generate(batch)
    assert engine.stats.batches == batches + 1  # one pipeline call for the four images
    for request, in_batch in zip(batch, batched):
        [alone] = engine.generate([request])
        assert len(alone.images) == len(in_batch.images)
        for a, b in zip(alone.images, in_batch.images):
            assert np.array_equal(np.asarray(a), np.asarray(b))


def test_the_invariant_mode_draws_the_same_pictures_as_the_plain_one(engine, store):
    """It changes how sums are split, not what is computed: the pixels stay within a few levels."""
    plain = make_engine(store, invariant="off")
    for model in ("qwenimage", "flux1-dev"):
        ours = engine.generate(requests(engine, model))
        theirs = plain.generate(requests(plain, model))
        for a, b in zip(ours, theirs):
            for x, y in zip(a.images, b.images):
                assert np.abs(np.asarray(x).astype(int) - np.asarray(y).astype(int)).max() <= 3


def padded_batch(lengths: list[int], width: int = 16, heads: int = 2, seed: int = 0):
    """Query, key and value of prompts of `lengths` tokens, padded to the longest, and the mask."""
    generator = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    q, k, v = (torch.randn(len(lengths), heads, longest, width, generator=generator) for _ in range(3))
    mask = torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]
    return q, k, v, mask[:, None, None, :]


@pytest.mark.parametrize("causal", [False, True])
def test_masked_attention_gives_a_padded_prompt_what_it_gets_alone(causal):
    from bot.engine.batch_invariance import _attention_per_sample

    lengths = [37, 61, 50]
    q, k, v, padding = padded_batch(lengths)
    mask = padding & torch.ones(61, 61, dtype=torch.bool).tril() if causal else padding
    batched = _attention_per_sample(q, k, v, attn_mask=mask)
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    for i, length in enumerate(lengths):
        own = slice(0, length)
        assert torch.allclose(batched[i, :, own], plain[i, :, own], atol=1e-5)  # the same attention
        if causal:  # alone, a causal text encoder says is_causal instead of passing a mask
            alone = _attention_per_sample(q[i: i + 1, :, own], k[i: i + 1, :, own], v[i: i + 1, :, own],
                                          is_causal=True)
        else:  # alone, nothing is padded and the mask is all true
            alone = _attention_per_sample(q[i: i + 1, :, own], k[i: i + 1, :, own], v[i: i + 1, :, own],
                                          attn_mask=padding[i: i + 1, ..., own])
        assert torch.equal(batched[i: i + 1, :, own], alone)


def test_attention_without_a_mask_stays_batched():
    from bot.engine import batch_invariance

    q, k, v, _ = padded_batch([20, 20])
    calls = []

    class Counting(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.nn.functional.scaled_dot_product_attention:
                calls.append(args[0].shape[0])
            return func(*args, **(kwargs or {}))

    with Counting():
        batch_invariance._attention_per_sample(q, k, v)
        batch_invariance._attention_per_sample(q, k, v, attn_mask=torch.ones(20, 20, dtype=torch.bool).tril())
    assert calls == [2, 1, 1]  # unmasked: one call for both; masked: one call per sample


def test_batch_invariant_covers_every_network_of_a_transformer_pipeline_and_undoes_it():
    pipe = tiny_dit_pipeline("sd3")
    networks = [pipe.transformer, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3]
    with batch_invariant(pipe):
        for network in networks:
            assert "forward" in network.__dict__  # the masked-attention mode around the whole network
            linears = [m for m in network.modules() if isinstance(m, torch.nn.Linear)]
            assert linears and all("forward" in m.__dict__ for m in linears)
        assert pipe.vae.use_slicing
    for network in networks:
        assert not any("forward" in m.__dict__ or "_imagebot_per_sample" in m.__dict__ for m in network.modules())
    assert not pipe.vae.use_slicing


def test_undo_gives_back_a_forward_that_was_there_before():
    pipe = tiny_dit_pipeline("flux1-dev")
    hooked = pipe.transformer.forward  # as an offloading hook puts its own forward on the instance
    pipe.transformer.forward = hooked
    with batch_invariant(pipe):
        assert pipe.transformer.forward is not hooked
    assert pipe.transformer.forward is hooked
    make_batch_invariant(pipe.transformer)
    make_batch_invariant(pipe.transformer)  # twice changes nothing more
    assert pipe.transformer.__dict__["_imagebot_forward_before"] is hooked


def test_identical_at_the_real_widths_of_flux():
    """At FLUX.1's real widths (one block of each kind, T5-XXL's width, several threads) the CPU's
    matrix product splits its sums differently for 512 text tokens than for a batch's 1,024: the
    products run one sample at a time, so the results are the same to the last bit."""
    from tests.helpers.full_size import flux1_dev_pipeline

    torch.manual_seed(0)
    pipe = flux1_dev_pipeline(transformer=dict(num_layers=1, num_single_layers=1), t5=dict(num_layers=1),
                              clip=dict(num_hidden_layers=1),
                              vae=dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1))
    pipe.set_progress_bar_config(disable=True)
    make_pipeline_batch_invariant(pipe)
    prompts, seeds = ["a red fox sitting in the snow", "a small wooden boat on a quiet lake at sunrise"], [1, 2]

    def draw(indices):
        with torch.inference_mode():
            return pipe([prompts[i] for i in indices], num_inference_steps=2, width=64, height=64,
                        generator=[torch.Generator().manual_seed(seeds[i]) for i in indices], output_type="np").images

    both = draw([0, 1])
    assert np.array_equal(both[0], draw([0])[0]) and np.array_equal(both[1], draw([1])[0])
