"""Pairs: dataset preparation, pair generation jobs and the shard format (one definition)."""
