"""The imagerec benchmark: `python -m bench` (see bench/run.py)."""
