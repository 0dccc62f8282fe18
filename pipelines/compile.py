"""`python -m pipelines.compile`: build the compiled encoders the demo would build at first start, now, and say why."""

from __future__ import annotations

import argparse
import json
import sys
import time

from pipelines import settings, tasks
from pipelines.models import ModelLoadError, compiled
from pipelines.models.precision import configure_threads

ROLES = ("classifier", "captioner")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.compile", description=__doc__)
    p.add_argument("--roles", default=",".join(ROLES), help="which models' encoders: classifier, captioner")
    settings.add_arguments(p, ("classifier", "captioner", "device"))
    args = p.parse_args(argv)
    config = settings.resolve(args)
    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        p.error(f"unknown role {unknown[0]!r}; choose among {', '.join(ROLES)}")
    configure_threads(config.threads)
    plan = compiled.Plan(config.compiled_dir, sorted(settings.CALIBRATION_PHOTOS.glob("*.jpg")))
    models = {task.role: task.model for task in tasks.build(config).values()}
    for role in roles:
        started = time.perf_counter()
        try:
            models[role].load()
        except ModelLoadError as exc:
            print(f"compile: {exc}", file=sys.stderr)
            return 2
        manifest = plan.apply([models[role]])[role]
        took = time.perf_counter() - started
        verdict = manifest.get("variant") or "uncompiled (no variant beat it within the bounds)"
        if "skipped" in manifest or "error" in manifest:
            verdict = manifest.get("skipped") or manifest["error"]
        print(f"{role}: {verdict} ({took:.0f} s)")
        print(json.dumps(manifest.get("figures", {}), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
