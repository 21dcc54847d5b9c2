"""What batch-invariant kernels cost, on a tiny random-weight model (CPU), all numbers from one run.

    python bench/batch_invariance.py [--rounds 9] [--steps 20] [--batch 4]

Two copies of the same pipeline, one with the batch-invariant kernels of bot/engine/batch_invariance.py
and one as diffusers ships it, are timed in interleaved rounds (so both see the same machine load):
one image alone and `--batch` images in one call, each. Prints medians per image and:
  batched over direct   images/s of a batch over single-image calls of the plain pipeline, both modes
  kept                  the batched throughput of the invariant mode over the plain one's
and checks that every image of the invariant batch is bit-identical to that image made alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bot.engine.batch_invariance import make_pipeline_batch_invariant  # noqa: E402
from tests.helpers.tiny import tiny_pipeline  # noqa: E402

PROMPTS = ["a red circle", "a blue square", "a green tree", "a yellow sun",
           "a black cat", "a white boat", "an orange fox", "a purple house"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
