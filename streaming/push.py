"""`featurestore push`: append events to a files stream source, for local use.

    path = push(plan, root, "purchases", [{"user_id": "u1", "amount": 12.5}])

Events are checked against the source's schema (unknown or mistyped fields
are refused, naming the field), the event time defaults to now, and the
events are written as one new file in the source's folder: first under a
hidden name, then renamed, so the streaming job (which lists the folder and
skips hidden files) never reads half a file. Every push is a file of its
own: a files stream reads each file once, so appending to a file that was
read would be lost.

Formats: JSON lines (timestamps ISO-8601 in UTC with a Z; NaN and the
infinities, which JSON cannot spell, as the strings "NaN", "Infinity" and
"-Infinity", which Flink reads as numbers) or CSV (schema order, no header,
the same spellings). Events given to push may spell them either way (the
strings, or Python's bare NaN and Infinity); int64 values must lie in
[-2**63, 2**63 - 1], as the stream reads them. This module imports no pyflink.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import os
import secrets
from pathlib import Path
from typing import Iterable

from dsl.plan import Plan, Source

# How the stream formats spell the floats JSON cannot (docs/streaming.md).
NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class PushError(ValueError):
    """Events that cannot be pushed; the message says why."""


def source_of(plan: Plan, name: str) -> Source:
    """The files stream source `name` names: a source, or a view over one."""
    names = {s.name for s in plan.sources}
    if name not in names:
        views = {v.name: v.source for v in plan.views}
        if name not in views:
            known = ", ".join(sorted(names | set(views)))
            raise PushError(f"no source or view named {name!r} (there are: {known})")
        name = views[name]
    source = plan.source(name)
    if source.kind != "stream" or source.format != "files":
        raise PushError(f"source {source.name!r} is a {source.kind} {source.format} source; "
                        "push appends to `stream files` sources only")
    return source


def read_events(text: str) -> list[dict]:
    """Events from JSON text: one object, an array of objects, or JSON lines."""
    text = text.strip()
    if not text:
        raise PushError("no events given")
    try:
        doc = json.loads(text)
        events = doc if isinstance(doc, list) else [doc]
    except json.JSONDecodeError:
        try:
            events = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise PushError(f"events are not JSON (an object, an array or JSON lines): {e}") \
                from None
    for i, event in enumerate(events, 1):
        if not isinstance(event, dict):
            raise PushError(f"event {i} is not a JSON object")
    return events


def push(plan: Plan, root: Path, name: str, events: Iterable[dict],
         now: dt.datetime | None = None) -> tuple[Path, int]:
    """Check `events` against the source `name` (or the source of view
    `name`) and write them as one new file of its folder. Returns the file
    and the number of events."""
    source = source_of(plan, name)
    now = now or dt.datetime.now(dt.timezone.utc)
    rows = [_checked(source, e, i, now) for i, e in enumerate(events, 1)]
    if not rows:
        raise PushError("no events given")
    fmt = dict(source.options).get("format", "json")
    folder = Path(source.path) if Path(source.path).is_absolute() else Path(root) / source.path
    folder.mkdir(parents=True, exist_ok=True)
    stamp = now.strftime("%Y%m%dT%H%M%S%f")
    path = folder / f"push-{stamp}-{secrets.token_hex(3)}.{fmt}"
    hidden = folder / f".{path.name}.tmp"   # Flink skips names starting with '.'
    hidden.write_text(_json_lines(source, rows) if fmt == "json" else _csv(source, rows),
                      encoding="utf-8")
    os.replace(hidden, path)
    return path, len(rows)


def _checked(source: Source, event: dict, i: int, now: dt.datetime) -> dict:
    """The event with every schema column, values checked; the event time
    defaults to now."""
    columns = dict(source.schema)
    unknown = [k for k in event if k not in columns]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], columns, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else \
            f" (the schema of {source.name!r}: {', '.join(columns)})"
        raise PushError(f"event {i}: unknown field {unknown[0]!r}{hint}")
    out = {}
    for column, type_ in source.schema:
        value = event.get(column)
        if value is None and column == source.timestamp:
            value = now
        try:
            out[column] = _value(value, type_)
        except (TypeError, ValueError) as e:
            raise PushError(f"event {i}: field {column!r} ({type_}): {e}") from None
    return out


def _value(value: object, type_: str) -> object:
    if value is None:
        return None
    if type_ in ("int64", "int32"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{value!r} is not a whole number")
        bits = 64 if type_ == "int64" else 32
        if not -2 ** (bits - 1) <= value < 2 ** (bits - 1):
            raise ValueError(f"{value} is outside {type_} "
                             f"([-2**{bits - 1}, 2**{bits - 1} - 1])")
        return value
    if type_ in ("float64", "float32"):
        if isinstance(value, str) and value in NON_FINITE:
            return NON_FINITE[value]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{value!r} is not a number (NaN and the infinities: "
                            '"NaN", "Infinity", "-Infinity")')
        return float(value)
    if type_ == "bool":
        if not isinstance(value, bool):
            raise TypeError(f"{value!r} is not true or false")
        return value
    if type_ == "timestamp":
        return _timestamp(value)
    if type_ == "string":
        if not isinstance(value, str):
            raise TypeError(f"{value!r} is not a string")
        return value
    if type_.startswith("list<") and isinstance(value, list):
        return [_value(v, type_[5:-1]) for v in value]
    raise TypeError(f"{value!r} does not fit")


def _timestamp(value: object) -> dt.datetime:
    """ISO 8601 (UTC unless it says otherwise) or a datetime, in UTC."""
    if isinstance(value, dt.datetime):
        t = value
    elif isinstance(value, str):
        try:
            t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO 8601 time, e.g. "
                             "2026-01-31T12:00:00.250Z") from None
    else:
        raise TypeError(f"{value!r} is not a time: give ISO 8601, e.g. 2026-01-31T12:00:00Z")
    t = t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)
    return t.astimezone(dt.timezone.utc)


def format_time(t: dt.datetime, sep: str = "T") -> str:
    """A UTC time as the stream formats spell it, to the microsecond."""
    return t.astimezone(dt.timezone.utc).strftime(f"%Y-%m-%d{sep}%H:%M:%S.%fZ")


def float_text(value: float) -> str | float:
    """A float as the stream formats hold it: non-finite ones spelled out."""
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _json_value(value: object) -> object:
    if isinstance(value, dt.datetime):
        return format_time(value)
    if isinstance(value, float):
        return float_text(value)
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


def json_line(row: dict) -> str:
    """One event as a line of a JSON files stream (datetimes as times)."""
    return json.dumps({k: _json_value(v) for k, v in row.items()}, ensure_ascii=False)


def _json_lines(source: Source, rows: list[dict]) -> str:
    return "".join(json_line(row) + "\n" for row in rows)


def _csv(source: Source, rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in rows:
        writer.writerow([format_time(v, " ") if isinstance(v, dt.datetime)
                         else "" if v is None else str(v).lower() if isinstance(v, bool)
                         else float_text(v) if isinstance(v, float)
                         else v for v in row.values()])
    return buffer.getvalue()
