"""`featurestore push` (and `stream`'s mistakes): events checked against the source's schema and
written as one new, complete file that the streaming job reads (no Flink
here: the job reads pushed files in tests/test_streaming.py's formats)."""
from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest

import dsl
from featurestore.cli import main as cli
from streaming.push import PushError, push, read_events

REPO = Path(__file__).parent / "example_repos" / "streaming"
NOW = dt.datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=dt.timezone.utc)


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(REPO, root)
    return root, dsl.compile_repo(root).plan


def test_events_become_one_complete_json_file(repo):
    root, plan = repo
    events = [{"user_id": "u1", "item_id": 3, "amount": 12, "category": "books",
               "event_time": "2026-03-01T13:30:00+01:00"},
              {"user_id": "u2", "amount": float("nan")}]
    path, n = push(plan, root, "user_spend", events, now=NOW)   # a view names its source
    assert n == 2 and path.parent == root / "data" / "purchases"
    assert [p.name for p in path.parent.iterdir()] == [path.name]    # no hidden leftovers
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [
        {"user_id": "u1", "item_id": 3, "amount": 12.0, "category": "books",
         "event_time": "2026-03-01T12:30:00.000000Z"},
        {"user_id": "u2", "item_id": None, "amount": "NaN", "category": None,
         "event_time": "2026-03-01T12:00:00.250000Z"}]     # the time defaults to now


@pytest.mark.parametrize("event, message", [
    ({"user_id": "u1", "amout": 1.0}, "unknown field 'amout'; did you mean 'amount'?"),
    ({"user_id": 7}, "field 'user_id' (string): 7 is not a string"),
    ({"user_id": "u", "item_id": 1.5}, "field 'item_id' (int64): 1.5 is not a whole number"),
    ({"user_id": "u", "item_id": True}, "True is not a whole number"),
    ({"user_id": "u", "event_time": "yesterday"}, "'yesterday' is not an ISO 8601 time"),
    ({"user_id": "u", "event_time": 1700000000}, "give ISO 8601"),
    ({"user_id": "u", "item_id": 2 ** 63}, "9223372036854775808 is outside int64"),
    ({"user_id": "u", "item_id": -2 ** 63 - 1}, "is outside int64"),
    ({"user_id": "u", "amount": "nan"}, "'nan' is not a number (NaN and the infinities"),
    ({"user_id": "u", "amount": "1.5"}, "'1.5' is not a number"),
])
def test_mistakes_are_refused_naming_the_field(repo, event, message):
    root, plan = repo
    with pytest.raises(PushError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("?", r"\?")):
        push(plan, root, "purchases", [event], now=NOW)
    assert not (root / "data" / "purchases").exists() or \
        not any((root / "data" / "purchases").iterdir())


def test_non_finite_floats_in_either_spelling_and_int64_bounds(repo):
    root, plan = repo
    events = [{"user_id": "u1", "item_id": 2 ** 63 - 1, "amount": "NaN"},
              {"user_id": "u2", "item_id": -2 ** 63, "amount": "Infinity"},
              {"user_id": "u3", "amount": "-Infinity"},
              {"user_id": "u4", "amount": float("nan")}]
    path, n = push(plan, root, "purchases", events, now=NOW)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["amount"] for line in lines] == ["NaN", "Infinity", "-Infinity", "NaN"]
    assert [line["item_id"] for line in lines] == [2 ** 63 - 1, -2 ** 63, None, None]
    text = "\n".join(json.dumps(e) for e in events)
    assert read_events(text)[0]["amount"] == "NaN"


def test_csv_files_spell_non_finite_floats_as_the_docs_say(repo):
    root, _ = repo
    feat = root / "features" / "streams.feat"
    feat.write_text(feat.read_text().replace('format json  # a folder', 'format csv  # a folder'))
    plan = dsl.compile_repo(root).plan
    path, _ = push(plan, root, "purchases", [{"user_id": "u1", "amount": "NaN"},
                                             {"user_id": "u2", "amount": float("-inf")},
                                             {"user_id": "u3", "amount": 0.5}], now=NOW)
    assert path.suffix == ".csv"
    assert [line.split(",")[2] for line in path.read_text().splitlines()] == \
        ["NaN", "-Infinity", "0.5"]


def test_only_files_streams_take_pushes(repo):
    root, plan = repo
    with pytest.raises(PushError, match="stream kafka source; push appends to `stream files`"):
        push(plan, root, "clicks", [{"user_id": "u"}])
    with pytest.raises(PushError, match="no source or view named 'click'"):
        push(plan, root, "click", [{"user_id": "u"}])


def test_events_read_as_an_object_an_array_or_json_lines():
    assert read_events('{"a": 1}') == [{"a": 1}]
    assert read_events('[{"a": 1}, {"a": 2}]') == [{"a": 1}, {"a": 2}]
    assert read_events('{"a": 1}\n\n{"a": 2}\n') == [{"a": 1}, {"a": 2}]
    for bad, message in (("", "no events"), ("[1]", "event 1 is not a JSON object"),
                         ("{oops", "not JSON")):
        with pytest.raises(PushError, match=message):
            read_events(bad)


def test_cli_push(repo, capsys):
    root, _ = repo
    assert cli(["push", "purchases", "--repo", str(root),
                "--json", '{"user_id": "u1", "amount": 2.5}']) == 0
    assert "pushed 1 event to data/purchases/push-" in capsys.readouterr().out
    assert cli(["push", "purchases", "--repo", str(root), "--json", '{"user": "u1"}']) == 1
    assert "unknown field 'user'; did you mean 'user_id'?" in capsys.readouterr().err
    events = root / "events.jsonl"
    events.write_text('{"user_id": "a"}\n{"user_id": "b"}\n')
    assert cli(["push", "user_spend", "--repo", str(root), "--file", str(events)]) == 0
    assert "pushed 2 events" in capsys.readouterr().out
    assert cli(["push", "purchases", "--repo", str(root)]) == 1


def test_cli_stream_without_stream_views_is_a_user_error(tmp_path, capsys):
    root = tmp_path / "batch"
    shutil.copytree(Path(__file__).parent.parent / "featurestore" / "templates" / "repo", root)
    assert cli(["stream", "--repo", str(root)]) == 1
    assert "the streaming job cannot run: no view reads a stream source" in capsys.readouterr().err
    assert not (root / ".featurestore" / "redis").exists()   # no Redis started for nothing
