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
