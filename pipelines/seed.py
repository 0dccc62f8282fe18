"""The `python -m pipelines.seed` command; the seeding itself is pipelines.log.seed."""

from pipelines.log.seed import main

if __name__ == "__main__":
    raise SystemExit(main())
