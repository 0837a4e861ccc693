"""The export API and CLI: label columns and order kept, the label time
found or named, Parquet written by DuckDB, friendly errors."""
from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.cli import main as cli
from featurestore.export import export, export_to_parquet
from featurestore.errors import DataError, UserError
from tests import differential as d

T = d.T0 + d.DAY + 7 * d.MIN


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    events = d.generate_events(seed=31, n=600)
    d.write_events(root, events)
    return root, events


def _labels(n=40, seed=1):
    events = d.generate_events(seed=31, n=600)
    return d.generate_labels(events, seed=seed, n=n)


def _nullable(table: pa.Table) -> pa.Table:
    return table.cast(pa.schema([f.with_nullable(True) for f in table.schema]))


def test_parquet_in_parquet_out_keeps_labels_and_their_order(data, tmp_path):
    root, events = data
    labels = _labels()
    table = d.labels_table(labels).append_column("tags", pa.array([["x", str(i)] for i in range(len(labels))]))
    pq.write_table(table.slice(0, 20), tmp_path / "a.parquet")
    pq.write_table(table.slice(20), tmp_path / "b.parquet")
    progress = []
    stats = export_to_parquet(d.PLAN, root, str(tmp_path / "*.parquet"), tmp_path / "out" ,
                              service="everything", progress=lambda s, f: progress.append(f))
    # DuckDB 2 writes a column without nulls as required: compare as nullable.
    written = _nullable(pq.read_table(tmp_path / "out"))
    assert stats.rows == len(labels) == written.num_rows and stats.features == len(d.FEATURES)
    assert written.column_names == table.column_names + d.FEATURES
    assert written.select(table.column_names).equals(table)
    in_memory = _nullable(export(d.PLAN, root, table, service="everything"))
    assert written.schema == in_memory.schema
    assert all(d.same(a, b) or a == b for x, y in zip(written.to_pylist(), in_memory.to_pylist())
               for a, b in zip(x.values(), y.values()))
    d.check_export(written, labels, events)
    assert progress == sorted(progress) and progress[0] == 0.0 and len(progress) >= 5


def test_pandas_labels_with_nanosecond_times_round_down(data):
    root, events = data
    e = next(e for e in events if e["user"] == "u1" and e["kind"] != "test")
    at = pd.Timestamp(e["ts"] * 1000, unit="ns", tz="UTC")
    labels = pd.DataFrame({"user": ["u1", "u1"], "when": [at + pd.Timedelta(999, "ns"),
                                                          at - pd.Timedelta(1, "ns")]})
    got = export(d.PLAN, root, labels, features=["buys:n_10m"]).to_pandas()
    want = [d.expected(events, "u1", 0, t)["n_10m"] for t in (e["ts"], e["ts"] - 1)]
    assert got["n_10m"].tolist() == want and want[0] == want[1] + 1
    assert got["when"].tolist() == labels["when"].tolist()


def _nanoseconds(table: pa.Table) -> pa.Table:
    """A table with times as pandas writes them: nanoseconds, in UTC."""
    return table.cast(pa.schema([f.with_type(pa.timestamp("ns", "UTC"))
                                 if pa.types.is_timestamp(f.type) else f for f in table.schema]))


def test_pandas_written_labels_and_events_files(tmp_path):
    """What pandas writes (TIMESTAMP_NS / TIMESTAMPTZ_NS in DuckDB 2) reads as
    the microsecond times it holds, for labels and for events alike."""
    events = d.generate_events(seed=31, n=600)
    d.write_events(tmp_path, events)
    for part in (tmp_path / "data" / "events").iterdir():
        pq.write_table(_nanoseconds(pq.read_table(part)), part)
    labels = _labels()
    _nanoseconds(d.labels_table(labels)).to_pandas().to_parquet(tmp_path / "labels.parquet")
    assert "ns" in str(pq.read_schema(tmp_path / "labels.parquet").field("event_timestamp").type)
    stats = export_to_parquet(d.PLAN, tmp_path, tmp_path / "labels.parquet",
                              tmp_path / "train.parquet", service="everything")
    assert stats.rows == len(labels)
    d.check_export(pq.read_table(tmp_path / "train.parquet"), labels, events)


def test_labels_that_are_not_parquet_are_refused_naming_the_file(data, tmp_path):
    root, _ = data
    csv = tmp_path / "labels.csv"
    d.labels_table(_labels(5)).to_pandas().to_csv(csv, index=False)
    for labels in (csv, str(tmp_path / "*")):
        with pytest.raises(DataError, match=f"labels file {csv} is not a Parquet file.*"
                                            "Arrow table or pandas DataFrame"):
            export(d.PLAN, root, labels, service="everything")
    with pytest.raises(UserError, match="no labels at"):
        export(d.PLAN, root, str(tmp_path / "none*.parquet"), service="everything")


def test_a_missing_output_folder_is_refused_before_any_work(data, tmp_path):
    root, _ = data
    pq.write_table(d.labels_table(_labels(5)), tmp_path / "labels.parquet")
    progress = []
    for out, message in ((tmp_path / "nope" / "train.parquet",
                          f"the output folder {tmp_path / 'nope'} does not exist"),
                         (tmp_path, f"--out {tmp_path} is a folder")):
        with pytest.raises(UserError, match=message):
            export_to_parquet(d.PLAN, root, tmp_path / "labels.parquet", out,
                              service="everything", progress=lambda s, f: progress.append(s))
    assert progress == [] and not (tmp_path / "nope").exists()


def test_feature_refs_full_names_and_all_of_a_view(data):
    root, _ = data
    labels = d.labels_table(_labels(5))
    got = export(d.PLAN, root, labels, features=["shops:*", "buys:n_10m"], full_feature_names=True)
    assert got.column_names[6:] == [f"shops__{n}" for n in d.SHOP_VIEW.feature_names] + ["buys__n_10m"]


@pytest.mark.parametrize("change, message", [
    (lambda t: t.drop(["event_timestamp"]), "timestamp columns are none"),
    (lambda t: t.append_column("t2", t["event_timestamp"]).rename_columns(
        [*t.column_names[:2], "t1", *t.column_names[3:], "t2"]), "timestamp columns are t1, t2"),
    (lambda t: t.drop(["shop"]), "no column 'shop', a key of view 'shops'"),
    (lambda t: t.set_column(0, "user", pa.array(range(t.num_rows))), "'user' is BIGINT"),
    (lambda t: t.append_column("n_10m", pa.array([1] * t.num_rows)), "n_10m have the name"),
    (lambda t: t.set_column(2, "event_timestamp", pa.array([None] * t.num_rows, pa.timestamp("us"))),
     "has nulls"),
])
def test_label_mistakes_are_user_errors(data, change, message):
    root, _ = data
    with pytest.raises(UserError, match=message):
        export(d.PLAN, root, change(d.labels_table(_labels(5))), service="everything")


def test_unknown_names_are_user_errors(data):
    root, _ = data
    labels = d.labels_table(_labels(3))
    with pytest.raises(UserError, match="unknown feature service 'nope'"):
        export(d.PLAN, root, labels, service="nope")
    with pytest.raises(UserError, match="unknown feature 'buys:nope'"):
        export(d.PLAN, root, labels, features=["buys:nope"])
    with pytest.raises(UserError, match="exactly one"):
        export(d.PLAN, root, labels)
    with pytest.raises(UserError, match="'weight' is DOUBLE, not a timestamp"):
        export(d.PLAN, root, labels, service="everything", timestamp="weight")


FEATURES = '''
entity user { key user_id: string }
source buys {
    batch parquet "data/*.parquet"
    timestamp ts
    schema { user_id: string, amount: float64, ts: timestamp }
}
view spend {
    entity user
    from buys
    tile 5m
    ttl 1d
    features {
        n_1h = count() over 1h
        std_1h = stddev(amount) over 1h
        last_amount = last(amount) over 1h
        kinds = count_distinct(amount) over 1d
        amount = amount
    }
}
service train { spend.* }
'''


def test_cli_exports_a_training_set(tmp_path, capsys):
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "f.feat").write_text(FEATURES)
    (tmp_path / "featurestore.yaml").write_text("project: cli\n")
    (tmp_path / "data").mkdir()
    at = dt.datetime(2026, 1, 1, 12, tzinfo=dt.timezone.utc)
    pq.write_table(pa.table({"user_id": ["a", "a", "b"], "amount": [1.0, 3.0, 2.5],
                             "ts": [at - dt.timedelta(minutes=m) for m in (1, 2, 90)]}),
                   tmp_path / "data" / "buys.parquet")
    pq.write_table(pa.table({"user_id": ["a", "b", "c"], "event_timestamp": [at] * 3,
                             "y": [1, 0, 1]}), tmp_path / "labels.parquet")
    args = ["export", "--repo", str(tmp_path), "--labels", str(tmp_path / "labels.parquet"),
            "--service", "train", "--out", str(tmp_path / "train.parquet")]
    assert cli(args) == 0
    assert "wrote 3 rows x 5 features" in capsys.readouterr().out
    got = pq.read_table(tmp_path / "train.parquet").to_pydict()
    assert got["n_1h"] == [2, 0, 0] and got["last_amount"] == [1.0, None, None]
    assert got["std_1h"][0] == 2 ** 0.5 and got["kinds"] == [2, 1, 0]
    assert got["amount"] == [1.0, 2.5, None] and got["y"] == [1, 0, 1]
    assert cli([*args[:4], str(tmp_path / "none.parquet"), *args[5:]]) == 1
    assert "no labels at" in capsys.readouterr().err
    pd.read_parquet(tmp_path / "labels.parquet").to_csv(tmp_path / "labels.csv", index=False)
    assert cli([*args[:4], str(tmp_path / "labels.csv"), *args[5:]]) == 1
    err = capsys.readouterr().err
    assert f"labels file {tmp_path / 'labels.csv'} is not a Parquet file" in err
    assert "Traceback" not in err and "magic bytes" not in err
    assert cli([*args[:-1], str(tmp_path / "missing" / "train.parquet")]) == 1
    err = capsys.readouterr().err
    assert f"the output folder {tmp_path / 'missing'} does not exist" in err
    assert len(err.strip().splitlines()) == 1
