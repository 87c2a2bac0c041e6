"""Bulk tagging at scale: time and peak memory of ``tracetags tag set --filter`` over N matches.

    .venv/bin/python benchmarks/bench_bulk.py [--traces 1000000]

Starts a private redis-server (never port 6379), writes ``--traces`` ``trace_started``
events (tag ``grp=a``) with ``TagProducer`` and folds them with one ``tracetags serve``
worker; then, with the consumer stopped (the bulk command's own cost, not the fold's):

- *bulk*: ``tracetags tag set --filter "tags.grp = 'a'" all_flag yes --no-wait`` as a
  subprocess: wall time, peak RSS (``ru_maxrss`` of the child), events written (the stream
  grows by exactly ``--traces``, or the run fails);
- *reference*: the same number of raw ``XADD``\\ s of the same payload size, pipelined by
  redis-py in batches of 500, in this process.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from tracetags import Settings, TagProducer
from tracetags.client import Client
from tracetags.embedded import RedisServer
from tracetags.keys import Keys
from tracetags.serve import Supervisor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--traces", type=int, default=1_000_000)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="tt-bench-bulk-"))
    server = RedisServer(directory).start()
    settings = Settings(redis_url=server.url, namespace="bulk", flush_interval_ms=5)
    admin = redis.Redis.from_url(server.url)
    try:
        started = time.monotonic()
        with TagProducer(settings.replace(overflow="block")) as producer:
            for i in range(args.traces):
                producer.trace_started(f"t{i}", experiment_id="1", timestamp_ms=i,
                                       tags={"grp": "a"})  # fmt: skip
            receipt = producer.flush(600)
        written_s = time.monotonic() - started
        supervisor = Supervisor(settings, workers=1)
        import threading

        runner = threading.Thread(target=supervisor.run, daemon=True)
        runner.start()
        with Client(settings) as client:
            client.wait_applied(receipt, 3600)
        supervisor.stop()
        runner.join(60)
        folded_s = time.monotonic() - started - written_s
        stream = Keys("bulk").stream(0)
        before = admin.xlen(stream)
        env = {**os.environ, "TRACETAGS_REDIS_URL": server.url, "TRACETAGS_NAMESPACE": "bulk"}
        # The CLI under a wrapper that reports its own peak RSS (not the worker's).
        wrapper = (
            "import resource, runpy, sys\n"
            "sys.argv = ['tracetags', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('tracetags.cli', run_name='__main__')\n"
            "finally:\n    print('maxrss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
            " file=sys.stderr)\n"
        )
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", wrapper, "tag", "set", "--filter", "tags.grp = 'a'",
             "--no-wait", "all_flag", "yes"],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        bulk_s = time.monotonic() - started
        rss_kib = int(done.stderr.rsplit("maxrss_kib", 1)[-1].split()[0])
        added = admin.xlen(stream) - before
        if done.returncode != 0 or added != args.traces:
            raise SystemExit(f"bulk run failed ({done.returncode}, {added} written): "
                             f"{done.stderr[-2000:]}")  # fmt: skip
        payload = b"x" * len(admin.xrange(stream, "-", "+", count=1)[0][1][b"e"])
        reference = "bulk:reference"
        started = time.monotonic()
        pipe = admin.pipeline(transaction=False)
        for i in range(args.traces):
            pipe.xadd(reference, {"e": payload})
            if i % 500 == 499:
                pipe.execute()
        pipe.execute()
        reference_s = time.monotonic() - started
        print(
            f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, redis-server {admin.info()['redis_version']}"
        )
        print(
            f"setup: {args.traces} traces written in {written_s:.1f} s, folded in {folded_s:.1f} s"
        )
        print(f"tag set --filter over {args.traces} matches: {bulk_s:.1f} s "
              f"({args.traces / bulk_s:,.0f} traces/s), peak RSS {rss_kib / 1024:.0f} MiB; "
              f"written {added}")  # fmt: skip
        print(
            f"reference: {args.traces} raw pipelined XADDs (redis-py, 500 a batch): "
            f"{reference_s:.1f} s ({args.traces / reference_s:,.0f}/s)"
        )
    finally:
        admin.close()
        server.kill()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
