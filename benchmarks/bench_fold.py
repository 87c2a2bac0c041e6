"""The shipped consumer against a hand-written loop and the Function alone; freshness; memory.

    .venv/bin/python benchmarks/bench_fold.py [--events 200000] [--repeat 2] [--profile DIR]

Starts a private redis-server (AOF ``everysec``, like the embedded default; never port 6379)
and, in one run:

1. **fold rate** on one pre-filled stream: ``--events`` events of a realistic mix (from
   ``tracetags.traffic``: trace_started with tags and metadata, tags_set, trace_finished,
   some tags_deleted; a few thousand traces open at once), written once by ``TagProducer``
   and kept pristine in DB 1.  Before every run DB 0 is flushed and the pristine stream is
   COPYed back (and the AOF rewritten), so each run starts from the same state: the log, no
   group, no fold state.  The contenders alternate, ``--repeat`` times each; medians count:

   - *consumer*: the shipped FastStream app in its own process(es): ``tracetags serve``
     (supervisor + ``--workers`` spawned workers), as in production.  The group is created
     at ``$`` so the workers start idle; the clock starts when ``XGROUP SETID … 0`` hands
     them the log (precisely: at the last 2 ms sample before the group's first delivery, so
     their 100 ms poll does not count) and stops when everything is delivered and acked;
   - *hand loop*: redis-py ``XREADGROUP`` (COUNT = batch) → ``functions.decode_entries`` →
     ``functions.apply_batch``, in this process;
   - *Function alone*: every batch delivered (pending, so its XACKs do the same work) and
     decoded beforehand, its FCALL built by ``functions.apply_batch`` itself against a
     recording client; then only the FCALLs are timed.

   Besides events/s: Redis CPU (INFO cpu) and FCALL time (commandstats) per event, and the
   contender's own CPU per event (/proc of the workers, or this process).  After each run the
   state is fingerprinted (traces, keys of the partition, dead letters, ``Client.get_trace``
   of 300 sampled traces, loaded Function code) and must match across runs.
2. **freshness**, for each of ``--fresh-rates``: a consumer on an empty namespace; another
   process produces the realistic mix at that rate for ``--fresh-seconds``, while this one
   calls ``set_tags(trace, {"probe": <unique value>})`` ``--probe-rate`` times a second and
   polls (~every ms) until the value is in the tag-value index (SISMEMBER for the trace's
   number; ``Client.get_trace`` if that layout is not recognised: the Function updates state
   and indexes in one atomic call, so both become visible at the same instant).  Reports
   p50/p99/max, achieved produce and fold rates, the lag.
3. **memory per trace** at ``--memory-traces``: traces with 6 tags (the name + 5), 2 metadata
   keys, finished, folded through ``functions.apply_batch`` with no stream at all (nothing
   to subtract); ``used_memory`` after ``MEMORY PURGE`` before and after, per trace.

4. **source** (``--steps source``, not in the default steps): the cost of ``source`` on
   every event, A/B in one run: the rate step's log written with a realistic mix of writers
   (``source_of``) and the same entries without a source (as written before sources
   existed), folded alternately by the shipped consumer and the hand loop (``--repeat``
   rounds); the decode alone; and the archive's bytes per event with and without.

``--profile DIR`` adds one consumer run under ``py-spy record --idle`` (not counted) and
prints where the worker's time goes.  Only public calls (functions.apply_batch /
decode_entries / load, Keys, Client, the ``tracetags`` CLI) are used, so a new Function
library or key layout keeps working.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import itertools
import multiprocessing
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgspec
import redis

from tracetags import Settings, TagProducer, functions, schemas, traffic
from tracetags.client import Client
from tracetags.embedded import RedisServer
from tracetags.functions import BatchItem
from tracetags.keys import Keys, partition_of

NAMESPACE = "benchfold"
PRISTINE_DB = 1
VENV_BIN = Path(sys.executable).parent
#: Producer method, trace id, keyword arguments.
Call = tuple[str, str, dict[str, Any]]


# --- the workload ------------------------------------------------------------------------


def realistic_calls(events: int, *, seed: int, traces_per_s: float = 3_000) -> list[Call]:
    """``events`` producer calls of overlapping realistic traces, in the order they happen.

    Per trace: trace_started (name, environment/model_version/ab_variant, 2 metadata keys),
    tags_set of the rest (user_id, session_id, sla_tier, needs_review?, priority?) a little
    later, trace_finished after its duration, and for ~15% a tags_deleted afterwards.
    Traces start ``traces_per_s`` a (virtual) second, so a few thousand are open at once.
    """
    rng = random.Random(seed)
    timeline: list[tuple[float, int, int, Call]] = []
    step_ms = 1000 / traces_per_s
    for i, spec in enumerate(traffic.generate(events // 3 + 1, seed=seed)):
        start = i * step_ms
        first = {k: spec.tags[k] for k in ("environment", "model_version", "ab_variant")}
        rest = {k: v for k, v in spec.tags.items() if k not in first}
        common = {"experiment_id": spec.experiment_id, "timestamp_ms": spec.timestamp_ms}
        tid = spec.trace_id
        started = {**common, "name": spec.name, "metadata": spec.metadata, "tags": first}
        timeline.append((start, i, 0, ("trace_started", tid, started)))
        timeline.append((start + rng.uniform(1, 50), i, 1, ("set_tags", tid, {"tags": rest})))
        end = start + spec.execution_time_ms
        finished = {
            **common,
            "execution_time_ms": spec.execution_time_ms,
            "status": spec.status,
        }
        timeline.append((end, i, 2, ("trace_finished", tid, finished)))
        if rng.random() < 0.15:
            keys = [rng.choice(("ab_variant", "priority", "needs_review"))]
            timeline.append(
                (end + rng.uniform(10, 5_000), i, 3, ("delete_tags", tid, {"keys": keys}))
            )
    timeline.sort(key=lambda t: (t[0], t[1], t[2]))
    return [call for *_, call in timeline[:events]]


def kinds(calls: list[Call]) -> str:
    counts = collections.Counter(method for method, _, _ in calls)
    return ", ".join(f"{name} {n:,}" for name, n in counts.most_common())


def play(producer: TagProducer, call: Call) -> None:
    method, trace_id, kwargs = call
    getattr(producer, method)(trace_id, **kwargs)


# --- the Redis under test ----------------------------------------------------------------


@dataclass
class Bench:
    server: RedisServer
    settings: Settings
    batch: int
    workers: int = 1
    events: int = 0
    logs: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tt-bench-logs-")))

    def __post_init__(self) -> None:
        self.keys = Keys(self.settings.namespace)
        self.group = self.settings.consumer_group
        self.stream = self.keys.stream(0)
        self.db0 = redis.Redis.from_url(self.server.url)
        self.pristine = redis.Redis(host="127.0.0.1", port=self.server.port, db=PRISTINE_DB)

    @property
    def url(self) -> str:
        return self.server.url

    def reset(self, *, with_log: bool = True, log: str | None = None) -> None:
        """DB 0 empty but for a fresh copy of the pristine log (no group; ``log``: another
        pristine stream than the usual one); AOF rewritten first, so that no rewrite from an
        earlier run lands in this one."""
        self.db0.flushdb()
        if with_log:
            self.pristine.copy(log or self.stream, self.stream, destination_db=0)
        self.db0.bgrewriteaof()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            info = self.db0.info("persistence")
            if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
                break
            time.sleep(0.05)
        self.db0.execute_command("MEMORY", "PURGE")
        self.db0.config_resetstat()

    def group_info(self) -> dict[str, Any]:
        for info in self.db0.xinfo_groups(self.stream):
            if info["name"].decode() == self.group:
                return dict(info)
        return {}

    def server_stats(self) -> dict[str, float]:
        """Server-side µs spent in FCALL and XREADGROUP since the reset, and forks."""
        stats = self.db0.info("commandstats")
        out = {
            name: float(stats.get(f"cmdstat_{name}", {}).get("usec", 0))
            for name in ("fcall", "xreadgroup")
        }
        out["forks"] = float(self.db0.info("stats")["total_forks"])
        cpu = self.db0.info("cpu")
        out["cpu_s"] = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
        return out

    def fingerprint(self, sample: list[str]) -> str:
        """The folded state, summarised: traces, keys, dead letters, sampled traces."""
        with Client(self.settings) as client:
            status = client.status()
            traces = [client.get_trace(trace_id) for trace_id in sample]
        summary = {
            "traces": sum(p.traces for p in status.partitions),
            "dead": sum(p.dead_letters for p in status.partitions),
            # keys of the partition only: the consumer also makes namespace-wide keys (meta);
            # the history index (hx) is part of the log, not of the state
            "keys": sum(
                1 for k in self.db0.scan_iter(f"{self.keys.prefix(0)}:*", 10_000) if b":hx" not in k
            ),
            "sample": [None if t is None else msgspec.to_builtins(t.info) for t in traces],
        }
        digest = hashlib.sha256(msgspec.json.encode(summary)).hexdigest()[:12]
        return (
            f"{summary['traces']:,} traces, {summary['keys']:,} keys, {digest} "
            f"(Function code {self.library_digest()})"
        )

    def library_digest(self) -> str:
        """Which Function code is loaded: the consumer loads the package's current file at
        start, so an edit of the .lua during the benchmark shows up here."""
        libraries: Any = self.db0.function_list(withcode=True)
        codes = []
        for library in libraries:
            info = (
                library
                if isinstance(library, dict)
                else dict(zip(library[::2], library[1::2], strict=True))
            )
            info = {k.decode() if isinstance(k, bytes) else k: v for k, v in info.items()}
            name = info["library_name"]
            name = name.decode() if isinstance(name, bytes) else name
            code = info["library_code"]
            if name.startswith("tracetags"):
                codes.append(name.encode() + (code.encode() if isinstance(code, str) else code))
        return hashlib.sha256(b"".join(sorted(codes))).hexdigest()[:8]


def fill(bench: Bench, calls: list[Call]) -> float:
    """Write the log once with the producer; move it to the pristine DB; return events/s."""
    bench.db0.flushall()
    settings = bench.settings.replace(buffer_size=len(calls) + 1)
    t0 = time.perf_counter()
    with TagProducer(settings) as producer:
        for call in calls:
            play(producer, call)
        producer.flush(timeout=300)
        dropped = producer.stats().dropped
    elapsed = time.perf_counter() - t0
    length = bench.db0.xlen(bench.stream)
    if dropped or length != len(calls):
        raise SystemExit(f"fill wrote {length} of {len(calls)} events ({dropped} dropped)")
    bench.db0.move(bench.stream, PRISTINE_DB)
    bench.events = len(calls)
    return len(calls) / elapsed


# --- the shipped consumer, as a process ---------------------------------------------------


class ServeProcess:
    """``tracetags --redis-url … --namespace … serve`` (supervisor + one spawned worker)."""

    def __init__(self, bench: Bench, label: str, extra_env: dict[str, str] | None = None) -> None:
        self.workers = bench.workers
        env = {
            **os.environ,
            "TRACETAGS_CONSUMER_BATCH_SIZE": str(bench.batch),
            "TRACETAGS_CONSUMER_GROUP": bench.group,
            **(extra_env or {}),
        }
        self.log_path = bench.logs / f"serve-{label}.log"
        self._log = self.log_path.open("wb")
        command = [str(VENV_BIN / "tracetags"), "--redis-url", bench.url]
        command += [
            "--namespace",
            bench.settings.namespace,
            "serve",
            "--workers",
            str(self.workers),
        ]
        self.process = subprocess.Popen(command, env=env, stdout=self._log, stderr=self._log)
        self.bench = bench

    def wait_workers(self, timeout: float = 60.0) -> list[int]:
        """The workers' pids, once they are parked in XREADGROUP (Redis 7.0 lists a consumer in
        XINFO CONSUMERS only after its first delivery, so CLIENT LIST tells instead)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"tracetags serve exited:\n{self.log_tail()}")
            workers = [p for p, cmd in children_of(self.process.pid) if "spawn_main" in cmd]
            clients = self.bench.db0.client_list()
            reading = sum(c.get("cmd") == "xreadgroup" for c in clients)
            # >=: with an archive configured, serve also runs its archiver as a process
            if len(workers) >= self.workers and reading >= self.workers:
                return workers
            time.sleep(0.05)
        raise SystemExit(
            f"the consumer did not start reading within {timeout:g}s:\n{self.log_tail()}"
        )

    def log_tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(45)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def proc_stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (index 1 is the parent pid,
    11-14 utime, stime, cutime, cstime)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    fields = proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pids: list[int]) -> float:
    """CPU seconds of the processes ``pids`` and all their descendants so far, including
    children already reaped (``cutime``/``cstime``: Redis's AOF-rewrite forks)."""
    total, seen, todo = 0.0, set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += sum(int(f) for f in proc_stat(pid)[11:15]) / os.sysconf("SC_CLK_TCK")
            todo.extend(child for child, _ in children_of(pid))
    return total


def machine_busy_s() -> float:
    """CPU seconds all CPUs of the machine spent busy (not idle, not waiting for I/O)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_of(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(proc_stat(int(stat.parent.name))[1]) == pid:
                cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
                found.append((int(stat.parent.name), cmdline.decode(errors="replace")))
    return found


@dataclass
class Run:
    contender: str
    events: int
    elapsed_s: float
    server: dict[str, float]
    state: str
    #: CPU seconds of the process running the contender (the consumer's worker, or this one).
    client_cpu_s: float

    @property
    def rate(self) -> float:
        return self.events / self.elapsed_s


def run_consumer(
    bench: Bench,
    sample: list[str],
    profile: Path | None = None,
    log: str | None = None,
    env: dict[str, str] | None = None,
) -> Run:
    bench.reset(log=log)
    bench.db0.xgroup_create(bench.stream, bench.group, id="$")
    serve = ServeProcess(bench, "profile" if profile else "rate", env)
    spy: subprocess.Popen[bytes] | None = None
    try:
        pids = serve.wait_workers()
        time.sleep(0.5)  # its subscriber is now parked in XREADGROUP BLOCK
        if profile is not None:
            spy = start_py_spy(pids[0], profile)
        before = bench.server_stats()
        cpu_before = sum(process_cpu_s(pid) for pid in pids)
        last_idle = time.perf_counter()
        bench.db0.xgroup_setid(bench.stream, bench.group, id="0")
        deadline = time.monotonic() + 300
        last_id = bench.db0.xinfo_stream(bench.stream)["last-generated-id"]
        while time.monotonic() < deadline:
            now = time.perf_counter()
            info = bench.group_info()
            delivered = info["last-delivered-id"]
            if delivered in (b"0-0", "0-0"):
                last_idle = now
            elif delivered == last_id and info["pending"] == 0:
                break
            time.sleep(0.002)
        else:
            raise SystemExit("the consumer did not finish the log within 300 s")
        elapsed = now - last_idle
        after = bench.server_stats()
        client_cpu = sum(process_cpu_s(pid) for pid in pids) - cpu_before
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(60)
        serve.stop()
    server = {k: after[k] - before.get(k, 0) for k in after}
    state = bench.fingerprint(sample)
    return Run("consumer", bench.events, elapsed, server, state, client_cpu)


# --- the hand-written loop and the Function alone -----------------------------------------


def run_hand_loop(bench: Bench, sample: list[str], log: str | None = None) -> Run:
    bench.reset(log=log)
    bench.db0.xgroup_create(bench.stream, bench.group, id="0")
    client = redis.Redis.from_url(bench.url)
    stream, group = bench.stream, bench.group
    before = bench.server_stats()
    done = 0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    deadline = time.monotonic() + 300
    while done < bench.events and time.monotonic() < deadline:
        reply: Any = client.xreadgroup(group, "hand", {stream: ">"}, count=bench.batch, block=100)
        if not reply:
            continue
        items = functions.decode_entries(reply[0][1])
        functions.apply_batch(client, bench.keys, 0, group, items)
        done += len(items)
    elapsed = time.perf_counter() - t0
    client_cpu = time.process_time() - cpu0
    after = bench.server_stats()
    client.close()
    server = {k: after[k] - before.get(k, 0) for k in after}
    return Run("hand loop", done, elapsed, server, bench.fingerprint(sample), client_cpu)


class RecordingClient:
    """Stands in for redis.Redis in ``functions.apply_batch``: records the FCALL it would
    make (so the replay is exactly the production call) and answers "all applied"."""

    def __init__(self, real: redis.Redis) -> None:
        self.real = real
        self.calls: list[tuple[Any, ...]] = []

    def fcall(self, *args: Any) -> list[int]:
        self.calls.append(args)
        return [0, 0, 0]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def run_function_alone(bench: Bench, sample: list[str]) -> Run:
    bench.reset()
    bench.db0.xgroup_create(bench.stream, bench.group, id="0")
    client = redis.Redis.from_url(bench.url)
    recorder = RecordingClient(client)
    while True:  # deliver everything (pending, as the consumer's batches are) and decode
        reply: Any = client.xreadgroup(bench.group, "alone", {bench.stream: ">"}, count=bench.batch)
        if not reply or not reply[0][1]:
            break
        items = functions.decode_entries(reply[0][1])
        functions.apply_batch(recorder, bench.keys, 0, bench.group, items)  # type: ignore[arg-type]
    before = bench.server_stats()
    applied = 0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for call in recorder.calls:
        applied += int(client.fcall(*call)[0])
    elapsed = time.perf_counter() - t0
    client_cpu = time.process_time() - cpu0
    after = bench.server_stats()
    client.close()
    if applied != bench.events:
        raise SystemExit(f"Function alone applied {applied} of {bench.events} events")
    server = {k: after[k] - before.get(k, 0) for k in after}
    state = bench.fingerprint(sample)
    return Run("Function alone", applied, elapsed, server, state, client_cpu)


# --- py-spy -------------------------------------------------------------------------------


def start_py_spy(pid: int, directory: Path) -> subprocess.Popen[bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy", path=str(VENV_BIN)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    command = [spy, "record", "--pid", str(pid), "--idle", "--rate", "250", "--format", "raw"]
    command += ["-o", str(directory / "consumer.collapsed")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # py-spy attaches
    if process.poll() is not None:
        err = process.stderr.read().decode() if process.stderr else ""
        raise SystemExit(f"py-spy failed: {err}")
    return process


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]+)(?::\d+)?\)$")
#: Each sample of the worker's main thread goes to the first category that matches it.
CATEGORIES: list[tuple[str, Callable[[list[str], str], bool]]] = [
    ("idle in epoll (waiting for Redis: FCALL running, or no entries)",
     lambda names, path: names[-1] == "select"),
    ("building FCALL args (functions.build_args)",
     lambda names, path: "build_args" in names or "build_batch" in names),
    ("decoding entries (consumer.decode_entries, msgspec)",
     lambda names, path: "decode_entries" in names),
    ("rest of Folder.apply / apply_batch_async (send, result)",
     lambda names, path: "apply" in names or "apply_batch_async" in names),
    ("reclaim loop + heartbeat tasks",
     lambda names, path: "reclaim_loop" in names or "heartbeat" in names),
    ("redis-py reading/parsing replies (XREADGROUP)",
     lambda names, path: "read_response" in names),
    ("FastStream subscriber machinery",
     lambda names, path: "faststream/" in path),
    ("asyncio event loop and the rest", lambda names, path: True),
]  # fmt: skip


def summarise_profile(path: Path, top: int = 12) -> list[str]:
    """Where the worker's samples went: categories and the heaviest own frames."""
    own: collections.Counter[str] = collections.Counter()
    shares: collections.Counter[str] = collections.Counter()
    total = other_threads = helper_busy = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        names, files = [], []
        for frame in stack.split(";"):
            m = _FRAME.match(frame)
            func, file = (m["func"], m["file"]) if m else (frame, "")
            names.append(func.rsplit(".", 1)[-1])
            files.append(file)
        if "(threading.py" in stack:  # FastStream's thread pool (anyio) for sync callbacks
            if names[-1] in ("wait", "acquire", "get"):
                other_threads += count
                continue
            helper_busy += count
        total += count
        own[f"{stack.split(';')[-1]}"] += count
        joined = ";".join(files)
        shares[next(label for label, match in CATEGORIES if match(names, joined))] += count
    if not total:
        return ["(no samples)"]
    lines = [
        f"{total:,} samples of the worker (py-spy --idle): event-loop thread, plus "
        f"{helper_busy:,} busy samples of FastStream's thread pool, which runs our sync "
        f"parser/decoder ({other_threads:,} idle pool samples left out)"
    ]
    lines += [f"  {shares[label] / total:6.1%}  {label}" for label, _ in CATEGORIES]
    lines.append("heaviest frames (self):")
    lines += [f"  {c / total:6.1%}  {name}" for name, c in own.most_common(top)]
    return lines


# --- freshness ----------------------------------------------------------------------------


def load_worker(url: str, namespace: str, rate: int, seconds: float, conn: Connection) -> None:
    """Background load (own process): the realistic mix at ``rate`` events/s, paced per ms."""
    calls = realistic_calls(int(rate * seconds) + rate, seed=99)
    producer = TagProducer(Settings(redis_url=url, namespace=namespace))
    conn.send("ready")
    conn.recv()
    t0 = time.perf_counter()
    end = t0 + seconds
    sent = 0
    behind_max = 0
    while sent < len(calls):
        now = time.perf_counter()
        if now >= end:
            break
        due = min(int((now - t0) * rate), len(calls))
        behind_max = max(behind_max, due - sent)
        while sent < due:
            play(producer, calls[sent])
            sent += 1
        time.sleep(0.001)
    elapsed = time.perf_counter() - t0
    producer.flush(timeout=60)
    stats = producer.stats()
    producer.close()
    conn.send({"sent": sent, "elapsed": elapsed, "dropped": stats.dropped, "behind": behind_max})


class Visibility:
    """Whether a probe's tag value is in the index yet: SISMEMBER of the tag-value set for
    the trace's number (``Keys.tag_value`` / ``Keys.trace_ids``), else ``Client.get_trace``."""

    def __init__(self, bench: Bench, probes: list[str]) -> None:
        self.bench = bench
        self.client = Client(bench.settings)
        self.numbers: dict[str, bytes] = {}
        self.by_index = hasattr(bench.keys, "tag_value") and hasattr(bench.keys, "trace_ids")
        if self.by_index:
            for trace_id in probes:
                partition = partition_of(trace_id, self.client.partitions)
                number = bench.db0.hget(bench.keys.trace_ids(partition), trace_id)
                if number is None:
                    self.by_index = False
                    break
                self.numbers[trace_id] = number
        if self.by_index and not all(self.check([(probes[0], f"init-{probes[0]}")])):
            self.by_index = False  # a layout this script does not know: read the state
        self.method = "SISMEMBER tag-value index" if self.by_index else "Client.get_trace"

    def check(self, probes: list[tuple[str, str]]) -> list[bool]:
        if not self.by_index:
            out = []
            for trace_id, value in probes:
                trace = self.client.get_trace(trace_id)
                out.append(trace is not None and trace.info.tags.get("probe") == value)
            return out
        pipe = self.bench.db0.pipeline(transaction=False)
        parts = self.client.partitions
        for trace_id, value in probes:
            key = self.bench.keys.tag_value(partition_of(trace_id, parts), "probe", value)
            pipe.sismember(key, self.numbers[trace_id])
        return [bool(x) for x in pipe.execute()]


#: How often the freshness step samples the group's lag and whether an AOF rewrite runs.
LAG_SAMPLE_S = 0.25


@dataclass
class Freshness:
    latencies_ms: list[float]
    timeouts: int
    method: str
    load: dict[str, Any]
    probes_sent: int
    fold_rate: float
    drain_s: float
    redis_cpu: dict[str, float] = field(default_factory=dict)
    commands: list[tuple[str, int, float]] = field(default_factory=list)
    forks: int = 0
    fork_ms: float = 0.0
    delayed_fsyncs: int = 0
    #: (seconds since the load started, consumer-group lag, AOF rewrite in progress), one
    #: sample every LAG_SAMPLE_S
    timeline: list[tuple[float, int, bool]] = field(default_factory=list)
    #: CPU seconds over the load: every process of the machine, and those of this benchmark
    #: (itself, the load process, the consumer, redis-server with its rewrite forks)
    busy_s: float = 0.0
    own_s: float = 0.0

    @property
    def max_lag(self) -> int:
        return max((lag for _, lag, _ in self.timeline), default=0)

    def pct(self, q: float) -> float:
        """Percentile over every timed probe; one never seen counts as infinitely late."""
        data = sorted(self.latencies_ms) + [float("inf")] * self.timeouts
        return data[min(len(data) - 1, int(q * len(data)))] if data else float("nan")


def run_freshness(
    bench: Bench, rate: int, seconds: float, probe_rate: int, timeout_s: float = 5.0
) -> Freshness:
    bench.reset(with_log=False)
    serve = ServeProcess(bench, "freshness")
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    loader = ctx.Process(
        target=load_worker, args=(bench.url, bench.settings.namespace, rate, seconds, child)
    )
    try:
        serve.wait_workers()
        loader.start()
        probe_ids = [f"tr-probe-{i:05d}" for i in range(1024)]
        producer = TagProducer(bench.settings)
        for trace_id in probe_ids:
            producer.trace_started(
                trace_id, experiment_id="1", name="probe", tags={"probe": f"init-{trace_id}"}
            )
        with Client(bench.settings) as client:
            client.wait_applied(producer.flush(), timeout=60)
        visibility = Visibility(bench, probe_ids)
        if not parent.poll(120) or parent.recv() != "ready":
            raise SystemExit("the load process did not get ready")
        parent.send("go")
        start_info = bench.group_info()
        bench.db0.config_resetstat()
        cpu0 = bench.db0.info("cpu")
        forks0 = int(bench.db0.info("stats")["total_forks"])
        delayed0 = int(bench.db0.info("persistence").get("aof_delayed_fsync", 0))
        server_pid = bench.server.process.pid if bench.server.process else 0
        ours = [os.getpid(), loader.pid or 0, serve.process.pid, server_pid]
        busy0, own0 = machine_busy_s(), tree_cpu_s(ours)
        busy_s = own_s = 0.0
        t_start = time.perf_counter()
        end = t_start + seconds
        warm_until = t_start + 1.0
        outstanding: dict[tuple[str, str], float] = {}
        latencies: list[float] = []
        timeouts = sent = 0
        next_probe = t_start
        next_lag = t_start
        timeline: list[tuple[float, int, bool]] = []
        read_at_end: int | None = None
        while True:
            now = time.perf_counter()
            if now >= end and read_at_end is None:
                read_at_end = int(bench.group_info()["entries-read"] or 0)
                busy_s, own_s = machine_busy_s() - busy0, tree_cpu_s(ours) - own0
            if now >= end and not outstanding:
                break
            if now >= end + timeout_s + 1:
                break
            while now < end and now >= next_probe:
                trace_id = probe_ids[sent % len(probe_ids)]
                value = f"v{sent}"
                t_call = time.perf_counter()
                producer.set_tags(trace_id, {"probe": value})
                if t_call >= warm_until:
                    outstanding[(trace_id, value)] = t_call
                sent += 1
                next_probe += 1 / probe_rate
            if outstanding:
                # Only the oldest few: one consumer folds the log in order, so a younger
                # probe is rarely visible before an older one, and this bounds the polling
                # when the fold lags (a probe that waited in line is still timed correctly
                # to within an iteration, or counted as a time-out).
                pending = list(itertools.islice(outstanding, 4))
                seen = visibility.check(pending)
                now = time.perf_counter()
                for probe, ok in zip(pending, seen, strict=True):
                    if ok:
                        latencies.append((now - outstanding.pop(probe)) * 1000)
                    elif now - outstanding[probe] > timeout_s:
                        outstanding.pop(probe)
                        timeouts += 1
            if now >= next_lag:
                lag = int(bench.group_info().get("lag") or 0)
                rewriting = bool(bench.db0.info("persistence")["aof_rewrite_in_progress"])
                timeline.append((now - t_start, lag, rewriting))
                next_lag = now + LAG_SAMPLE_S
            time.sleep(0.001)
        load: dict[str, Any] = parent.recv() if parent.poll(90) else {}
        drain_start = time.perf_counter()
        last_id = bench.db0.xinfo_stream(bench.stream)["last-generated-id"]
        while time.perf_counter() - drain_start < 60:
            info = bench.group_info()
            if info["last-delivered-id"] == last_id and info["pending"] == 0:
                break
            time.sleep(0.005)
        drain_s = max(0.0, time.perf_counter() - max(drain_start, end))
        # Where Redis spent its time over the load and the drain (every command of every
        # client: the load's XADDs, the fold's FCALLs and reads, the probes' polling).
        cpu1 = bench.db0.info("cpu")
        redis_cpu = {
            kind: float(cpu1[f"used_cpu_{kind}_main_thread"])
            - float(cpu0[f"used_cpu_{kind}_main_thread"])
            for kind in ("user", "sys")
        }
        server = bench.db0.info("stats")
        forks = int(server["total_forks"]) - forks0
        fork_ms = int(server["latest_fork_usec"]) / 1000
        delayed = int(bench.db0.info("persistence").get("aof_delayed_fsync", 0)) - delayed0
        stats = bench.db0.info("commandstats")
        commands = sorted(
            ((name[8:], int(v["calls"]), float(v["usec"])) for name, v in stats.items()),
            key=lambda c: -c[2],
        )
        folded = (read_at_end or 0) - int(start_info["entries-read"] or 0)
        fold_rate = folded / seconds
        producer.close()
        visibility.client.close()
    finally:
        loader.join(30)
        if loader.is_alive():
            loader.kill()
        serve.stop()
    return Freshness(
        latencies, timeouts, visibility.method, load, sent, fold_rate, drain_s,
        redis_cpu, commands, forks, fork_ms, delayed, timeline, busy_s, own_s,
    )  # fmt: skip


# --- memory -------------------------------------------------------------------------------


def memory_items(traces: int, events_per_trace: int, seed: int = 5) -> Iterator[BatchItem]:
    """The issue's profile in log order: 6 tags (name + 5), 2 metadata keys, finished.

    With 3 events per trace: trace_started (name, 2 tags, metadata), tags_set (3 tags),
    trace_finished; with 1: one trace_finished carrying all of it (same final state, a third
    of the Function calls: how the 1M-trace step loads in reasonable time).
    """
    ms, seq = 1_780_000_000_000, 0

    def entry_id() -> str:
        nonlocal ms, seq
        seq += 1
        if seq == 8:
            ms, seq = ms + 1, 0
        return f"{ms}-{seq}"

    for spec in traffic.generate(traces, seed=seed):
        tid = spec.trace_id
        first = {k: spec.tags[k] for k in ("environment", "model_version")}
        rest = {k: spec.tags[k] for k in ("user_id", "session_id", "sla_tier")}
        common: dict[str, Any] = {"trace_id": tid, "emitted_at_ms": 1}
        times = {"experiment_id": spec.experiment_id, "timestamp_ms": spec.timestamp_ms}
        if events_per_trace == 3:
            started = schemas.TraceStarted(
                **common, **times, event_id=schemas.new_event_id(), name=spec.name,
                metadata=spec.metadata, tags=first,
            )  # fmt: skip
            yield entry_id(), started
            tags_set = schemas.TagsSet(**common, event_id=schemas.new_event_id(), tags=rest)
            yield entry_id(), tags_set
            extra: dict[str, Any] = {}
        else:
            extra = {"name": spec.name, "metadata": spec.metadata, "tags": {**first, **rest}}
        finished = schemas.TraceFinished(
            **common, **times, **extra, event_id=schemas.new_event_id(),
            execution_time_ms=spec.execution_time_ms, status=spec.status,
        )  # fmt: skip
        yield entry_id(), finished


def run_memory(bench: Bench, traces: int, events_per_trace: int) -> tuple[float, float, float]:
    """(bytes per trace, seconds, events/s) for ``traces`` folded traces."""
    client = bench.db0
    client.flushall()
    deadline = time.monotonic() + 120
    while client.info("memory")["lazyfree_pending_objects"] and time.monotonic() < deadline:
        time.sleep(0.1)  # the previous run's keys, still being freed
    functions.load(client)
    client.execute_command("MEMORY", "PURGE")
    before = int(client.info("memory")["used_memory"])
    t0 = time.perf_counter()
    batch: list[BatchItem] = []
    events = 0
    for item in memory_items(traces, events_per_trace):
        batch.append(item)
        if len(batch) == bench.batch:
            functions.apply_batch(client, bench.keys, 0, bench.group, batch)
            events += len(batch)
            batch = []
    if batch:
        functions.apply_batch(client, bench.keys, 0, bench.group, batch)
        events += len(batch)
    elapsed = time.perf_counter() - t0
    if client.exists(bench.stream):
        raise SystemExit("the memory run must not have a stream")
    client.execute_command("MEMORY", "PURGE")
    after = int(client.info("memory")["used_memory"])
    with Client(bench.settings) as reader:
        folded = sum(p.traces for p in reader.status().partitions)
    if folded != traces:
        raise SystemExit(f"memory run folded {folded} traces, expected {traces}")
    client.flushall(asynchronous=True)  # a million traces: freed in the background
    return (after - before) / traces, elapsed, events / elapsed


# --- report -------------------------------------------------------------------------------


def machine(server: redis.Redis) -> str:
    model = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    info = server.info("server")
    return (
        f"{os.cpu_count()} CPUs ({model}), {mem_gib:.0f} GiB RAM, {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}, Redis "
        f"{info['redis_version']} (AOF everysec), redis-py {redis.__version__}, "
        f"FastStream {version('faststream')}, msgspec {msgspec.__version__}"
    )


def ms(value: float) -> str:
    return "> 5 s (never seen)" if value == float("inf") else f"{value:,.1f} ms"


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "meets" if ok else "MISSES"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="events in the log")
    parser.add_argument("--batch", type=int, default=Settings().consumer_batch_size)
    parser.add_argument("--repeat", type=int, default=2, help="runs per contender")
    parser.add_argument("--workers", type=int, default=1, help="tracetags serve --workers")
    parser.add_argument(
        "--fresh-rates", default="10000,5000", help="background events/s, comma-separated"
    )
    parser.add_argument("--fresh-seconds", type=float, default=25.0)
    parser.add_argument("--probe-rate", type=int, default=200, help="probe set_tags per s")
    parser.add_argument("--memory-traces", default="100000,1000000", help="comma-separated")
    parser.add_argument("--steps", default="rate,freshness,memory")
    parser.add_argument("--profile", type=Path, help="also profile one consumer run here")
    parser.add_argument(
        "--redis-config",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="CONFIG SET on the private redis-server before the steps (repeatable), "
        "e.g. auto-aof-rewrite-percentage=0",
    )
    args = parser.parse_args()
    steps = set(args.steps.split(","))

    directory = Path(tempfile.mkdtemp(prefix="tt-bench-fold-"))
    server = RedisServer(directory).start()
    settings = Settings(redis_url=server.url, namespace=NAMESPACE)
    bench = Bench(server, settings, args.batch, args.workers)
    started = time.perf_counter()
    try:
        for item in args.redis_config:
            name, _, value = item.partition("=")
            bench.db0.config_set(name, value)
        print(f"machine: {machine(bench.db0)}")
        if args.redis_config:
            print(f"redis config set: {', '.join(args.redis_config)}")
        print(
            f"batch {args.batch} entries, 1 partition, consumer workers {args.workers}; "
            f"redis-server {server.url}; load average {os.getloadavg()[0]:.1f}\n"
        )
        if "rate" in steps:
            rate_step(bench, args.events, args.repeat, args.profile)
        if "freshness" in steps:
            for rate in [int(r) for r in args.fresh_rates.split(",") if r]:
                freshness_step(bench, rate, args.fresh_seconds, args.probe_rate)
        if "memory" in steps:
            memory_step(bench, [int(n) for n in args.memory_traces.split(",") if n])
        if "source" in steps:
            source_step(bench, args.events, args.repeat)
        if "index" in steps:
            index_step(bench, args.events, args.repeat)
        print(
            f"\ntotal {time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.1f}"
        )
    finally:
        bench.db0.close()
        bench.pristine.close()
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(bench.logs, ignore_errors=True)


def rate_step(bench: Bench, events: int, repeat: int, profile: Path | None) -> None:
    calls = realistic_calls(events, seed=7)
    produce_rate = fill(bench, calls)
    print(
        f"log: {events:,} events ({kinds(calls)}), written by TagProducer at "
        f"{produce_rate:,.0f} events/s"
    )
    traces = list(dict.fromkeys(trace_id for _, trace_id, _ in calls))
    sample = random.Random(3).sample(traces, 300)
    contenders = [run_consumer, run_hand_loop, run_function_alone]
    runs: dict[str, list[Run]] = collections.defaultdict(list)
    for round_no in range(repeat):
        for contender in contenders:
            run = contender(bench, sample)
            runs[run.contender].append(run)
            print(
                f"  round {round_no + 1}: {run.contender:15s} {run.rate:9,.0f} events/s "
                f"({run.elapsed_s:5.2f} s, forks {run.server['forks']:.0f}, "
                f"load {os.getloadavg()[0]:.1f}, Redis CPU "
                f"{run.server['cpu_s'] / run.elapsed_s:.0%}, client CPU "
                f"{run.client_cpu_s / run.elapsed_s:.0%}) "
                f"state {run.state}"
            )
    states = {run.state for group in runs.values() for run in group}
    print(f"same final state in every run: {'yes' if len(states) == 1 else 'NO: ' + str(states)}")
    print()
    header = (
        f"{'contender':44s} {'events/s median':>15s} {'min..max':>17s} "
        f"{'Redis CPU':>9s} {'FCALL':>6s} {'client CPU':>10s}"
    )
    print(header)
    print(f"{'':44s} {'':>15s} {'':>17s} {'µs/event':>9s} {'µs/ev':>6s} {'µs/event':>10s}")
    print("-" * len(header))
    medians: dict[str, float] = {}
    labels = {
        "consumer": "shipped consumer (tracetags serve, own proc)",
        "hand loop": "hand XREADGROUP loop (redis-py, sync)",
        "Function alone": "Function alone (pre-built FCALLs)",
    }
    for name, group in runs.items():
        rates = [r.rate for r in group]
        medians[name] = statistics.median(rates)
        mid = sorted(group, key=lambda r: r.rate)[(len(group) - 1) // 2]
        per_event = 1e6 / bench.events
        print(
            f"{labels[name]:44s} {medians[name]:15,.0f} "
            f"{min(rates):8,.0f}..{max(rates):<8,.0f} {mid.server['cpu_s'] * per_event:9.1f} "
            f"{mid.server['fcall'] / bench.events:6.1f} {mid.client_cpu_s * per_event:10.1f}"
        )
    hand = medians["consumer"] / medians["hand loop"]
    alone = medians["consumer"] / medians["Function alone"]
    print(f"\nconsumer / hand loop      = {hand:.2f}  (target >= 0.9: {verdict(hand, 0.9)})")
    print(f"consumer / Function alone = {alone:.2f}  (target >= 0.5: {verdict(alone, 0.5)})")
    if profile is not None:
        print("\nprofiling one more consumer run (py-spy, not counted) ...")
        run = run_consumer(bench, sample, profile)
        print(
            f"  profiled run: {run.rate:,.0f} events/s; raw stacks in "
            f"{profile / 'consumer.collapsed'}"
        )
        for line in summarise_profile(profile / "consumer.collapsed"):
            print(f"  {line}")


# --- what ``source`` on every event costs ------------------------------------------------


def source_of(call: Call) -> str:
    """A realistic mix of writers: the traced app on four hosts writes the traces, a
    labelling job their tags, a person at the CLI the deletions."""
    method, trace_id, _ = call
    if method in ("trace_started", "trace_finished"):
        return f"chat-api@web-{zlib.crc32(trace_id.encode()) % 4}"
    return "labeler/v2" if method == "set_tags" else "cli:alice"


def source_step(bench: Bench, events: int, repeat: int) -> None:
    """A/B in one run: the same log (same entry ids and events) with and without ``source``
    (the events as written before sources existed), folded by the shipped consumer and by
    the hand loop, alternating; then the archive's bytes per event of both."""
    from tracetags.archive import segments

    calls = [(m, t, {**kw, "source": source_of((m, t, kw))}) for m, t, kw in
             realistic_calls(events, seed=7)]  # fmt: skip
    fill(bench, calls)
    plain = f"{bench.stream}:without-source"
    rows: dict[str, list[segments.Row]] = {"with": [], "without": []}
    sizes = {"with": 0, "without": 0}
    cursor = "-"
    while True:
        page: Any = bench.pristine.xrange(bench.stream, cursor, "+", count=10_000)
        pipe = bench.pristine.pipeline(transaction=False)
        for entry_id, fields in page:
            event = schemas.decode(fields[schemas.ENTRY_FIELD])
            old = msgspec.structs.replace(event, source=None)
            payload = schemas.encode(old)
            pipe.xadd(plain, {schemas.ENTRY_FIELD: payload}, id=entry_id)
            rows["with"].append((entry_id.decode(), event))
            rows["without"].append((entry_id.decode(), old))
            sizes["with"] += len(fields[schemas.ENTRY_FIELD])
            sizes["without"] += len(payload)
        pipe.execute()
        if len(page) < 10_000:
            break
        cursor = "(" + page[-1][0].decode()
    n = len(rows["with"])
    print(
        f"log: {n:,} events ({kinds(calls)}); payload {sizes['without'] / n:.1f} B/event "
        f"without source, {sizes['with'] / n:.1f} B with ({len({source_of(c) for c in calls})} "
        "writers)"
    )
    traces = list(dict.fromkeys(trace_id for _, trace_id, _ in calls))
    sample = random.Random(3).sample(traces, 300)
    runs: dict[str, list[Run]] = collections.defaultdict(list)
    variants = [("with", None), ("without", plain)]
    for round_no in range(repeat):
        # alternate which variant goes first, so a drift of the machine hits both alike
        for variant, log in variants if round_no % 2 == 0 else variants[::-1]:
            for name, contender in (("consumer", run_consumer), ("hand loop", run_hand_loop)):
                run = contender(bench, sample, log=log)  # type: ignore[operator]
                runs[f"{name} {variant}"].append(run)
                print(
                    f"  round {round_no + 1}: {name:10s} {variant:7s} source "
                    f"{run.rate:9,.0f} events/s ({run.elapsed_s:5.2f} s, Redis CPU "
                    f"{run.server['cpu_s'] * 1e6 / run.events:5.1f} µs/event, client CPU "
                    f"{run.client_cpu_s * 1e6 / run.events:5.1f} µs/event) state {run.state}"
                )
    states = {run.state for group in runs.values() for run in group}
    print(f"same final state in every run: {'yes' if len(states) == 1 else 'NO: ' + str(states)}")
    medians = {name: statistics.median(r.rate for r in group) for name, group in runs.items()}
    cpu = {name: statistics.median((r.client_cpu_s + r.server["cpu_s"]) * 1e6 / r.events
                                   for r in group)
           for name, group in runs.items()}  # fmt: skip
    for name in ("consumer", "hand loop"):
        old, new = medians[f"{name} without"], medians[f"{name} with"]
        cost = old / new - 1
        print(
            f"{name:10s}: {old:,.0f} events/s without source, {new:,.0f} with: cost per event "
            f"{cost:+.1%}; CPU (client + Redis) {cpu[f'{name} without']:.1f} -> "
            f"{cpu[f'{name} with']:.1f} µs/event = "
            f"{cpu[f'{name} with'] / cpu[f'{name} without'] - 1:+.1%} (target <= 5 %)"
        )
    decode_cost = []
    samples = {v: bench.pristine.xrange(log or bench.stream, "-", "+", count=50_000)
               for v, log in variants}  # fmt: skip
    for _ in range(11):
        for variant, _log in variants:
            entries: Any = samples[variant]
            with segments.no_cyclic_gc():
                t0 = time.perf_counter()
                functions.decode_entries(entries)
                decode_cost.append((variant, (time.perf_counter() - t0) * 1e6 / len(entries)))
    per = {v: statistics.median(c for w, c in decode_cost if w == v) for v, _ in variants}
    print(
        f"decode alone (functions.decode_entries, 50k entries, 11 alternations): "
        f"{per['without']:.2f} µs/event without source, {per['with']:.2f} with"
    )
    print("archive segments (100k rows each, as the archiver writes them):")
    total = {}
    for variant in ("without", "with"):
        size = 0
        for start in range(0, n, 100_000):
            size += len(segments.write_segment(rows[variant][start : start + 100_000]))
        total[variant] = size
        print(f"  {variant:7s} source: {size:,} B = {size / n:.2f} B/event")
    extra = (total["with"] - total["without"]) / n
    ok = verdict(extra, 10, higher_is_better=False)
    print(f"  source adds {extra:.2f} B/event (target <= 10 B: {ok})")


def index_step(bench: Bench, events: int, repeat: int) -> None:
    """A/B in one run: the shipped consumer with and without the history index of the live
    tail (TRACETAGS_HISTORY_INDEX), on the rate step's log; both with an archive configured
    (so the index keys get their expiry) whose archiver runs once an hour (idle here)."""
    calls = realistic_calls(events, seed=7)
    fill(bench, calls)
    traces = list(dict.fromkeys(trace_id for _, trace_id, _ in calls))
    sample = random.Random(3).sample(traces, 300)
    archive = tempfile.mkdtemp(prefix="tt-bench-archive-")
    common = {"TRACETAGS_ARCHIVE_URL": f"file://{archive}", "TRACETAGS_ARCHIVE_INTERVAL": "1h"}
    variants = [("index", {**common, "TRACETAGS_HISTORY_INDEX": "1"}),
                ("no index", {**common, "TRACETAGS_HISTORY_INDEX": "0"})]  # fmt: skip
    print(f"log: {events:,} events ({kinds(calls)}), {len(traces):,} traces")
    runs: dict[str, list[Run]] = collections.defaultdict(list)
    index_bytes = 0
    try:
        for round_no in range(repeat):
            for name, env in variants if round_no % 2 == 0 else variants[::-1]:
                run = run_consumer(bench, sample, env=env)
                runs[name].append(run)
                if name == "index":
                    keys = list(bench.db0.scan_iter(f"{bench.keys.prefix(0)}:hx*", 10_000))
                    pipe = bench.db0.pipeline(transaction=False)
                    for key in keys:
                        pipe.memory_usage(key, samples=0)
                    index_bytes = sum(pipe.execute())
                redis_us = run.server["cpu_s"] * 1e6 / run.events
                print(
                    f"  round {round_no + 1}: consumer {name:8s} {run.rate:9,.0f} events/s "
                    f"({run.elapsed_s:5.2f} s, Redis CPU {redis_us:5.1f} µs/event, client CPU "
                    f"{run.client_cpu_s * 1e6 / run.events:5.1f} µs/event) state {run.state}"
                )
    finally:
        shutil.rmtree(archive, ignore_errors=True)
    states = {run.state for group in runs.values() for run in group}
    print(f"same final state in every run: {'yes' if len(states) == 1 else 'NO: ' + str(states)}")
    with_index = statistics.median(r.rate for r in runs["index"])
    without = statistics.median(r.rate for r in runs["no index"])
    print(
        f"consumer: {without:,.0f} events/s without the index, {with_index:,.0f} with: cost "
        f"{without / with_index - 1:+.1%} per event"
    )
    print(
        f"index memory (MEMORY USAGE of the hx keys): {index_bytes / 2**20:.1f} MiB = "
        f"{index_bytes / events:.1f} B/event, {index_bytes / len(traces):.1f} B/trace in the tail"
    )


def freshness_step(bench: Bench, rate: int, seconds: float, probe_rate: int) -> None:
    print(
        f"\nfreshness: {rate:,} events/s background (realistic mix, own process) + "
        f"{probe_rate} probe set_tags/s for {seconds:g} s ..."
    )
    result = run_freshness(bench, rate, seconds, probe_rate)
    load = result.load
    produced = load.get("sent", 0) / load["elapsed"] if load else float("nan")
    print(f"  visibility checked by {result.method}, polled every ~1 ms")
    print(
        f"  probes: {len(result.latencies_ms):,} timed (first second skipped), "
        f"{result.timeouts} not visible within 5 s (they count as inf in the percentiles)"
    )
    p50, p90, p99 = result.pct(0.50), result.pct(0.90), result.pct(0.99)
    worst = result.pct(1.0)
    print(
        f"  set_tags() -> visible in index: p50 {ms(p50)}, p90 {ms(p90)}, "
        f"p99 {ms(p99)}, max {ms(worst)}  (target p99 <= 50 ms: "
        f"{verdict(p99, 50, higher_is_better=False)})"
    )
    print(
        f"  background load achieved {produced:,.0f} events/s "
        f"({load.get('sent', 0):,} events, {load.get('dropped', '?')} dropped, "
        f"pacer at most {load.get('behind', '?')} events behind) + "
        f"{result.probes_sent / seconds:,.0f} probes/s"
    )
    print(
        f"  fold: {result.fold_rate:,.0f} events/s folded on average during the load, "
        f"max lag {result.max_lag:,} entries, drained {result.drain_s:.2f} s after "
        f"the load stopped"
    )
    folded = load.get("sent", 0) + result.probes_sent
    if folded and result.redis_cpu:
        user, sys_ = result.redis_cpu["user"], result.redis_cpu["sys"]
        print(
            f"  Redis main thread: {(user + sys_) / folded * 1e6:.1f} us CPU per event written "
            f"and folded ({user / folded * 1e6:.1f} user, {sys_ / folded * 1e6:.1f} sys); "
            "by command (usec per event, calls):"
        )
        for name, calls, usec in result.commands[:8]:
            print(f"    {name:14s} {usec / folded:7.2f} us/event  {calls:>9,} calls")
        print(
            f"  forks during the run (AOF rewrites): {result.forks}"
            + (f", the last took {result.fork_ms:.1f} ms" if result.forks else "")
            + f"; AOF writes delayed by a slow fsync (aof_delayed_fsync): {result.delayed_fsyncs}"
        )
    print(f"  lag over time: {lag_episodes(result.timeline, rate)}")
    foreign = max(0.0, result.busy_s - result.own_s)
    cpus = os.cpu_count() or 1
    disturbed = ": the run was disturbed" if foreign > 0.1 * seconds else ""
    print(
        f"  CPU over the load: this benchmark's processes {result.own_s:.1f} s, the machine "
        f"{result.busy_s:.1f} s of {cpus * seconds:.0f}; other processes {foreign:.1f} s "
        f"({foreign / seconds:.0%} of one CPU{disturbed})"
    )


def lag_episodes(timeline: list[tuple[float, int, bool]], rate: int) -> str:
    """The stretches where the group's lag exceeded 50 ms of load, with their peak and
    whether an AOF rewrite ran meanwhile: tells a steady overload from passing stalls."""
    limit = max(1, rate // 20)
    episodes: list[str] = []
    start: float | None = None
    peak, rewrite = 0, False
    for t, lag, rewriting in [*timeline, (float("inf"), 0, False)]:
        if lag > limit:
            if start is None:
                start, peak, rewrite = t, 0, False
            peak, rewrite = max(peak, lag), rewrite or rewriting
        elif start is not None:
            end = "end" if t == float("inf") else f"{t:.1f}"
            episodes.append(
                f"{start:.1f}-{end} s (peak {peak:,}{', AOF rewrite' if rewrite else ''})"
            )
            start = None
    rewrites = sum(1 for _, _, r in timeline if r) * LAG_SAMPLE_S
    head = f"rewrite in progress {rewrites:.1f} s of {timeline[-1][0]:.0f} s" if timeline else ""
    if not episodes:
        return f"never above {limit:,} entries; {head}"
    shown = ", ".join(episodes[:12])
    if len(episodes) > 12:
        shown += f" and {len(episodes) - 12} more"
    return f"above {limit:,} entries in {len(episodes)} stretches: {shown}; {head}"


def memory_step(bench: Bench, sizes: list[int]) -> None:
    print(
        "\nmemory per trace (6 tags incl. name, 2 metadata keys, finished, all indexes; "
        "used_memory after MEMORY PURGE; folded via functions.apply_batch, no stream):"
    )
    for traces in sizes:
        for events_per_trace in (3, 1) if traces <= 100_000 else (1,):
            per_trace, elapsed, rate = run_memory(bench, traces, events_per_trace)
            print(
                f"  {traces:>9,} traces, {events_per_trace} event(s) each: {per_trace:7,.0f} "
                f"B/trace  (target <= 1,000: {verdict(per_trace, 1000, False)}; folded in "
                f"{elapsed:.0f} s at {rate:,.0f} events/s; Function code "
                f"{bench.library_digest()})"
            )


if __name__ == "__main__":
    main()
