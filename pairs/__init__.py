"""Pairs: torch-free face alignment, dataset preparation, pair generation jobs, the shard format."""
