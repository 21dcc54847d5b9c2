"""General file helpers with no knowledge of the bot: atomic writes (atomic.py) and a small TOML
writer (toml_writer.py). The model store, the outputs and the training scripts all build on them;
they import nothing else of the bot, so anything may."""
