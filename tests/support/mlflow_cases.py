"""The dataset and the few hundred queries put to MLflow 3.17.2 and to tracetags.

:func:`generate_dataset` makes traces with tricky tags, metadata and mutations;
:func:`build_queries` the search_traces calls over it (filters, order_bys, scopes, page sizes),
labelled where tracetags differs on purpose. Used by tests/test_query_reference.py (the
reference evaluator against MLflow) and tests/test_mlflow_differential.py (the engine).
"""

from __future__ import annotations

import random
from typing import Any

from tests.support import query_reference as ref
from tracetags.query import (
    Comparison,
    Expr,
    Field,
    Not,
    Or,
    OrderKey,
    parse_filter,
    parse_order_by,
)
from tracetags.query.lexer import TokenType, tokenize

# --- the dataset ----------------------------------------------------------------------------

EXPERIMENTS = ("1", "2", "10")
BASE_MS = 1_700_000_000_000
ENVIRONMENTS = ("production", "staging", "dev", "Production", "PRODUCTION", "")
MODEL_VERSIONS = ("v1.0.0", "v2.0.0", "v2.1.0", "v10.0.0", "v2_0_0")
PRIORITIES = ("1", "2", "3", "10", "2.5", "-1", "03", "1e2", "high", " 4", "")
TRICKY = (
    "it's",
    'say "hi"',
    "100%",
    "100% sure",
    "a_b",
    "axb",
    "a%b",
    "café",
    "CAFÉ",
    "Café",
    "école",
    "ÉCOLE",
    "Straße",
    "STRASSE",
    "naïve",
    "ΣΊΣΥΦΟΣ",
    "σίσυφος",
    "日本語",
    "emoji 🚀",
    "back\\slash",
    " padded ",
    "line\nbreak",
    "tab\there",
    "",
    "a.b",
    "A.B",
    "(paren)",
    "[x]",
    "x" * 300,
)
NAMES = ("chat", "Chat", "retrieve", "rerank", "chat_v2", "chat%", "Ünïcode", "", "tool.call")


def _trace_id(rng: random.Random, index: int) -> str:
    head = rng.choice(("tr-", "TR-", "tr-", "Tr-", "tr_"))
    return f"{head}{rng.getrandbits(40):010x}{index:04d}"


def generate_dataset(seed: int = 4, n_traces: int = 320, n_mutations: int = 140) -> dict[str, Any]:
    """Traces in several experiments, realistic and tricky tags, then tag mutations.

    Equal timestamps (ties for the tie-breakers), unfinished traces (no duration), missing
    tags, empty strings, quotes, % and _, non-ASCII case pairs, numbers as strings.
    """
    rng = random.Random(seed)
    n_users = max(n_traces // 3, 5)
    sessions = [f"session_{i}" for i in range(max(n_traces // 8, 3))]
    run_ids = [f"run{rng.getrandbits(32):08x}" for _ in range(6)]
    timestamps = [BASE_MS + rng.randrange(0, 3_600_000) for _ in range(max(n_traces // 3, 2))]
    traces: list[dict[str, Any]] = []
    for index in range(n_traces):
        status = rng.choices(("OK", "ERROR", "IN_PROGRESS", "STATE_UNSPECIFIED"), (70, 20, 8, 2))[0]
        finished = status in ("OK", "ERROR") or (status == "STATE_UNSPECIFIED" and index % 2)
        duration = None
        if finished:
            duration = 0 if rng.random() < 0.03 else int(rng.lognormvariate(6.5, 1.6))
        tags: dict[str, str] = {}
        if rng.random() < 0.9:
            tags["environment"] = rng.choices(ENVIRONMENTS, (50, 20, 15, 5, 3, 2))[0]
        if rng.random() < 0.8:
            tags["model_version"] = rng.choice(MODEL_VERSIONS)
        if rng.random() < 0.95:
            tags["user_id"] = f"user_{int(rng.paretovariate(1.2)) % n_users}"
        if rng.random() < 0.6:
            tags["session_id"] = rng.choice(sessions)
        if rng.random() < 0.7:
            tags["priority"] = rng.choice(PRIORITIES)
        if rng.random() < 0.3:
            tags["needs_review"] = rng.choice(("true", "false"))
        if rng.random() < 0.2:
            tags["sla_tier"] = rng.choice(("critical", "standard", "Critical"))
        if rng.random() < 0.35:
            tags["note"] = rng.choice(TRICKY)
        if rng.random() < 0.1:
            tags["model.version"] = rng.choice(("3", "4"))
        if rng.random() < 0.1:
            tags["my key"] = rng.choice(("x", "y"))
        if rng.random() < 0.1:
            tags["a-b"] = rng.choice(("1", "2"))
        metadata: dict[str, str] = {}
        if rng.random() < 0.5:
            metadata["source"] = rng.choice(("api", "batch", "notebook", "API"))
        if rng.random() < 0.5:
            metadata["user"] = f"user_{rng.randrange(20)}"
        if rng.random() < 0.3:
            metadata["mlflow.sourceRun"] = rng.choice(run_ids)
        if rng.random() < 0.3:
            metadata["mlflow.trace.session"] = rng.choice(sessions[:5])
        if rng.random() < 0.1:
            metadata["note"] = rng.choice(TRICKY)
        traces.append(
            {
                "trace_id": _trace_id(rng, index),
                "experiment_id": rng.choices(EXPERIMENTS, (60, 25, 15))[0],
                "timestamp_ms": rng.choice(timestamps),
                "execution_time_ms": duration,
                "status": status,
                "name": rng.choice(NAMES) if rng.random() < 0.85 else None,
                "client_request_id": f"req-{index % 97:03d}" if rng.random() < 0.5 else None,
                "tags": tags,
                "metadata": metadata,
            }
        )
    mutations: list[dict[str, Any]] = []
    for _ in range(n_mutations):
        trace = rng.choice(traces)
        roll = rng.random()
        if roll < 0.35:
            value = rng.choice(("production", "staging", "canary"))
            mutations.append(
                {"op": "set", "trace_id": trace["trace_id"], "key": "environment", "value": value}
            )
        elif roll < 0.5:
            mutations.append(
                {"op": "set", "trace_id": trace["trace_id"], "key": "needs_review", "value": "true"}
            )
        elif roll < 0.65:
            key = rng.choice(("environment", "needs_review", "priority", "note"))
            mutations.append({"op": "delete", "trace_id": trace["trace_id"], "key": key})
        elif roll < 0.75:
            mutations.append(
                {
                    "op": "set",
                    "trace_id": trace["trace_id"],
                    "key": "mlflow.traceName",
                    "value": rng.choice(NAMES),
                }
            )
        elif roll < 0.8:
            mutations.append(
                {"op": "delete", "trace_id": trace["trace_id"], "key": "mlflow.traceName"}
            )
        else:
            mutations.append(
                {
                    "op": "set",
                    "trace_id": trace["trace_id"],
                    "key": "priority",
                    "value": rng.choice(PRIORITIES),
                }
            )
    return {"traces": traces, "mutations": mutations}


# --- the queries ----------------------------------------------------------------------------


def quote(value: str) -> str:
    """``value`` as a filter literal (no escaping exists: pick the quote it does not contain)."""
    return f'"{value}"' if "'" in value else f"'{value}'"


def _q(filter_string: str | None, **extra: Any) -> dict[str, Any]:
    query: dict[str, Any] = {
        "experiment_ids": list(EXPERIMENTS),
        "filter_string": filter_string,
        "order_by": None,
        "max_results": 50_000,
    }
    query.update(extra)
    return query


KV_FIELDS = (
    "tags.environment",
    "tags.model_version",
    "tags.user_id",
    "tags.priority",
    "tags.note",
    "tags.needs_review",
    "tags.model.version",
    "tags.`my key`",
    'tags."a-b"',
    "tag.sla_tier",
    "metadata.source",
    "request_metadata.user",
    "metadata.note",
    "metadata.`mlflow.trace.session`",
    "name",
    "run_id",
)


def _kv_values(traces: list[dict[str, Any]], identifier: str) -> list[str]:
    expr = parse_filter(f"{identifier} IS NULL")
    assert isinstance(expr, Comparison)
    values = {ref.field_value(t, expr.field) for t in traces}
    return sorted(v for v in values if isinstance(v, str) and not ("'" in v and '"' in v))


def _core_filters(traces: list[dict[str, Any]], rng: random.Random) -> list[str]:
    out: list[str] = []
    for ident in KV_FIELDS:
        values = _kv_values(traces, ident)
        picks = [*rng.sample(values, min(2, len(values))), "absent-value"]
        out += [f"{ident} = {quote(v)}" for v in picks]
        out += [f"{ident} != {quote(v)}" for v in picks[:2]]
        out += [f"{ident} IS NULL", f"{ident} IS NOT NULL"]
        for v in picks[:1]:
            head = v[:2]
            out += [
                f"{ident} LIKE {quote(head + '%')}",
                f"{ident} LIKE {quote('%' + v[-2:])}",
                f"{ident} ILIKE {quote(head.upper() + '%')}",
                f"{ident} RLIKE {quote('^' + head)}" if head.isalnum() else f"{ident} RLIKE 'e'",
            ]
        out += [f"{ident} LIKE '_%_'", f"{ident} RLIKE '('"]
    # Values with quotes, wildcards, backslashes and non-ASCII case pairs.
    out += [
        'tags.note = "it\'s"',
        "tags.note = 'say \"hi\"'",
        "tags.note LIKE '100%'",
        "tags.note LIKE '100\\%'",
        "tags.note LIKE 'a_b'",
        "tags.note LIKE 'a%b'",
        "tags.note = 'a%b'",
        "tags.note = 'back\\slash'",
        "tags.note LIKE '%\\%'",
        "tags.note = ''",
        "tags.note != ''",
        "tags.note LIKE ''",
        "tags.note = ' padded '",
        "tags.note = 'padded'",
        "tags.note LIKE '% padded %'",
        "tags.note LIKE 'line%'",
        "tags.note LIKE 'line_break'",
        "tags.note RLIKE 'line.break'",
        "tags.note RLIKE '(?s)line.break'",
        "tags.note RLIKE '^x{300}$'",
        "tags.note = 'café'",
        "tags.note LIKE 'caf_'",
        "tags.note ILIKE 'CAFÉ'",
        "tags.note ILIKE 'caf%'",
        "tags.note ILIKE 'ÉCOLE'",
        "tags.note ILIKE 'straße'",
        "tags.note ILIKE 'σίσυφος'",
        "tags.note ILIKE '%🚀'",
        "tags.note LIKE '日本_'",
        "tags.note LIKE '日本%'",
        "tags.note RLIKE '[a-z]\\.[a-z]'",
        "tags.note RLIKE 'A|a'",
        "tags.note RLIKE '(?i)café'",
        "tags.note = '(paren)'",
        "tags.note RLIKE '\\(paren\\)'",
        "tags.environment = 'production'",
        "tags.environment = 'Production'",
        "tags.environment ILIKE 'production'",
        "tags.environment LIKE 'prod%'",
        "tags.environment LIKE 'PROD%'",
        "tags.environment != 'production'",
        "tags.environment = ''",
        "tags.priority = '3'",
        "tags.priority = '03'",
        "tags.needs_review = 'true'",
        "tags.model_version LIKE 'v2_0_0'",
        "tags.model_version = 'v2_0_0'",
        "tags.Environment = 'production'",
        "tags.`environment` = 'production'",
        "tags.'environment' = 'production'",
        "`tags`.environment = 'production'",
        "tags.Name = 'chat'",
        "tags.`mlflow.traceName` = 'chat'",
        "tags.mlflow.traceName LIKE 'chat%'",
        "metadata.`mlflow.sourceRun` IS NOT NULL",
        "name = ''",
        "name LIKE 'chat%'",
        "name LIKE 'chat\\%'",
        "name ILIKE 'CHAT'",
        "name ILIKE 'ünïcode'",
        "name RLIKE '^chat'",
        "name IS NULL",
        "metadata.`mlflow.trace.tokenUsage` IS NULL",
        "metadata.`mlflow.trace.cost` IS NOT NULL",
        "metadata.`mlflow.trace.tokenUsage` = '{}'",
    ]
    # String attributes.
    statuses = ("OK", "ERROR", "IN_PROGRESS", "STATE_UNSPECIFIED", "ok", "UNKNOWN")
    some_ids = [t["trace_id"] for t in rng.sample(traces, 4)]
    for prefix in ("", "attributes.", "attribute.", "trace."):
        out += [f"{prefix}status = 'OK'", f"{prefix}status != 'OK'"]
    out += [f"status = '{s}'" for s in statuses]
    out += [
        "status IN ('OK', 'ERROR')",
        "status NOT IN ('OK', 'ERROR')",
        "status IN ('OK')",
        "status in ('IN_PROGRESS', \"STATE_UNSPECIFIED\")",
        "status NOT IN ('nothing')",
        "status LIKE '%O%'",
        "status LIKE 'o%'",
        "status ILIKE 'o%'",
        "status RLIKE '^(OK|ERROR)$'",
        "status RLIKE 'PROG'",
        f"request_id = '{some_ids[0]}'",
        f"request_id != '{some_ids[0]}'",
        f"request_id IN ('{some_ids[0]}', '{some_ids[1]}', 'nope')",
        f"request_id NOT IN ('{some_ids[2]}', '{some_ids[3]}')",
        "request_id LIKE 'tr-%'",
        "request_id LIKE 'TR-%'",
        "request_id ILIKE 'tr-%'",
        "request_id LIKE 'tr\\_%'",
        "request_id LIKE 'tr_%'",
        "request_id RLIKE '^[Tt][Rr]-'",
        "request_id RLIKE '0$'",
        "client_request_id = 'req-001'",
        "client_request_id != 'req-001'",
        "client_request_id IN ('req-001', 'req-002', 'req-050')",
        "client_request_id NOT IN ('req-001', 'req-002')",
        "client_request_id LIKE 'req-0%'",
        "client_request_id ILIKE 'REQ-01_'",
        "client_request_id RLIKE '9$'",
        "attributes.client_request_id LIKE '%'",
    ]
    # Numeric attributes.
    stamps = sorted(t["timestamp_ms"] for t in traces)
    durations = sorted(t["execution_time_ms"] for t in traces if t["execution_time_ms"] is not None)
    mid_ts, tie_ts = stamps[len(stamps) // 2], stamps[len(stamps) // 3]
    mid_d = durations[len(durations) // 2]
    for name, pivot in (
        ("timestamp_ms", mid_ts),
        ("execution_time_ms", mid_d),
        ("end_time_ms", mid_ts + mid_d),
    ):
        for op in ("=", "!=", "<", "<=", ">", ">="):
            out.append(f"{name} {op} {pivot}")
    out += [
        f"timestamp_ms = {tie_ts}",
        f"timestamp = {tie_ts}",
        f"trace.timestamp_ms >= {tie_ts}",
        f"attributes.timestamp_ms < {tie_ts}",
        f"timestamp_ms > {tie_ts - 0.5}",
        f"timestamp_ms >= '{tie_ts}'",
        f"timestamp_ms = '{tie_ts}'",
        f"timestamp_ms < {stamps[0]}",
        f"timestamp_ms > {stamps[-1]}",
        "execution_time_ms = 0",
        "execution_time_ms >= 0",
        "execution_time_ms > -1",
        "execution_time_ms < 1e3",
        "execution_time_ms > 1.5e3",
        f"execution_time_ms >= {mid_d}.0",
        f"execution_time_ms <= '{mid_d}'",
        f"execution_time > {mid_d}",
        f"execution_time_ms != {mid_d}",
        "execution_time_ms > 5000",
        f"end_time_ms = {mid_ts}",
        f"end_time > {mid_ts}",
        f"end_time_ms <= {stamps[0]}",
        f"end_time_ms >= {stamps[-1]}",
        f"end_time_ms >= {stamps[-1] + 0.5}",
    ]
    # Shapes: AND chains, keyword case, whitespace, stray ANDs, clauses side by side.
    out += [
        "tags.environment = 'production' AND status = 'ERROR' AND execution_time_ms > 5000",
        "tags.environment = 'production' and status = 'OK'",
        "tags.environment='production'AND status='OK'",
        "tags.environment\t=\t'production'\nAND status = 'OK'",
        " tags.environment = 'production' ",
        "AND tags.environment = 'production'",
        "tags.environment = 'production' AND",
        "tags.environment = 'production' AND AND status = 'OK'",
        "tags.environment = 'production' status = 'OK'",
        "tags.environment IS NULL tags.priority IS NOT NULL",
        "AND",
        "tags.environment = 'production' AND tags.environment = 'staging'",
        "tags.environment = 'production' AND tags.environment != 'staging'",
        "tags.environment LIKE '%' AND tags.environment IS NOT NULL",
        "status = 'OK' AND execution_time_ms > 100 AND execution_time_ms < 2000",
        "name = 'chat' AND run_id IS NOT NULL",
        "tags.user_id = 'user_1' AND tags.session_id IS NOT NULL",
        "tags.sla_tier = 'critical' AND execution_time_ms > 3000",
        "tags.needs_review = 'true' AND status = 'ERROR'",
        "metadata.source ILIKE 'api' AND timestamp_ms > 0",
        "tags.note IS NULL AND metadata.note IS NOT NULL",
        "tags.model_version = 'v2.0.0' AND client_request_id IS NOT NULL",
    ]
    # Random AND-chains of simple clauses.
    simple = [f for f in out if " AND " not in f.upper() and f.strip() != "AND"]
    for _ in range(40):
        out.append(" AND ".join(rng.sample(simple, rng.choice((2, 2, 3)))))
    return out


# Filters MLflow accepts and tracetags rejects on purpose (FILTER-LANGUAGE.md).
DELIBERATE_REJECTIONS = (
    "execution_time_ms > 'abc'",
    "timestamp_ms = 'soon'",
    "end_time_ms < '1e'",
    "execution_time_ms = ''",
    "span.name = 'x'",
    "span.attributes.model = 'x'",
    "feedback.score > 1",
    "expectation.answer = 'x'",
    "issue.id = 'x'",
    "prompt = 'a/1'",
    "tags.text LIKE '%x%'",
    "tags.1st = 'x'",
    "tags.a.'b c' = 'x'",
)

# Filters both accept where MLflow on SQLite gives another answer (documented differences).
# end_time_ms is an expression without a column affinity in SQLite, so MLflow compares the
# integer with the quoted text and every integer sorts before any text.
SQLITE_QUIRKS = (
    "end_time_ms < '1'",
    "end_time_ms > '1'",
    f"end_time_ms >= '{BASE_MS}'",
    f"end_time <= '{BASE_MS}'",
)

INVALID_BOTH = (
    "tags.environment < 'x'",
    "tags.environment = production",
    "tags.environment = NULL",
    "tags.environment == 'x'",
    "tags.environment <> 'x'",
    "tags.environment IS 'x'",
    "tags.environment",
    "status IS NULL",
    "status = 5",
    "status < 'OK'",
    "request_id > 'a'",
    "timestamp_ms LIKE '1%'",
    "timestamp_ms IN (1, 2)",
    "execution_time_ms IS NULL",
    "trace_id = 'x'",
    "experiment_id = '1'",
    "foo = 'x'",
    "TAGS.environment = 'x'",
    "params.x = 'y'",
    "metrics.x > 1",
    "   ",
    "\t\n",
    "tags.environment = 'a' OR",
    "tags.environment = 'a';",
    "tags.a-b = 'x'",
    "tags.12ab = 'x'",
    "tags.in = 'x'",
    "metadata.`mlflow.trace.tokenUsage` LIKE '%'",
    "tags.environment LIKE 5",
    "status IN 'OK'",
    "status IN (1, 2)",
    "name IN 'chat'",
    "tags.environment = 'unterminated",
    "(tags.environment = 'x'",
    "NOT NOT tags.environment = 'x'",
)


Derivation = tuple[str, Any, Any] | str


def _extension_queries() -> list[tuple[str, Derivation | None]]:
    """Extension filters, each with how its answer follows from MLflow's answers to core ones.

    A derivation is a core filter string, "*" (every trace in scope), or
    ("union" | "minus" | "intersect", derivation, derivation); None when there is no core
    equivalent (numeric tag comparisons).
    """
    env_p = "tags.environment = 'production'"
    env_s = "tags.environment = 'staging'"
    env_set = "tags.environment IS NOT NULL"
    status_ok = "status = 'OK'"
    slow = "execution_time_ms > 1000"
    return [
        (f"{env_p} OR {env_s}", ("union", env_p, env_s)),
        (f"{env_p} or status = 'ERROR'", ("union", env_p, "status = 'ERROR'")),
        (f"NOT {env_p}", ("minus", "*", env_p)),
        (f"NOT ({env_p})", ("minus", "*", env_p)),
        (
            "NOT tags.environment != 'production'",
            ("minus", "*", "tags.environment != 'production'"),
        ),
        ("NOT tags.environment IS NULL", env_set),
        (f"({env_p})", env_p),
        (
            f"{status_ok} AND ({env_p} OR {env_s})",
            ("intersect", status_ok, ("union", env_p, env_s)),
        ),
        (f"{env_p} OR {status_ok} AND {slow}", ("union", env_p, ("intersect", status_ok, slow))),
        (f"({env_p} OR {status_ok}) AND {slow}", ("intersect", ("union", env_p, status_ok), slow)),
        (f"NOT ({status_ok} AND {slow})", ("minus", "*", ("intersect", status_ok, slow))),
        (
            f"{env_p} OR NOT ({status_ok} AND {slow})",
            ("union", env_p, ("minus", "*", ("intersect", status_ok, slow))),
        ),
        ("NOT execution_time_ms > 1000", ("minus", "*", slow)),
        ("tags.environment NOT LIKE 'prod%'", ("minus", env_set, "tags.environment LIKE 'prod%'")),
        (
            "tags.environment NOT ILIKE 'prod%'",
            ("minus", env_set, "tags.environment ILIKE 'prod%'"),
        ),
        ("tags.note NOT RLIKE '^a'", ("minus", "tags.note IS NOT NULL", "tags.note RLIKE '^a'")),
        ("tags.note NOT RLIKE '('", "tags.note IS NOT NULL"),
        ("status NOT LIKE 'O%'", ("minus", "*", "status LIKE 'O%'")),
        (
            "client_request_id NOT LIKE 'req-0%'",
            ("minus", "client_request_id LIKE '%'", "client_request_id LIKE 'req-0%'"),
        ),
        ("name NOT LIKE 'chat%'", ("minus", "name IS NOT NULL", "name LIKE 'chat%'")),
        ("tags.environment IN ('production', 'staging')", ("union", env_p, env_s)),
        (
            "tags.environment NOT IN ('production', 'staging')",
            ("minus", env_set, ("union", env_p, env_s)),
        ),
        ("name IN ('chat', 'rerank')", ("union", "name = 'chat'", "name = 'rerank'")),
        ("metadata.source IN ('api')", "metadata.source = 'api'"),
        ("run_id NOT IN ('nope')", "run_id IS NOT NULL"),
        ("tags.priority >= 3", None),
        ("tags.priority < 2.5", None),
        ("tags.priority = 3", None),
        ("tags.priority != 3", None),
        ("tags.priority > -5", None),
        ("metadata.user > 1", ("minus", "metadata.user IS NULL", "*")),
    ]


def derivation_leaves(derive: Derivation | None) -> list[str]:
    if derive is None or derive == "*":
        return []
    if isinstance(derive, str):
        return [derive]
    return derivation_leaves(derive[1]) + derivation_leaves(derive[2])


def derive_ids(derive: Derivation, answers: dict[str, set[str]], everything: set[str]) -> set[str]:
    """The set a derivation names, from MLflow's answers to its core filters."""
    if derive == "*":
        return everything
    if isinstance(derive, str):
        return answers[derive]
    op, left, right = derive
    a, b = derive_ids(left, answers, everything), derive_ids(right, answers, everything)
    return {"union": a | b, "minus": a - b, "intersect": a & b}[op]


ORDER_KEYS = (
    "timestamp_ms",
    "timestamp",
    "execution_time_ms",
    "execution_time",
    "status",
    "request_id",
    "experiment_id",
    "name",
    "run_id",
    "tags.environment",
    "tags.priority",
    "tags.note",
    "tags.`my key`",
    "tags.Name",
    "metadata.user",
    "metadata.`mlflow.trace.session`",
    "attributes.status",
    "trace.timestamp_ms",
    '"status"',
)
INVALID_ORDER_BY = (
    ["client_request_id"],
    ["trace_id"],
    ["timestamp_ms", "timestamp DESC"],
    ["name", "tags.`mlflow.traceName`"],
    ["tags.environment FOO"],
    ["timestamp_ms DESC NULLS LAST"],
    [""],
    ["foo"],
    ["metadata.`mlflow.trace.tokenUsage`"],
    ["span.name"],
)


def build_queries(dataset: dict[str, Any], seed: int = 7) -> list[dict[str, Any]]:
    """A few hundred search_traces calls over ``dataset`` covering every core rule.

    Test-only keys (ignored by the oracle): ``label`` ("deliberate", "sqlite-quirk",
    "extension") and ``derive`` (see :func:`_extension_queries`).
    """
    rng = random.Random(seed)
    traces = ref.apply_mutations(dataset["traces"], dataset["mutations"])
    queries = [_q(None), _q("")]
    queries += [_q(f) for f in dict.fromkeys(_core_filters(traces, rng))]
    queries += [_q(f, label="deliberate") for f in DELIBERATE_REJECTIONS]
    queries += [_q(f, label="sqlite-quirk") for f in SQLITE_QUIRKS]
    queries += [_q(f) for f in INVALID_BOTH]
    leaves: list[str] = []
    for text, derive in _extension_queries():
        queries.append(_q(text, label="extension", derive=derive))
        leaves += derivation_leaves(derive)
    seen = {q["filter_string"] for q in queries}
    queries += [_q(leaf) for leaf in dict.fromkeys(leaves) if leaf not in seen]
    # Ordering: every orderable key both ways, pairs, with and without a filter.
    for key in ORDER_KEYS:
        for direction in ("", " DESC") if key.isidentifier() else (" ASC", " DESC"):
            queries.append(_q(None, order_by=[key + direction]))
    for _ in range(20):
        first, second = rng.sample(ORDER_KEYS[:16], 2)
        order = [
            f"{first} {rng.choice(('ASC', 'DESC'))}",
            f"{second} {rng.choice(('ASC', 'DESC'))}",
        ]
        if parse_order_by([first])[0].field != parse_order_by([second])[0].field:
            queries.append(
                _q(rng.choice((None, "status = 'OK'", "tags.priority IS NOT NULL")), order_by=order)
            )
    queries += [
        _q("tags.environment LIKE '%'", order_by=["tags.environment DESC", "name", "timestamp_ms"]),
        _q(None, order_by=["request_id DESC"]),
        _q(None, order_by=["timestamp_ms ASC", "request_id DESC"]),
        _q(None, order_by=["end_time_ms DESC"], label="extension"),
        _q(None, order_by=["end_time"], label="extension"),
    ]
    queries += [_q(None, order_by=o) for o in INVALID_ORDER_BY]
    # Scope: one experiment, several, unknown, None (all), [] (MLflow: all as well).
    for scope in (["1"], ["2", "10"], ["999"], ["10", "999"], None, []):
        for f in (None, "status = 'ERROR'", "tags.environment = 'production'"):
            queries.append(_q(f, experiment_ids=scope))
    # Paging: first pages and full walks; max_results bounds.
    for size in (1, 3, 7, 50, 100):
        queries.append(_q("status = 'OK'", max_results=size))
        queries.append(_q("tags.environment LIKE 'prod%'", max_results=size, all_pages=True))
    queries.append(_q(None, order_by=["tags.priority"], max_results=13, all_pages=True))
    queries.append(
        _q("status = 'ERROR'", order_by=["execution_time_ms DESC"], max_results=10, all_pages=True)
    )
    default = _q("status = 'OK'")
    del default["max_results"]
    queries.append(default)
    for bad in (0, -1, 50_001):
        queries.append(_q("status = 'OK'", max_results=bad))
    queries.append(_q("status = 'OK'", max_results=50_000))
    return queries


# --- comparing the reference with MLflow ----------------------------------------------------


def uses_extension(
    filter_string: str | None, filter_ast: Expr | None, order_keys: list[OrderKey]
) -> bool:
    """True when the parsed query needs a tracetags extension (so MLflow must reject it)."""
    if any(k.field == Field(entity="attribute", key="end_time_ms") for k in order_keys):
        return True
    # Parentheses leave no trace in the AST: a "(" that does not open an IN list groups.
    tokens = tokenize(filter_string or "")
    for before, token in zip([None, *tokens], tokens, strict=False):
        if token.type is TokenType.LPAREN and (before is None or before.text != "IN"):
            return True

    def walk(expr: Expr | None) -> bool:
        if expr is None:
            return False
        if isinstance(expr, (Not, Or)):
            return True
        if isinstance(expr, Comparison):
            kv = expr.field.entity in ("tag", "metadata")
            return (
                (expr.op.startswith("NOT ") and expr.op != "NOT IN")
                or (kv and expr.op in ("IN", "NOT IN"))
                or (kv and expr.is_numeric)
            )
        return any(walk(child) for child in expr.children)

    return walk(filter_ast)
