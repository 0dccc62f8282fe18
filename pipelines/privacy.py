"""The `python -m pipelines.privacy` command; the purge itself is pipelines.log.privacy."""

from pipelines.log.privacy import main

if __name__ == "__main__":
    raise SystemExit(main())
