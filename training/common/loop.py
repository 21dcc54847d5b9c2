"""A training loop's resumable state and its step timer.

A resumed run continues bit for bit as an uninterrupted one would: the checkpoint holds, besides
the weights, the step, the optimizer and LR schedule, where each data order stands, and every random
state (the loop's own generator, torch's global one and Python's)."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import torch

from training.common.data import Batches


def rng_state(generator: torch.Generator) -> dict:
    return {"generator": generator.get_state(), "torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(generator: torch.Generator, state: dict) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])


@dataclass
class Progress:
    """The step, optimizer, LR schedule, data orders (by their checkpoint key; None where a run has
    no such data) and the generator every random draw of the loop comes from."""

    optimizer: Any
    lr_schedule: Any
    generator: torch.Generator
    batches: dict[str, Batches | None]
    step: int = 0

    def optimizer_step(self, accelerator, parameters, max_grad_norm: float) -> None:
        """Clip the gradients, step the optimizer and the LR schedule, clear the gradients."""
        accelerator.clip_grad_norm_(parameters, max_grad_norm)
        self.optimizer.step()
        self.lr_schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def lr(self) -> float:
        return self.lr_schedule.get_last_lr()[0]

    def state_dict(self) -> dict:
        return {"step": self.step, "optimizer": self.optimizer.state_dict(),
                "lr_schedule": self.lr_schedule.state_dict(),
                **{key: batches.state_dict() if batches else None for key, batches in self.batches.items()},
                "rng": rng_state(self.generator)}

    def load_state_dict(self, checkpoint: dict) -> None:
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.lr_schedule.load_state_dict(checkpoint["lr_schedule"])
        for key, batches in self.batches.items():
            if batches is not None and checkpoint.get(key):
                batches.load_state_dict(checkpoint[key])
        set_rng_state(self.generator, checkpoint["rng"])
        self.step = checkpoint["step"]


class StepTimer:
    """Seconds per optimizer step since the last lap."""

    def __init__(self, step: int) -> None:
        self.step, self.tick = step, time.perf_counter()

    def lap(self, step: int) -> float:
        now = time.perf_counter()
        seconds = (now - self.tick) / max(1, step - self.step)
        self.step, self.tick = step, now
        return seconds
