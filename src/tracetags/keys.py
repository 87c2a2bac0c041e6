"""The only module that spells Redis keys.

Every key of a namespace ``ns`` (the Lua library ``tracetags_vN`` builds the same shapes from
the partition prefix it is given; ``functions/`` mirrors this table):

=========================================  =======  ================================================
key                                        type     holds
=========================================  =======  ================================================
``ns:meta``                                hash     ``partitions`` (fixed at creation),
                                                    ``created_ms``
``ns:replay``                              hash     the record of a replay into ``ns``: ``source``
                                                    namespace, ``partitions``, ``until``,
                                                    ``p<NN>`` last replayed entry id
``ns:{pNN}:log``                           stream   the event log of partition NN (field ``e``)
``ns:{pNN}:dead``                          stream   dead letters: payload, entry id, reason, time
``ns:{pNN}:absent``                        -        never written: ``tt_apply`` reads it first and
                                                    ``tt_query`` calls declare it, so that a call on
                                                    a cluster slot being migrated is refused whole
                                                    (before it writes or reads anything)
``ns:{pNN}:n``                             string   counter handing out trace numbers (INCRBY)
``ns:{pNN}:cn``                            string   live traces holding a client_request_id
                                                    (partitions born with it: library v19)
``ns:{pNN}:ids``                           hash     trace id → trace number (``<no>``)
``ns:{pNN}:t:<no>``                        hash     one trace's state (fields below)
``ns:{pNN}:gone``                          hash     trace id → entry id of its latest
                                                    ``trace_deleted`` (trace tombstone)
``ns:{pNN}:all``                           C-set    numbers of every trace of the partition
``ns:{pNN}:tv:<enc key><enc value>``       V-set    traces whose tag ``key`` is ``value``
``ns:{pNN}:tk:<enc key>``                  C-set    traces that have tag ``key``
``ns:{pNN}:td:<enc key>``                  zset     distinct values of tag ``key``, scored by
                                                    their number of traces
``ns:{pNN}:td:<enc key>:L``               zset     byte-order index of those values: the head
                                                    of every bucket ('' first), score 0
``ns:{pNN}:td:<enc key>:L:<enc head>``     zset     a bucket: the values v with head <= v <
                                                    the next head, at most 128, score 0
``ns:{pNN}:mv:<enc key><enc value>``       V-set    traces whose metadata ``key`` is ``value``
``ns:{pNN}:mk:<enc key>``                  C-set    traces that have metadata ``key``
``ns:{pNN}:md:<enc key>``                  zset     distinct values of metadata ``key`` (counts)
``ns:{pNN}:md:<enc key>:L[:<enc head>]``   zset     their byte-order index, as for tags
``ns:{pNN}:st:<enc status>``               V-set    traces with that status
``ns:{pNN}:std``                           zset     distinct statuses (counts)
``ns:{pNN}:ex:<enc experiment_id>``        V-set    traces of that experiment
``ns:{pNN}:exd``                           zset     distinct experiment ids (counts)
``ns:{pNN}:cr:<enc client_request_id>``    V-set    traces with that client_request_id
``ns:{pNN}:crd``                           zset     distinct client_request_ids (counts)
``ns:{pNN}:crd:L[:<enc head>]``            zset     their byte-order index, as for tags
``ns:{pNN}:ts``                            zset     traces by ``timestamp_ms``
``ns:{pNN}:du``                            zset     traces by ``execution_time_ms`` (finished only)
``ns:{pNN}:en``                            zset     traces by ``end_time_ms`` = timestamp_ms +
                                                    execution_time_ms (0 if missing)
``ns:{pNN}:tsx``                           zset     chunk number -> a bound >= the timestamp_ms
                                                    of every trace in the chunk (only rises);
                                                    member -1 at -inf from the partition's
                                                    birth (absent: made by an older version)
``ns:{pNN}:ri``                            zset     score 0: the head (lowest trace id) of
                                                    every bucket of the ids' byte order, ''
                                                    included (absent: made by an older version)
``ns:{pNN}:ri:<enc(head)>``                 set      trace numbers whose id is in [head, next
                                                    head), at most 512 (an intset)
``ns:{pNN}:rr``, ``ns:{pNN}:rr:<enc(head)>``  zset     the same over the ids' bytes reversed
                                           / set    (heads are reversed ids): ids ending with
                                                    a literal (absent: an older partition)
``ns:{pNN}:lk``                            hash     register field (``t<key>``, ``m<key>``) ->
                                                    ``building`` | ``ready``: keys listed in
                                                    ``TRACETAGS_LOOKUP_KEYS``
``ns:{pNN}:lf:<enc field>:<c>``            string   lookup fingerprints of a listed field: a
                                                    big-endian u16 per number of chunk c (0: no
                                                    value), at byte 2 * (number - 512 * c)
``ns:{pNN}:archive``                       hash     the archiver's cache of the partition's
                                                    archive (the store's manifest is the
                                                    truth): ``archived`` (entry id),
                                                    ``segments``, ``rows``, ``bytes``,
                                                    ``run_ms``, ``held`` / ``held_detail``
                                                    (what holds the trim back), ``error`` /
                                                    ``error_since_ms`` (the store failing)
``ns:{pNN}:archive:lock``                  string   the one archiver of the partition: its
                                                    token, with an expiry (SET NX PX)
``ns:{pNN}:archive:marks``                 zset     archived-up-to entry id -> the ms it was
                                                    recorded; ``tt_trim`` keeps entries for
                                                    the live retention after their mark
``ns:{pNN}:hx:<enc trace id>``             string   the history index of the live tail: the
                                                    entry ids (``,ms-seq`` each) of the
                                                    trace's entries, appended by the consumer
                                                    before it folds them; expires after the
                                                    live retention (see tracetags.history)
``ns:{pNN}:hx0``                           hash     ``start``: the first entry id a consumer
                                                    indexed (older ones: found by a scan);
                                                    ``ttl_ms``: the index's expiry (absent:
                                                    none)
=========================================  =======  ================================================

**Set forms.**  Every set and sorted set of traces holds **trace numbers** (dense decimal
ints from ``ns:{pNN}:n``, never reused), never trace ids; ``ns:{pNN}:ids`` and the ``i`` field
of ``ns:{pNN}:t:<no>`` map the two ways.  A set of more than 512 members stops being an
intset (``set-max-intset-entries``) and costs ~48 B per member instead of 2-4, hence:

- a **C-set** (chunked set) ``K`` is the keys ``K:<c>`` for c = 0 .. ``GET n`` // 512
  (:data:`SET_CHUNK`), chunk ``c`` holding the offsets ``number - 512 * c`` (0..511: every
  chunk is an int16 intset, ~2 B per member).  Missing chunks are empty.
- a **V-set** (value set) ``K`` is *plain* (the key ``K`` itself, trace numbers) while it has at
  most 512 members (:data:`PLAIN_MAX`) and *chunked* like a C-set above; the form is a
  function of the member count, which is the value's score in its distinct zset (``td`` ``md``
  ``std`` ``exd`` ``crd``), so a reader knows it with one ZSCORE.  Sparse values (user ids,
  sessions) stay plain intsets; dense ones (env, status, experiment) are chunked.
- ``all`` is a C-set too (~2 B per trace instead of ~48); its size is ``HLEN ns:{pNN}:ids``
  (one field per live trace), which ``Client.status`` and the query probe read instead.

**Byte-order index** (``td``/``md`` only).  A distinct zset is scored by count, so it cannot
list values in byte order, and one zset of every value at score 0 would cost ~100 B a value
(skiplist).  The ``:L`` directory and its buckets of at most :data:`LEX_BUCKET` values (each a
listpack, ~15 B a value) give ``ZRANGE … BYLEX`` over the values: the bucket of ``v`` is
the one of the largest head <= ``v`` (the head ``''`` is always there).  The fold keeps it
in step when a value enters or leaves the distinct zset (a full bucket is rewritten as
buckets of at most 96); data folded before the index existed gets it the next time the key is
folded, and readers fall back to the distinct zset while it has none.

Empty sets and hashes vanish by themselves, and a value leaves its distinct zset when its
count reaches 0, so no index key outlives its content.  ``name`` is the tag
``mlflow.traceName`` (:data:`NAME_TAG`): the event field and an explicit tag share one
register and one set of indexes.

**How the query engine uses them** (all inside a Function, per partition; ``C`` = ``GET n`` //
512 + 1 chunks, ~1,954 at 1M traces):

- *value test* ``tags.k = 'v'`` (also metadata, ``status``, ``experiment_ids=``,
  ``client_request_id``, ``IN``): ``ZSCORE td:<k> v`` gives the count (0 = no match) and the
  form.  Plain: SMEMBERS / SISMEMBER / SINTERCARD as usual.  Chunked: per chunk ``c``, the
  members are ``512*c + offset``; membership of number ``no`` is ``SISMEMBER K:<no//512>
  <no%512>``.
- *count*: a single value is its distinct-zset score (O(1)); ``IN`` sums scores.  AND of two
  chunked sets: sum over c of ``SINTERCARD 2 A:<c> B:<c>`` (chunks are ≤ 512 members, so each
  is cheap and there is no 500k x 200k intersection); a plain set against anything: test its
  ≤ 512 members.  ``IS NOT NULL``: sum of SCARD over ``tk:<k>:<c>``.
- *selective filter* (smallest term small): take the smallest set's members (plain: ≤ 512
  numbers; chunked: walk chunks), test each against the other terms by SISMEMBER (chunk-aware),
  sort the survivors by ZSCORE in ``ts`` (or the order key) and page.
- *broad filter, first page*: walk ``ts`` (ZRANGE … REV LIMIT, in pages) from the right end and
  test each number's membership in every term (SISMEMBER on the plain key or the number's
  chunk) until the page is full.  Newest first with a dense (chunked) term: the *chunk
  walk* visits chunks in ``tsx`` order, one SINTER of the chunked terms per chunk, and stops
  once the page's rows are newer than the next chunk's bound.
- ``!=`` = ``tk`` minus the value set (chunk by chunk, SDIFF/SMISMEMBER); ``IS NULL`` = scope
  minus ``tk``; ``NOT (…)`` = complement within the searched experiments (union of their
  ``ex`` sets, chunk by chunk).  OR = union, chunk by chunk.
- ``LIKE`` / ``ILIKE`` / ``RLIKE`` / ``NOT LIKE`` and numeric comparisons on tags: scan the
  distinct values of ``td:<k>`` (ZRANGE, inside tt_query for LIKE; never the traces), then
  union the matching value sets (their scores give the count without touching any set).
  A LIKE with a literal start seeks it in the byte-order index (``td:<k>:L``) instead, and
  skips over each ``_`` from one distinct continuation to the next.  A page's probe only
  counts the values of a LIKE that is such a start and one final ``%``; the page's call
  seeks them again itself (plan leaf ``L``).  A walk testing a term of many values
  (``LIKE 'user_12%'``: 1,111 user ids) reads each walked trace's register (one HGET
  per trace); for a key listed in ``TRACETAGS_LOOKUP_KEYS`` it reads the 2-byte fingerprint at the
  trace's number in ``lf:<field>:<chunk>`` instead (one GET per chunk of 512), and the
  register only when the fingerprint is one of the wanted values'.
- ``timestamp_ms`` / ``execution_time_ms`` / ``end_time_ms`` comparisons: ZRANGEBYSCORE on
  ``ts`` / ``du`` / ``en`` (``du`` lacks unfinished traces, which never match); ordering by
  them walks the zset.  ``request_id``, ``name``, ``run_id``, tag and metadata ordering: sort
  the candidates by their hash fields (``i``, ``tmlflow.traceName``, …) with HMGET; for a broad
  filter, walk the distinct values of the ordered key in ``td``/``md`` order and the values'
  sets.

**Fields of** ``ns:{pNN}:t:<no>``: ``i`` trace id; ``b`` base ms of its stamps; ``x`` stamp of the
latest event applied (the trace exists while it is newer than its tombstone); the
attribute registers ``e`` experiment_id, ``s`` timestamp_ms, ``d`` execution_time_ms,
``S`` status, ``c`` client_request_id; ``t<key>`` per tag and ``m<key>`` per metadata key.
A register's value is ``<stamp>:<value>``, or ``<stamp>`` alone for a tombstone (deleted tag).
A stamp is the writer's entry id ``ms-seq``, stored compactly as the decimal integer
``(ms - b) * 1024 + seq`` when ``seq < 1024`` and ``|ms - b| < 2**42`` (exact in a double),
else verbatim as ``ms-seq``.  Use :func:`decode_stamp` and :func:`split_register` to read them.

``{pNN}`` is a Redis Cluster hash tag: all keys of one partition live in one slot, so a
Function may touch any of them.  ``<enc s>`` is ``<byte length>:<s>`` — a length prefix
makes every concatenation of encoded strings injective, so ``a:b``=``c`` and ``a``=``b:c``
can never share a key; a chunk suffix ``:<c>`` comes after the last encoded string, so a
chunk key never equals a plain key either.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Final, Literal, TypeAlias

META_SUFFIX: Final = "meta"
REPLAY_SUFFIX: Final = "replay"
#: The tag that holds a trace's ``name`` (MLflow's filter ``name`` means this tag).
NAME_TAG: Final = "mlflow.traceName"
#: Compact stamps: ``(ms - base) * STAMP_SEQ_SPAN + seq``; see the key table.
STAMP_SEQ_SPAN: Final = 1024
STAMP_MAX_DELTA_MS: Final = 2**42
#: A bucket of a byte-order index holds at most this many values (zset-max-listpack-entries'
#: default: a bucket stays a listpack, ~15 B a value instead of ~100 in a skiplist zset).
LEX_BUCKET: Final = 128
#: A chunked set keeps chunk ``number // SET_CHUNK`` in ``<key>:<chunk>`` as the offsets
#: ``number % SET_CHUNK``: at most 512 members, all int16, so each chunk stays an intset.
SET_CHUNK: Final = 512
#: A value set is plain while it has at most this many members, chunked above.
PLAIN_MAX: Final = 512
ScoreIndex: TypeAlias = Literal["ts", "du", "en"]
#: The sorted sets of traces by a numeric attribute, by the name that follows the partition
#: prefix (``ns:{pNN}:<name>``); tt_query plans name them so (see :meth:`Keys.by_score`).
SCORE_INDEXES: Final[Mapping[str, ScoreIndex]] = {
    "timestamp_ms": "ts",
    "execution_time_ms": "du",
    "end_time_ms": "en",
}


def enc(text: str) -> str:
    """Length-prefixed form of a user string: ``<utf-8 byte length>:<text>``."""
    return f"{len(text.encode())}:{text}"


def decode_stamp(text: str, base_ms: int) -> tuple[int, int]:
    """The entry id ``(ms, seq)`` of a stored stamp of a trace whose base is ``base_ms``."""
    ms, dash, seq = text[1:].partition("-")
    if dash:
        return int(text[0] + ms), int(seq)
    delta, seq_number = divmod(int(text), STAMP_SEQ_SPAN)
    return base_ms + delta, seq_number


def encode_stamp(ms: int, seq: int, base_ms: int) -> str:
    """The stored form of the stamp ``(ms, seq)`` for a trace with base ``base_ms``."""
    delta = ms - base_ms
    if seq < STAMP_SEQ_SPAN and -STAMP_MAX_DELTA_MS < delta < STAMP_MAX_DELTA_MS:
        return str(delta * STAMP_SEQ_SPAN + seq)
    return f"{ms}-{seq}"


def split_register(text: str) -> tuple[str, str | None]:
    """A trace-hash register ``<stamp>:<value>`` as ``(stamp, value)``; value None = tombstone."""
    stamp, colon, value = text.partition(":")
    return stamp, (value if colon else None)


#: The attributes a one-letter trace-hash field holds.
ATTRIBUTE_LABELS: Final = {
    "e": "experiment_id",
    "s": "timestamp_ms",
    "d": "execution_time_ms",
    "S": "status",
    "c": "client_request_id",
}


def field_label(field: str) -> str:
    """``tags.<key>`` / ``metadata.<key>`` of a trace-hash field ``t<key>`` / ``m<key>``;
    the attribute's name of a one-letter field."""
    if field in ATTRIBUTE_LABELS:
        return ATTRIBUTE_LABELS[field]
    return ("tags." if field[:1] == "t" else "metadata.") + field[1:]


def tag_field(key: str) -> str:
    """The field of a trace's hash that holds the register of tag ``key``."""
    return "t" + key


def metadata_field(key: str) -> str:
    """The field of a trace's hash that holds the register of metadata ``key``."""
    return "m" + key


def chunk_key(key: str, chunk: int) -> str:
    """The key of chunk ``chunk`` of the chunked set ``key``."""
    return f"{key}:{chunk}"


def chunk_of(number: int) -> tuple[int, int]:
    """``(chunk, offset)`` of a trace number in a chunked set."""
    return divmod(number, SET_CHUNK)


def partition_of(trace_id: str, partitions: int) -> int:
    """The partition of a trace: CRC-32 of its UTF-8 id modulo ``partitions``.

    CRC-32 (zlib) is stable across processes, platforms and Python versions, unlike
    ``hash()``.
    """
    return zlib.crc32(trace_id.encode()) % partitions


class Keys:
    """Key builder for one namespace."""

    __slots__ = ("consumers", "meta", "namespace")

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.meta = f"{namespace}:{META_SUFFIX}"
        self.consumers = f"{namespace}:consumers"

    def prefix(self, partition: int) -> str:
        """``ns:{pNN}`` — every key of a partition starts with it."""
        return f"{self.namespace}:{{p{partition:02d}}}"

    def replay_progress(self) -> str:
        """The record of a replay into this namespace (``tracetags replay --resume``)."""
        return f"{self.namespace}:{REPLAY_SUFFIX}"

    def stream(self, partition: int) -> str:
        return f"{self.prefix(partition)}:log"

    def dead_letters(self, partition: int) -> str:
        return f"{self.prefix(partition)}:dead"

    def tag_value(self, partition: int, key: str, value: str) -> str:
        return self.tag_value_prefix(partition, key) + enc(value)

    def tag_value_prefix(self, partition: int, key: str) -> str:
        """The value set of ``value`` of tag ``key`` is this plus ``enc(value)``."""
        return f"{self.prefix(partition)}:tv:{enc(key)}"

    def tag_key(self, partition: int, key: str) -> str:
        return f"{self.prefix(partition)}:tk:{enc(key)}"

    # --- the fold's state and indexes (mirrored by functions/lua/) ---------------------

    def trace_counter(self, partition: int) -> str:
        return f"{self.prefix(partition)}:n"

    def trace_ids(self, partition: int) -> str:
        return f"{self.prefix(partition)}:ids"

    def request_count(self, partition: int) -> str:
        """How many live traces hold a client_request_id: absent on a partition the fold
        began before library v19 (tt_query then tests such traces one by one)."""
        return f"{self.prefix(partition)}:cn"

    def absent(self, partition: int) -> str:
        """A key never written: declared by a call that reads many keys of the partition, so
        that while a cluster migrates the partition's slot (some keys moved, some not) the
        call is refused whole (TRYAGAIN, retried by redis-py) instead of reading half."""
        return f"{self.prefix(partition)}:absent"

    def trace(self, partition: int, number: int | str) -> str:
        return f"{self.prefix(partition)}:t:{number}"

    def deleted_traces(self, partition: int) -> str:
        return f"{self.prefix(partition)}:gone"

    def all_traces(self, partition: int) -> str:
        """The chunked set of every trace number (chunks via :func:`chunk_key`); count it
        with ``HLEN`` of :meth:`trace_ids`."""
        return f"{self.prefix(partition)}:all"

    def tag_values(self, partition: int, key: str) -> str:
        return f"{self.prefix(partition)}:td:{enc(key)}"

    def metadata_value(self, partition: int, key: str, value: str) -> str:
        return self.metadata_value_prefix(partition, key) + enc(value)

    def metadata_value_prefix(self, partition: int, key: str) -> str:
        """The value set of ``value`` of metadata ``key`` is this plus ``enc(value)``."""
        return f"{self.prefix(partition)}:mv:{enc(key)}"

    def metadata_key(self, partition: int, key: str) -> str:
        return f"{self.prefix(partition)}:mk:{enc(key)}"

    def metadata_values(self, partition: int, key: str) -> str:
        return f"{self.prefix(partition)}:md:{enc(key)}"

    def status(self, partition: int, status: str) -> str:
        return self.status_prefix(partition) + enc(status)

    def status_prefix(self, partition: int) -> str:
        """The value set of a status is this plus ``enc(status)``."""
        return f"{self.prefix(partition)}:st:"

    def statuses(self, partition: int) -> str:
        return f"{self.prefix(partition)}:std"

    def experiment(self, partition: int, experiment_id: str) -> str:
        return self.experiment_prefix(partition) + enc(experiment_id)

    def experiment_prefix(self, partition: int) -> str:
        """The value set of an experiment is this plus ``enc(experiment_id)``."""
        return f"{self.prefix(partition)}:ex:"

    def experiments(self, partition: int) -> str:
        return f"{self.prefix(partition)}:exd"

    def client_request_id(self, partition: int, client_request_id: str) -> str:
        return self.client_request_id_prefix(partition) + enc(client_request_id)

    def client_request_id_prefix(self, partition: int) -> str:
        """The value set of a client_request_id is this plus ``enc(client_request_id)``."""
        return f"{self.prefix(partition)}:cr:"

    def client_request_ids(self, partition: int) -> str:
        return f"{self.prefix(partition)}:crd"

    def by_timestamp(self, partition: int) -> str:
        return self.by_score(partition, SCORE_INDEXES["timestamp_ms"])

    def by_execution_time(self, partition: int) -> str:
        return self.by_score(partition, SCORE_INDEXES["execution_time_ms"])

    def by_end_time(self, partition: int) -> str:
        return self.by_score(partition, SCORE_INDEXES["end_time_ms"])

    def by_score(self, partition: int, name: ScoreIndex) -> str:
        """The sorted set of traces by a numeric attribute, by its name in
        :data:`SCORE_INDEXES` (``ts``, ``du``, ``en``)."""
        return f"{self.prefix(partition)}:{name}"

    def time_bounds(self, partition: int) -> str:
        return f"{self.prefix(partition)}:tsx"

    def id_order(self, partition: int) -> str:
        """The directory of the trace ids' byte order (functions/lua/id_order.lua)."""
        return f"{self.prefix(partition)}:ri"

    def reversed_id_order(self, partition: int) -> str:
        """The directory of the reversed trace ids' byte order (id_order.lua)."""
        return f"{self.prefix(partition)}:rr"

    def lookups(self, partition: int) -> str:
        """The hash of register fields with lookup fingerprints (→ building | ready)."""
        return f"{self.prefix(partition)}:lk"

    def lookup_chunk(self, partition: int, field: str, chunk: int) -> str:
        """The fingerprints of ``field`` for the trace numbers of ``chunk``."""
        return f"{self.prefix(partition)}:lf:{enc(field)}:{chunk}"

    # --- the archive (tracetags.archive) ---------------------------------------------

    def archive_state(self, partition: int) -> str:
        """The archiver's status cache of the partition (hash; fields in the key table)."""
        return f"{self.prefix(partition)}:archive"

    def archive_lock(self, partition: int) -> str:
        """Held by the one archiver of the partition (string token with an expiry)."""
        return f"{self.prefix(partition)}:archive:lock"

    def archive_marks(self, partition: int) -> str:
        """Archived-up-to entry ids scored by the ms they were recorded (zset)."""
        return f"{self.prefix(partition)}:archive:marks"

    # --- the history index of the live tail (tracetags.history) ----------------------

    def history_index(self, partition: int, trace_id: str) -> str:
        """The entry ids of one trace's entries in the live tail (string, ``,ms-seq`` each)."""
        return f"{self.prefix(partition)}:hx:{enc(trace_id)}"

    def history_index_start(self, partition: int) -> str:
        """Where the history index starts and when its entries expire (hash)."""
        return f"{self.prefix(partition)}:hx0"
