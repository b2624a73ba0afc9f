"""The installed `trustfid` command: the library's commands (score, stats, inspect; trustfid/cli.py)
plus the service's:

    trustfid serve [--host 127.0.0.1] [--port 8000]    embedded Redis + one worker + the API
    trustfid api [--host 127.0.0.1] [--port 8000]      the API alone, against TRUSTFID_REDIS_URL
    trustfid worker [--pool solo] [--concurrency 1]    a worker against TRUSTFID_REDIS_URL
    trustfid submit REAL GENERATED [--wait]            send a job to a running service

It sits above everything (library, API, worker), as the top of the house may.
"""

from __future__ import annotations

import json
import sys


def cmd_serve(args) -> int:
    from app.serve import run_embedded

    return run_embedded(args.host, args.port, log_level=args.log_level)


def cmd_api(args) -> int:
    from app.serve import run_api

    return run_api(args.host, args.port, log_level=args.log_level, proxy_headers=args.proxy_headers)


def cmd_worker(args) -> int:
    from app.serve import run_worker

    queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None
    return run_worker(pool=args.pool, concurrency=args.concurrency, loglevel=args.log_level, queues=queues)


def cmd_submit(args) -> int:
    from trustfid import Client

    options = json.loads(args.options) if args.options else {}
    if not isinstance(options, dict):
        print("trustfid submit: --options must be a JSON object", file=sys.stderr)
        return 2
    for name in ("passes", "seed"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    with Client(args.url, args.api_key) as client:
        job = client.submit(_side(args.real), _side(args.generated), options, tags=args.tag or None, wait=True)
        if not args.wait:
            print(job.id)
            return 0
        print(f"job {job.id} queued; waiting", file=sys.stderr)
        report = job.wait(args.timeout).report()
    if args.json == "-":
        print(report.model_dump_json(indent=2))
    elif args.json:
        with open(args.json, "w") as f:
            f.write(report.model_dump_json(indent=2))
    mc = report.fid_mc
    spread = f" ± {mc.std:.3f} (MC, {mc.passes} passes)" if mc.std is not None else ""
    print(f"job {job.id}: FID {report.fid:.3f}{spread}; trust {report.trust.level}")
    return 0


def _side(value: str):
    return {"reference_id": value[4:]} if value.startswith("ref:") else value


def add_service_commands(sub) -> None:
    p = sub.add_parser("serve", help="run the service on this machine: embedded Redis, one worker and the API")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need API keys)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("api", help="run the HTTP API alone against TRUSTFID_REDIS_URL (containers, more replicas)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need API keys)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--proxy-headers", action="store_true", help="trust X-Forwarded-For/Proto from a reverse proxy")
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("worker", help="run a scoring worker against TRUSTFID_REDIS_URL")
    p.add_argument("--pool", choices=["solo", "prefork", "threads"], help="Celery pool (default TRUSTFID_WORKER_POOL)")
    p.add_argument("--concurrency", type=int, help="processes/threads (default TRUSTFID_WORKER_CONCURRENCY)")
    p.add_argument("--queues", help="comma-separated Celery queues to take tasks from (default: the scoring "
                   "queue TRUSTFID_QUEUE and the callback queue TRUSTFID_CALLBACK_QUEUE)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("submit", help="send a job to a running service (TRUSTFID_URL, TRUSTFID_API_KEY)")
    p.add_argument("real", help="folder, archive, .npy/.npz, image file, URI, or ref:<reference id>")
    p.add_argument("generated", help="same choices as REAL")
    p.add_argument("--url", help="service URL (default TRUSTFID_URL or http://127.0.0.1:8000)")
    p.add_argument("--api-key", help="API key (default TRUSTFID_API_KEY)")
    p.add_argument("--options", help='JSON score options, e.g. \'{"passes": 20, "resize": "clean"}\'')
    p.add_argument("--passes", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--tag", action="append", help="label the job (repeatable), e.g. --tag run=abc")
    p.add_argument("--wait", action="store_true", help="wait for the report and print the FID")
    p.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")
    p.add_argument("--json", metavar="PATH", help="with --wait: write the report as JSON ('-' = print it)")
    p.set_defaults(func=cmd_submit)


def main(argv: list[str] | None = None) -> int:
    from trustfid.cli import build_parser, run

    return run(build_parser(add_service_commands), argv)


if __name__ == "__main__":
    sys.exit(main())
