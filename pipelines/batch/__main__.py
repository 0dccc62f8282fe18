"""`python -m pipelines.batch` runs a batch job."""

from pipelines.batch.cli import main

raise SystemExit(main())
