"""The ``tracetags`` command: a thin layer over library calls.

Library errors become exit codes in one place (:class:`ExitCode`, :data:`ERROR_EXIT_CODES`,
raised from the root group); global options work before or after the command.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import csv
import enum
import getpass
import logging
import os
import shlex
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import msgspec
import redis
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table
from typer.core import TyperGroup

from tracetags import deadletters, history, redis_errors, schemas, traffic
from tracetags.client import Client, NodeStatus, TraceInfo
from tracetags.connections import socket_options, sync_client
from tracetags.embedded import RedisServer, embedded_server
from tracetags.errors import (
    ArchiveCorruptError,
    ArchiveStoreError,
    BulkWriteError,
    EmbeddedRedisError,
    LibraryVersionError,
    LogGapError,
    QueryLimitError,
    RedisAuthError,
    RedisBusyError,
    RedisPermissionError,
    RedisTlsError,
    RedisUnavailableError,
    TracetagsError,
    TracetagsTimeoutError,
)
from tracetags.log import read_log
from tracetags.producer import TagProducer
from tracetags.settings import Settings, has_secret, redact_url


class ExitCode(enum.IntEnum):
    """What the ``tracetags`` command's exit status means (listed in ``--help``)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    UNREACHABLE = 3
    #: A bulk write fell short: fewer events written than traces matched.
    INCOMPLETE = 4
    #: Redis answers but does not work normally: ``status`` (OOM, READONLY, MISCONF, BUSY),
    #: or any command while Redis is busy running a script or loading its data.
    DEGRADED = 5
    #: Redis refused the URL's user name or password.
    AUTH_FAILED = 6
    #: Redis's ACL refused a command or key to the user (docs/security.md).
    FORBIDDEN = 7


EXIT_CODE_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.FAILED: "not found, timed out, or failed (a gap in the log, an unreadable archive)",
    ExitCode.USAGE: "usage or filter error (the filter is shown with a caret), or a query "
    "over a limit",
    ExitCode.UNREACHABLE: "Redis unreachable (the URL tried and a hint)",
    ExitCode.INCOMPLETE: "a bulk write fell short (fewer traces written than matched)",
    ExitCode.DEGRADED: "Redis answers but is degraded (status: OOM, READONLY, MISCONF, ...; "
    "any command: busy or loading)",
    ExitCode.AUTH_FAILED: "Redis refused the user name or password",
    ExitCode.FORBIDDEN: "Redis's ACL refused a command or key to the user",
}
EXIT_CODES_HELP = "Exit codes: " + "; ".join(
    f"{int(code)} {meaning}" for code, meaning in EXIT_CODE_MEANINGS.items()
)
_UNREACHABLE_HINT = "hint: start one (redis-server), or pass --redis-url / set TRACETAGS_REDIS_URL"

# The exit code (and a hint to print) of each library error, most specific first: the first
# row whose class the error is an instance of decides.  Every command goes through it.
ERROR_EXIT_CODES: tuple[tuple[type[TracetagsError], ExitCode, str | None], ...] = (
    (RedisAuthError, ExitCode.AUTH_FAILED, None),
    (RedisPermissionError, ExitCode.FORBIDDEN, None),
    (RedisBusyError, ExitCode.DEGRADED, None),
    (LibraryVersionError, ExitCode.FAILED, None),
    (RedisTlsError, ExitCode.UNREACHABLE, None),
    (RedisUnavailableError, ExitCode.UNREACHABLE, _UNREACHABLE_HINT),
    (EmbeddedRedisError, ExitCode.UNREACHABLE, None),
    (TracetagsTimeoutError, ExitCode.FAILED, None),
    (BulkWriteError, ExitCode.INCOMPLETE, None),
    (LogGapError, ExitCode.FAILED, None),
    (ArchiveStoreError, ExitCode.FAILED, None),
    (ArchiveCorruptError, ExitCode.FAILED, None),
    (QueryLimitError, ExitCode.USAGE, None),
    (TracetagsError, ExitCode.USAGE, None),
)

# Piped output gets a wide page: tables of trace ids are unreadable at the default 80.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True, soft_wrap=True)


def exit_code_for(exc: TracetagsError) -> tuple[ExitCode, str | None]:
    """The exit code and hint of a library error (:data:`ERROR_EXIT_CODES`)."""
    return next((code, hint) for kind, code, hint in ERROR_EXIT_CODES if isinstance(exc, kind))


def _fail(code: ExitCode, message: str, hint: str | None = None) -> NoReturn:
    err.print(f"[red]error:[/] {escape(message)}" + (f"\n{hint}" if hint else ""))
    raise typer.Exit(code)


class RootGroup(TyperGroup):
    """The root command: maps library errors to exit codes, and lets every global option
    (an option of the root callback) also be given after the command."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        for command in leaf_commands(self):
            taken = {name for param in command.params for name in param.opts}
            for param in self.params:
                if taken & set(param.opts):
                    raise TypeError(f"{command.name}: {param.opts[0]} is a global option")
                command.params.append(_after_the_command(param))

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except TracetagsError as exc:
            code, hint = exit_code_for(exc)
            _fail(code, str(exc), hint)
        except redis.RedisError as exc:
            # A call that reached Redis outside the Client's mapping: the same one-line errors.
            url = state.redis_url or Settings().effective_redis_url
            mapped = redis_errors.library_error(exc, url)
            if mapped is None:
                _fail(ExitCode.FAILED, f"Redis refused a command: {exc}")
            code, hint = exit_code_for(mapped)
            _fail(code, str(mapped), hint)


def leaf_commands(group: Any) -> Iterator[Any]:
    """Every command below ``group`` that runs something (sub-groups are walked into)."""
    for command in group.commands.values():
        if hasattr(command, "commands"):
            yield from leaf_commands(command)
        else:
            yield command


def _after_the_command(param: Any) -> Any:
    """A copy of a global option for a command's own options: given there, it wins over the
    one before the command (the root callback ran first); not given, it changes nothing."""
    twin = copy.copy(param)
    twin.expose_value = False
    twin.envvar = None
    twin.default = None
    twin.callback = _remember_global_option
    twin.rich_help_panel = "Global options (also before the command)"
    return twin


def _remember_global_option(ctx: Any, param: Any, value: Any) -> Any:
    if value is not None:
        setattr(state, param.name, value)
    return value


app = typer.Typer(
    name="tracetags",
    cls=RootGroup,
    help="Mutable tags on ML/LLM traces, event-sourced on Redis Streams.\n\n"
    "Without --redis-url / TRACETAGS_REDIS_URL, commands use the embedded Redis of "
    "./.tracetags (started for the command when it is not running). The global options "
    "work before or after the command.\n\n" + EXIT_CODES_HELP + ".",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


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


def cli_source() -> str:
    """``cli:<os user>``: the source of what the CLI writes unless TRACETAGS_SOURCE says."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (a bare container)
        user = f"uid{os.getuid()}"
    return schemas.source_name(f"cli:{user}")


def _settings(**overrides: Any) -> Settings:
    if not os.environ.get("TRACETAGS_SOURCE"):
        overrides.setdefault("source", cli_source())
    if state.redis_url:
        overrides["redis_url"] = state.redis_url
    if state.namespace:
        overrides["namespace"] = state.namespace
    return Settings.from_env(**overrides)


@contextlib.contextmanager
def _redis_for(settings: Settings) -> Iterator[Settings]:
    """Yield settings with a reachable URL: the given one, or a started embedded Redis."""
    server: RedisServer | None = None
    if settings.redis_url is None:
        server = embedded_server(settings.embedded_dir).start()
        shown = redact_url(server.url)
        err.print(f"embedded Redis at [bold]{shown}[/] (data in {server.directory})")
        settings = settings.replace(redis_url=server.url)
    try:
        _ping(settings)
        yield settings
    finally:
        if server is not None:
            server.stop()


def _ping(settings: Settings) -> None:
    client = sync_client(settings.effective_redis_url, **socket_options(settings, timeout_s=3.0))
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        mapped = redis_errors.library_error(exc, settings.effective_redis_url)
        if mapped is not None and not isinstance(mapped, RedisBusyError):
            raise mapped from None
        if mapped is not None:
            return  # busy or loading: the command's first call says so (status: its state)
        # It answered: not unreachable (LOADING, BUSY, MISCONF refuse even PING); the
        # command says what it can do, `status` names the condition.
        err.print(f"[yellow]warning:[/] Redis answers but refuses: {escape(str(exc))}")
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
        url = settings.effective_redis_url
        # A URL with a password is named by its variable, never printed.
        options += (
            ' --redis-url "$TRACETAGS_REDIS_URL"'
            if has_secret(url)
            else (f" --redis-url {shlex.quote(url)}")
        )
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
    prints the URL to use, and stops it on exit.  Beside the consumers it runs the
    archiver (TRACETAGS_ARCHIVE_URL; with the embedded Redis, ./.tracetags/archive), which
    archives the folded log and trims it every TRACETAGS_ARCHIVE_INTERVAL; with a Redis URL
    and no archive URL it warns that the log is unbounded.
    """
    import logging

    from tracetags.serve import serve as run_serve

    settings = _settings()
    if settings.redis_url is not None:
        _ping(settings)

    def ready(active: Settings) -> None:
        url = active.effective_redis_url
        hint = (
            "  (clients: set TRACETAGS_REDIS_URL to this URL with its password)"
            if has_secret(url)
            else f"  export TRACETAGS_REDIS_URL={url}"
        )
        out.print(
            f"tracetags serve: {workers} consumer(s) folding namespace "
            f"{active.namespace!r} at {redact_url(url)}\n{hint}"
        )
        _print_archive_plan(active)

    run_serve(
        settings, workers, on_ready=ready, log_level=logging.DEBUG if verbose else logging.INFO
    )


def _reachable() -> Settings:
    """Settings for a command that talks to Redis: the given URL; else the embedded Redis
    of ./.tracetags — the running one, or one started for this command (its data is kept)."""
    settings = _settings()
    if settings.redis_url is None:
        # The archive's default is the embedded Redis's: pin it before the URL is set.
        settings = settings.replace(archive_url=settings.archive_location)
        url = _embedded_url(settings)
        if url is not None:
            settings = settings.replace(redis_url=url)
        else:
            server = embedded_server(settings.embedded_dir).start()
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
        report = client.status()
    if output is Format.json:
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
        if report.condition is not None:
            raise typer.Exit(ExitCode.DEGRADED)
        return
    table = Table(title=f"namespace {report.namespace!r}, group {report.group!r}")
    for column in ("partition", "log entries", "lag", "pending", "dead letters", "traces"):
        table.add_column(column, justify="right")
    if report.cluster:
        table.add_column("node")
        table.add_column("slot", justify="right")
    for row in report.partitions:
        cells = [str(row.partition), str(row.stream_length),
                 "?" if row.lag is None else str(row.lag), str(row.pending),
                 str(row.dead_letters), str(row.traces)]  # fmt: skip
        if report.cluster:
            cells += [row.node or "?", "?" if row.slot is None else str(row.slot)]
        table.add_row(*cells)
    out.print(table)
    if report.cluster:
        _print_nodes(report.nodes)
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
    _print_archive_status(report)
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
        raise typer.Exit(ExitCode.DEGRADED)


def _print_nodes(nodes: list[NodeStatus]) -> None:
    """The primaries of a cluster: the partitions each holds, its memory, its trouble."""
    out.print(f"Redis Cluster: {len(nodes)} primaries")
    for node in nodes:
        held = ", ".join(str(p) for p in node.partitions) or "none"
        line = f"  {node.address}: partitions {held}"
        if node.error is not None:
            out.print(f"{line} - [bold red]unreachable[/] ({escape(node.error)})")
            continue
        line += f", memory {node.used_memory_human}"
        if node.condition is not None:
            line += f" - [bold red]{node.condition}[/]"
        out.print(line)


@app.command()
def get(
    trace_id: Annotated[str, typer.Argument(help="The trace id.", metavar="TRACE")],
    output: Annotated[Format, typer.Option("--format", help="table or json.")] = Format.table,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            help="The trace as it was at this point of the log's clock: an ISO-8601 time (UTC "
            "unless it has an offset), epoch ms, an entry id ms-seq, or a duration ago (2h).",
        ),
    ] = None,
) -> None:
    """Show one trace: its fields, and when and by whom each was last set.

    The fields come from the folded state (or, with --as-of, from its history folded up to
    that time); who set them, from its history. Exit 1 when it does not exist (then).
    """
    settings = _reachable()
    with Client(settings) as client:
        trace = client.get_trace(trace_id, as_of=as_of)
        last_set: dict[str, dict[str, Any]] = {}
        if trace is not None:
            try:
                events = client.trace_history(trace_id, until=as_of)
            except (ArchiveStoreError, ArchiveCorruptError) as exc:
                err.print(f"[yellow]warning:[/] no history (the archive: {escape(str(exc))})")
                events = []
            last_set = _last_set(events)
    if trace is None:
        when = "" if as_of is None else f" as of {as_of}"
        err.print(f"trace {escape(trace_id)!r} not found in namespace {settings.namespace!r}{when}")
        raise typer.Exit(ExitCode.FAILED)
    info = trace.info
    if output is Format.json:
        record = trace_record(info)
        record["last_set"] = last_set
        sys.stdout.write(msgspec.json.encode(record).decode() + "\n")
        return
    title = f"trace {info.trace_id}" + ("" if as_of is None else f" as of {as_of}")
    table = Table(title=title)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_column("last set")
    table.add_column("by")
    attributes = {"experiment_id", "timestamp_ms", "execution_time_ms", "status",
                  "client_request_id"}  # fmt: skip
    for field, value in trace_record(info).items():
        if isinstance(value, dict):
            for key, item in sorted(value.items()):
                label = f"{field}.{key}"
                table.add_row(label, escape(item), *_who(last_set.get(label)))
        else:
            setter = last_set.get(f"attributes.{field}") if field in attributes else None
            table.add_row(field, "" if value is None else escape(str(value)), *_who(setter))
    out.print(table)


def _last_set(events: list[history.HistoryEntry]) -> dict[str, dict[str, Any]]:
    """Per field holding a value: the entry id, time and source of the event that set it."""
    out: dict[str, dict[str, Any]] = {}
    for entry in events:
        for change in entry.changes:
            if change.overwritten_by is None and change.after is not None:
                out[change.field] = {"entry_id": entry.entry_id,
                                     "time": history.time_text(entry.time_ms),
                                     "source": entry.source}  # fmt: skip
    return out


def _who(setter: dict[str, Any] | None) -> tuple[str, str]:
    if setter is None:
        return "", ""
    return setter["time"], escape(setter["source"] or "-")


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
WaitTimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        min=0.1,
        help="Seconds to wait for the fold (default 30; 300 with --filter); exit 1 past it.",
    ),
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
    timeout: WaitTimeoutOption = None,
) -> None:
    """Set a tag on one trace, or on every trace matching --filter (with a progress bar)."""
    if filter_string is None:
        trace_id, key, value = _positional(args, ("TRACE", "KEY", "VALUE"))
        settings = _reachable()
        with Client(settings) as client:
            client.set_trace_tag(trace_id, key, value, wait=wait, **_timeout(timeout))
        err.print(f"set {escape(key)}={escape(value)!r} on {escape(trace_id)}")
        return
    key, value = _positional(args, ("KEY", "VALUE"))
    _bulk(filter_string, experiment, dry_run, f"set {key}={value!r} on",
          lambda client, progress: client.set_tags_where(
              filter_string, {key: value}, experiment, wait=wait, progress=progress,
              **_timeout(timeout)))  # fmt: skip


@tag_app.command("delete")
def tag_delete(
    args: Annotated[
        list[str], typer.Argument(help="TRACE KEY, or KEY with --filter.", metavar="[TRACE] KEY")
    ],
    filter_string: FilterOption = None,
    experiment: ExperimentOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count the matches.")] = False,
    wait: Annotated[bool, typer.Option(help="Return once the fold applied it.")] = True,
    timeout: WaitTimeoutOption = None,
) -> None:
    """Delete a tag from one trace, or from every trace matching --filter."""
    if filter_string is None:
        trace_id, key = _positional(args, ("TRACE", "KEY"))
        settings = _reachable()
        with Client(settings) as client:
            client.delete_trace_tag(trace_id, key, wait=wait, **_timeout(timeout))
        err.print(f"deleted {escape(key)} from {escape(trace_id)}")
        return
    (key,) = _positional(args, ("KEY",))
    _bulk(filter_string, experiment, dry_run, f"deleted {key} from",
          lambda client, progress: client.delete_tags_where(
              filter_string, [key], experiment, wait=wait, progress=progress,
              **_timeout(timeout)))  # fmt: skip


def _timeout(timeout: float | None) -> dict[str, Any]:
    """--timeout as the Client call's argument (none given: the call's own default)."""
    return {} if timeout is None else {"timeout": timeout}


def _positional(args: list[str], names: tuple[str, ...]) -> tuple[str, ...]:
    if len(args) != len(names):
        _fail(ExitCode.USAGE, f"expected {' '.join(names)}, got {len(args)} argument(s)")
    return tuple(args)


def _bulk(filter_string: str, experiment: list[str] | None, dry_run: bool, verb: str,
          action: Any) -> None:  # fmt: skip
    settings = _reachable()
    with Client(settings) as client:
        matches = client.count(filter_string, experiment)
        if dry_run:
            out.print(f"{matches} traces match: {escape(filter_string)}")
            err.print("dry run: nothing changed")
            return
        with Progress(console=err, transient=True) as bar:
            task = bar.add_task("tagging", total=matches)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            count = action(client, progress)
    err.print(f"{verb} {count} traces")


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
            page = client.search_traces(experiment, filter_string, order_by, max_results, token)
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
        sys.stdout.write(f"{client.count(filter_string, experiment)}\n")


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
        rows = client.stats(filter_string, group_by or [], metrics, experiment)
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
        text = client.explain(filter_string, experiment, order_by, count=for_count)
    sys.stdout.write(text.rstrip("\n") + "\n")


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
            raise typer.Exit(ExitCode.FAILED)
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
    with Client(_reachable()) as client:
        dropped = client.drop_lookup(key)
    err.print(f"dropped the lookup fingerprints of {key} ({dropped} partitions had them)")


@app.command("log")
def log_command(
    partition: Annotated[int | None, typer.Option(help="Only this partition.")] = None,
    start: Annotated[str, typer.Option(help="First entry id (XRANGE syntax).")] = "-",
    count: Annotated[int | None, typer.Option(min=1, help="At most this many entries.")] = None,
) -> None:
    """Print the decoded event log as JSON lines (one entry per line)."""
    settings = _reachable()
    client = sync_client(settings.effective_redis_url)
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


class HistoryFormat(enum.StrEnum):
    table = "table"
    json = "json"
    jsonl = "jsonl"


@app.command("history")
def history_command(
    trace_id: Annotated[
        str | None, typer.Argument(help="The trace (or give --source).", metavar="[TRACE]")
    ] = None,
    source: Annotated[
        str | None,
        typer.Option("--source", help="Every change this writer made, across traces."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="From this point of the log's clock: ISO-8601, epoch ms, ms-seq, or a "
            "duration ago (15m, 2h, 7d)."
        ),
    ] = None,
    until: Annotated[str | None, typer.Option(help="Up to this point (as --since).")] = None,
    key: Annotated[
        str | None,
        typer.Option("--key", help="Follow one field: tags.<k>, metadata.<k>, attributes.<a>."),
    ] = None,
    output: Annotated[
        HistoryFormat, typer.Option("--format", help="table, json or jsonl.")
    ] = HistoryFormat.table,
    undo: Annotated[
        bool,
        typer.Option(
            "--undo",
            help="With --source: the events that reverse its changes (a dry run unless "
            "--yes or confirmed).",
        ),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Write the --undo events.")] = False,
    wait: Annotated[bool, typer.Option(help="With --undo --yes: wait for the fold.")] = True,
) -> None:
    """Who changed what, and when: a trace's events, or one writer's across traces.

    With TRACE: every event of the trace in log order (archive and live tail) with its time,
    source and changes (from -> to; a change a newer write replaced is marked). With
    --source: every change that writer made (since --since), its count and the traces, and
    with --undo the events that reverse them.
    """
    if (trace_id is None) == (source is None):
        _fail(ExitCode.USAGE, "give a TRACE or --source NAME (not both)")
    if undo and source is None:
        _fail(ExitCode.USAGE, "--undo needs --source")
    if (since is not None) and source is None:
        _fail(ExitCode.USAGE, "--since goes with --source (a trace's history is whole)")
    settings = _reachable()
    with Client(settings) as client:
        if trace_id is not None:
            events = client.trace_history(trace_id, key=key, until=until)
            _print_history(events, output, f"history of {trace_id}")
            return
        assert source is not None
        if undo:
            _undo(client, source, since, until, yes, wait)
            return
        report = client.source_history(source, since=since, until=until)
        if key is not None:
            report = msgspec.structs.replace(report, entries=[
                e for e in history.follow(report.entries, key)])  # fmt: skip
    if output is HistoryFormat.json:
        record = msgspec.to_builtins(report)
        record.update(count=report.count, trace_ids=report.trace_ids,
                      entries=[_history_record(e) for e in report.entries])  # fmt: skip
        sys.stdout.write(msgspec.json.encode(record).decode() + "\n")
        return
    err.print(
        f"{report.count:,} events by {escape(source)} on {len(report.trace_ids):,} traces "
        f"({report.segments_read} archive segments read, {report.segments_skipped} skipped)"
    )
    _print_history(report.entries, output, f"changes by {source}", with_trace=True)
    if output is HistoryFormat.table and report.trace_ids:
        ids = report.trace_ids
        more = f" ... and {len(ids) - 100:,} more" if len(ids) > 100 else ""
        err.print("traces: " + escape(" ".join(ids[:100])) + more)


_TABLE_ROWS = 1_000


def _history_record(entry: history.HistoryEntry) -> dict[str, Any]:
    record: dict[str, Any] = msgspec.to_builtins(entry)
    record["time"] = history.time_text(entry.time_ms)
    return record


def _print_history(
    events: list[history.HistoryEntry], output: HistoryFormat, title: str,
    *, with_trace: bool = False,
) -> None:  # fmt: skip
    if output is HistoryFormat.json:
        records = [_history_record(e) for e in events]
        sys.stdout.write(msgspec.json.encode(records).decode() + "\n")
        return
    if output is HistoryFormat.jsonl:
        encoder = msgspec.json.Encoder()
        for entry in events:
            sys.stdout.write(encoder.encode(_history_record(entry)).decode() + "\n")
        return
    table = Table(title=title)
    columns = ["entry id", "time", "source", "type", "changes"]
    if with_trace:
        columns.insert(0, "trace")
    for column in columns:
        table.add_column(column)
    if len(events) > _TABLE_ROWS:
        err.print(f"the table shows the first {_TABLE_ROWS:,} of {len(events):,} events "
                  "(--format jsonl for all)")  # fmt: skip
    for entry in events[:_TABLE_ROWS]:
        lines = []
        for c in entry.changes:
            before = "-" if c.before is None else repr(c.before)
            after = "deleted" if c.after is None else repr(c.after)
            mark = f"  [dim](overwritten by {c.overwritten_by})[/]" if c.overwritten_by else ""
            lines.append(f"{escape(c.field)}: {escape(before)} -> {escape(after)}{mark}")
        row = [entry.entry_id, history.time_text(entry.time_ms), escape(entry.source or "-"),
               entry.type + (" [yellow](lost)[/]" if entry.lost else ""),
               "\n".join(lines) or "-"]  # fmt: skip
        if with_trace:
            row.insert(0, escape(entry.trace_id))
        table.add_row(*row)
    out.print(table)


def _undo(
    client: Client, source: str, since: str | None, until: str | None, yes: bool, wait: bool
) -> None:
    steps = client.undo_source(source, since=since, until=until)
    writes = [s for s in steps if s.set or s.delete]
    table = Table(title=f"undo of {source}" + ("" if since is None else f" since {since}"))
    for column in ("trace", "set back", "delete", "left alone"):
        table.add_column(column)
    for step in steps:
        table.add_row(
            escape(step.trace_id),
            escape(", ".join(f"{k}={v!r}" for k, v in sorted(step.set.items()))),
            escape(", ".join(step.delete)),
            escape("; ".join(f"{f}: {why}" for f, why in sorted(step.skipped.items()))),
        )
    out.print(table)
    who = history.undo_source_name(source)
    if not writes:
        err.print("nothing to undo")
        return
    if not yes and not (sys.stdin.isatty() and typer.confirm(
            f"write the reversing events of {len(writes)} traces (source {who})?")):  # fmt: skip
        err.print(f"dry run: {len(writes)} traces would be changed back; run again with --yes "
                  "to write the events")  # fmt: skip
        return
    client.undo_source(source, since=since, until=until, apply=True, wait=wait)
    err.print(f"wrote the reversing events of {len(writes)} traces (source {escape(who)})")


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


@app.command()
def replay(
    into: Annotated[str, typer.Option("--into", help="Target namespace (empty unless --resume).")],
    until: Annotated[
        str | None,
        typer.Option(
            help="Stop at this point of the log's clock: an ISO-8601 time (UTC unless it has "
            "an offset), epoch ms, or an entry id ms-seq (inclusive)."
        ),
    ] = None,
    partition: Annotated[
        list[int] | None, typer.Option("--partition", help="Only this partition (repeatable).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue a replay of the same source.")
    ] = False,
    redis_url_into: Annotated[
        str | None,
        typer.Option("--redis-url-into", help="Redis of the target (default: the source's)."),
    ] = None,
    output: Annotated[Format, typer.Option("--format", help="table or json.")] = Format.table,
) -> None:
    """Rebuild the namespace's state in another namespace from its archive and live tail.

    Every partition is folded in entry-id order by the consumer's own fold Function with the
    original entry ids, so the target's state equals the source's (check it with `tracetags
    verify`). The target gets the state, indexes, dead letters and a record of the replay;
    its log stays empty (the history stays in the source). Exit codes: 0 done; 1 entries are
    missing (trimmed from the stream and not in the archive) or the archive cannot be read;
    2 the target is not empty or --until is not understood; 3 Redis unreachable.
    """
    import time

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from tracetags.archive import replay as replaying

    source = _reachable()
    try:
        target = source.replace(namespace=into, redis_url=redis_url_into or source.redis_url)
    except TracetagsError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(ExitCode.USAGE) from None
    if redis_url_into is not None:
        _ping(target)
    columns = (
        TextColumn("replay {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]} events/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(f"{source.namespace} -> {into}", total=None, rate="-")
        started = time.monotonic()

        def progress(at: replaying.Progress) -> None:
            elapsed = time.monotonic() - started
            rate = f"{at.done / elapsed:,.0f}" if elapsed > 0 else "-"
            bar.update(task, completed=at.done, total=at.total, rate=rate)

        try:
            result = replaying.replay(
                source,
                target,
                until=until,
                partitions=partition,
                resume=resume,
                archive=replaying.archive_of(source),
                on_progress=progress,
            )
        except (LogGapError, ArchiveStoreError, ArchiveCorruptError) as exc:
            err.print(f"[red]error:[/] {escape(str(exc))}")
            raise typer.Exit(ExitCode.FAILED) from None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            err.print(f"[red]error:[/] Redis unreachable: {escape(str(exc))}")
            raise typer.Exit(ExitCode.UNREACHABLE) from None
        except (TracetagsError, ValueError) as exc:
            err.print(f"[red]error:[/] {escape(str(exc))}")
            raise typer.Exit(ExitCode.USAGE) from None
    if output is Format.json:
        record = msgspec.to_builtins(result)
        record.update(entries=result.entries, applied=result.applied,
                      dead_lettered=result.dead_lettered,
                      events_per_second=round(result.events_per_second))  # fmt: skip
        sys.stdout.write(msgspec.json.encode(record).decode() + "\n")
        return
    table = Table(title=f"replay of {result.source!r} into {result.target!r}"
                  + (f" until {_until_text(result.until)}" if result.until else ""))  # fmt: skip
    for column in ("partition", "from archive", "from tail", "applied", "dead letters",
                   "resumed after", "last entry"):  # fmt: skip
        table.add_column(column, justify="right")
    for p in result.partitions:
        table.add_row(str(p.partition), str(p.from_archive), str(p.from_tail), str(p.applied),
                      str(p.dead_lettered), p.resumed_after or "-", p.last_id or "-")  # fmt: skip
    out.print(table)
    err.print(
        f"replayed {result.entries:,} entries in {result.seconds:.1f} s "
        f"({result.events_per_second:,.0f} events/s)"
    )


def _until_text(until: str) -> str:
    """An --until bound as a person reads it: the entry id, or its time when the bound is a
    whole millisecond (replay keeps it as ``ms-<largest sequence>``)."""
    ms, _, seq = until.partition("-")
    if seq != str(2**64 - 1):
        return until
    return datetime.fromtimestamp(int(ms) / 1000, UTC).isoformat(timespec="milliseconds")


@app.command()
def digest(
    output: Annotated[Format, typer.Option("--format", help="table or json.")] = Format.table,
) -> None:
    """An order-independent digest of every trace's state, per partition.

    Of each trace's tags, metadata and attributes (not the stamps, not the trace number),
    summed per partition: equal digests, equal states. It reads every trace.
    """
    settings = _reachable()
    with Client(settings) as client:
        report = client.digest()
    if output is Format.json:
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
        return
    table = Table(title=f"digest of namespace {report.namespace!r}")
    for column in ("partition", "traces", "digest"):
        table.add_column(column, justify="right")
    for row in report.partitions:
        table.add_row(str(row.partition), str(row.traces), row.digest)
    table.add_row("all", str(report.traces), report.digest, style="bold")
    out.print(table)
    broken = sum(p.broken for p in report.partitions)
    if broken:
        err.print(f"[red]{broken} listed traces have no state[/] (a broken namespace)")


@app.command()
def verify(
    namespace_a: Annotated[str, typer.Argument(metavar="NAMESPACE_A")],
    namespace_b: Annotated[str, typer.Argument(metavar="NAMESPACE_B")],
    redis_url_b: Annotated[
        str | None,
        typer.Option("--redis-url-b", help="Redis of NAMESPACE_B (default: --redis-url's)."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Differing traces to show.")] = 10,
    output: Annotated[Format, typer.Option("--format", help="table or json.")] = Format.table,
) -> None:
    """Compare two namespaces' digests: exit 0 when equal, 1 when they differ.

    Where partitions differ, their traces are compared one by one: the first differing
    traces (by trace id) are named with what differs.
    """
    from tracetags.archive.digest import verify as run_verify

    settings = _reachable()
    url_b = redis_url_b or settings.effective_redis_url
    if redis_url_b is not None:
        _ping(settings.replace(redis_url=redis_url_b))
    client_a = sync_client(settings.effective_redis_url)
    client_b = sync_client(url_b)
    try:
        result = run_verify(client_a, namespace_a, client_b, namespace_b, limit=limit)
    finally:
        client_a.close()
        client_b.close()
    if output is Format.json:
        sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    else:
        table = Table(title=f"{namespace_a!r} (A) vs {namespace_b!r} (B)")
        for column in ("partition", "traces A", "traces B", "digest A", "digest B", ""):
            table.add_column(column, justify="right")
        rows = max(len(result.a.partitions), len(result.b.partitions))
        for i in range(rows):
            pa = result.a.partitions[i] if i < len(result.a.partitions) else None
            pb = result.b.partitions[i] if i < len(result.b.partitions) else None
            same = pa is not None and pb is not None and (pa.digest, pa.traces) == (
                pb.digest, pb.traces)  # fmt: skip
            table.add_row(str(i), "-" if pa is None else str(pa.traces),
                          "-" if pb is None else str(pb.traces),
                          "-" if pa is None else pa.digest, "-" if pb is None else pb.digest,
                          "[green]equal[/]" if same else "[red]differ[/]")  # fmt: skip
        out.print(table)
        for d in result.differences:
            out.print(f"[bold]{escape(d.trace_id)}[/]: {d.kind}")
            for f in d.fields:
                out.print(f"  {escape(f.field)}: A={escape(repr(f.a))} B={escape(repr(f.b))}")
        if result.differing_traces > len(result.differences):
            out.print(f"... {result.differing_traces - len(result.differences)} more traces differ")
    if result.equal:
        err.print(f"equal: {result.a.traces:,} traces, digest {result.a.digest}")
        return
    where = "partition" if len(result.partitions) == 1 else "partitions"
    err.print(f"[red]differ[/]: {result.differing_traces} traces in {where} "
              f"{', '.join(map(str, result.partitions))}")  # fmt: skip
    raise typer.Exit(1)


# --- the archive ------------------------------------------------------------------------


def _print_archive_plan(active: Settings) -> None:
    if active.archive_url is None:
        from tracetags.serve import UNBOUNDED_WARNING

        err.print(f"[bold red]warning:[/] {escape(UNBOUNDED_WARNING)}")
    else:
        out.print(
            f"  archiving to {redact_url(active.archive_url)} every {active.archive_interval}; "
            "entries stay "
            f"in Redis {active.log_retention} after they are archived"
        )


def _ago(ms: int | None) -> str:
    if ms is None:
        return "never"
    seconds = max(0.0, (schemas.now_ms() - ms) / 1000)
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def _size(count: int | None) -> str:
    if count is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return str(count)


def _print_archive_status(report: Any) -> None:
    if report.log_unbounded:
        out.print(
            "[bold red]the log is unbounded[/]: no archive is configured for this Redis "
            "(TRACETAGS_ARCHIVE_URL), so nothing is archived or trimmed and the log grows in "
            "Redis's memory"
        )
        return
    table = Table(title=f"archive {redact_url(report.archive_url or '')}".rstrip())
    for column in ("partition", "tail entries", "tail bytes", "archived up to", "segments",
                   "archive bytes", "last run", "trim held back by"):  # fmt: skip
        table.add_column(column, justify="left" if column == "trim held back by" else "right")
    for row in report.partitions:
        archive = row.archive
        table.add_row(
            str(row.partition), str(row.stream_length), _size(row.stream_bytes),
            (archive.archived_up_to or "-") if archive else "-",
            str(archive.segments) if archive else "0",
            _size(archive.archive_bytes) if archive else "0 B",
            _ago(archive.last_run_ms) if archive else "never",
            archive.held_back_text if archive else "no archive run yet",
        )  # fmt: skip
    out.print(table)


@app.command("archive")
def archive_command(
    action: Annotated[
        str | None,
        typer.Argument(
            metavar="[compact]",
            help="compact: merge the archive's small segments instead (see below).",
            show_default=False,
        ),
    ] = None,
    partition: Annotated[int | None, typer.Option(min=0, help="Only this partition.")] = None,
    full: Annotated[
        bool,
        typer.Option(
            "--full",
            help="With compact: merge every run of segments below the target, not only "
            "runs of 4 or more small ones.",
        ),
    ] = False,
) -> None:
    """Archive the folded log to the archive store and trim it safely, once, then exit.

    Writes every entry the fold has acknowledged into Parquet segments
    (TRACETAGS_ARCHIVE_URL; with the embedded Redis, ./.tracetags/archive), records them in
    the manifest, then trims the stream up to what every consumer group acknowledged and the
    live retention (TRACETAGS_LOG_RETENTION) allows.  `tracetags serve` does this every
    TRACETAGS_ARCHIVE_INTERVAL.

    `tracetags archive compact` merges small segments into sorted ones of up to
    TRACETAGS_ARCHIVE_COMPACT_ROWS rows (one atomic manifest write each) and removes
    segments superseded longer than TRACETAGS_ARCHIVE_COMPACT_GRACE ago; `serve` does this
    between its archive runs.
    """
    if action not in (None, "compact"):
        _fail(ExitCode.USAGE, f"unknown action {action!r} (known: compact)")
    settings = _reachable()
    if settings.archive_location is None:
        from tracetags.serve import UNBOUNDED_WARNING

        err.print(f"[red]error:[/] {escape(UNBOUNDED_WARNING)}")
        raise typer.Exit(ExitCode.USAGE)
    if action == "compact":
        _compact(settings, partition, full)
        return
    from tracetags.archive import archive_once

    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("archiving", total=None)

        def advance(part: int, entries: int) -> None:
            progress.update(task, advance=entries, description=f"partition {part}")

        try:
            reports = archive_once(settings, partition=partition, on_progress=advance)
        except TracetagsError as exc:
            err.print(f"[red]error:[/] {escape(str(exc))}")
            raise typer.Exit(ExitCode.USAGE) from None
    failed = False
    for report in reports:
        if report.locked_out:
            out.print(f"partition {report.partition}: another archiver is running; skipped")
            continue
        line = (
            f"partition {report.partition}: {report.archived} entries archived in "
            f"{report.segments_written} segment(s) (up to {report.archived_up_to or '-'}), "
            f"{report.trimmed} trimmed"
        )
        if report.orphans_removed:
            line += f"; {report.orphans_removed} orphaned segment(s) removed"
        if report.held:
            line += f"; trim held back by {report.held}"
            line += f" ({report.held_detail})" if report.held_detail else ""
        out.print(line)
        if report.error is not None:
            failed = True
            message = escape(report.error)
            err.print(f"[red]partition {report.partition}: archive failed:[/] {message}")
    if failed:
        raise typer.Exit(1)


def _compact(settings: Settings, partition: int | None, full: bool) -> None:
    from tracetags.archive.compaction import compact

    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("compacting", total=None)

        def advance(part: int, rows: int, total: int) -> None:
            progress.update(task, advance=rows, total=total, description=f"partition {part}")

        reports = compact(settings, partition=partition, full=full, on_progress=advance)
    failed = False
    for report in reports:
        if report.locked_out:
            out.print(f"partition {report.partition}: an archiver is running; skipped")
            continue
        if report.error is not None:
            failed = True
            message = escape(report.error)
            err.print(f"[red]partition {report.partition}: compaction failed:[/] {message}")
            continue
        line = (
            f"partition {report.partition}: {report.merged} segments compacted into "
            f"{report.written} ({report.rows} rows), {report.retired} superseded removed, "
            f"{report.segments} visible"
        )
        if report.orphans_removed:
            line += f"; {report.orphans_removed} orphaned segment(s) removed"
        out.print(line)
    if failed:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
