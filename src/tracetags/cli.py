"""The ``tracetags`` command: a thin layer over library calls.

Exit codes: 0 success; 2 usage or input error; 3 Redis unreachable.
"""

from __future__ import annotations

import contextlib
import enum
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Annotated, Any

import msgspec
import redis
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from tracetags import deadletters, schemas, traffic
from tracetags.client import Client, TraceInfo
from tracetags.embedded import RedisServer, embedded_server
from tracetags.errors import TracetagsError, TracetagsTimeoutError
from tracetags.keys import Keys
from tracetags.log import read_log
from tracetags.producer import TagProducer
from tracetags.settings import Settings

EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

app = typer.Typer(
    name="tracetags",
    help="Mutable tags on ML/LLM traces, event-sourced on Redis Streams.\n\n"
    "Exit codes: 0 success, 2 usage or input error, 3 Redis unreachable.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class _State:
    redis_url: str | None = None
    namespace: str | None = None


state = _State()


@app.callback()
def main_options(
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis-url",
            envvar="TRACETAGS_REDIS_URL",
            help="Redis to use; none: the embedded local Redis (./.tracetags).",
        ),
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option("--namespace", envvar="TRACETAGS_NAMESPACE", help="Key prefix."),
    ] = None,
) -> None:
    state.redis_url = redis_url
    state.namespace = namespace


def _settings(**overrides: Any) -> Settings:
    if state.redis_url:
        overrides["redis_url"] = state.redis_url
    if state.namespace:
        overrides["namespace"] = state.namespace
    try:
        return Settings.from_env(**overrides)
    except TracetagsError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_USAGE) from None


@contextlib.contextmanager
def _redis_for(settings: Settings) -> Iterator[Settings]:
    """Yield settings with a reachable URL: the given one, or a started embedded Redis."""
    server: RedisServer | None = None
    if settings.redis_url is None:
        try:
            server = embedded_server(settings.embedded_dir).start()
        except TracetagsError as exc:
            err.print(f"[red]error:[/] {escape(str(exc))}")
            raise typer.Exit(EXIT_UNREACHABLE) from None
        err.print(f"embedded Redis at [bold]{server.url}[/] (data in {server.directory})")
        settings = settings.replace(redis_url=server.url)
    try:
        _ping(settings)
        yield settings
    finally:
        if server is not None:
            server.stop()


def _ping(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.effective_redis_url, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        err.print(
            f"[red]error:[/] Redis unreachable at {settings.effective_redis_url}: "
            f"{escape(str(exc))}\n"
            "hint: start one (redis-server), or pass --redis-url / set TRACETAGS_REDIS_URL"
        )
        raise typer.Exit(EXIT_UNREACHABLE) from None
    finally:
        client.close()


@app.command()
def demo(
    traces: Annotated[int, typer.Option(min=1, help="How many traces to emit.")] = 2_000,
    seed: Annotated[int, typer.Option(help="Random seed of the traffic.")] = 7,
) -> None:
    """Emit realistic traffic through the producer and read the event log back."""
    settings = _settings()
    with _redis_for(settings) as settings:
        producer = TagProducer(settings)
        with Progress(console=err, transient=True) as progress:
            task = progress.add_task("emitting traces", total=traces)
            for spec in traffic.generate(traces, seed=seed):
                producer.trace_started(
                    spec.trace_id,
                    experiment_id=spec.experiment_id,
                    timestamp_ms=spec.timestamp_ms,
                    name=spec.name,
                    metadata=spec.metadata,
                    tags={k: v for k, v in spec.tags.items() if k != "needs_review"},
                )
                producer.trace_finished(
                    spec.trace_id,
                    experiment_id=spec.experiment_id,
                    timestamp_ms=spec.timestamp_ms,
                    execution_time_ms=spec.execution_time_ms,
                    status=spec.status,
                )
                if "needs_review" in spec.tags:
                    producer.set_tags(spec.trace_id, {"needs_review": "true"})
                progress.advance(task)
            receipt = producer.flush()
        producer.close()
        stats = producer.stats()
        err.print(f"wrote {stats.sent} events (dropped {stats.dropped}, retries {stats.retries})")
        client = redis.Redis.from_url(settings.effective_redis_url)
        try:
            counts: Counter[tuple[int, str]] = Counter()
            for entry in read_log(client, settings.namespace):
                kind = "undecodable" if entry.event is None else entry.event.__struct_config__.tag
                counts[(entry.partition, str(kind))] += 1
        finally:
            client.close()
        table = Table(title=f"event log of namespace {settings.namespace!r}")
        table.add_column("partition", justify="right")
        table.add_column("event type")
        table.add_column("entries", justify="right")
        table.add_column("last entry id (this run)")
        for (partition, kind), n in sorted(counts.items()):
            table.add_row(str(partition), kind, str(n), receipt.positions.get(partition, ""))
        out.print(table)
        stream = Keys(settings.namespace).stream(0)
        err.print(
            "read it yourself:\n"
            f"  tracetags --redis-url {settings.effective_redis_url} log --count 5\n"
            f"  redis-cli -u {settings.effective_redis_url} XRANGE '{stream}' - + COUNT 2"
        )


@app.command()
def serve(
    workers: Annotated[int, typer.Option(min=1, help="Consumer processes to run.")] = 1,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every batch.")] = False,
) -> None:
    """Run the consumer that folds the log (Ctrl-C / SIGTERM stops it cleanly).

    With no Redis URL it starts the embedded local Redis (AOF, data in ./.tracetags),
    prints the URL to use, and stops it on exit.
    """
    import logging

    from tracetags.serve import serve as run_serve

    settings = _settings()
    if settings.redis_url is not None:
        _ping(settings)

    def ready(active: Settings) -> None:
        out.print(
            f"tracetags serve: {workers} consumer(s) folding namespace "
            f"{active.namespace!r} at {active.effective_redis_url}\n"
            f"  export TRACETAGS_REDIS_URL={active.effective_redis_url}"
        )

    try:
        run_serve(
            settings, workers, on_ready=ready, log_level=logging.DEBUG if verbose else logging.INFO
        )
    except TracetagsError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_UNREACHABLE) from None


def _reachable() -> Settings:
    """Settings for a command that talks to an existing Redis: the given URL, else the
    embedded Redis that ``serve``/``demo`` recorded under ./.tracetags, else localhost."""
    settings = _settings()
    if settings.redis_url is None:
        settings = settings.replace(redis_url=_embedded_url(settings))
    _ping(settings)
    return settings


class Format(enum.StrEnum):
    table = "table"
    json = "json"


@app.command()
def status(
    output: Annotated[Format, typer.Option("--format", help="table or json.")] = Format.table,
) -> None:
    """Per partition: stream length, lag, pending, dead letters, traces; consumers; memory."""
    settings = _reachable()
    with Client(settings) as client:
        report = client.status()
    if output is Format.json:
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
        return
    table = Table(title=f"namespace {report.namespace!r}, group {report.group!r}")
    for column in ("partition", "log entries", "lag", "pending", "dead letters", "traces"):
        table.add_column(column, justify="right")
    for row in report.partitions:
        table.add_row(str(row.partition), str(row.stream_length),
                      "?" if row.lag is None else str(row.lag), str(row.pending),
                      str(row.dead_letters), str(row.traces))  # fmt: skip
    out.print(table)
    out.print(f"Redis memory: {report.used_memory_human}")
    if report.consumers:
        out.print(f"consumers running: {report.consumers} ({', '.join(report.live_consumers)})")
    else:
        behind = report.total_lag + report.total_pending
        out.print(
            "[bold red]no consumer is running[/]: nothing folds the log"
            + (f" ({behind} entries waiting)" if behind else "")
            + "; start one with `tracetags serve`"
        )


@app.command()
def get(
    trace_id: Annotated[str, typer.Argument(help="The trace id.")],
    output: Annotated[Format, typer.Option("--format", help="table or json.")] = Format.table,
) -> None:
    """Show one trace: its attributes, tags and metadata (exit 1 when it does not exist)."""
    settings = _reachable()
    with Client(settings) as client:
        trace = client.get_trace(trace_id)
    if trace is None:
        err.print(f"trace {escape(trace_id)!r} not found in namespace {settings.namespace!r}")
        raise typer.Exit(1)
    info = trace.info
    if output is Format.json:
        sys.stdout.write(msgspec.json.encode(trace_record(info)).decode() + "\n")
        return
    table = Table(title=f"trace {info.trace_id}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for field, value in trace_record(info).items():
        if isinstance(value, dict):
            for key, item in sorted(value.items()):
                table.add_row(f"{field}.{key}", escape(item))
        else:
            table.add_row(field, "" if value is None else escape(str(value)))
    out.print(table)


def trace_record(info: TraceInfo) -> dict[str, Any]:
    """A trace as stable JSON field names (the CLI's output contract)."""
    return {
        "trace_id": info.trace_id,
        "experiment_id": info.experiment_id,
        "timestamp_ms": info.timestamp_ms,
        "execution_time_ms": info.execution_time_ms,
        "end_time_ms": info.end_time_ms,
        "status": info.status,
        "name": info.name,
        "client_request_id": info.client_request_id,
        "tags": info.tags,
        "metadata": info.request_metadata,
    }


tag_app = typer.Typer(help="Set or delete tags.", no_args_is_help=True)
app.add_typer(tag_app, name="tag")


@tag_app.command("set")
def tag_set(
    trace_id: Annotated[str, typer.Argument(help="The trace id.")],
    key: Annotated[str, typer.Argument(help="Tag key.")],
    value: Annotated[str, typer.Argument(help="Tag value.")],
    wait: Annotated[bool, typer.Option(help="Return once the fold applied it.")] = True,
) -> None:
    """Set one tag on one trace."""
    settings = _reachable()
    with Client(settings) as client:
        _write(lambda: client.set_trace_tag(trace_id, key, value, wait=wait))
    err.print(f"set {escape(key)}={escape(value)!r} on {escape(trace_id)}")


@tag_app.command("delete")
def tag_delete(
    trace_id: Annotated[str, typer.Argument(help="The trace id.")],
    key: Annotated[str, typer.Argument(help="Tag key.")],
    wait: Annotated[bool, typer.Option(help="Return once the fold applied it.")] = True,
) -> None:
    """Delete one tag from one trace."""
    settings = _reachable()
    with Client(settings) as client:
        _write(lambda: client.delete_trace_tag(trace_id, key, wait=wait))
    err.print(f"deleted {escape(key)} from {escape(trace_id)}")


def _write(action: Any) -> None:
    try:
        action()
    except TracetagsTimeoutError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    except TracetagsError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_USAGE) from None


dead_app = typer.Typer(help="Entries the fold could not apply.", no_args_is_help=True)
app.add_typer(dead_app, name="dead-letters")


def _letters(client: Client, partition: int | None, ids: list[str] | None) -> list[Any]:
    letters = list(
        deadletters.iter_dead_letters(client.redis, client.keys, client.partitions, partition)
    )
    if ids:
        wanted = set(ids)
        letters = [x for x in letters if x.id in wanted or x.entry_id in wanted]
    return letters


@dead_app.command("list")
def dead_list(
    partition: Annotated[int | None, typer.Option(help="Only this partition.")] = None,
    output: Annotated[Format, typer.Option("--format", help="table or json.")] = Format.table,
) -> None:
    """List dead letters with their reasons."""
    settings = _reachable()
    with Client(settings) as client:
        letters = _letters(client, partition, None)
    if output is Format.json:
        for letter in letters:
            record = msgspec.to_builtins(letter)
            record["payload"] = letter.payload.hex()
            sys.stdout.write(msgspec.json.encode(record).decode() + "\n")
        return
    table = Table(title=f"{len(letters)} dead letters")
    for column in ("partition", "id", "log entry", "reason", "payload bytes"):
        table.add_column(column)
    for letter in letters:
        table.add_row(str(letter.partition), letter.id, letter.entry_id,
                      escape(letter.reason), str(len(letter.payload)))  # fmt: skip
    out.print(table)


@dead_app.command("retry")
def dead_retry(
    ids: Annotated[
        list[str] | None, typer.Argument(help="Dead-letter or log entry ids; none: all.")
    ] = None,
    partition: Annotated[int | None, typer.Option(help="Only this partition.")] = None,
) -> None:
    """Re-queue dead letters on the log (after a fix). A re-queued event counts as written
    now: it overrides older writes of the same registers."""
    settings = _reachable()
    with Client(settings) as client:
        letters = _letters(client, partition, ids)
        count = deadletters.retry(client.redis, client.keys, letters)
    err.print(f"re-queued {count} dead letters")


@dead_app.command("purge")
def dead_purge(
    ids: Annotated[
        list[str] | None, typer.Argument(help="Dead-letter or log entry ids; none: all.")
    ] = None,
    partition: Annotated[int | None, typer.Option(help="Only this partition.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
) -> None:
    """Delete dead letters for good."""
    settings = _reachable()
    with Client(settings) as client:
        letters = _letters(client, partition, ids)
        if not yes and not typer.confirm(f"delete {len(letters)} dead letters?", err=True):
            raise typer.Exit(1)
        count = deadletters.purge(client.redis, client.keys, letters)
    err.print(f"deleted {count} dead letters")


@app.command("log")
def log_command(
    partition: Annotated[int | None, typer.Option(help="Only this partition.")] = None,
    start: Annotated[str, typer.Option(help="First entry id (XRANGE syntax).")] = "-",
    count: Annotated[int | None, typer.Option(min=1, help="At most this many entries.")] = None,
) -> None:
    """Print the decoded event log as JSON lines (one entry per line)."""
    settings = _reachable()
    client = redis.Redis.from_url(settings.effective_redis_url)
    encoder = msgspec.json.Encoder()
    try:
        for entry in read_log(
            client, settings.namespace, partition=partition, start=start, count=count
        ):
            record: dict[str, Any] = {"partition": entry.partition, "entry_id": entry.entry_id}
            if entry.event is not None:
                record.update(schemas.as_builtins(entry.event))
                record["event_id"] = str(schemas.event_uuid(entry.event))
            else:
                record["error"] = entry.error
            sys.stdout.write(encoder.encode(record).decode() + "\n")
    finally:
        client.close()


def _embedded_url(settings: Settings) -> str:
    """The URL of the embedded Redis left by ``serve``/``demo`` (by its recorded port)."""
    from pathlib import Path

    port_file = Path(settings.embedded_dir) / "redis.port"
    if port_file.exists():
        return f"redis://127.0.0.1:{port_file.read_text().strip()}/0"
    return settings.effective_redis_url


def main() -> None:
    app()


if __name__ == "__main__":
    main()
