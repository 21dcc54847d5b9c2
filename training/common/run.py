"""A training run: its folder, clock and log, and what a script's train() and main() wrap around
the work (torch's thread count, quiet libraries, bad input as one line and exit status 2)."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from bot.files.atomic import write_atomic, write_text_atomic
from bot.files.toml_writer import to_toml


def log(message: str) -> None:
    print(message, flush=True)


class Run:
    """The run's folder, clock and log. `elapsed()` counts training time across resumes.

    `config` is the script's settings dataclass (it has `output_dir` and `time_budget`); it is
    written to config.toml at once and into every checkpoint. `stages` are the script's stages in
    the order they run (a checkpoint records the stage it was taken in); log rows of other kinds
    (samples, validation, evaluation) count as the last stage's.
    """

    def __init__(self, config: Any, checkpoint: dict | None, script: str, stages: Sequence[str] = ("train",)) -> None:
        self.config = config
        self.stages = tuple(stages)
        self.dir = Path(config.output_dir)
        (self.dir / "samples").mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.before = float(checkpoint["elapsed"]) if checkpoint else 0.0
        self.log_path = self.dir / "log.jsonl"
        if checkpoint:
            self._trim_log(self._order(checkpoint))
        elif self.log_path.exists():
            self.log_path.unlink()  # a fresh run in an old folder starts a fresh log
        write_text_atomic(self.dir / "config.toml",
                          f"# The final configuration of this run (python -m {script}; "
                          "--resume <this folder>/checkpoint.pt continues it).\n" + to_toml(asdict(config)))

    def elapsed(self) -> float:
        return self.before + time.monotonic() - self.started

    def budget_left(self) -> float:
        return math.inf if not self.config.time_budget else self.config.time_budget * 60 - self.elapsed()

    def write(self, row: dict) -> None:
        row = {**row, "elapsed": round(self.elapsed(), 1)}
        with open(self.log_path, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(row) + "\n")

    def _order(self, row: dict) -> tuple[int, int]:
        """Where a log row or checkpoint stands in the run: (its stage's place, its step)."""
        stage = row.get("stage")
        place = self.stages.index(stage) if stage in self.stages else len(self.stages) - 1
        return place, row.get("step", 0)

    def _trim_log(self, until: tuple[int, int]) -> None:
        """Drop rows written after the checkpoint (by the run that was cut short)."""
        if not self.log_path.exists():
            return
        keep = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            try:
                order = self._order(json.loads(line))
            except ValueError:  # a line half written when the run stopped
                continue
            if order <= until:
                keep.append(line)
        write_text_atomic(self.log_path, "".join(line + "\n" for line in keep))

    def save_checkpoint(self, state: dict) -> None:
        checkpoint = {**state, "elapsed": self.elapsed(), "config": asdict(self.config)}
        write_atomic(self.dir / "checkpoint.pt", lambda f: torch.save(checkpoint, f), binary=True)


def load_checkpoint(path: Path | None) -> dict | None:
    """The checkpoint to resume from (tensors and plain data only), or None for a fresh run."""
    return torch.load(path, map_location="cpu", weights_only=True) if path else None


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's CPU threads set to `count` for the block (0: leave torch's default), restored after."""
    threads = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def hide_progress_bars() -> None:
    """No loading or "Writing model shards" bars from diffusers and transformers: the scripts print
    their own progress lines."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


class Interrupted(Exception):
    """Ctrl+C: the run stopped at a step boundary, after saving `checkpoint`."""

    def __init__(self, checkpoint: Path, step: int) -> None:
        super().__init__(f"stopped at step {step}")
        self.checkpoint = checkpoint
        self.step = step


_STOP = threading.Event()


def stop_requested() -> bool:
    """Whether Ctrl+C asked the run to stop (training loops ask between steps)."""
    return _STOP.is_set()


@contextlib.contextmanager
def stop_on_ctrl_c(prog: str) -> Iterator[None]:
    """The first Ctrl+C lets the step in progress finish, so the checkpoint is consistent and a
    resumed run is bit-identical; a second one stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def first(signum: int, frame: object) -> None:
        if _STOP.is_set():
            raise KeyboardInterrupt
        _STOP.set()
        print(f"{prog}: stopping after this step to save a checkpoint (Ctrl+C again stops at once)",
              file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _STOP.clear()


def run_script(prog: str, errors: type[Exception], work: Callable[[], object]) -> int:
    """A script's main(): run `work`; bad input (`errors`) is one line on stderr and exit status 2;
    Ctrl+C saves a checkpoint and says how to resume (exit status 130)."""
    try:
        with stop_on_ctrl_c(prog):
            work()
    except errors as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        print(f"{prog}: {stop}; checkpoint saved. Resume with: python -m training.{prog} --resume "
              f"{stop.checkpoint}", file=sys.stderr)
        return 130
    return 0
