"""`python -m pipelines.export_feedback --db LOG --images DIR --out DIR`: the feedback as a labelled image folder."""

from __future__ import annotations

import argparse
import json
import sys

from .settings import Settings


def main(argv: list[str] | None = None) -> int:
    defaults = Settings.defaults()
    p = argparse.ArgumentParser(prog="python -m pipelines.export_feedback", description=__doc__)
    p.add_argument("--db", default=defaults.db, help="the log (default: the db setting)")
    p.add_argument("--images", default=defaults.images_dir, help="the kept images (default: the images_dir setting)")
    p.add_argument("--out", required=True, help="folder to write: <label>/<sha256>.png, manifest.csv, conflicts.json")
    args = p.parse_args(argv)
    from .learn.feedback import export

    try:
        counts = export(args.db, args.images, args.out)
    except Exception as exc:  # no log there, a log being migrated: one sentence, not a traceback
        print(f"export_feedback: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
