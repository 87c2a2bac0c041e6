"""A seeded, grammar-driven generator of MLflow-valid search_traces queries, and of the data.

Used by ``benchmarks/bench_querygen.py`` (100k traces against MLflow 3.17.2) and by
``tests/test_querygen.py`` (a small slice in CI).  Nothing here talks to Redis or MLflow.

**The dataset** (:func:`generate_dataset`) has a shape drawn from the seed: tag and metadata
keys with cardinalities from 2 to 100k (one key unique per trace), dense (every trace) and
sparse (1 %) keys, uniform and skewed (Zipf) values, values in mixed case (for ``ILIKE``),
a backquoted key with a ``-`` and a key with a dot, ties in ``timestamp_ms`` and in
``execution_time_ms``, late arrivals (timestamps out of insertion order), unfinished traces,
client request ids on some traces, and a third experiment outside the searched scope.

**The queries** (:func:`generate_queries`): every identifier kind (tags, metadata, ``name``,
``run_id``, backquoted keys, ``status``, ``request_id``, ``client_request_id``, the three
times) x every comparator MLflow allows on it x a value class (``selective``, ``dense``,
``empty``, ``contradictory``), then conjunctions of 2-4 clauses, each with an ``order_by``
drawn from every form MLflow accepts (none; each orderable attribute incl. ``request_id``,
``experiment_id``, ``name``, ``status``, ``run_id``; tags and metadata of every shape; one
to three keys; ASC/DESC), and every order form alone without a filter.

**Deviations.** The answers must equal MLflow's except where docs/filter-language.md
documents a deliberate difference; :func:`deviation` names the rule a query falls under
(``ILIKE`` over non-ASCII text, ``end_time_ms`` against a quoted number, MLflow's own
automatic keys, ordering by ``end_time_ms``).  The generator avoids them, and the callers
exclude whatever :func:`deviation` flags, by rule and never by hand.
"""

from __future__ import annotations

import bisect
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

START_MS = 1_780_000_000_000
DAY_MS = 86_400_000
SCOPE = ("1", "2")  # the searched experiments; "3" holds traces outside the scope
NAME_TAG = "mlflow.traceName"
RUN_KEY = "mlflow.sourceRun"
WORDS = ("alpha", "Beta", "GAMMA", "delta", "Eps", "zeta", "ETA", "theta")
ROUTES = ("chat", "summarize", "classify", "embed", "Chat", "rerank", "route", "judge")
VALUE_CLASSES = ("selective", "dense", "empty", "contradictory")

Entity = Literal["tag", "metadata"]


@dataclass(frozen=True)
class KeyShape:
    """One tag or metadata key of the generated dataset."""

    entity: Entity
    key: str
    cardinality: int
    presence: float  # the share of traces that have the key
    skew: float  # Zipf exponent of the values' popularity (0: uniform)

    @property
    def ident(self) -> str:
        """The key as a filter identifier (quoted where MLflow needs it)."""
        prefix = "tags" if self.entity == "tag" else "metadata"
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", self.key):
            return f"{prefix}.{self.key}"
        return f"{prefix}.`{self.key}`"

    def value(self, rank: int) -> str:
        """The value of popularity rank ``rank`` (0: the most common)."""
        return f"{WORDS[rank % len(WORDS)]}-{rank}"


@dataclass
class Dataset:
    """Traces in the shape of tests/support/mlflow_oracle.py, and what the generator needs
    to pick values of each class."""

    seed: int
    traces: list[dict[str, Any]]
    keys: list[KeyShape]
    counts: dict[str, Counter[str]] = field(default_factory=dict)  # ident -> in-scope counts

    def oracle_input(self) -> dict[str, Any]:
        return {"traces": self.traces, "mutations": []}


def key_shapes(rng: random.Random, traces: int) -> list[KeyShape]:
    """The keys: fixed corners (2 and ~n distinct values, 1 % presence) and drawn ones."""
    unique = max(traces, 2)
    shapes = [
        KeyShape("tag", "c2", 2, 1.0, 1.5),  # two values, dense, skewed
        KeyShape("tag", "uniq", min(unique, 100_000), 1.0, 0.0),  # ~one value per trace
        KeyShape("tag", "rare", 5, 0.01, 0.0),  # sparse
        KeyShape("tag", "user", max(2, min(50_000, traces // 2)), 1.0, 0.8),  # skewed, many
        KeyShape("tag", "svc-name", 20, 0.8, 1.0),  # needs backquotes
        KeyShape("tag", "model.version", 7, 0.5, 0.8),  # a dot inside the key
        KeyShape("metadata", RUN_KEY, 50, 0.7, 0.5),  # run_id
        KeyShape("metadata", "region", 3, 1.0, 0.7),
    ]
    for index in range(6):
        cardinality = max(2, min(100_000, int(10 ** rng.uniform(0.5, 5.0))))
        presence = rng.choice((1.0, 1.0, 0.9, 0.5, 0.1, 0.01))
        skew = rng.choice((0.0, 0.8, 1.2, 2.0))
        shapes.append(KeyShape("tag", f"t{index}_{cardinality}", cardinality, presence, skew))
    for index in range(2):
        cardinality = max(2, min(100_000, int(10 ** rng.uniform(0.3, 4.0))))
        shapes.append(
            KeyShape("metadata", f"m{index}_{cardinality}", cardinality, rng.choice((1.0, 0.3)), 1)
        )
    return shapes


class _Sampler:
    """Draws ranks 0..n-1 with Zipf weights (or uniformly), fast for large n."""

    def __init__(self, rng: random.Random, n: int, skew: float) -> None:
        self.rng, self.n = rng, n
        self.cumulative: list[float] | None = None
        if skew > 0 and n > 1:
            total, cumulative = 0.0, []
            for rank in range(n):
                total += 1 / (rank + 1) ** skew
                cumulative.append(total)
            self.cumulative = cumulative

    def __call__(self) -> int:
        if self.cumulative is None:
            return self.rng.randrange(self.n)
        point = self.rng.random() * self.cumulative[-1]
        return min(bisect.bisect_left(self.cumulative, point), self.n - 1)


def generate_dataset(traces: int, seed: int = 17) -> Dataset:
    """``traces`` traces over a day, reproducible for a given seed (see the module doc)."""
    rng = random.Random(seed)
    shapes = key_shapes(rng, traces)
    samplers = {s.key: _Sampler(rng, s.cardinality, s.skew) for s in shapes}
    routes = _Sampler(rng, len(ROUTES), 1.0)
    out: list[dict[str, Any]] = []
    timestamp = START_MS
    step = max(1, DAY_MS // max(traces, 1))
    for index in range(traces):
        if rng.random() < 0.7:  # the rest share the previous trace's millisecond: ties
            timestamp += rng.randrange(1, 2 * step + 1)
        ts = timestamp - rng.randrange(DAY_MS // 6) if rng.random() < 0.05 else timestamp
        status = rng.choices(("OK", "ERROR", "IN_PROGRESS"), (78, 19, 3))[0]
        duration = None if status == "IN_PROGRESS" else 10 * int(rng.lognormvariate(4.3, 1.2) + 0.5)
        tags: dict[str, str] = {}
        metadata: dict[str, str] = {}
        for shape in shapes:
            if shape.key == "uniq":
                value = f"{WORDS[index % len(WORDS)]}-{index}"
            elif shape.presence >= 1.0 or rng.random() < shape.presence:
                value = shape.value(samplers[shape.key]())
            else:
                continue
            (tags if shape.entity == "tag" else metadata)[shape.key] = value
        out.append(
            {
                "trace_id": f"tr-{rng.getrandbits(128):032x}",
                "experiment_id": rng.choices(("1", "2", "3"), (60, 35, 5))[0],
                "timestamp_ms": ts,
                "execution_time_ms": duration,
                "status": status,
                "name": None if rng.random() < 0.02 else ROUTES[routes()],
                "client_request_id": f"cr-{index:06d}" if rng.random() < 0.3 else None,
                "tags": tags,
                "metadata": metadata,
            }
        )
    dataset = Dataset(seed, out, shapes)
    _count_values(dataset)
    return dataset


def _count_values(dataset: Dataset) -> None:
    counts: dict[str, Counter[str]] = {s.ident: Counter() for s in dataset.keys}
    counts["name"] = Counter()
    for trace in dataset.traces:
        if trace["experiment_id"] not in SCOPE:
            continue
        for shape in dataset.keys:
            source = trace["tags"] if shape.entity == "tag" else trace["metadata"]
            if shape.key in source:
                counts[shape.ident][source[shape.key]] += 1
        if trace["name"] is not None:
            counts["name"][trace["name"]] += 1
    dataset.counts = counts


# --- queries ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenQuery:
    """One generated call: a first page of ``max_results`` over :data:`SCOPE`."""

    label: str  # the combination class, e.g. "tag = selective | order name DESC"
    filter_string: str | None
    order_by: list[str] | None = None
    max_results: int = 100

    def oracle_query(self) -> dict[str, Any]:
        return {
            "experiment_ids": list(SCOPE),
            "filter_string": self.filter_string,
            "order_by": self.order_by,
            "max_results": self.max_results,
        }


_STRING_OPS = ("=", "!=", "LIKE", "ILIKE", "RLIKE", "IS NULL", "IS NOT NULL")
_ATTR_STRING_OPS = ("=", "!=", "LIKE", "ILIKE", "RLIKE", "IN", "NOT IN")
_NUMBER_OPS = ("=", "!=", "<", "<=", ">", ">=")
IDENTIFIER_KINDS: dict[str, tuple[str, ...]] = {
    "tag": _STRING_OPS,
    "tag-quoted": _STRING_OPS,
    "metadata": _STRING_OPS,
    "name": _STRING_OPS,
    "run_id": _STRING_OPS,
    "status": _ATTR_STRING_OPS,
    "request_id": _ATTR_STRING_OPS,
    "client_request_id": _ATTR_STRING_OPS,
    "timestamp_ms": _NUMBER_OPS,
    "execution_time_ms": _NUMBER_OPS,
    "end_time_ms": _NUMBER_OPS,
}


def _q(text: str) -> str:
    """A quoted string literal (no escaping exists: pick the quote the text lacks)."""
    return f'"{text}"' if "'" in text else f"'{text}'"


class _Clauses:
    """Clause text for (identifier kind, comparator, value class) over one dataset."""

    def __init__(self, dataset: Dataset, rng: random.Random) -> None:
        self.ds, self.rng = dataset, rng
        scoped = [t for t in dataset.traces if t["experiment_id"] in SCOPE]
        self.scoped = scoped
        self.ts = sorted(t["timestamp_ms"] for t in scoped)
        self.du = sorted(t["execution_time_ms"] for t in scoped if t["execution_time_ms"])
        self.en = sorted(t["timestamp_ms"] + (t["execution_time_ms"] or 0) for t in scoped)
        self.cr = sorted(t["client_request_id"] for t in scoped if t["client_request_id"])

    # identifiers and their value distributions

    def _key(self, kind: str) -> tuple[str, Counter[str], float]:
        """(identifier, value counts, presence) for a string kind."""
        ds, rng = self.ds, self.rng
        if kind == "name":
            return rng.choice(("name", "attributes.name")), ds.counts["name"], 0.98
        if kind == "run_id":
            shape = next(s for s in ds.keys if s.key == RUN_KEY)
            return "run_id", ds.counts[shape.ident], shape.presence
        if kind == "tag-quoted":
            shape = rng.choice(
                [s for s in ds.keys if s.entity == "tag" and ("-" in s.key or "." in s.key)]
            )
            ident = rng.choice((f"tags.`{shape.key}`", f'tags."{shape.key}"'))
            return ident, self.ds.counts[shape.ident], shape.presence
        elif kind == "metadata":
            shape = rng.choice([s for s in ds.keys if s.entity == "metadata" and s.key != RUN_KEY])
        else:
            shape = rng.choice([s for s in ds.keys if s.entity == "tag" and "-" not in s.key])
        ident = shape.ident
        if kind == "tag" and rng.random() < 0.2:
            ident = "tag." + ident.split(".", 1)[1]
        if kind == "metadata" and rng.random() < 0.2:
            ident = "request_metadata." + ident.split(".", 1)[1]
        return ident, self.ds.counts[shape.ident], shape.presence

    def _rare(self, counts: Counter[str]) -> str:
        ordered = counts.most_common()
        tail = ordered[len(ordered) // 2 :] or ordered
        return self.rng.choice(tail)[0] if tail else "none-0"

    def _common(self, counts: Counter[str]) -> str:
        return counts.most_common(1)[0][0] if counts else "none-0"

    def _pattern(self, value: str, cls: str, op: str) -> str:
        """A LIKE/ILIKE/RLIKE pattern of the class built around ``value``."""
        rng = self.rng
        if op == "RLIKE":
            if cls == "empty":
                return "^zz[0-9]q"
            if cls == "dense":
                return rng.choice(("a", "^[A-Za-z]", "-[0-9]"))
            return rng.choice((f"^{re.escape(value)}$", f"{re.escape(value[-4:])}$"))
        if cls == "empty":
            pattern = rng.choice(("zz%", "%-zz", "q_q%"))
        elif cls == "dense":
            pattern = rng.choice(("%", "%a%", value[:1] + "%", "%-%"))
        else:
            pattern = rng.choice(
                (
                    value[: max(1, len(value) - 1)] + "%",
                    "%" + value[-5:],
                    value[:2] + "_" + value[3:],
                )
            )
        if op == "ILIKE":
            pattern = rng.choice((pattern.upper(), pattern.lower()))
        return pattern

    def string(self, kind: str, op: str, cls: str) -> str:
        ident, counts, _presence = self._key(kind)
        rng = self.rng
        if cls == "contradictory":
            a, b = self._common(counts), self._rare(counts)
            if a == b:
                b = "none-0"
            return rng.choice(
                (
                    f"{ident} = {_q(a)} AND {ident} = {_q(b)}",
                    f"{ident} IS NULL AND {ident} = {_q(a)}",
                    f"{ident} LIKE 'zz%' AND {ident} IS NOT NULL",
                )
            )
        if op in ("IS NULL", "IS NOT NULL"):
            return f"{ident} {op}"
        value = {"selective": self._rare, "dense": self._common}.get(cls, lambda _: "none-0")(
            counts
        )
        if op == "!=":
            # != v is presence minus v: "selective" leaves little (the common value out of a
            # dense key gives the rest; of a two-value key, the rare one).
            value = self._rare(counts) if cls == "dense" else self._common(counts)
            if cls == "empty":
                value = "none-0"
            return f"{ident} != {_q(value)}"
        if op == "=":
            return f"{ident} = {_q(value)}"
        return f"{ident} {op} {_q(self._pattern(value if cls != 'empty' else 'x', cls, op))}"

    def attribute(self, kind: str, op: str, cls: str) -> str:
        rng = self.rng
        ident = rng.choice((kind, f"attributes.{kind}", f"trace.{kind}"))
        if kind == "status":
            values = {"selective": "IN_PROGRESS", "dense": "OK", "empty": "CANCELLED"}
            if cls == "contradictory":
                return f"{ident} = 'OK' AND {ident} = 'ERROR'"
            value = values[cls]
            if op == "!=":
                value = {"selective": "OK", "dense": "IN_PROGRESS"}.get(cls, "NOPE")
        elif kind == "request_id":
            ids = [t["trace_id"] for t in self.scoped]
            if cls == "contradictory":
                a, b = rng.sample(ids, 2)
                return f"{ident} = {_q(a)} AND {ident} = {_q(b)}"
            value = rng.choice(ids) if cls != "empty" else "tr-" + "0" * 31 + "z"
        else:  # client_request_id
            if cls == "contradictory":
                a, b = rng.sample(self.cr, 2)
                return (
                    f"{ident} = {_q(a)} AND {ident} LIKE {_q(b[:-1] + '%')} AND {ident} != {_q(b)}"
                )
            value = rng.choice(self.cr) if cls != "empty" else "cr-x"
        if op in ("IN", "NOT IN"):
            if kind == "status":
                members = {"selective": ["IN_PROGRESS"], "dense": ["OK", "ERROR"]}.get(
                    cls, ["NOPE"]
                )
            else:
                pool = [t["trace_id"] for t in self.scoped] if kind == "request_id" else self.cr
                members = rng.sample(pool, 3) if cls != "empty" else ["none-1", "none-2"]
            return f"{ident} {op} ({', '.join(_q(m) for m in members)})"
        if op in ("=", "!="):
            return f"{ident} {op} {_q(value)}"
        if kind == "status":
            pattern = {"selective": "IN%", "dense": "%K", "empty": "Z%"}[cls]
            if op == "RLIKE":
                pattern = {"selective": "^IN_", "dense": "O", "empty": "^Q"}[cls]
            return f"{ident} {op} {_q(pattern.lower() if op == 'ILIKE' else pattern)}"
        pattern = self._pattern(value, "selective" if cls == "selective" else cls, op)
        if kind == "request_id" and cls == "selective" and op != "RLIKE":
            pattern = value[:7] + "%"  # a prefix of the id: a handful of traces
            if op == "ILIKE":
                pattern = pattern.upper()
        return f"{ident} {op} {_q(pattern)}"

    def number(self, kind: str, op: str, cls: str) -> str:
        rng = self.rng
        ident = rng.choice((kind, kind.removesuffix("_ms"), f"attributes.{kind}"))
        values = {"timestamp_ms": self.ts, "execution_time_ms": self.du, "end_time_ms": self.en}[
            kind
        ]
        low, high = values[0], values[-1]
        if cls == "contradictory":
            mid = values[len(values) // 2]
            return rng.choice(
                (
                    f"{ident} > {mid} AND {ident} < {mid - 1}",
                    f"{ident} = {low} AND {ident} = {high}",
                    f"{ident} >= {high + 1} AND {ident} <= {high}",
                )
            )
        if cls == "empty":
            bound = {"<": low, "<=": low - 1, ">": high, ">=": high + 1}.get(op, high + 7)
            return f"{ident} {op} {bound}"
        edge = len(values) // 1000 + 1  # ~0.1 % of the traces beyond the bound
        if op in ("=", "!="):
            picked = rng.choice(values) if (cls == "selective") == (op == "=") else low - 3
            return f"{ident} {op} {picked}"
        if (cls == "selective") == (op in (">", ">=")):
            return f"{ident} {op} {values[-edge]}"
        return f"{ident} {op} {values[edge]}"

    def clause(self, kind: str, op: str, cls: str) -> str:
        if kind in ("timestamp_ms", "execution_time_ms", "end_time_ms"):
            return self.number(kind, op, cls)
        if kind in ("status", "request_id", "client_request_id"):
            return self.attribute(kind, op, cls)
        return self.string(kind, op, cls)


def order_forms(dataset: Dataset) -> list[list[str] | None]:
    """Every order_by form the generator uses: one key of each kind both ways, and lists."""
    tag_keys = [s.ident for s in dataset.keys if s.entity == "tag"]
    meta_keys = [s.ident for s in dataset.keys if s.entity == "metadata"]
    forms: list[list[str] | None] = [None]
    singles = [
        "timestamp_ms",
        "execution_time_ms",
        "status",
        "request_id",
        "experiment_id",
        "name",
        "run_id",
        *tag_keys,
        *meta_keys,
    ]
    for key in singles:
        forms += [[f"{key} ASC"], [f"{key} DESC"]]
    forms += [
        ["status", "name DESC"],
        ["status DESC", "execution_time_ms DESC"],
        ["experiment_id", "request_id DESC"],
        ["name", "status DESC", "timestamp_ms ASC"],
        ["tags.c2", "tags.`svc-name` DESC"],
        [f"{tag_keys[1]} DESC", "timestamp_ms ASC"],
        ["run_id DESC", "execution_time_ms"],
        ["timestamp_ms ASC", "request_id DESC"],
        ["execution_time_ms DESC", "name"],
        [f"{meta_keys[-1]}", "status", "request_id"],
    ]
    return forms


def _order_label(order: Sequence[str] | None) -> str:
    return "order " + ", ".join(order) if order else "default order"


def generate_queries(dataset: Dataset, count: int = 320, seed: int = 7) -> list[GenQuery]:
    """At least ``count`` MLflow-valid queries (see the module doc), deterministic per seed.

    Each (kind, comparator, value class) appears once before any repeats, so a small
    ``count`` still spreads over the classes; then conjunctions, then order forms alone.
    """
    rng = random.Random(seed)
    clauses = _Clauses(dataset, rng)
    orders = order_forms(dataset)
    combos = [
        (kind, op, cls)
        for kind, ops in IDENTIFIER_KINDS.items()
        for op in ops
        for cls in VALUE_CLASSES
        if not (op in ("IS NULL", "IS NOT NULL") and cls != "dense")
    ]
    rng.shuffle(combos)
    singles: list[GenQuery] = []
    for kind, op, cls in combos:
        order = rng.choice(orders) if rng.random() < 0.35 else None
        text = clauses.clause(kind, op, cls)
        label = f"{kind} {op} {cls} | {_order_label(order)}"
        singles.append(GenQuery(label, text, order))
    conj: list[GenQuery] = []
    ordered_alone = [GenQuery(f"no filter | {_order_label(o)}", None, o) for o in orders]
    want_conj = max(count - len(singles) - len(ordered_alone), count // 4)
    for _ in range(want_conj):
        parts, kinds = [], []
        for _ in range(rng.randint(2, 4)):
            kind = rng.choice(list(IDENTIFIER_KINDS))
            op = rng.choice(IDENTIFIER_KINDS[kind])
            cls = rng.choices(VALUE_CLASSES, (3, 6, 1, 1))[0]
            parts.append(clauses.clause(kind, op, cls))
            kinds.append(f"{kind} {op} {cls}")
        order = rng.choice(orders) if rng.random() < 0.5 else None
        label = f"AND of {len(parts)}: {'; '.join(kinds)} | {_order_label(order)}"
        conj.append(GenQuery(label, " AND ".join(parts), order))
    out = _interleave(singles, conj, ordered_alone)
    return out if len(out) >= count else out + generate_queries(dataset, count - len(out), seed + 1)


def _interleave(*groups: list[GenQuery]) -> list[GenQuery]:
    """Round-robin over the groups, so a prefix (a CI slice) holds some of each."""
    out: list[GenQuery] = []
    iterators = [iter(g) for g in groups]
    weights = [max(1, math.ceil(len(g) / max(1, min(len(x) for x in groups if x)))) for g in groups]
    while iterators:
        for it, weight in list(zip(iterators, weights, strict=True)):
            for _ in range(weight):
                item = next(it, None)
                if item is None:
                    index = iterators.index(it)
                    del iterators[index], weights[index]
                    break
                out.append(item)
    return out


# --- deviations (docs/filter-language.md "Where tracetags differs from MLflow") ----------------

_RUN_EQUALS = re.compile(
    r"(?:\brun_id|(?:request_)?metadata\.(?:mlflow\.sourceRun|`mlflow\.sourceRun`"
    r"|\"mlflow\.sourceRun\"))\s*=(?!=)",
    re.I,
)
_AUTOMATIC_KEYS = ("mlflow.artifactLocation", "mlflow.trace.infoFinalized")
_DEVIATION_RULES: tuple[tuple[str, Callable[[GenQuery], bool]], ...] = (
    (
        "ILIKE over non-ASCII text (MLflow on SQLite folds ASCII only)",
        lambda q: bool(
            q.filter_string
            and re.search(r"\bILIKE\b", q.filter_string, re.I)
            and not q.filter_string.isascii()
        ),
    ),
    (
        "end_time_ms against a quoted number (MLflow on SQLite compares text)",
        lambda q: bool(
            q.filter_string
            and re.search(r"end_time(_ms)?\s*[<>=!]+\s*['\"]", q.filter_string, re.I)
        ),
    ),
    (
        "MLflow's automatic keys exist on the MLflow side only",
        lambda q: any(
            k in (q.filter_string or "") or any(k in o for o in q.order_by or ())
            for k in _AUTOMATIC_KEYS
        ),
    ),
    (
        "several `=` on run_id / metadata mlflow.sourceRun (MLflow keeps only the last one)",
        lambda q: len(_RUN_EQUALS.findall(q.filter_string or "")) > 1,
    ),
    (
        "ordering by end_time_ms is an extension",
        lambda q: any(re.match(r"\s*(\w+\.)?end_time", o) for o in q.order_by or ()),
    ),
)


def deviation(query: GenQuery) -> str | None:
    """The documented deviation ``query`` falls under, or None when MLflow's answer rules."""
    for reason, applies in _DEVIATION_RULES:
        if applies(query):
            return reason
    return None


def compared(queries: Sequence[GenQuery]) -> Iterator[GenQuery]:
    """The queries whose answers must equal MLflow's."""
    return (q for q in queries if deviation(q) is None)
