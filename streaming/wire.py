"""The wire format from the Flink job to its Python writers, both directions.

The job hands every update to a Python function (`streaming.udf`) as typed
columns; `streaming.sink` turns them back into tile states and rows for
`featurestore.layout`. This module owns that hand-off: the Flink SQL that
spells a value (`*_text`, `*_sql`, `*_state`) sits next to the Python that
reads it back (`DECODERS`, `latest_decoder`). tests/test_streaming_wire.py
runs the SQL in Flink and reads its output back with the parsers here.

Fields. A column travels as one of the kinds int, float, bool, string,
decimal or list (`Field`, `field_sql`); a nullable number or boolean as a
value that is never null plus a null flag (`unflag`): Arrow-to-pandas would
make nulls NaN, and integers with nulls floats, which lose digits beyond 2**53.

Order texts. Flink's MIN and MAX compare strings by their UTF-8 bytes, so a
value is spelled as a text whose byte order is featurestore.tiles' value
order; the MIN or MAX of the texts is then the first or last pair, or the
latest row:

    ts       TS_DIGITS digits of ts + TS_OFFSET
    int      INT_DIGITS digits of x + INT_OFFSET
    float    a class (FLOAT_CLASSES), then, for finite values other than 0,
             EXPONENT_DIGITS digits of the biased exponent of x's last bit
             and SIGNIFICAND_DIGITS of |x| / 2**q (complemented below 0)
    bool     FALSE_TEXT or TRUE_TEXT
    string   as it is (a pair ends with it); in a row, NUL written as
             NUL SOH and the string ended by STRING_END

State columns. Each tiles.StateColumn travels in one of the forms below,
named by its decoder (`DECODERS`):

    value            the aggregate itself: COUNT, MIN/MAX of int, bool, string
    int              a DECIMAL sum, exact (the sum of b2, 64 unsigned bits a row)
    halves           an exact BIGINT sum as the sums of each input's high and
                     low 32 bits, which cannot overflow
    min_float/max_float  MIN/MAX of the values that are not NaN, and a count
                     of NaN (Java's < orders no NaN; NaN is above every number)
    set              ARRAY_AGG(DISTINCT x) of the non-null values
    pair_<kind>      MIN/MAX of the pair text: ts text, then the value's
                     order text (floats: then DIGITS_MARK and Java's digits)

Latest rows: the ts text; per row feature ABSENT (null) or PRESENT and its
order text; per float feature the sign of a zero ('1' for -0.0); per float
feature DIGITS_MARK and Java's digits of the value (empty when null), which
read back exactly.

The Python side imports neither PyFlink, pandas nor the compiler: the
job's Python workers import it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from featurestore import tiles

# ================================================================ constants
TS_OFFSET = 2 ** 62      # every TIMESTAMP of Flink (years 0 to 9999) is within
TS_DIGITS = 19           # 2**58 µs of the epoch: ts + 2**62 always has 19 digits
INT_OFFSET = 2 ** 63     # int64 + 2**63 is in [0, 2**64): 20 digits, zero-padded
INT_DIGITS = 20
EXPONENT_DIGITS = 4      # biased exponent of a float64's last bit: 1 .. 2046
SIGNIFICAND_DIGITS = 16  # the significand, below 2**53
EXPONENT_BIAS = 1075     # 1074 + 1: the last bit of the least subnormal has exponent -1074
SIGNIFICAND_BITS = 52
FLOAT_CLASSES = NEG_INF, NEGATIVE, ZERO, POSITIVE, POS_INF, NAN = "012345"
FINITE_DIGITS = 1 + EXPONENT_DIGITS + SIGNIFICAND_DIGITS   # a float text of NEGATIVE, POSITIVE
FALSE_TEXT, TRUE_TEXT = "0", "1"
ABSENT, PRESENT = "0", "1"      # a row feature that is null, or not
DIGITS_MARK = "|"               # before Java's digits of a float
STRING_END, NUL_ESCAPE = "\0\0", "\0\1"
HALF_BITS = 32                  # halves: the sums of the high and low 32 bits
_HALF = 2 ** HALF_BITS


@dataclass(frozen=True)
class Field:
    """One input column of a writer. `kind` is how values travel: int,
    float, bool, string, decimal or list. A nullable number or boolean
    travels as a value that is never null plus a `<name>__null` flag."""
    name: str
    kind: str
    nullable: bool = True

    @property
    def flagged(self) -> bool:
        return self.nullable and self.kind in ("int", "float", "bool")

    @property
    def flag(self) -> str:
        return self.name + "__null"


# the Flink type each kind travels as (list: as its aggregate makes it), and
# what stands in for a null behind its flag
TRAVEL_TYPES = {"int": "BIGINT", "float": "DOUBLE", "bool": "BOOLEAN", "string": "STRING",
                "decimal": "DECIMAL(38, 0)"}
_STAND_INS = {"int": "CAST(0 AS BIGINT)", "float": "0E0", "bool": "FALSE"}


def field_sql(sql: str, field: Field) -> list[tuple[str, str]]:
    """The arguments (SQL, Flink type) that carry column `sql` as `field`:
    a flagged field is its value, never null, and its null flag."""
    typed = TRAVEL_TYPES.get(field.kind)
    if typed is None:   # a list, as its aggregate makes it
        return [(sql, "ARRAY<STRING>")]
    value = f"CAST({sql} AS {typed})"
    if field.flagged:
        return [(f"COALESCE({value}, {_STAND_INS[field.kind]})", typed),
                (f"{sql} IS NULL", "BOOLEAN")]
    return [(value, typed)]


def unflag(column: list, flags: list | None) -> list:
    """A field's values, None where its null flag (if it has one) is set."""
    return column if flags is None else [None if f else v for v, f in zip(column, flags)]


# ================================================================ order texts (SQL)
def _nan_sql(x: str) -> str:
    # imported here: the writers import this module, and flink_expr brings the compiler
    from streaming.flink_expr import nan_sql
    return nan_sql(x)


def ts_text(ts: str) -> str:
    """TS_DIGITS digits of ts + TS_OFFSET: fixed width without padding (a
    saving on every event), in time order."""
    return f"CAST({ts} + {TS_OFFSET} AS STRING)"


def int_text(x: str) -> str:
    """INT_DIGITS digits of x + INT_OFFSET (exact in DECIMAL): fixed width,
    in value order."""
    return (f"LPAD(CAST(CAST({x} AS DECIMAL(20, 0)) + CAST('{INT_OFFSET}' AS DECIMAL(20, 0)) "
            f"AS STRING), {INT_DIGITS}, '0')")


def float_text(x: str, q: str) -> str:
    """A float64 x (never -0.0) in value order: its class, then for finite
    values other than 0 the biased exponent q + EXPONENT_BIAS of x's last
    bit and the significand |x| / 2**q, both exact integers (q from
    `float_steps`), complemented for negative x."""
    biased = f"CAST({q} + {EXPONENT_BIAS} AS BIGINT)"
    significand = f"CAST(ABS({x}) / POWER(2E0, {q}) AS BIGINT)"
    positive = (f"'{POSITIVE}' || LPAD(CAST({biased} AS STRING), {EXPONENT_DIGITS}, '0') || "
                f"LPAD(CAST({significand} AS STRING), {SIGNIFICAND_DIGITS}, '0')")
    negative = (f"'{NEGATIVE}' || LPAD(CAST({2 ** 11} - {biased} AS STRING), {EXPONENT_DIGITS}, "
                f"'0') || LPAD(CAST({2 ** (SIGNIFICAND_BITS + 1)} - {significand} AS STRING), "
                f"{SIGNIFICAND_DIGITS}, '0')")
    return (f"(CASE WHEN {_nan_sql(x)} THEN '{NAN}' "
            f"WHEN {x} = CAST('Infinity' AS DOUBLE) THEN '{POS_INF}' "
            f"WHEN {x} = CAST('-Infinity' AS DOUBLE) THEN '{NEG_INF}' WHEN {x} = 0 THEN '{ZERO}' "
            f"WHEN {x} > 0 THEN {positive} ELSE {negative} END)")


def float_steps(x: str, name: str) -> tuple[str, str]:
    """Two projections that find q, the exponent of a float64's last bit:
    `__g<name>` ~ floor(log2|x|) (LOG2 may miss by one next to a power of
    two, so it is checked against POWER), then `__q<name>` = max(g - 52, -1074)."""
    g, absx = f"`__g{name}`", f"ABS({x})"
    exponent = (f"CASE WHEN {absx} < POWER(2E0, {g}) THEN {g} - 1 "
                f"WHEN {absx} >= POWER(2E0, {g} + 1) THEN {g} + 1 ELSE {g} END")
    return (f"FLOOR(LOG2({absx})) AS `__g{name}`",
            f"GREATEST({exponent} - {SIGNIFICAND_BITS}, {1 - EXPONENT_BIAS}E0) AS `__q{name}`")


def string_text(x: str) -> str:
    """A string that ends where its text ends: NUL written as NUL_ESCAPE,
    then STRING_END. Byte order of the texts is the order of the strings."""
    return f"REPLACE({x}, CHR(0), CHR(0) || CHR(1)) || CHR(0) || CHR(0)"


def pair_sql(ts: str, x: str, kind: str, q: str = "") -> str:
    """(ts, x) as text in the order of (ts, x) in value order (first and last
    are its MIN and MAX; `pair_state`). x of kind float needs q, its
    `float_steps`; Java's digits follow its order text: exact, and equal for
    equal values."""
    if kind == "int":
        value = int_text(x)
    elif kind == "bool":
        value = f"CASE WHEN {x} THEN '{TRUE_TEXT}' WHEN NOT {x} THEN '{FALSE_TEXT}' END"
    elif kind == "string":
        value = x
    else:
        value = f"{float_text(x, q)} || '{DIGITS_MARK}' || CAST({x} AS STRING)"
    return f"({ts_text(ts)} || {value})"


def row_text_sql(ts: str, values: Sequence[tuple[str, str]]) -> tuple[list[list[str]], str]:
    """A row as text whose byte order is the batch engine's choice of the
    latest row: greatest ts, then the values (SQL, kind) in order (null
    lowest; numbers with NaN highest and -0.0 equal to 0.0; strings by code
    point), then the signs of float zeros (-0.0 above); Java's digits of the
    floats end it, so that every value reads back exactly (`latest_decoder`).
    Returns (projection steps, each reading the ones before, and the text):
    `__f<i>` the values, `__n<i>` float zeros made +0.0, then `float_steps`."""
    steps: list[list[str]] = [[], [], [], []]
    parts, signs, digits = [ts_text(ts)], [], []
    for i, (sql, kind) in enumerate(values):
        v = f"`__f{i}`"
        steps[0].append(f"{sql} AS {v}")
        if kind == "float":
            n = f"`__n{i}`"
            steps[1].append(f"CASE WHEN {v} = 0 THEN 0E0 ELSE CAST({v} AS DOUBLE) END AS {n}")
            g, q = float_steps(n, f"_{i}")
            steps[2].append(g)
            steps[3].append(q)
            text = float_text(n, f"`__q_{i}`")
            signs.append(f"CASE WHEN {v} = 0 AND 1E0 / {v} < 0 THEN '1' ELSE '0' END")
            digits.append(f"'{DIGITS_MARK}' || COALESCE(CAST(CAST({v} AS DOUBLE) AS STRING), '')")
        elif kind == "int":
            text = int_text(v)
        elif kind == "bool":
            text = f"CASE WHEN {v} THEN '{TRUE_TEXT}' ELSE '{FALSE_TEXT}' END"
        else:
            text = string_text(v)
        parts.append(f"CASE WHEN {v} IS NULL THEN '{ABSENT}' ELSE '{PRESENT}' || {text} END")
    return steps, " || ".join(parts + signs + digits)


# ================================================================ state columns (SQL)
@dataclass(frozen=True)
class StateSql:
    """One state column in Flink: aggregate expressions, the fields they
    fill (in order), and the decoder that makes the column from them."""
    aggregates: tuple[str, ...]
    fields: tuple[Field, ...]
    decoder: str


def _filter(*conditions: str | None) -> str:
    present = [c for c in conditions if c]
    return f" FILTER (WHERE {' AND '.join(present)})" if present else ""


def count_state(name: str, arg: str, where: str | None) -> StateSql:
    """COUNT(arg) over the rows where `where` holds (None: every row)."""
    return StateSql((f"COUNT({arg}){_filter(where)}",), (Field(name, "int", False),), "value")


def low_bits_sql(v: str) -> str:
    """The low 32 bits of a BIGINT, in [0, 2**32): v = high * 2**32 + low."""
    return f"MOD(MOD({v}, {_HALF}) + {_HALF}, {_HALF})"


def halves_state(name: str, summed: str, low: str, where: str | None) -> StateSql:
    """The exact SUM of the BIGINT column `summed` without DECIMAL arithmetic
    (which costs an object per row): sums of the high and the low 32 bits
    (`low`, its `low_bits_sql`), each far from overflowing BIGINT."""
    f = _filter(where)
    return StateSql((f"SUM(({summed} - {low}) / {_HALF}){f}", f"SUM({low}){f}"),
                    (Field(name + "_h", "int"), Field(name + "_l", "int")), "halves")


def decimal_sum_state(name: str, summed: str, where: str | None) -> StateSql:
    """The SUM of a DECIMAL column: exact, at the cost of an object per row."""
    return StateSql((f"SUM({summed}){_filter(where)}",), (Field(name, "decimal"),), "int")


def set_state(name: str, x: str, where: str | None) -> StateSql:
    """The distinct non-null values of x."""
    return StateSql((f"ARRAY_AGG(DISTINCT {x}){_filter(where, f'{x} IS NOT NULL')}",),
                    (Field(name, "list"),), "set")


def pair_state(name: str, reduce: str, pair: str, kind: str, where: str | None) -> StateSql:
    """first (min) or last (max) of `pair_sql` texts."""
    return StateSql((f"{reduce.upper()}({pair}){_filter(where)}",), (Field(name, "string"),),
                    f"pair_{kind}")


def extreme_state(name: str, reduce: str, x: str, kind: str, where: str | None) -> StateSql:
    """MIN or MAX of x. Flink compares floats as Java's < does, which orders
    no NaN: NaN is counted apart, and the decoder places it above every number."""
    f = _filter(where)
    if kind != "float":
        return StateSql((f"{reduce.upper()}({x}){f}",), (Field(name, kind),), "value")
    nan = _nan_sql(x)
    return StateSql((f"{reduce.upper()}(CASE WHEN NOT {nan} THEN {x} END){f}",
                     f"COUNT(CASE WHEN {nan} THEN 1 END){f}"),
                    (Field(name, "float"), Field(name + "_nan", "int", False)), f"{reduce}_float")


# ================================================================ state columns (Python)
def _value(columns: list) -> list:
    return columns[0]


def _exact_ints(columns: list) -> list:
    return [None if v is None else int(v) for v in columns[0]]


def _halves(columns: list) -> list:
    return [None if h is None else (h << HALF_BITS) + low for h, low in zip(*columns)]


def _max_floats(columns: list) -> list:
    return [math.nan if nans else v for v, nans in zip(*columns)]


def _min_floats(columns: list) -> list:
    return [math.nan if v is None and nans else v for v, nans in zip(*columns)]


def _sets(columns: list) -> list:
    return [sorted(v or (), key=tiles.order_key) for v in columns[0]]


def _pairs(parse: Callable[[str], object]) -> Callable[[list], list]:
    def decode(columns: list) -> list:
        return [None if t is None else [int(t[:TS_DIGITS]) - TS_OFFSET, parse(t[TS_DIGITS:])]
                for t in columns[0]]
    return decode


def _float_after_order(text: str) -> float:
    return float(text[text.index(DIGITS_MARK) + 1:])   # Java's digits of the value: exact


# decoder -> the values of one state column from its fields' values (one list per field)
DECODERS: dict[str, Callable[[list], list]] = {
    "value": _value, "int": _exact_ints, "halves": _halves,
    "max_float": _max_floats, "min_float": _min_floats, "set": _sets,
    "pair_int": _pairs(lambda t: int(t) - INT_OFFSET), "pair_float": _pairs(_float_after_order),
    "pair_bool": _pairs(lambda t: t == TRUE_TEXT), "pair_string": _pairs(lambda t: t),
}


def decoded_kind(decoder: str, fields: Sequence[Field]) -> str:
    """What a decoded state column holds, for layout.encode_tiles: int,
    float, or any."""
    if decoder in ("int", "halves") or (decoder == "value" and fields[0].kind == "int"):
        return "int"
    if decoder in ("max_float", "min_float") or (decoder == "value"
                                                 and fields[0].kind == "float"):
        return "float"
    return "any"


# ================================================================ latest rows (Python)
def decode_latest(text: str, kinds: Sequence[str]) -> tuple[int, list]:
    """The ts and values of a `row_text_sql` text of values of `kinds`."""
    return latest_decoder(tuple(kinds))(text)


def latest_decoder(kinds: tuple[str, ...]) -> Callable[[str], tuple[int, list]]:
    """`decode_latest` for one view's kinds, with what does not depend on
    the text worked out once (the writers decode every latest row)."""
    floats = [i for i, kind in enumerate(kinds) if kind == "float"]
    finite = (NEGATIVE, POSITIVE)

    def decode(text: str) -> tuple[int, list]:
        ts, at = int(text[:TS_DIGITS]) - TS_OFFSET, TS_DIGITS
        values: list = []
        for kind in kinds:
            if text[at] != PRESENT:
                values.append(None)
                at += 1
            elif kind == "string":
                end = text.index("\0", at + 1)
                if text[end + 1] == "\0":   # no NUL inside: the common case
                    values.append(text[at + 1:end])
                    at = end + 2
                else:
                    value, at = _unescape(text, at + 1)
                    values.append(value)
            elif kind == "int":
                values.append(int(text[at + 1:at + 1 + INT_DIGITS]) - INT_OFFSET)
                at += 1 + INT_DIGITS
            elif kind == "bool":
                values.append(text[at + 1] == TRUE_TEXT)
                at += 2
            else:  # read from Java's digits below
                at += 1 + (FINITE_DIGITS if text[at + 1] in finite else 1)
                values.append(math.nan)
        if floats:
            digits = text[at + len(floats):].split(DIGITS_MARK)[1:]
            for i, digit in zip(floats, digits):
                if values[i] is not None:
                    values[i] = float(digit)
        return ts, values
    return decode


def _unescape(text: str, at: int) -> tuple[str, int]:
    """A string written as its characters with NUL as NUL SOH, ended by NUL NUL."""
    out = []
    while True:
        end = text.index("\0", at)
        out.append(text[at:end])
        if text[end + 1] == "\0":
            return "".join(out), end + 2
        out.append("\0")
        at = end + 2
