"""`python -m pipelines.promote --url URL --model DIR` (or `--rollback`): switch the classifier a running demo serves;
`--log FILE --model DIR` alone registers the version in a log no server has open."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.promote", description=__doc__)
    p.add_argument("--model", help="trained model folder (or hub id) to serve")
    p.add_argument("--rollback", action="store_true", help="serve the classifier that served before the last promotion")
    p.add_argument("--url", help="the running demo, e.g. http://127.0.0.1:7860/")
    p.add_argument("--token", help="the admin password, when the demo has one")
    p.add_argument("--log", help="register --model in this log file instead (no server running)")
    args = p.parse_args(argv)
    if bool(args.model) == args.rollback:
        p.error("give --model or --rollback")
    try:
        if args.url:
            from gradio_client import Client

            client = Client(args.url, verbose=False)
            answer = (client.predict(args.token, api_name="/admin_rollback") if args.rollback
                      else client.predict(args.model, args.token, api_name="/admin_promote"))
        elif args.log and args.model:
            from pipelines.log.eventlog import EventLog
            from pipelines.promotion import register
            from pipelines.tasks.classify import Classifier

            model = Classifier(args.model, device="cpu")
            model.load()
            with EventLog(args.log) as log:
                answer = {"registered": register(log, model)}
        else:
            p.error("give --url (promote on a running demo) or --log (register only)")
    except Exception as exc:  # a refused password, a model that will not load, a server that is down
        print(f"promote: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
