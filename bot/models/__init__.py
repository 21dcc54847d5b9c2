"""The model store format, torch-free: the variant schema, the registry that scans `models/`, and
atomic publishing of a variant folder. Listing models and publishing them never load torch."""
