"""`apply` writes the language's objects into Feast's registry, where Feast's
own API and CLI see them with their descriptions, owners and tags; `plan`
warns about changes that break readers."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from featurestore import config, repo
from featurestore.backends import feast_registry

EXAMPLES = Path(__file__).parent / "example_repos"


def _copy(name: str, tmp_path: Path) -> config.RepoConfig:
    shutil.copytree(EXAMPLES / name, tmp_path / name)
    return config.load(tmp_path / name)


def _apply(cfg: config.RepoConfig):
    return repo.apply(cfg, repo.require_plan(cfg), print)


@pytest.fixture(scope="module")
def language(tmp_path_factory):
    """The language example, applied once; tests only read it."""
    cfg = _copy("language", tmp_path_factory.mktemp("feast"))
    changes = _apply(cfg)
    return cfg, changes, feast_registry.open_store(cfg)


def test_apply_creates_every_definition(language):
    _, changes, _ = language
    assert ("entity", "user_item") in changes.create
    assert ("service", "campaigns:v2") in changes.create
    assert not changes.update and not changes.delete


def test_entities_carry_docs_and_composite_keys_become_one_entity_per_key(language):
    _, _, store = language
    user = store.get_entity("user")
    assert (user.join_key, user.owner, user.description) == ("user_id", "platform@example.com",
                                                              "A customer")
    assert user.tags["pii"] == "true"
    item = store.get_entity("user_item.item_id")
    assert item.join_key == "item_id" and item.tags["featurestore.object"] == "entity:user_item"
    view = store.get_feature_view("item_interest")
    assert sorted(view.entities) == ["user_item.item_id", "user_item.user_id"]


def test_views_and_services_carry_docs_types_and_windows(language):
    _, _, store = language
    orders = store.get_feature_view("user_orders")
    assert orders.owner == "marketing@example.com" and orders.tags["team"] == "marketing"
    revenue = next(f for f in orders.features if f.name == "revenue_30d")
    assert revenue.tags == {"featurestore.type": "float64", "featurestore.function": "sum",
                            "featurestore.window": "30d"}
    embedding = store.get_feature_view("user_embedding")
    assert embedding.description == "Embeddings from the nightly model"
    assert str(next(f.dtype for f in embedding.features if f.name == "embedding")) \
        == "Array(Float32)"
    v2 = store.get_feature_service("campaigns:v2")
    assert v2.description == "Adds embeddings and interest" and v2.tags["stage"] == "beta"
    assert v2.tags["featurestore.version"] == "2"


def test_a_second_plan_has_no_changes(language):
    cfg, _, store = language
    assert feast_registry.diff(repo.require_plan(cfg), store).empty


def test_feast_cli_lists_the_views(language):
    cfg, _, _ = language
    feast = [sys.executable, "-m", "feast.cli.cli", "-c", str(cfg.feast_dir)]
    p = subprocess.run([*feast, "feature-views", "list"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    for view in ("user_orders", "user_profile", "user_embedding", "item_interest"):
        assert view in p.stdout


def test_stream_views_are_stream_feature_views(tmp_path):
    cfg = _copy("streaming", tmp_path)
    _apply(cfg)
    store = feast_registry.open_store(cfg)
    spend = store.get_stream_feature_view("user_spend")
    assert spend.tags["team"] == "risk" and spend.description.startswith("What a user")
    clicks = store.get_data_source("clicks")
    assert type(clicks).__name__ == "KafkaSource" and clicks.kafka_options.topic == "clicks"
    assert clicks.tags["featurestore.lateness"] == "30s"
    assert store.get_feature_service("fraud:v2").owner == "risk@example.com"
    # the batch stand-ins of stream sources are no definitions of their own
    assert feast_registry.diff(repo.require_plan(cfg), store).empty


def test_plan_warns_about_breaking_changes(tmp_path):
    cfg = _copy("streaming", tmp_path)
    _apply(cfg)
    feat = cfg.root / "features" / "streams.feat"
    text = feat.read_text()
    text = re.sub(r"(max_1d +=.*over) 1d", r"\1 7d", text)
    text = text.replace("last_category = category", "last_category = length(category)")
    text = re.sub(r"\n *checkout_clicks_1h = .*", "", text)
    text = text.replace("    user_clicks.checkout_clicks_1h,\n", "")
    feat.write_text(text)
    changes = repo.apply(cfg, repo.require_plan(cfg), print, dry_run=True)
    assert changes.update == [("view", "user_clicks"), ("view", "user_spend"),
                              ("service", "fraud:v2")]
    warnings = "\n".join(changes.warnings)
    assert "user_spend.max_1d changes window from 1d to 1w" in warnings
    assert "user_spend.last_category changes type from string to int64" in warnings
    assert ("service fraud:v2 serves user_clicks.checkout_clicks_1h, but "
            "user_clicks.checkout_clicks_1h is removed") in warnings
    assert "`service fraud v3`" in warnings
    assert "warning: breaking:" in changes.render()


def test_apply_deletes_what_the_repo_no_longer_defines(tmp_path):
    cfg = _copy("streaming", tmp_path)
    _apply(cfg)
    feat = cfg.root / "features" / "streams.feat"
    text = feat.read_text()
    text = text[:text.index("view load_test")] + text[text.index("service fraud v1"):]
    feat.write_text(text[:text.index("source synthetic")] + text[text.index("view user_spend"):])
    changes = _apply(cfg)
    assert ("view", "load_test") in changes.delete and ("source", "synthetic") in changes.delete
    store = feast_registry.open_store(cfg)
    names = {s.name for s in store.list_data_sources()}
    assert "synthetic" not in names and "synthetic.batch" not in names
    assert "clicks.batch" in names
