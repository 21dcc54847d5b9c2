"""Offline tools that produce model variants for the bot: datasets, training, evaluation, export.

Scripts (`python -m training.<name>`, or `imagebot train|data ...`): train_scratch, finetune,
evaluate, export, concept and data_cli (crawl, caption, manifest commands). What the training scripts
share lives in training.common; datasets in manifest.py, shapes.py and concept.py; settings in
settings.py; atomic writes and publishing in store.py. No script imports another script.
"""

import os

# Before torch loads (every script imports this package first): idle OpenMP threads sleep instead of
# spinning, which otherwise slows every step several-fold on a CPU shared with other work.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
