"""Batch recognition of folders and buckets on Ray Data: `python -m pipelines.batch INPUT --out OUT`."""
