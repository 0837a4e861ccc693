"""What a lookup means, free of I/O: resolve a request against the manifest,
name the Redis keys to read, and turn what Redis returned into the response.

The server (`serving.server`) does the I/O around these functions:

    prepared = prepare(manifest, request, now)     # BadRequest -> INVALID_ARGUMENT
    replies  = <one Redis pipeline over prepared.views>
    response = respond(prepared, replies)          # CorruptState -> INTERNAL

A window reads the few tiles and rollups that cover it exactly
(`featurestore.windows.cover`), the same fields for every entity: one HMGET
per entity, and one JSON parse per view for all of them. Values are packed per
column with numpy, so building the response is no Python loop over values.
"""
from __future__ import annotations

import difflib
import functools
import json
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from featurestore import layout, tiles, windows
from featurestore.manifest import FeatureSpec, Manifest, ViewSpec
from serving.v1 import serving_pb2 as pb

# Manifest type -> ValueList field. Narrower types travel in the wider column.
VALUE_KINDS = {
    "int64": "int64_list", "int32": "int64_list",
    "float64": "double_list", "float32": "double_list",
    "string": "string_list", "bool": "bool_list", "timestamp": "timestamp_list",
}
KEY_KINDS = {"int64": "int64_list", "int32": "int64_list", "string": "string_list"}
# Element type of list<T> -> ValueList field of the elements of a ListColumn.
ELEMENT_KINDS = {"float32": "float_list", "float64": "double_list", "int64": "int64_list",
                 "int32": "int64_list", "string": "string_list", "bool": "bool_list"}


def value_kind(type_: str) -> str | None:
    """The ValueList field a feature of `type_` travels in (None: none can)."""
    if type_.startswith("list<") and type_.endswith(">"):
        return "list_column" if type_[5:-1] in ELEMENT_KINDS else None
    return VALUE_KINDS.get(type_)

_DTYPES = {"int64_list": np.int64, "double_list": np.float64, "bool_list": np.bool_,
           "timestamp_list": np.int64, "float_list": np.float32}
_ZEROS = {"int64_list": 0, "double_list": 0.0, "string_list": "", "bool_list": False,
          "timestamp_list": 0}


class BadRequest(ValueError):
    """The request cannot be answered as asked; the message says why."""


class CorruptState(RuntimeError):
    """What Redis holds does not match the view it is read for (`view`)."""

    def __init__(self, view: str, message: str):
        super().__init__(message)
        self.view = view


# ---------------------------------------------------------------- the plan

@dataclass(frozen=True)
class Feature:
    """One requested feature: a column of the response."""
    name: str      # column name in the response
    ref: str       # "view:feature"
    view: ViewSpec
    spec: FeatureSpec
    index: int     # position among the view's row values, or its state's slot in a tile
    kind: str      # ValueList field


@dataclass(frozen=True)
class TileRead:
    """The tiles hash fields one lookup of a view reads, and which of them
    each requested aggregation merges. `fields` None: the whole hash (a
    window over all history), each aggregation then merges its view's own
    tiles from `lowers[j]` (None: all) to the lookup's time."""
    fields: tuple[bytes, ...] | None
    members: tuple[tuple[int, ...], ...]   # per aggregation: indexes into fields
    lowers: tuple[int | None, ...]         # per aggregation: its window's lowest tile start


@dataclass(frozen=True)
class ViewLookup:
    """The requested features of one view, the Redis keys of its entities
    and the tiles they are read from."""
    view: ViewSpec
    row_features: tuple[Feature, ...]
    aggregations: tuple[Feature, ...]
    entity_keys: tuple[str, ...]   # layout-encoded, one per entity row
    tiles: TileRead | None         # None: no aggregation is requested

    @property
    def needs_tiles(self) -> bool:
        return bool(self.aggregations)


@dataclass(frozen=True)
class Prepared:
    """A validated request: everything `respond` needs except Redis' replies."""
    features: tuple[Feature, ...]          # in request order
    views: tuple[ViewLookup, ...]          # each view once, first use first
    entity_names: tuple[str, ...]          # key columns, in response order
    entities: Mapping[str, pb.ValueList]   # the request's key columns, echoed
    rows: int
    now_us: int                            # the time the values are computed at
    as_of: bool = False                    # asked for a past time: rows after it are unknown
    # filled by `respond`: state of an entity that could not be decoded (its
    # values in that view are INVALID; every other entity is served)
    problems: list = field(default_factory=list)


def check_manifest(manifest: Manifest) -> None:
    """Raise ValueError naming everything in `manifest` this server cannot serve."""
    problems = []
    for view in manifest.views.values():
        if not view.keys:
            problems.append(f"view {view.name!r} has no entity key")
        for key, type_ in view.keys:
            if type_ not in KEY_KINDS:
                problems.append(f"view {view.name!r}: key {key!r} has type {type_!r}; "
                                f"keys must be one of {', '.join(KEY_KINDS)}")
        for f in view.features:
            if value_kind(f.type) is None:
                problems.append(f"feature '{view.name}:{f.name}' has type {f.type!r}, "
                                "which the serving API has no column for")
        for f in view.aggregations:
            if f.function not in tiles.FUNCTIONS:
                problems.append(f"feature '{view.name}:{f.name}' aggregates with "
                                f"{f.function!r}, which tiles cannot merge")
                continue
            try:
                tile_aggregation(f)
            except ValueError as e:
                problems.append(f"feature '{view.name}:{f.name}': {e}")

    for service, refs in manifest.services.items():
        for view_name, feature in refs:
            named = manifest.views.get(view_name)
            if named is None or (feature != "*" and named.feature(feature) is None):
                problems.append(f"service {service!r} names '{view_name}:{feature}', "
                                "which the manifest does not define")
    if problems:
        raise ValueError("the manifest cannot be served:\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class _Shape:
    """What a request asks for, apart from its entities and time: the same
    for every request naming the same features, so it is resolved once."""
    features: tuple[Feature, ...]
    views: tuple[tuple[ViewSpec, tuple[Feature, ...], tuple[Feature, ...],
                       tuple[int | None, ...]], ...]   # view, rows, aggregations, reaches
    key_kinds: dict[str, str]
    grouped: dict[tuple, tuple[ViewSpec, list[Feature]]]


class Resolver:
    """Resolves requests against one manifest, remembering the shapes of the
    requests it has seen (model servers send the same few, again and again).

    `served` names, per view, the version lookups read when it is not the
    applied one (`serving.versions`): names and services resolve against the
    applied manifest, then each feature the served version also defines is
    read from it; a feature only the applied version defines is read from
    that version (NOT_FOUND until it is materialized)."""

    MAX_SHAPES = 1024

    def __init__(self, manifest: Manifest, served: Mapping[str, ViewSpec] | None = None):
        self.manifest = manifest
        self.served = {name: view for name, view in (served or {}).items()
                       if view is not manifest.views.get(name)}
        self._shapes: dict[tuple, _Shape] = {}

    def shape(self, request: pb.GetOnlineFeaturesRequest) -> _Shape:
        kind = request.WhichOneof("kind")
        named = (request.feature_service if kind == "feature_service" else
                 tuple(request.features.features) if kind == "features" else None)
        key = (kind, named, request.full_feature_names)
        shape = self._shapes.get(key)
        if shape is None:
            shape = _resolve_shape(self.manifest, request, self.served)
            if len(self._shapes) >= self.MAX_SHAPES:
                self._shapes.clear()
            self._shapes[key] = shape
        return shape


def _resolve_shape(manifest: Manifest, request: pb.GetOnlineFeaturesRequest,
                   served: Mapping[str, ViewSpec]) -> _Shape:
    refs = _requested(manifest, request)
    if served:
        refs = [_served(served, view, spec) for view, spec in refs]
    features = _name_features(refs, request.full_feature_names)
    grouped = _group_by_view(features)
    key_kinds = _key_kinds(grouped)
    _check_names(features, key_kinds)
    views = []
    for view, fs in grouped.values():
        aggs = tuple(f for f in fs if f.spec.function is not None)
        views.append((view, tuple(f for f in fs if f.spec.function is None), aggs,
                      tuple(windows.reach_us(view, f.spec) for f in aggs)))
    return _Shape(tuple(features), tuple(views), key_kinds, grouped)


def prepare(manifest: Manifest | Resolver, request: pb.GetOnlineFeaturesRequest,
            now_us: int) -> Prepared:
    """Validate `request` against `manifest` (or a Resolver of it) for a
    lookup at `now_us`; raise BadRequest naming the problem."""
    resolver = manifest if isinstance(manifest, Resolver) else Resolver(manifest)
    shape = resolver.shape(request)
    columns, rows = _entity_columns(shape.key_kinds, shape.grouped, request.entities)
    as_of = request.HasField("as_of")
    if as_of:
        now_us = _as_of_instant(request.as_of, now_us, shape.grouped)
    lookups = []
    for view, row_features, aggs, reaches in shape.views:
        read = _tile_read(view, reaches, now_us - now_us % view.tile_us) if aggs else None
        lookups.append(ViewLookup(view, row_features, aggs, _encode_keys(view, columns), read))
    return Prepared(shape.features, tuple(lookups), tuple(shape.key_kinds), request.entities,
                    rows, now_us, as_of)


def commands(project: str, prepared: Prepared):
    """The Redis commands of a lookup, in the order `split_replies` reads
    their replies: per view, each entity's row GET (EXISTS of its tiles for a
    view without row features), then each entity's tiles (HMGET of the
    fields read, HGETALL for a window over all history)."""
    for v in prepared.views:
        name, fingerprint = v.view.name, v.view.fingerprint
        for key in v.entity_keys:
            if v.view.row_features:
                yield (b"GET", layout.row_key(project, name, fingerprint, key))
            else:
                yield (b"EXISTS", layout.tiles_key(project, name, fingerprint, key))
        if v.needs_tiles:
            fields = v.tiles.fields
            for key in v.entity_keys:
                tiles_key = layout.tiles_key(project, name, fingerprint, key)
                yield (b"HGETALL", tiles_key) if fields is None else (b"HMGET", tiles_key, *fields)


def split_replies(prepared: Prepared, replies: list) -> list[tuple[list, list | None]]:
    """The flat replies to `commands`, per view: (rows, tiles or None), as
    `respond` takes them."""
    per_view, at = [], 0
    for v in prepared.views:
        n = len(v.entity_keys)
        rows, at = replies[at:at + n], at + n
        hashes = None
        if v.needs_tiles:
            hashes, at = replies[at:at + n], at + n
            if v.tiles.fields is None:  # HGETALL replies field, value, field, value, ...
                hashes = [dict(zip(h[::2], h[1::2])) for h in hashes]
        per_view.append((rows, hashes))
    return per_view


def _as_of_instant(as_of: int, now_us: int, views) -> int:
    """The instant an as_of request is answered at (see the proto): the
    latest at or before as_of that ends a tile of every view with requested
    window features, within the history the store holds."""
    horizon = windows.AS_OF_HORIZON_US
    if as_of > now_us:
        raise BadRequest(f"as_of {as_of} is in the future (now is {now_us}): "
                         "values after now are unknown")
    tiled = [view for view, fs in views.values()
             if any(f.spec.function is not None for f in fs)]
    t = windows.as_of_instant(as_of, [view.tile_us for view in tiled])
    # the tiles a window reads at t are held when t's tile is within the
    # horizon of now's (windows.history_us)
    too_old = [v.name for v in tiled if t - t % v.tile_us < now_us - now_us % v.tile_us - horizon]
    if as_of < now_us - horizon or too_old:
        reason = (f"windows of {', '.join(map(repr, too_old))} would read tiles before "
                  f"{horizon // 1_000_000} s ago (as_of {as_of} ends no tile later)") \
            if too_old and as_of >= now_us - horizon else \
            f"as_of {as_of} is more than {horizon // 1_000_000} s before now ({now_us})"
        raise BadRequest(f"{reason}: the online store holds no older tiles; "
                         "use `featurestore export` for older times")
    return t


@functools.lru_cache(maxsize=4096)
def _tile_read(view: ViewSpec, reaches: tuple[int | None, ...], floor_us: int) -> TileRead:
    """The fields that cover each window at a time in the tile at `floor_us`
    (the same for every time in that tile, hence the cache)."""
    lowers = tuple(windows.window_start(floor_us, view.tile_us, r) for r in reaches)
    if None in lowers:
        return TileRead(None, (), lowers)
    sizes = windows.levels(view)
    fields: dict[bytes, int] = {}
    members = []
    for lower in lowers:
        cover = windows.cover(lower, floor_us, sizes)
        members.append(tuple(fields.setdefault(
            layout.tile_field(start, None if size == view.tile_us else size), len(fields))
            for size, start in cover))
    return TileRead(tuple(fields), tuple(members), lowers)


def _requested(manifest: Manifest,
               request: pb.GetOnlineFeaturesRequest) -> list[tuple[ViewSpec, FeatureSpec]]:
    kind = request.WhichOneof("kind")
    if kind == "feature_service":
        name = request.feature_service
        if name not in manifest.services:
            raise BadRequest(f"unknown feature service {name!r}" + _hint(name, manifest.services))
        expanded = [r for v, f in manifest.services[name] for r in _expand(manifest.views[v], f)]
        # "view.*" next to a feature of that view names it twice; that is no error
        refs = list({(view.name, spec.name): (view, spec) for view, spec in expanded}.values())
    elif kind == "features":
        refs = [_resolve(manifest, ref) for ref in request.features.features]
    else:
        raise BadRequest("empty request: set feature_service or features")
    if not refs:
        raise BadRequest("empty request: no features are named")
    return refs


def _served(served: Mapping[str, ViewSpec], view: ViewSpec,
            spec: FeatureSpec) -> tuple[ViewSpec, FeatureSpec]:
    """Where a feature of the applied `view` is read from."""
    older = served.get(view.name)
    same = older.feature(spec.name) if older is not None else None
    return (older, same) if same is not None else (view, spec)


def _expand(view: ViewSpec, feature: str) -> list[tuple[ViewSpec, FeatureSpec]]:
    if feature == "*":
        return [(view, f) for f in view.features]
    return [(view, view.feature(feature))]


def _resolve(manifest: Manifest, ref: str) -> tuple[ViewSpec, FeatureSpec]:
    view_name, sep, feature = ref.partition(":")
    if not sep or not view_name or not feature:
        raise BadRequest(f"feature reference {ref!r} is not of the form 'view:feature'")
    view = manifest.views.get(view_name)
    if view is None:
        raise BadRequest(f"unknown view {view_name!r} in {ref!r}"
                         + _hint(view_name, manifest.views))
    spec = view.feature(feature)
    if spec is None:
        raise BadRequest(f"unknown feature {ref!r}"
                         + _hint(feature, [f.name for f in view.features]))
    return view, spec


def _hint(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _name_features(refs, full_names: bool) -> list[Feature]:
    features, seen = [], set()
    for view, spec in refs:
        ref = f"{view.name}:{spec.name}"
        if ref in seen:
            raise BadRequest(f"feature {ref!r} is requested twice")
        seen.add(ref)
        if spec.function is None:   # position among the row's values
            index = next(i for i, f in enumerate(view.row_features) if f.name == spec.name)
        else:                       # the slot of its state in a tile
            index = view.slot(spec)
        name = f"{view.name}__{spec.name}" if full_names else spec.name
        features.append(Feature(name, ref, view, spec, index, value_kind(spec.type)))
    return features


def _group_by_view(features: list[Feature]) -> dict[tuple, tuple[ViewSpec, list[Feature]]]:
    """(view, version) -> (view, its requested features), in order of first
    use. Two versions of one view are read while a change is materialized."""
    views: dict[tuple, tuple[ViewSpec, list[Feature]]] = {}
    for f in features:
        views.setdefault((f.view.name, f.view.fingerprint), (f.view, []))[1].append(f)
    return views


def _key_kinds(views) -> dict[str, str]:
    """Key column name -> ValueList field, in order of first use."""
    kinds: dict[str, str] = {}
    owner: dict[str, str] = {}
    for view, _ in views.values():
        for key, type_ in view.keys:
            kind = KEY_KINDS[type_]
            if kinds.setdefault(key, kind) != kind:
                raise BadRequest(f"views {owner[key]!r} and {view.name!r} both have key {key!r}, "
                                 "but of different types; request them separately")
            owner.setdefault(key, view.name)
    return kinds


def _check_names(features: list[Feature], key_kinds: Mapping[str, str]) -> None:
    taken = {key: f"entity key column {key!r}" for key in key_kinds}
    for f in features:
        if f.name in taken:
            raise BadRequest(f"feature {f.ref!r} and {taken[f.name]} would both be named "
                             f"{f.name!r}; set full_feature_names to name features 'view__feature'")
        taken[f.name] = f"feature {f.ref!r}"


def _entity_columns(key_kinds: Mapping[str, str], views,
                    entities: Mapping[str, pb.ValueList]) -> tuple[dict[str, list], int]:
    """The request's key columns as Python values, checked; and the row count."""
    needed = ", ".join(key_kinds)
    for key in key_kinds:
        if key not in entities:
            owner = next(v.name for v, _ in views.values() if key in dict(v.keys))
            raise BadRequest(f"missing entity key column {key!r} (a key of view {owner!r}); "
                             f"the request needs exactly: {needed}")
    for name in sorted(entities):
        if name not in key_kinds:
            raise BadRequest(f"unexpected entity key column {name!r}" + _hint(name, key_kinds)
                             + f" (the requested views need exactly: {needed})")
    columns = {key: _key_values(key, kind, entities[key]) for key, kind in key_kinds.items()}
    lengths = {key: len(values) for key, values in columns.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{key!r} has {n}" for key, n in lengths.items())
        raise BadRequest(f"entity key columns differ in length: {shown}")
    return columns, next(iter(lengths.values()))


_KEY_LISTS = frozenset(KEY_KINDS.values())


def _key_values(key: str, kind: str, column: pb.ValueList) -> list:
    given = column.WhichOneof("kind")
    if given is not None and given not in _KEY_LISTS:
        raise BadRequest(f"entity key column {key!r} must be sent as {kind}, not {given}")
    values = list(getattr(column, given).values) if given else []
    # An empty column says nothing about its type; accept it as any kind.
    if values and given != kind:
        raise BadRequest(f"entity key column {key!r} must be sent as {kind}, not {given}")
    return values


def _encode_keys(view: ViewSpec, columns: Mapping[str, list]) -> tuple[str, ...]:
    key_columns = [columns[key] for key, _ in view.keys]
    return tuple(layout.encode_entity_key(values) for values in zip(*key_columns))


# ------------------------------------------------------------ the response

Replies = Sequence[tuple[Sequence[bytes | None], Sequence[Mapping[bytes, bytes]] | None]]


def respond(prepared: Prepared, replies: Replies) -> pb.GetOnlineFeaturesResponse:
    """Build the response from Redis' replies: for each view of `prepared.views`
    the row GETs, and the tiles (None when the view needs no tiles): per
    entity the values of `lookup.tiles.fields`, or the whole hash when
    `fields` is None."""
    now_us = prepared.now_us
    response = pb.GetOnlineFeaturesResponse()
    response.metadata.served_at = now_us
    names = response.metadata.feature_names.features
    present, unknown = [pb.PRESENT] * prepared.rows, [0] * prepared.rows
    for key in prepared.entity_names:
        names.append(key)
        response.results.add(values=prepared.entities[key], statuses=present,
                             event_timestamps=unknown)
    columns: dict[str, pb.FeatureVector] = {}   # filled in place: no copies
    for f in prepared.features:
        names.append(f.name)
        columns[f.ref] = response.results.add()
    for lookup, (rows, tile_replies) in zip(prepared.views, replies, strict=True):
        newest = _view_columns(lookup, rows, tile_replies, now_us, prepared.as_of, columns,
                               prepared.problems)
        response.metadata.freshness.add(view=lookup.view.name, newest_event=newest,
                                        age=now_us - newest if newest else 0)
    return response


def _view_columns(lookup: ViewLookup, rows, tile_hashes, now_us: int, as_of: bool,
                  columns: Mapping[str, pb.FeatureVector], problems: list) -> int:
    """Fill the view's columns (`columns` by ref); return the newest event
    time behind them (0: none).
    `rows`: per entity the GET of its row, or, for a view without row
    features, whether its tiles hash EXISTS (a window with no rows in it is
    then still known: 0 for a count, not NOT_FOUND)."""
    if lookup.view.row_features:
        found = np.fromiter((raw is not None for raw in rows), np.bool_, len(rows))
        known = found
    else:
        found = np.zeros(len(rows), np.bool_)
        known = np.fromiter(map(bool, rows), np.bool_, len(rows))
    row_ts, values, bad = _decode_rows(lookup, rows, found, problems)
    if bad:   # undecodable rows: INVALID, like every value of those entities in the view
        invalid = np.zeros(len(rows), np.bool_)
        invalid[bad] = True
        found &= ~invalid
    else:
        invalid = None
    newest = 0
    if lookup.row_features:
        held = found & (row_ts <= now_us) if as_of else found   # as_of: rows after it unknown
        ttl = lookup.view.ttl_us
        if ttl is not None:   # a row past its key's life is gone, whether Redis expired it yet
            held &= row_ts > now_us - windows.rows_keep_us(lookup.view)
        expired = held & (row_ts <= now_us - ttl) if ttl is not None else None
        statuses = _statuses(values, held, expired, invalid)   # every row feature at once
        times = np.where(held, row_ts, 0).tolist()
        for f in lookup.row_features:
            _vector(f, values[:, f.index], statuses[:, f.index], times, columns[f.ref])
        newest = int(row_ts[held].max(initial=0))
    if lookup.aggregations:
        newest = max(newest, _aggregation_columns(lookup, known, tile_hashes, now_us, columns,
                                                  invalid, problems))
    return newest


def _decode_rows(lookup: ViewLookup, rows, found: np.ndarray, problems: list):
    """Event times (0 where no row), row-feature values (an object matrix,
    entity x feature; None where no row) and the entities whose row could
    not be decoded (each a CorruptState in `problems`)."""
    width = len(lookup.view.row_features)
    row_ts = np.zeros(len(rows), np.int64)
    values = np.full((len(rows), width), None, dtype=object)
    bad: list[int] = []
    if not lookup.row_features:
        return row_ts, values, bad
    for i in np.flatnonzero(found):
        try:
            ts, row = layout.decode_row(rows[i])
        except (ValueError, TypeError, IndexError, KeyError) as e:
            problems.append(CorruptState(
                lookup.view.name, f"the row of view {lookup.view.name!r} for entity "
                f"{lookup.entity_keys[i]!r} is not a row of layout v{layout.LAYOUT_VERSION} "
                f"([event time, values...]): {type(e).__name__}: {e}"))
            bad.append(i)
            continue
        if len(row) != width:
            problems.append(CorruptState(
                lookup.view.name, f"the row of view {lookup.view.name!r} for entity "
                f"{lookup.entity_keys[i]!r} has {len(row)} values; the view has {width} "
                "row features"))
            bad.append(i)
            continue
        row_ts[i] = ts
        values[i] = row
    return row_ts, values, bad


def tile_aggregation(spec: FeatureSpec) -> tiles.Aggregation:
    """The tile state of an aggregation feature. A manifest without the
    argument's type is read as the output type where the two are the same
    (count, sum, min, max, first, last); for the others, re-run `apply`."""
    input_type = spec.input_type
    if input_type is None and spec.function in ("sum", "min", "max", "first", "last"):
        input_type = spec.type
    if input_type is None and spec.function != "count":
        raise ValueError(f"the manifest does not say what {spec.function}() aggregates; "
                         "run `featurestore apply` with this release")
    return tiles.aggregation(spec.function, input_type)


@functools.lru_cache(maxsize=1024)
def view_codec(view: ViewSpec) -> layout.TileCodec:
    """How the view's tiles are encoded: from the aggregation of each state slot."""
    owners: dict[int, FeatureSpec] = {}
    for spec in view.aggregations:
        owners.setdefault(view.slot(spec), spec)
    return layout.tile_codec([tile_aggregation(owners[slot]) for slot in range(view.states)])


def _aggregation_columns(lookup: ViewLookup, found: np.ndarray, replies, now_us: int,
                         columns: Mapping[str, pb.FeatureVector],
                         invalid: np.ndarray | None, problems: list) -> int:
    """Fill the window aggregations' columns, from every entity's tiles:
    `replies` per entity are the values of `lookup.tiles.fields` (HMGET), or
    the whole hash (HGETALL) when `fields` is None. Returns the start of the
    newest tile read (0: none)."""
    aggs, read = lookup.aggregations, lookup.tiles
    states_of = [tile_aggregation(f.spec) for f in aggs]
    values = np.empty((len(found), len(aggs)), dtype=object)
    values[:] = [agg.empty() for agg in states_of]
    latest = np.zeros(values.shape, np.int64)
    has_tiles = np.zeros(len(found), np.bool_)
    if read.fields is None:
        per_entity = _merge_hashes(lookup, replies, states_of, now_us)
    else:
        rest = _merge_binary(lookup, replies, states_of, values, latest, has_tiles)
        per_entity = _merge_fields(lookup, replies, states_of, rest)
    for i, merged in per_entity:
        if isinstance(merged, CorruptState):
            problems.append(merged)
            if invalid is None:
                invalid = np.zeros(len(found), np.bool_)
            invalid[i] = True
            continue
        has_tiles[i] = True
        for j, (value, start) in enumerate(merged):
            if start is not None:
                values[i, j], latest[i, j] = value, start
    statuses = _statuses(values, found | has_tiles)
    # count and count_distinct over no rows are 0 for every entity, seen or
    # not (as the export computes them): a value, never NOT_FOUND
    statuses[:, [agg.empty() is not None for agg in states_of]] = pb.PRESENT
    if invalid is not None:
        values[invalid] = None
        statuses[invalid] = pb.INVALID
    for j, f in enumerate(aggs):
        _vector(f, values[:, j], statuses[:, j], latest[:, j].tolist(), columns[f.ref])
    return int(latest.max(initial=0))


def _merge_binary(lookup: ViewLookup, replies, states_of, values: np.ndarray,
                  latest: np.ndarray, has_tiles: np.ndarray) -> list[int]:
    """Merge the tiles of every entity whose tiles are all binary
    (`layout.TileCodec`) at once, with numpy: fill their `values` and
    `latest` (entity x aggregation: the value, and the start of the newest
    tile its window read; untouched where the window holds no tile) and
    `has_tiles`. Returns the entities left to merge one by one: those with a
    JSON tile (or a corrupt one, which that path names)."""
    codec = view_codec(lookup.view)
    if not codec.fixed:
        return list(range(len(replies)))
    if not replies:
        return []
    unpacked = codec.unpack(replies)
    if unpacked is None:
        size, tag = codec.size, layout.BINARY_TAG
        rest = [i for i, fields in enumerate(replies)
                if any(v is not None and (len(v) != size or v[0] != tag) for v in fields)]
        done = sorted(set(range(len(replies))) - set(rest))
        if done:
            merged = np.zeros(len(done), np.bool_)
            part = (values[done], latest[done])
            _merge_words(lookup, codec, codec.unpack([replies[i] for i in done]), states_of,
                         *part, merged)
            values[done], latest[done] = part
            has_tiles[done] = merged
        return rest
    _merge_words(lookup, codec, unpacked, states_of, values, latest, has_tiles)
    return []


def _merge_words(lookup: ViewLookup, codec: layout.TileCodec, unpacked, states_of,
                 values: np.ndarray, latest: np.ndarray, has_tiles: np.ndarray) -> None:
    read = lookup.tiles
    width = len(read.fields)
    words, nulls, present = unpacked
    entities = len(values)
    words = words.reshape(entities, width, -1)
    nulls = nulls.reshape(entities, width, -1)
    present = present.reshape(entities, width)
    has_tiles |= present.any(axis=1)
    starts = np.array([layout.parse_tile_field(f)[1] for f in read.fields], np.int64)
    offsets = np.cumsum([0] + [sum(map(len, slot)) for slot in codec.slots]).tolist()
    merged_of: dict[tuple[int, ...], _MergedWords] = {}
    for j, (f, members) in enumerate(zip(lookup.aggregations, read.members)):
        if not members:
            continue
        merged = merged_of.get(members)
        if merged is None:
            merged = merged_of[members] = _MergedWords(codec, words, nulls, list(members))
            seen = present[:, members]
            merged.any = seen.any(axis=1)
            newest = len(members) - 1 - np.argmax(seen[:, ::-1], axis=1)
            merged.newest = starts[np.asarray(members)[newest]]
        at = offsets[f.index]
        column = _finalize(f.spec.function, states_of[j], codec.words[at:offsets[f.index + 1]],
                           merged, at)
        rows = merged.any
        values[rows, j] = column[rows]
        latest[rows, j] = merged.newest[rows]


class _MergedWords:
    """The words of one window (`members`, indexes of the fields read) merged
    for every entity, computed word by word as the finalizers ask."""

    def __init__(self, codec: layout.TileCodec, words: np.ndarray, nulls: np.ndarray,
                 members: list[int]):
        self.codec, self.members = codec, members
        self.words, self.nulls = words[:, members, :], nulls[:, members, :]
        self.any = self.newest = None
        self._cache: dict[int, tuple] = {}

    def get(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(merged word k per entity, null per entity): sums as exact Python
        ints (an object array), counts as int64, min/max as their values."""
        got = self._cache.get(k)
        if got is not None:
            return got
        kind, reduce = self.codec.words[k], self.codec.reduces[k]
        word, null = self.words[:, :, k], self.nulls[:, :, k]
        none = null.all(axis=1)
        if reduce == "count":
            got = np.where(null, 0, word).sum(axis=1), none
        elif reduce == "sum":   # exact: 32-bit halves summed apart, joined as Python ints
            word = np.where(null, 0, word)
            high = (word >> 32).sum(axis=1).astype(object)
            low = (word & 0xFFFFFFFF).sum(axis=1).astype(object)
            got = high * (1 << 32) + low, none
        elif kind == "t":   # the time of a first (min) or last (max) pair
            pick = (np.argmin(np.where(null, np.iinfo(np.int64).max, word), axis=1)
                    if reduce == "min" else
                    np.argmax(np.where(null, np.iinfo(np.int64).min, word), axis=1))
            got = pick, none
        elif kind == "f":
            word = word.view(np.float64)
            if reduce == "min":   # NaN is above every number: the least number, else NaN
                got = np.fmin.reduce(np.where(null, np.nan, word), axis=1), none
            else:                 # any NaN is the greatest
                got = np.where(null, -np.inf, word).max(axis=1), none
        else:   # int64 or bool
            if reduce == "min":
                got = np.where(null, np.iinfo(np.int64).max, word).min(axis=1), none
            else:
                got = np.where(null, np.iinfo(np.int64).min, word).max(axis=1), none
        self._cache[k] = got
        return got

    def pair_value(self, k: int) -> np.ndarray:
        """The value word (k + 1) of the first or last pair whose time is word k."""
        pick, _ = self.get(k)
        word = self.words[:, :, k + 1]
        chosen = np.take_along_axis(word, pick[:, None], axis=1)[:, 0]
        return chosen


def _finalize(function: str, agg: tiles.Aggregation, kinds: Sequence[str],
              merged: _MergedWords, at: int) -> np.ndarray:
    """The values (an object array, None for null) of one aggregation whose
    state's words (of `kinds`) start at `at`, from the merged words of its
    window."""
    floating = agg.input_type == "float64"
    if function == "count":
        n, _ = merged.get(at)
        return n.astype(object)
    if function in ("min", "max"):
        value, none = merged.get(at)
        out = value.astype(bool if kinds[0] == "b" else value.dtype).astype(object)
        out[none] = None
        return out
    if function in ("first", "last"):
        _, none = merged.get(at)
        value = merged.pair_value(at)
        if kinds[1] == "f":
            value = value.view(np.float64)
        out = value.astype(bool if kinds[1] == "b" else value.dtype).astype(object)
        out[none] = None
        return out
    # sum, avg, variance, stddev: the state rebuilt from its merged words per
    # entity, finalized by `tiles` (exact integer arithmetic, rounded once)
    value = agg.value
    out = np.empty(len(merged.any), object)
    if function == "sum" and not floating:   # word s
        s, none = merged.get(at)
        out[:] = [None if z else value(t) for t, z in zip(s.tolist(), none.tolist())]
        return out
    columns = [merged.get(k)[0].tolist() for k in range(at, at + len(kinds))]
    if function == "sum":      # words h, l, n_out: the state [H, L, N_out]
        none = merged.get(at)[1].tolist()
        out[:] = [value([None if z else h, lo, o]) for h, lo, o, z in zip(*columns, none)]
    elif function == "avg":    # words n, s or n, h, l, n_out: the state itself
        out[:] = [value(list(state)) for state in zip(*columns)]
    else:                      # words n, s, qh, ql (, n_out): Q = A * 2**64 + C, B = 0
        mask64 = (1 << 64) - 1
        out[:] = [value([n, s_, q >> 64, 0, q & mask64, *rest])
                  for n, s_, q, *rest in zip(columns[0], columns[1],
                                             [(a << 62) + b for a, b in zip(columns[2],
                                                                            columns[3])],
                                             *columns[4:])]
    return out


def _merge_fields(lookup: ViewLookup, replies, states_of, among: list[int]):
    """(entity, [(value, start of the newest tile read) per aggregation]) of
    each entity of `among` with tiles; start None where its window holds none."""
    read, width = lookup.tiles, lookup.view.states
    starts = [layout.parse_tile_field(f)[1] for f in read.fields]
    entities = [i for i in among if any(replies[i])]
    windows_of = {}  # per distinct window: the aggregations that read it
    for j, (f, members) in enumerate(zip(lookup.aggregations, read.members)):
        windows_of.setdefault(members, []).append((j, f.index, states_of[j].folder()))
    def merge(i: int, tiles_of: list) -> list:
        for m, tile in enumerate(tiles_of):
            if tile is not None and (type(tile) is not list or len(tile) != width):
                _refuse(lookup, i, starts[m], tile, width)
        merged = [(None, None)] * len(states_of)
        for members, users in windows_of.items():   # members: ascending starts
            present = [tiles_of[m] for m in members if tiles_of[m] is not None]
            if not present:
                continue
            newest = next(starts[m] for m in reversed(members) if tiles_of[m] is not None)
            columns = list(zip(*present))
            for j, index, fold in users:
                merged[j] = (fold(columns[index]), newest)
        return merged

    for i, tiles_of in zip(entities, _decode_fields(lookup, replies, entities)):
        yield i, (tiles_of if isinstance(tiles_of, CorruptState) else
                  _guarded(lookup, i, merge, tiles_of))

DECODE_CHUNK = 64   # entities per JSON parse: a parse holds the GIL throughout


def _decode_fields(lookup: ViewLookup, replies, entities: list[int]):
    """Each entity's tiles, decoded: binary tiles by the view's codec, JSON
    ones with one JSON document per chunk of entities (one parse, in C, for
    thousands of tiles, short enough that the event loop's thread gets the
    GIL between chunks)."""
    codec = view_codec(lookup.view)
    binary = layout.BINARY_TAG
    for at in range(0, len(entities), DECODE_CHUNK):
        chunk = entities[at:at + DECODE_CHUNK]
        if any(v and v[0] == binary for i in chunk for v in replies[i]):
            for i in chunk:
                try:
                    yield [None if v is None else codec.decode(v) for v in replies[i]]
                except (ValueError, TypeError) as e:
                    yield CorruptState(lookup.view.name,
                                       f"the tiles of view {lookup.view.name!r} for entity "
                                       f"{lookup.entity_keys[i]!r} are not tiles of layout "
                                       f"v{layout.LAYOUT_VERSION}: {e}")
            continue
        text = b"[" + b",".join(b"[" + b",".join([v or b"null" for v in replies[i]]) + b"]"
                                for i in chunk) + b"]"
        try:
            yield from json.loads(text)
        except ValueError:   # one bad value: decode the chunk's entities one by one
            for i in chunk:
                try:
                    yield json.loads(b"[" + b",".join([v or b"null" for v in replies[i]]) + b"]")
                except ValueError as e:
                    yield CorruptState(lookup.view.name,
                                       f"the tiles of view {lookup.view.name!r} for entity "
                                       f"{lookup.entity_keys[i]!r} are not valid JSON: {e}")


def _merge_hashes(lookup: ViewLookup, replies, states_of, now_us: int):
    """As `_merge_fields`, from whole hashes: the view's own tiles (rollups
    are left out) from each window's lower edge to now."""
    def merge(i: int, raw: dict) -> list:
        starts, states = _decode_tiles(lookup, i, {f: v for f, v in raw.items() if b":" not in f})
        per_aggregation = list(zip(*states))  # one column of states per aggregation
        merged = []
        for f, agg, lower in zip(lookup.aggregations, states_of, lookup.tiles.lowers):
            window = windows.window_slice(starts, now_us, lower)
            if window.start < window.stop:
                merged.append((agg.value(agg.merge(per_aggregation[f.index][window])),
                               starts[window.stop - 1]))
            else:
                merged.append((None, None))
        return merged

    for i, raw in enumerate(replies):
        if raw:
            yield i, _guarded(lookup, i, merge, raw)

def _guarded(lookup: ViewLookup, i: int, merge, tiles):
    """`merge(i, tiles)`, or the CorruptState that says why entity i's tiles
    cannot be merged (the caller serves that entity INVALID)."""
    try:
        return merge(i, tiles)
    except CorruptState as e:
        return e
    except (TypeError, ValueError, IndexError, KeyError, AttributeError) as e:
        return CorruptState(lookup.view.name, f"the tiles of view {lookup.view.name!r} for "
                                              f"entity {lookup.entity_keys[i]!r} do not merge "
                                              f"as its states: {type(e).__name__}: {e}")


def _refuse(lookup: ViewLookup, i: int, start: int, state, width: int):
    got = f"{len(state)} states" if isinstance(state, list) else repr(state)
    raise CorruptState(lookup.view.name,
                       f"tile {start} of view {lookup.view.name!r} for entity "
                       f"{lookup.entity_keys[i]!r} has {got}; "
                       f"the view has {width} states")


def _decode_tiles(lookup: ViewLookup, i: int,
                  raw: Mapping[bytes, bytes]) -> tuple[list[int], list[list]]:
    """Every tile of entity `i`, in ascending start order (one JSON parse)."""
    width = lookup.view.states
    try:
        starts, states = layout.decode_tiles(raw, view_codec(lookup.view))
    except json.JSONDecodeError as e:
        raise CorruptState(lookup.view.name,
                           f"the tiles of view {lookup.view.name!r} for entity "
                           f"{lookup.entity_keys[i]!r} are not valid JSON: {e}") from None
    except (ValueError, TypeError) as e:
        raise CorruptState(lookup.view.name,
                           f"the tiles of view {lookup.view.name!r} for entity "
                           f"{lookup.entity_keys[i]!r} are not tiles of layout "
                           f"v{layout.LAYOUT_VERSION}: {e}") from None
    if not (set(map(type, states)) <= {list} and set(map(len, states)) <= {width}):
        start, state = next((t, s) for t, s in zip(starts, states)
                            if not isinstance(s, list) or len(s) != width)
        _refuse(lookup, i, start, state, width)
    return starts, states


def _statuses(values: np.ndarray, exists: np.ndarray,
              expired: np.ndarray | None = None,
              invalid: np.ndarray | None = None) -> np.ndarray:
    """One FieldStatus per slot of `values` (entity x feature): INVALID where
    the entity's state could not be decoded, else NOT_FOUND where the entity
    does not exist, else OUTSIDE_MAX_AGE where expired, else NULL_VALUE where
    the value is null, else PRESENT."""
    entity = np.full(len(exists), pb.PRESENT, np.int32)
    if expired is not None:
        entity[expired] = pb.OUTSIDE_MAX_AGE
    entity[~exists] = pb.NOT_FOUND
    if invalid is not None:
        entity[invalid] = pb.INVALID
    status = np.repeat(entity[:, None], values.shape[1], axis=1)
    status[np.equal(values, None) & (status == pb.PRESENT)] = pb.NULL_VALUE
    return status


SMALL = 8   # columns this short are packed with plain lists: numpy's per-call cost dominates


def _vector(f: Feature, values: np.ndarray, status: np.ndarray, timestamps: list[int],
            target: pb.FeatureVector) -> None:
    """Pack one column into `target`; slots that are not PRESENT get the
    type's zero value."""
    statuses = status.tolist()
    target.statuses.extend(statuses)
    target.event_timestamps.extend(timestamps)
    if f.kind == "list_column":
        _list_vector(f, values, status, target.values.list_column)
        return
    zero = _ZEROS[f.kind]
    try:
        if len(values) <= SMALL:
            packed = [v if s == pb.PRESENT else zero for v, s in zip(values.tolist(), statuses)]
        else:
            packed = np.where(status == pb.PRESENT, values, zero)
            if f.kind != "string_list":
                packed = packed.astype(_DTYPES[f.kind])
            packed = packed.tolist()
        getattr(target.values, f.kind).values.extend(packed)
    except (TypeError, ValueError, OverflowError) as e:
        raise CorruptState(f.view.name,
                           f"values of feature {f.ref!r} in Redis are not of its type "
                           f"{f.spec.type!r}: {e}") from None


def _list_vector(f: Feature, values: np.ndarray, status: np.ndarray,
                 target: pb.ListColumn) -> None:
    """Pack a list column: every PRESENT row's elements, concatenated, and
    each row's length (0 where the row has no value)."""
    kind = ELEMENT_KINDS[f.spec.type[5:-1]]
    rows = [v if s == pb.PRESENT else () for v, s in zip(values, status)]
    try:
        if not all(isinstance(r, (list, tuple)) for r in rows):
            raise TypeError("a value is not a list")
        lengths = [len(r) for r in rows]
        if kind == "string_list":
            flat = [x for r in rows for x in r]
        else:  # one conversion per row, not per element
            parts = [np.asarray(r, dtype=_DTYPES[kind]) for r in rows if len(r)]
            flat = np.concatenate(parts).tolist() if parts else []
        getattr(target.elements, kind).values.extend(flat)
    except (TypeError, ValueError, OverflowError) as e:
        raise CorruptState(f.view.name,
                           f"values of feature {f.ref!r} in Redis are not of its type "
                           f"{f.spec.type!r}: {e}") from None
    target.lengths.extend(lengths)
