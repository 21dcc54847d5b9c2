"""Offline tools that produce model variants for the bot: datasets, training, evaluation, export.

Scripts (`python -m training.<name>`, or `imagebot train|data ...`): train_scratch, finetune,
evaluate, to_single_file, concept and data_cli (crawl, caption, manifest commands). What the training scripts
share lives in training.common; datasets in manifest.py, shapes.py and concept.py; settings in
settings.py; atomic writes in bot.files, publishing in bot.models. No script imports another script.
train_scratch, finetune and the crawl keep their stages in modules named after them (scratch_*,
finetune_*, crawl_*), each script's own module holding its settings and the order of the stages.
"""

import os

# Before torch loads (every script imports this package first): idle OpenMP threads sleep instead of
# spinning, which otherwise slows every step several-fold on a CPU shared with other work.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The ML libraries' notes (a missing optional backend, an unused weight) would bury the run's own
# log lines; they speak when asked (TRANSFORMERS_VERBOSITY=info), as `imagebot -v` makes them.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
