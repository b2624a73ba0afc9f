"""The installed `trustfid` command: the library's commands (score, stats, inspect; trustfid/cli.py)
plus the service's:

    trustfid serve [--host 127.0.0.1] [--port 8000] [--workers 1]
                                                       embedded Redis + workers (one per GPU) + the API
    trustfid api [--host 127.0.0.1] [--port 8000]      the API alone, against TRUSTFID_REDIS_URL
    trustfid worker [--pool solo] [--concurrency 1]    a worker against TRUSTFID_REDIS_URL
    trustfid submit REAL GENERATED [--wait]            send a job to a running service
    trustfid healthcheck                               is this machine's worker alive? (exit 0/1)

It sits above everything (library, API, worker), as the top of the house may.
"""

from __future__ import annotations

import json
import sys


def cmd_serve(args) -> int:
    from app.serve import run_embedded

    return run_embedded(args.host, args.port, log_level=args.log_level, workers=args.workers)


def cmd_api(args) -> int:
    from app.serve import run_api

    return run_api(args.host, args.port, log_level=args.log_level, proxy_headers=args.proxy_headers)


def cmd_worker(args) -> int:
    from app.serve import run_worker

    queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None
    return run_worker(pool=args.pool, concurrency=args.concurrency, loglevel=args.log_level, queues=queues)


def cmd_healthcheck(args) -> int:
    from app.serve import worker_healthy

    ok, why = worker_healthy()
    print(f"trustfid: {why}", file=sys.stderr if not ok else sys.stdout)
    return 0 if ok else 1


def cmd_submit(args) -> int:
    from trustfid import Client
    from trustfid.cli import render, write_json

    try:
        options = json.loads(args.options) if args.options else {}
    except ValueError as e:
        print(f"trustfid: error: --options is not valid JSON ({e})", file=sys.stderr)
        return 2
    if not isinstance(options, dict):
        print("trustfid: error: --options must be a JSON object", file=sys.stderr)
        return 2
    for name in ("passes", "seed"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    with Client(args.url, args.api_key) as client:
        job = client.submit(_side(args.real), _side(args.generated), options, tags=args.tag or None, wait=True)
        if not args.wait:
            print(job.id)
            return 0
        if not args.quiet:
            print(f"trustfid: job {job.id} accepted by {args.url or client.http.base_url}", file=sys.stderr, flush=True)
        watch = _Watch(job.id, args.quiet)
        try:
            report = job.wait(args.timeout, poll=0.5, on_update=watch).report()
        except TimeoutError:
            print(f"trustfid: error: job {job.id} did not finish within {args.timeout:g} s; it goes on: "
                  f"GET /v1/jobs/{job.id}", file=sys.stderr)
            return 3
        finally:
            watch.close()
    write_json(args.json, report)
    print(render(report, args.format, args.json, job.id))  # fhir: the service's builder, on the report at hand
    return 0


class _Watch:
    """Shows a job's progress on stderr while `submit --wait` polls it: its state as it changes, then the
    engine's progress as in `trustfid score` (bars on a terminal, one line per stage otherwise)."""

    def __init__(self, job_id: str, quiet: bool):
        from trustfid.cli import Bars

        self.job_id, self.quiet, self.state = job_id, quiet, None
        self.bars = Bars(quiet, lines=True)

    def __call__(self, rec) -> None:
        if rec.state != self.state and not self.quiet:
            print(f"trustfid: job {self.job_id} {rec.state}", file=sys.stderr, flush=True)
        self.state = rec.state
        if rec.progress is not None and rec.state == "running":
            self.bars(rec.progress)

    def close(self) -> None:
        self.bars.close()


def _side(value: str):
    return {"reference_id": value[4:]} if value.startswith("ref:") else value


def add_service_commands(sub) -> None:
    from trustfid.cli import EXIT_CODES, add_format

    def listen_options(p) -> None:
        p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need API keys)")
        p.add_argument("--port", type=int, default=8000, help="port of the API (default 8000)")
        p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                       help="the API's log level (default info)")

    p = sub.add_parser("serve", help="run the service on this machine: embedded Redis, one worker and the API")
    listen_options(p)
    p.add_argument("--workers", type=int, default=1, help="worker processes, each restarted when it dies "
                   "(default 1); on a machine with several CUDA GPUs each gets its own (CUDA_VISIBLE_DEVICES), "
                   "so --workers 4 on a machine with 4 GPUs uses all of them, e.g. for jobs with shard_size; "
                   "without GPUs each gets its share of the cores (TRUSTFID_THREADS)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("api", help="run the HTTP API alone against TRUSTFID_REDIS_URL (containers, more replicas)")
    listen_options(p)
    p.add_argument("--proxy-headers", action="store_true", help="trust X-Forwarded-For/Proto from a reverse proxy")
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("worker", help="run a scoring worker against TRUSTFID_REDIS_URL")
    p.add_argument("--pool", choices=["solo", "prefork", "threads"], help="Celery pool (default TRUSTFID_WORKER_POOL)")
    p.add_argument("--concurrency", type=int, help="processes/threads (default TRUSTFID_WORKER_CONCURRENCY)")
    p.add_argument("--queues", help="comma-separated Celery queues to take tasks from (default: the scoring "
                   "queue TRUSTFID_QUEUE and the callback queue TRUSTFID_CALLBACK_QUEUE)")
    p.add_argument("--log-level", default="info", help="Celery's log level (default info)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("healthcheck", help="exit 0 if this machine's worker has a fresh heartbeat in Redis (for "
                       "container healthchecks), else 1 with one line saying why")
    p.set_defaults(func=cmd_healthcheck)

    p = sub.add_parser("submit", help="send a job to a running service (TRUSTFID_URL, TRUSTFID_API_KEY)",
                       epilog=EXIT_CODES)
    p.add_argument("real", help="folder, archive, .npy/.npz, image file, URI (file://, http(s)://, s3://, "
                   "dicomweb+https://: the service fetches it), or ref:<reference id>")
    p.add_argument("generated", help="same choices as REAL")
    p.add_argument("--url", help="service URL (default TRUSTFID_URL or http://127.0.0.1:8000)")
    p.add_argument("--api-key", help="API key (default TRUSTFID_API_KEY)")
    p.add_argument("--options", help='JSON score options, e.g. \'{"passes": 20, "resize": "clean"}\'; with a '
                   "reference, options left out are the reference's")
    p.add_argument("--passes", type=int, help="MC-dropout passes (overrides --options)")
    p.add_argument("--seed", type=int, help="seed of the dropout masks (overrides --options)")
    p.add_argument("--tag", action="append", help="label the job (repeatable), e.g. --tag run=abc --tag step=1200")
    p.add_argument("--wait", action="store_true", help="wait for the report, showing progress, then print the "
                   "summary `trustfid score` prints")
    p.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds (exit 3)")
    p.add_argument("--json", metavar="PATH", help="with --wait: write the report as JSON ('-' = print it)")
    add_format(p)
    p.add_argument("-q", "--quiet", action="store_true", help="with --wait: no progress")
    p.set_defaults(func=cmd_submit)


def main(argv: list[str] | None = None) -> int:
    from trustfid.cli import build_parser, run

    return run(build_parser(add_service_commands), argv)


if __name__ == "__main__":
    sys.exit(main())
