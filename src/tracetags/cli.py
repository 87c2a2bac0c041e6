"""The ``tracetags`` command: a thin layer over library calls.

Exit codes: 0 success; 2 usage or input error; 3 Redis unreachable.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import enum
import logging
import shlex
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import msgspec
import redis
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from tracetags import deadletters, functions, schemas, traffic
from tracetags.client import Client, TraceInfo
from tracetags.connections import socket_options
from tracetags.embedded import RedisServer, embedded_server
from tracetags.errors import (
    BulkWriteError,
    ConfigError,
    FilterError,
    RedisUnavailableError,
    TracetagsError,
    TracetagsTimeoutError,
)
from tracetags.log import read_log
from tracetags.producer import TagProducer
from tracetags.settings import Settings

EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
#: A bulk write fell short: fewer events written than traces matched.
EXIT_INCOMPLETE = 4
#: ``status``: Redis answers but does not work normally (OOM, READONLY, MISCONF, BUSY, ...).
EXIT_DEGRADED = 5
_UNREACHABLE_HINT = "hint: start one (redis-server), or pass --redis-url / set TRACETAGS_REDIS_URL"

app = typer.Typer(
    name="tracetags",
    help="Mutable tags on ML/LLM traces, event-sourced on Redis Streams.\n\n"
    "Without --redis-url / TRACETAGS_REDIS_URL, commands use the embedded Redis of "
    "./.tracetags (started for the command when it is not running).\n\n"
    "Exit codes: 0 success; 1 not found or timed out; 2 usage or filter error (the filter "
    "is shown with a caret); 3 Redis unreachable (the URL tried and a hint).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# Piped output gets a wide page: tables of trace ids are unreadable at the default 80.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 150)
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
    client = redis.Redis.from_url(
        settings.effective_redis_url, **socket_options(settings, timeout_s=3.0)
    )
    try:
        client.ping()
    except (redis.ResponseError, redis.exceptions.BusyLoadingError) as exc:
        # It answered: not unreachable (LOADING, BUSY, MISCONF refuse even PING); the
        # command says what it can do, `status` names the condition.
        err.print(f"[yellow]warning:[/] Redis answers but refuses: {escape(str(exc))}")
    except redis.RedisError as exc:
        err.print(
            f"[red]error:[/] Redis unreachable at {settings.effective_redis_url}: "
            f"{escape(str(exc))}\n{_UNREACHABLE_HINT}"
        )
        raise typer.Exit(EXIT_UNREACHABLE) from None
    finally:
        client.close()


@app.command()
def demo(
    traces: Annotated[int, typer.Option(min=1, help="How many traces to emit.")] = 3_000,
    seed: Annotated[int, typer.Option(help="Random seed of the traffic.")] = 7,
) -> None:
    """Start Redis and a consumer, emit realistic traffic, answer the classic questions.

    Redis is the embedded one of ./.tracetags unless --redis-url is given. Each question
    (production errors, slow traces by model version, a user's session, the review queue)
    is printed as a table with the command that asks it; the data stays to explore further.
    """
    import threading

    from tracetags.serve import Supervisor

    settings = _settings()
    with _redis_for(settings) as settings:
        supervisor = Supervisor(settings, workers=1, log_level=logging.ERROR)
        runner = threading.Thread(target=supervisor.run, daemon=True)
        runner.start()
        client = Client(settings)
        try:
            producer = TagProducer(settings)
            with Progress(console=err, transient=True) as progress:
                task = progress.add_task("emitting traces", total=traces)
                traffic.emit(producer, traffic.generate(traces, seed=seed),
                             on_trace=lambda: progress.advance(task))  # fmt: skip
                receipt = producer.flush()
                progress.update(task, description="folding (consumer)")
                client.wait_applied(receipt, timeout=120)
            stats = producer.stats()
            producer.close()
            err.print(f"emitted {traces} traces ({stats.sent} events); all folded")
            _demo_questions(client, settings)
        finally:
            client.close()
            supervisor.stop()
            runner.join(60)
    tt = escape(f"tracetags{_pasteable_options(settings)}")
    if state.redis_url is None:
        where = (
            "the data stays in ./.tracetags; keep exploring (the commands start the "
            "embedded Redis when it is not running; `tracetags serve` folds new events)"
        )
    else:
        where = "keep exploring (`tracetags serve` folds new events)"
    err.print(
        f"\n{where}:\n  {tt} status\n  {tt} search \"tags.sla_tier = 'critical'\" --max-results 5"
    )


def _pasteable_options(settings: Settings) -> str:
    """The global options a pasted command needs to reach the same Redis and namespace."""
    options = ""
    if state.redis_url is not None:
        options += f" --redis-url {shlex.quote(settings.effective_redis_url)}"
    if state.namespace:
        options += f" --namespace {settings.namespace}"
    return options


def _demo_questions(client: Client, settings: Settings) -> None:
    url = escape(_pasteable_options(settings))

    def ask(title: str, filter_string: str, order_by: list[str] | None = None,
            columns: tuple[str, ...] = ("environment", "model_version"),
            limit: int = 6) -> list[Any]:  # fmt: skip
        page = client.search_traces(None, filter_string, order_by, limit)
        total = client.count(filter_string)
        out.rule(f"[bold]{title}[/] ({total} traces)")
        _print_traces([trace_record(t.info) for t in page], SearchFormat.table, None,
                      list(columns))  # fmt: skip
        order = "".join(f" --order-by {o!r}" for o in order_by or [])
        out.print(f"[dim]$ tracetags{url} search {filter_string!r}{order}[/]")
        return list(page)

    errors = ask("Production errors, newest first",
                 "tags.environment = 'production' AND status = 'ERROR'")  # fmt: skip
    out.rule("[bold]Slow traces (> 5 s) by model version[/]")
    rows = client.stats("execution_time_ms > 5000", ["tags.model_version"],
                        ["count", "p50", "p95", "max"])  # fmt: skip
    table = Table()
    for column in ("model_version", "slow traces", "p50 ms", "p95 ms", "max ms"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(str(r["group"].get("tags.model_version")), str(r["count"]),
                      _number(r["p50"]), _number(r["p95"]), _number(r["max"]))  # fmt: skip
    out.print(table)
    out.print(
        f"[dim]$ tracetags{url} stats 'execution_time_ms > 5000' "
        "--group-by tags.model_version --metric count --metric p50 --metric p95 --metric max[/]"
    )
    if errors:
        session = errors[0].info.tags.get("session_id", "session_0")
        ask(f"That user's session ({session}) in time order",
            f"tags.session_id = '{session}'", ["timestamp_ms ASC"],
            ("user_id", "environment"))  # fmt: skip
    ask("Review queue", "tags.needs_review = 'true'", ["timestamp_ms DESC"],
        ("sla_tier", "model_version"))  # fmt: skip
    ask("Beyond MLflow: IN, OR and parentheses",
        "tags.model_version IN ('v2.0.0', 'v2.1.0-rc1') AND "
        "(status = 'ERROR' OR execution_time_ms > 10000)")  # fmt: skip


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
    """Settings for a command that talks to Redis: the given URL; else the embedded Redis
    of ./.tracetags — the running one, or one started for this command (its data is kept)."""
    settings = _settings()
    if settings.redis_url is None:
        url = _embedded_url(settings)
        if url is not None:
            settings = settings.replace(redis_url=url)
        else:
            try:
                server = embedded_server(settings.embedded_dir).start()
            except TracetagsError as exc:
                err.print(f"[red]error:[/] {escape(str(exc))}")
                raise typer.Exit(EXIT_UNREACHABLE) from None
            atexit.register(server.stop)
            settings = settings.replace(redis_url=server.url)
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
        report = _query(client.status)
    if output is Format.json:
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
        if report.condition is not None:
            raise typer.Exit(EXIT_DEGRADED)
        return
    table = Table(title=f"namespace {report.namespace!r}, group {report.group!r}")
    for column in ("partition", "log entries", "lag", "pending", "dead letters", "traces"):
        table.add_column(column, justify="right")
    for row in report.partitions:
        table.add_row(str(row.partition), str(row.stream_length),
                      "?" if row.lag is None else str(row.lag), str(row.pending),
                      str(row.dead_letters), str(row.traces))  # fmt: skip
    out.print(table)
    lookups: dict[str, set[str]] = {}
    for row in report.partitions:
        for key, state in row.lookups.items():
            lookups.setdefault(key, set()).add(state)
    if lookups:
        listed = ", ".join(
            f"{key} ({'ready' if states == {'ready'} else 'building'})"
            for key, states in sorted(lookups.items())
        )
        out.print(f"lookup keys: {listed}")
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
    if report.condition is not None:
        out.print(
            f"[bold red]Redis is degraded: {report.condition}[/] "
            f"({escape(report.condition_detail or '')}); writes wait until it ends"
        )
        raise typer.Exit(EXIT_DEGRADED)


@app.command()
def get(
    trace_id: Annotated[str, typer.Argument(help="The trace id.", metavar="TRACE")],
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


FilterOption = Annotated[
    str | None,
    typer.Option("--filter", "-f", help="Act on every trace matching this filter string."),
]
ExperimentOption = Annotated[
    list[str] | None,
    typer.Option("--experiment", "-e", help="Experiment id to search (repeatable; none: all)."),
]


@tag_app.command("set")
def tag_set(
    args: Annotated[
        list[str],
        typer.Argument(
            help="TRACE KEY VALUE, or KEY VALUE with --filter.", metavar="[TRACE] KEY VALUE"
        ),
    ],
    filter_string: FilterOption = None,
    experiment: ExperimentOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count the matches.")] = False,
    wait: Annotated[bool, typer.Option(help="Return once the fold applied it.")] = True,
) -> None:
    """Set a tag on one trace, or on every trace matching --filter (with a progress bar)."""
    if filter_string is None:
        trace_id, key, value = _positional(args, ("TRACE", "KEY", "VALUE"))
        settings = _reachable()
        with Client(settings) as client:
            _write(lambda: client.set_trace_tag(trace_id, key, value, wait=wait))
        err.print(f"set {escape(key)}={escape(value)!r} on {escape(trace_id)}")
        return
    key, value = _positional(args, ("KEY", "VALUE"))
    _bulk(filter_string, experiment, dry_run, f"set {key}={value!r} on",
          lambda client, progress: client.set_tags_where(
              filter_string, {key: value}, experiment, wait=wait, progress=progress))  # fmt: skip


@tag_app.command("delete")
def tag_delete(
    args: Annotated[
        list[str], typer.Argument(help="TRACE KEY, or KEY with --filter.", metavar="[TRACE] KEY")
    ],
    filter_string: FilterOption = None,
    experiment: ExperimentOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count the matches.")] = False,
    wait: Annotated[bool, typer.Option(help="Return once the fold applied it.")] = True,
) -> None:
    """Delete a tag from one trace, or from every trace matching --filter."""
    if filter_string is None:
        trace_id, key = _positional(args, ("TRACE", "KEY"))
        settings = _reachable()
        with Client(settings) as client:
            _write(lambda: client.delete_trace_tag(trace_id, key, wait=wait))
        err.print(f"deleted {escape(key)} from {escape(trace_id)}")
        return
    (key,) = _positional(args, ("KEY",))
    _bulk(filter_string, experiment, dry_run, f"deleted {key} from",
          lambda client, progress: client.delete_tags_where(
              filter_string, [key], experiment, wait=wait, progress=progress))  # fmt: skip


def _positional(args: list[str], names: tuple[str, ...]) -> tuple[str, ...]:
    if len(args) != len(names):
        err.print(f"[red]error:[/] expected {' '.join(names)}, got {len(args)} argument(s)")
        raise typer.Exit(EXIT_USAGE)
    return tuple(args)


def _bulk(filter_string: str, experiment: list[str] | None, dry_run: bool, verb: str,
          action: Any) -> None:  # fmt: skip
    settings = _reachable()
    with Client(settings) as client:
        matches = _query(lambda: client.count(filter_string, experiment))
        if dry_run:
            out.print(f"{matches} traces match: {escape(filter_string)}")
            err.print("dry run: nothing changed")
            return
        with Progress(console=err, transient=True) as bar:
            task = bar.add_task("tagging", total=matches)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            count = _query(lambda: action(client, progress))
    err.print(f"{verb} {count} traces")


def _query(action: Any) -> Any:
    """Run a library call; filter errors exit 2 with the caret message, a Redis that went
    away exits 3."""
    try:
        return action()
    except FilterError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_USAGE) from None
    except RedisUnavailableError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}\n{_UNREACHABLE_HINT}")
        raise typer.Exit(EXIT_UNREACHABLE) from None
    except BulkWriteError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_INCOMPLETE) from None
    except TracetagsTimeoutError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    except TracetagsError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_USAGE) from None


class SearchFormat(enum.StrEnum):
    auto = "auto"
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"
    ids = "ids"


@app.command()
def search(
    filter_string: Annotated[
        str | None, typer.Argument(metavar="FILTER", help="MLflow filter string.")
    ] = None,
    experiment: ExperimentOption = None,
    order_by: Annotated[
        list[str] | None,
        typer.Option("--order-by", "-o", help="Order key, e.g. 'timestamp_ms DESC' (repeatable)."),
    ] = None,
    max_results: Annotated[int, typer.Option(help="Page size (1..50000).")] = 100,
    all_pages: Annotated[bool, typer.Option("--all", help="Every match (walks pages).")] = False,
    page_token: Annotated[str | None, typer.Option(help="Continue from this page.")] = None,
    output: Annotated[
        SearchFormat,
        typer.Option("--format", help="auto: a table on a terminal, jsonl when piped."),
    ] = SearchFormat.auto,
) -> None:
    """Search traces with an MLflow filter string (plus OR/NOT/IN extensions)."""
    settings = _reachable()
    fmt = output
    if fmt is SearchFormat.auto:
        fmt = SearchFormat.table if sys.stdout.isatty() else SearchFormat.jsonl
    with Client(settings) as client:
        traces: list[Any] = []
        token = page_token
        while True:
            page = _query(partial(client.search_traces, experiment, filter_string, order_by,
                                  max_results, token))  # fmt: skip
            traces.extend(page)
            token = page.token
            if not all_pages or token is None:
                break
    records = [trace_record(t.info) for t in traces]
    _print_traces(records, fmt, token)


def _trace_table(records: list[dict[str, Any]], tag_columns: list[str] | None) -> Table:
    """Traces for a person: time in UTC, one column per tag of ``tag_columns`` (or all tags
    in one column)."""
    table = Table(title=f"{len(records)} traces", title_justify="left")
    table.add_column("trace_id", no_wrap=True)
    table.add_column("time (UTC)", no_wrap=True)
    table.add_column("ms", justify="right")
    table.add_column("status")
    table.add_column("name")
    for key in tag_columns or ["tags"]:
        table.add_column(key, overflow="fold")
    for r in records:
        when = ""
        if r["timestamp_ms"] is not None:
            when = datetime.fromtimestamp(r["timestamp_ms"] / 1000, UTC).strftime("%m-%d %H:%M:%S")
        if tag_columns is None:
            tags = [", ".join(f"{k}={v}" for k, v in sorted(r["tags"].items())
                              if k != "mlflow.traceName")]  # fmt: skip
        else:
            tags = [r["tags"].get(k, "") for k in tag_columns]
        duration = r["execution_time_ms"]
        table.add_row(r["trace_id"], when, "" if duration is None else f"{duration:,}",
                      str(r["status"] or ""), escape(str(r["name"] or "")),
                      *(escape(t) for t in tags))  # fmt: skip
    return table


def _print_traces(
    records: list[dict[str, Any]],
    fmt: SearchFormat,
    token: str | None,
    tag_columns: list[str] | None = None,
) -> None:
    if fmt is SearchFormat.json:
        doc = {"traces": records, "next_page_token": token}
        sys.stdout.write(msgspec.json.encode(doc).decode() + "\n")
    elif fmt is SearchFormat.jsonl:
        for record in records:
            sys.stdout.write(msgspec.json.encode(record).decode() + "\n")
    elif fmt is SearchFormat.ids:
        for record in records:
            sys.stdout.write(record["trace_id"] + "\n")
    elif fmt is SearchFormat.csv:
        tag_keys = sorted({k for r in records for k in r["tags"]})
        meta_keys = sorted({k for r in records for k in r["metadata"]})
        writer = csv.writer(sys.stdout)
        plain = ["trace_id", "experiment_id", "timestamp_ms", "execution_time_ms",
                 "end_time_ms", "status", "name", "client_request_id"]  # fmt: skip
        writer.writerow([*plain, *(f"tags.{k}" for k in tag_keys),
                         *(f"metadata.{k}" for k in meta_keys)])  # fmt: skip
        for r in records:
            writer.writerow([*("" if r[c] is None else r[c] for c in plain),
                             *(r["tags"].get(k, "") for k in tag_keys),
                             *(r["metadata"].get(k, "") for k in meta_keys)])  # fmt: skip
    else:
        out.print(_trace_table(records, tag_columns))
    if token is not None:
        err.print(f"more: --page-token {token}")


@app.command()
def count(
    filter_string: Annotated[
        str | None, typer.Argument(metavar="FILTER", help="MLflow filter string.")
    ] = None,
    experiment: ExperimentOption = None,
) -> None:
    """Count the traces matching a filter (computed inside Redis)."""
    settings = _reachable()
    with Client(settings) as client:
        sys.stdout.write(f"{_query(lambda: client.count(filter_string, experiment))}\n")


STAT_METRICS = ("count", "avg", "min", "max", "p50", "p95", "p99")


@app.command()
def stats(
    filter_string: Annotated[
        str | None, typer.Argument(metavar="FILTER", help="MLflow filter string.")
    ] = None,
    group_by: Annotated[
        list[str] | None,
        typer.Option(
            "--group-by", "-g", help="tags.<k>, metadata.<k>, status, name, ... (repeatable)."
        ),
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option("--metric", "-m", help=f"Of execution_time_ms: {', '.join(STAT_METRICS)}."),
    ] = None,
    experiment: ExperimentOption = None,
    output: Annotated[Format, typer.Option("--format", help="table or json.")] = Format.table,
) -> None:
    """Execution-time statistics per group, with a bar chart of the group sizes."""
    settings = _reachable()
    metrics = list(metric or STAT_METRICS)
    with Client(settings) as client:
        rows = _query(lambda: client.stats(filter_string, group_by or [], metrics, experiment))
    if output is Format.json:
        sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
        return
    keys = list(group_by or [])
    table = Table(title=f"execution_time_ms by {', '.join(keys) or 'everything'}")
    for key in keys:
        table.add_column(key)
    for name in metrics:
        table.add_column(name, justify="right")
    # The bar charts the group sizes, or the first metric asked for when count is not one.
    charted = "count" if "count" in metrics else metrics[0]
    table.add_column(charted)
    largest = max((float(r.get(charted) or 0) for r in rows), default=0.0) or 1.0
    for r in rows:
        bar = "█" * max(1, round(24 * float(r.get(charted) or 0) / largest))
        cells = [escape(str(r["group"].get(k))) for k in keys]
        cells += [_number(r.get(name)) for name in metrics]
        table.add_row(*cells, f"[cyan]{bar}[/]")
    out.print(table)


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}"


@app.command()
def explain(
    filter_string: Annotated[
        str | None, typer.Argument(metavar="FILTER", help="MLflow filter string.")
    ] = None,
    experiment: ExperimentOption = None,
    order_by: Annotated[
        list[str] | None, typer.Option("--order-by", "-o", help="Order key (repeatable).")
    ] = None,
    for_count: Annotated[bool, typer.Option("--count", help="Explain count().")] = False,
) -> None:
    """Show the plan a search (or count) would run, and why."""
    settings = _reachable()
    with Client(settings) as client:
        text = _query(lambda: client.explain(filter_string, experiment, order_by,
                                             count=for_count))  # fmt: skip
    sys.stdout.write(text.rstrip("\n") + "\n")


def _write(action: Any) -> None:
    try:
        action()
    except RedisUnavailableError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}\n{_UNREACHABLE_HINT}")
        raise typer.Exit(EXIT_UNREACHABLE) from None
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
    """Re-queue dead letters on the log (after a fix).

    A re-queued event counts as written now: it overrides older writes of the same registers.
    """
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


lookups_app = typer.Typer(
    help="Lookup fingerprints of keys (TRACETAGS_LOOKUP_KEYS).", no_args_is_help=True
)
app.add_typer(lookups_app, name="lookups")


@lookups_app.command("drop")
def lookups_drop(
    key: Annotated[str, typer.Argument(help="tags.<key> or metadata.<key>.", metavar="KEY")],
) -> None:
    """Stop keeping a key's lookup fingerprints and delete them, in every partition.

    A consumer whose TRACETAGS_LOOKUP_KEYS still names the key builds them again at its start.
    """
    settings = _reachable()
    try:
        field = settings.replace(lookup_keys=(key,)).lookup_fields[0]
    except ConfigError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_USAGE) from None
    with Client(settings) as client:
        functions.load(client.redis)
        dropped = 0
        for partition in range(client.partitions):
            lk = client.keys.lookups(partition)
            dropped += int(client.redis.hexists(lk, field))
            client.redis.fcall(
                functions.LOOKUP_FUNCTION, 1, lk, client.keys.prefix(partition), "drop", field
            )
    err.print(f"dropped the lookup fingerprints of {key} ({dropped} partitions had them)")


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


def _embedded_url(settings: Settings) -> str | None:
    """The URL of the embedded Redis of ./.tracetags if one is running there, else None."""
    port_file = Path(settings.embedded_dir) / "redis.port"
    if not port_file.exists():
        return None
    url = f"redis://127.0.0.1:{port_file.read_text().strip()}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        client.ping()
    except redis.RedisError:
        return None
    finally:
        client.close()
    return url


def main() -> None:
    app()


if __name__ == "__main__":
    main()
