"""featurestore.yaml: typed sections, unknown keys refused at file:line with
the closest key, ${ENV} expansion, and `featurestore config`."""
from __future__ import annotations

import pytest

from featurestore import config
from featurestore.cli import main as cli
from featurestore.errors import ConfigError
from serving.server import ServerOptions


def _repo(tmp_path, text: str):
    (tmp_path / "featurestore.yaml").write_text(text)
    return tmp_path


@pytest.mark.parametrize("text, message", [
    ("project: shop\nonlinestore:\n  url: redis://x:1/0\n",
     "featurestore.yaml:2:1: onlinestore: unknown setting; did you mean 'online_store'?"),
    ("project: shop\nserving:\n  port: 7000\n  api_key: secret\n",
     "featurestore.yaml:4:3: serving.api_key: unknown setting; did you mean 'api_keys'?"),
    ("serving:\n  hots: 0.0.0.0\n",
     "featurestore.yaml:2:3: serving.hots: unknown setting; did you mean 'host'?"),
    ("batch:\n  zzz: 1\n",
     "featurestore.yaml:2:3: batch.zzz: unknown setting; known keys: memory_limit"),
    ("serving:\n  port: lots\n",
     "featurestore.yaml:2:9: serving.port: Input should be a valid integer"),
    ("serving:\n  workers: 0\n",
     "featurestore.yaml:2:12: serving.workers: Input should be greater than or equal to 1"),
    ("serving:\n  api_keys: secret\n",
     "featurestore.yaml:2:13: serving.api_keys: Value error, must be a list of keys"),
    ("project: my-shop\n", "featurestore.yaml:1:10: project: project 'my-shop' must be"),
    ("serving:\n  tls_cert: a.pem\n", "serving: tls_cert and tls_key go together"),
    ("online_store:\n  url: ${NO_SUCH_VARIABLE_HERE}\n",
     "featurestore.yaml:2:8: online_store.url: environment variable NO_SUCH_VARIABLE_HERE "
     "is not set"),
    ("serving: [1, 2]\n", "featurestore.yaml:1:10: serving: Input should be a valid"),
    ("project: [\n", "featurestore.yaml is not valid YAML"),
])
def test_mistakes_are_named_at_their_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        config.load(_repo(tmp_path, text))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_a_typo_is_one_line_from_the_cli(tmp_path, capsys):
    root = _repo(tmp_path, "project: shop\nonlinestore:\n  url: redis://x:1/0\n")
    assert cli(["config", "--repo", str(root)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'online_store'?" in err
    assert "Traceback" not in err


def test_environment_expansion_and_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOP_REDIS", "redis://cache:6380/2")
    monkeypatch.delenv("SHOP_PORT", raising=False)
    root = _repo(tmp_path, "project: shop\nonline_store:\n  url: ${SHOP_REDIS}\n"
                           "serving:\n  port: ${SHOP_PORT:-7001}\n  host: h-${SHOP_HOST:-a}-b\n")
    cfg = config.load(root)
    assert (cfg.redis_target.url, cfg.serving.port, cfg.serving.host) == \
        ("redis://cache:6380/2", 7001, "h-a-b")
    monkeypatch.setenv("FEATURESTORE_SERVING_PORT", "7002")
    monkeypatch.setenv("FEATURESTORE_API_KEYS", "k1,k2")
    cfg = config.load(root)
    assert (cfg.serving.port, cfg.serving.api_keys) == (7002, ("k1", "k2"))
    monkeypatch.setenv("FEATURESTORE_SERVING_PORT", "x")
    with pytest.raises(ConfigError, match=r"serving.port: .* \(from FEATURESTORE_SERVING_PORT\)"):
        config.load(root)


def test_defaults_are_the_servers(tmp_path):
    cfg = config.load(_repo(tmp_path, "project: shop\nonline_store:\n  # url: unset\n"))
    assert cfg.project == "shop" and cfg.redis_target is None
    assert ServerOptions.from_config(cfg) == ServerOptions()
    cfg = config.load(_repo(tmp_path, "serving:\n  max_entities: 5\n  reload_interval: 0.5\n"
                                      "  tls_cert: c.pem\n  tls_key: k.pem\n"))
    options = ServerOptions.from_config(cfg, metrics_port=0)
    assert (options.max_entities, options.reload_interval, options.metrics_port) == (5, 0.5, 0)
    assert options.tls_cert == str(tmp_path / "c.pem")
    assert cfg.project == tmp_path.name


def test_config_prints_the_effective_settings_with_secrets_masked(tmp_path, monkeypatch,
                                                                  capsys):
    monkeypatch.setenv("FEATURESTORE_API_KEYS", "topsecret1,topsecret2")
    root = _repo(tmp_path, "project: shop\nonline_store:\n"
                           "  url: redis://app:hunter2@cache:6379/0\nserving:\n  port: 7000\n")
    assert cli(["config", "--repo", str(root)]) == 0
    out = capsys.readouterr().out
    assert "topsecret" not in out and "hunter2" not in out
    assert "url: redis://app:***@cache:6379/0" in out
    assert "- '***'" in out and "port: 7000" in out
    assert "max_entities: 10000" in out and "project: shop" in out


@pytest.mark.parametrize("text, message", [
    ("online_store:\n  type: redis_clustr\n",
     "featurestore.yaml:2:9: online_store.type: Input should be 'redis', 'redis_cluster' or "
     "'redis_sentinel'"),
    ("online_store:\n  type: redis_cluster\n",
     "featurestore.yaml:2:9: online_store.type: redis_cluster needs connection_string"),
    ("online_store:\n  type: redis_sentinel\n  url: redis://h:1\n",
     "featurestore.yaml:3:8: online_store.url: redis_sentinel needs connection_string"),
    ("online_store:\n  type: redis_cluster\n  connection_string: \"h1:7000,h2\"\n",
     "featurestore.yaml:3:22: online_store.connection_string: 'h2' is not host:port"),
    ("online_store:\n  connection_string: h1:7000,ssl=yes,password=hunter2\n",
     "online_store.connection_string: ssl must be true or false"),
    ("online_store:\n  connection_string: h1:7000,timeout=1\n",
     "unknown connection_string parameter 'timeout'; known: password, username, ssl, db"),
    ("online_store:\n  connection_string: h1:7000,h2:7001\n",
     "online_store.connection_string: type redis takes one host:port"),
    ("online_store:\n  url: redis://h:1/0\n  connection_string: h:1\n",
     "give url or connection_string, not both"),
    ("online_store:\n  type: redis_cluster\n  url: redis://h:1/2\n",
     "Redis Cluster has only database 0"),
    ("online_store:\n  url: http://h:1\n", "online_store.url: a Redis URL starts with redis://"),
    ("online_store:\n  type: redis_cluster\n  redis_type: redis_sentinel\n  password: x\n",
     "featurestore.yaml:3:3: online_store.redis_type: type 'redis_cluster' and redis_type "
     "'redis_sentinel' disagree"),
])
def test_online_store_mistakes_are_named_at_their_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        config.load(_repo(tmp_path, text))
    assert message in str(e.value)
    assert "hunter2" not in str(e.value)


def test_online_store_kinds_as_feast_spells_them(tmp_path, monkeypatch, capsys):
    cfg = config.load(_repo(tmp_path, "online_store:\n  type: redis\n  redis_type: redis_cluster\n"
                                      "  connection_string: \"a:7000, b:7001,ssl=true,"
                                      "password=hunter2\"\n"))
    t = cfg.redis_target
    assert (t.kind, t.nodes, dict(t.options)) == (
        "redis_cluster", (("a", 7000), ("b", 7001)), {"ssl": True, "password": "hunter2"})
    assert "hunter2" not in t.describe()
    cfg = config.load(_repo(tmp_path, "online_store:\n  type: redis_sentinel\n"
                                      "  connection_string: s1:26379,s2:26379,db=2\n"))
    t = cfg.redis_target
    assert (t.kind, t.nodes, t.master, dict(t.options)) == (
        "redis_sentinel", (("s1", 26379), ("s2", 26379)), "mymaster", {"db": 2})
    t = config.load(_repo(tmp_path, "online_store:\n  type: redis_cluster\n"
                                    "  url: rediss://u:p@c:7000\n")).redis_target
    assert (t.nodes, dict(t.options)) == ((("c", 7000),), {"ssl": True, "username": "u",
                                                            "password": "p"})
    assert config.load(_repo(tmp_path, "online_store:\n  url: redis://h:1/3\n")
                       ).redis_target.url == "redis://h:1/3"
    # the variable names the whole address: a file's connection_string gives way
    monkeypatch.setenv("FEATURESTORE_REDIS_URL", "redis://other:6379/0")
    _repo(tmp_path, "online_store:\n  connection_string: \"h:1,password=hunter2\"\n")
    assert config.load(tmp_path).redis_target.url == "redis://other:6379/0"
    monkeypatch.delenv("FEATURESTORE_REDIS_URL")
    assert cli(["config", "--repo", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "password=***" in out
