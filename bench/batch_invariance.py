"""What batch-invariant kernels cost, on tiny random-weight models (CPU), all numbers from one run.

    python bench/batch_invariance.py [--rounds 9] [--steps 20] [--batch 4] [--families sd3,flux1-dev,...]

Two copies of the same pipeline, one with the batch-invariant kernels of bot/engine/batch_invariance.py
and one as diffusers ships it, are timed in interleaved rounds (so both see the same machine load):
one image alone and `--batch` images in one call, each. Prints medians per image and:
  batched over direct   images/s of a batch over single-image calls of the plain pipeline, both modes
  kept                  the batched throughput of the invariant mode over the plain one's
and checks that every image of the invariant batch is bit-identical to that image made alone.

Then, for each diffusion-transformer family of tests/helpers/tiny_dit.py (`--families`, all by
default; `none` for none), the same through the engine (64 px, `--steps` steps, prompts of different
lengths, `--batch` images in one call): a markdown table of the largest difference of any pixel
between an image made alone and in the batch, with the engine's batch-invariant mode on and off,
and the seconds per image alone and batched (the fastest of `--family-rounds` calls each).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bot.config import EngineConfig, Limits  # noqa: E402
from bot.core.request import parse_prompt  # noqa: E402
from bot.core.resolve import resolve  # noqa: E402
from bot.engine.batch_invariance import make_pipeline_batch_invariant  # noqa: E402
from bot.engine.engine import Engine  # noqa: E402
from bot.models.registry import Registry  # noqa: E402
from tests.helpers.tiny import tiny_pipeline  # noqa: E402
from tests.helpers.tiny_dit import BUILDERS, save_tiny_dit  # noqa: E402

PROMPTS = ["a red circle", "a blue square", "a green tree", "a yellow sun",
           "a black cat", "a white boat", "an orange fox", "a purple house"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--families", default=",".join(BUILDERS),
                        help=f"comma-separated, of: {', '.join(BUILDERS)}; or none")
    parser.add_argument("--family-rounds", type=int, default=3)
    args = parser.parse_args()
    families = [] if args.families == "none" else [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [family for family in families if family not in BUILDERS]
    if unknown:
        parser.error(f"unknown famil(ies) {', '.join(unknown)}; choose from {', '.join(BUILDERS)}")
    plain, invariant = tiny_pipeline(), tiny_pipeline()
    make_pipeline_batch_invariant(invariant)
    for pipe in (plain, invariant):
        pipe.set_progress_bar_config(disable=True)

    def run(pipe, count: int, first: int = 0):
        started = time.perf_counter()
        with torch.inference_mode():
            images = pipe(PROMPTS[first: first + count], num_inference_steps=args.steps, guidance_scale=7.0,
                          width=64, height=64,
                          generator=[torch.Generator().manual_seed(first + i) for i in range(count)]).images
        return (time.perf_counter() - started) / count, images

    for pipe in (plain, invariant):  # warm-up: kernels chosen, memory allocated
        run(pipe, 1)
        run(pipe, args.batch)
    times: dict[str, list[float]] = {"plain, alone": [], "plain, batched": [], "invariant, alone": [],
                                     "invariant, batched": []}
    for _ in range(args.rounds):
        times["plain, alone"].append(run(plain, 1)[0])
        times["invariant, batched"].append(run(invariant, args.batch)[0])
        times["invariant, alone"].append(run(invariant, 1)[0])
        times["plain, batched"].append(run(plain, args.batch)[0])
    median = {name: statistics.median(values) for name, values in times.items()}

    _, batched = run(invariant, args.batch)
    identical = all(np.array_equal(np.asarray(image), np.asarray(run(invariant, 1, i)[1][0]))
                    for i, image in enumerate(batched))

    print(f"tiny model 64x64, {args.steps} steps, batch {args.batch}, {args.rounds} interleaved rounds, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    for name, seconds in median.items():
        print(f"    {name:<20} {seconds * 1000:8.1f} ms per image")
    direct = median["plain, alone"]
    print(f"batched over direct single calls: invariant {direct / median['invariant, batched']:.2f}x, "
          f"plain {direct / median['plain, batched']:.2f}x")
    print(f"invariant mode keeps {median['plain, batched'] / median['invariant, batched'] * 100:.0f}% "
          "of the batched throughput")
    print(f"every batched image identical to the same image alone: {identical}")
    if families:
        print()
        family_table(families, args)


# Prompts of different lengths: a batch pads its prompts to the longest where the family's text
# encoder reads only the tokens there are (Qwen-Image), which alone it does not.
FAMILY_PROMPTS = ["a red circle", "a blue square on green grass under a cloudy sky at sunset, oil painting",
                  "a green tree", "a small wooden boat on a quiet lake at sunrise, watercolor painting of a calm morning",
                  "a black cat", "a white lighthouse", "an orange fox sleeping in the snow", "a purple house"]


def family_table(families: list[str], args) -> None:
    """Each diffusion-transformer family through the engine, batch-invariant mode on and off."""
    models = Path(tempfile.mkdtemp()) / "models"
    for family in families:
        save_tiny_dit(family, models / family)
        (models / family / "variant.toml").write_text("[defaults]\nwidth = 64\nheight = 64\n")
    engines = {}
    for mode in ("on", "off"):
        registry = Registry(models)
        registry.scan()
        engines[mode] = Engine(registry, EngineConfig(device="cpu", max_batch=args.batch, batch_invariant=mode),
                               allow_download=False)
    print(f"| family ({args.steps} steps, 64 px, batch of {args.batch}) | largest pixel difference, invariant "
          "| plain | per image alone, invariant | batched, invariant | alone, plain | batched, plain |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for family in families:
        difference, alone, batched = {}, {}, {}
        for mode, engine in engines.items():
            defaults = engine.registry.ready_defaults()
            batch = [resolve(parse_prompt(f"{FAMILY_PROMPTS[i % len(FAMILY_PROMPTS)]} --seed {i} --steps {args.steps}"),
                             defaults, family, Limits(min_side=32)) for i in range(args.batch)]
            together = [result.images[0] for result in engine.generate(batch)]
            apart = [engine.generate([request])[0].images[0] for request in batch]
            difference[mode] = max(int(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max())
                                   for a, b in zip(together, apart))
            alone[mode] = fastest(lambda: engine.generate(batch[:1]), args.family_rounds)
            batched[mode] = fastest(lambda: engine.generate(batch), args.family_rounds) / args.batch
        print(f"| {family} | {difference['on']} | {difference['off']} | {alone['on'] * 1000:.0f} ms "
              f"| {batched['on'] * 1000:.0f} ms | {alone['off'] * 1000:.0f} ms | {batched['off'] * 1000:.0f} ms |")
        for engine in engines.values():
            engine.unload(family)


def fastest(run, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


if __name__ == "__main__":
    main()
