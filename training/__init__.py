"""Offline tools that produce model variants for the bot: datasets, training, evaluation, export."""
