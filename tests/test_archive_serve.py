"""``tracetags serve`` runs the archiver beside its consumers: the log is archived and
trimmed while it is folded; without an archive location it says the log is unbounded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from tests.support.helpers import wait_until
from tracetags import Settings, TagProducer
from tracetags.archive import read_partition
from tracetags.client import Client
from tracetags.keys import Keys


def _serve(cwd: Path, env_extra: dict[str, str]) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACETAGS_")}
    env.update(env_extra)
    return subprocess.Popen(
        [sys.executable, "-m", "tracetags.cli", "serve"],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def test_serve_archives_and_trims_the_folded_log(
    redis_url: str, namespace: str, tmp_path: Path, r: redis.Redis
) -> None:
    archive_url = f"file://{tmp_path}/archive"
    proc = _serve(tmp_path, {
        "TRACETAGS_REDIS_URL": redis_url, "TRACETAGS_NAMESPACE": namespace,
        "TRACETAGS_ARCHIVE_URL": archive_url, "TRACETAGS_ARCHIVE_INTERVAL": "300ms",
        "TRACETAGS_LOG_RETENTION": "0",
    })  # fmt: skip
    settings = Settings(redis_url=redis_url, namespace=namespace, archive_url=archive_url)
    keys = Keys(namespace)
    try:
        with TagProducer(settings) as producer, Client(settings) as client:
            for i in range(300):
                producer.trace_started(f"tr-{i}", experiment_id="1", timestamp_ms=i,
                                       tags={"env": "prod"})  # fmt: skip
                producer.set_tags(f"tr-{i}", {"n": str(i)})
            receipt = producer.flush()
            written = [raw.decode() for raw, _ in r.xrange(keys.stream(0))]
            client.wait_applied(receipt, timeout=60)
            wait_until(lambda: r.xlen(keys.stream(0)) == 0, timeout=60, interval=0.1)
            # The archiver writes a run's status just after its trim: read one written since.
            trimmed_ms = int(time.time() * 1000)

            def run_since_the_trim() -> bool:
                archive = client.status().partitions[0].archive
                return archive is not None and (archive.last_run_ms or 0) >= trimmed_ms

            wait_until(run_since_the_trim, timeout=60, interval=0.1)
            archive = client.status().partitions[0].archive
            assert archive is not None and archive.archived_up_to == written[-1]
            assert archive.held_back == "" and archive.error is None
        archived = [entry_id for entry_id, _ in read_partition(settings, namespace, 0)]
        assert archived == written
    finally:
        out, err = _stop(proc)
    assert proc.returncode == 0, err
    assert f"archiving to {archive_url}" in out


def test_serve_says_the_log_is_unbounded_without_an_archive(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    proc = _serve(tmp_path, {"TRACETAGS_REDIS_URL": redis_url, "TRACETAGS_NAMESPACE": namespace})
    try:
        assert proc.stdout is not None
        wait_until(lambda: "export TRACETAGS_REDIS_URL" in proc.stdout.readline(), timeout=60)
    finally:
        _out, err = _stop(proc)
    assert "the log is unbounded" in err
    assert not (tmp_path / ".tracetags").exists()
