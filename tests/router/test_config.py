"""The router's settings from the environment: defaults, values, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.config import ConfigError, RouterConfig


def test_it_uses_heroku_like_defaults() -> None:
    config = RouterConfig.from_env({"PAAS_DATA_DIR": "/srv/paas"})
    assert config.bind == ("0.0.0.0", 8080) and config.tls_bind is None
    assert (config.connect_timeout, config.first_byte_timeout, config.idle_timeout) == (5.0, 30.0, 55.0)
    assert config.domain == "localhost"
    assert config.certs_dir == Path("/srv/paas/router/certs")
    assert config.fast_path is True


def test_it_reads_every_setting() -> None:
    config = RouterConfig.from_env({
        "PAAS_ROUTER_BIND": "127.0.0.1:9000", "PAAS_ROUTER_TLS_BIND": "[::1]:9443",
        "PAAS_ROUTER_WORKERS": "3", "REDIS_URL": "redis://r:1/2", "PAAS_DOMAIN": "Apps.Example.com.",
        "PAAS_ROUTER_CONNECT_TIMEOUT": "0.5", "PAAS_ROUTER_FIRST_BYTE_TIMEOUT": "2",
        "PAAS_ROUTER_IDLE_TIMEOUT": "3", "PAAS_ROUTER_HEADER_TIMEOUT": "4", "PAAS_ROUTER_DRAIN_TIMEOUT": "6",
        "PAAS_ROUTER_SET_ASIDE": "7", "PAAS_ROUTER_MAX_HEADER_BYTES": "2048", "PAAS_ROUTER_MAX_HEADERS": "20",
        "PAAS_ROUTER_FLUSH_INTERVAL": "0.25", "PAAS_ROUTER_LOG_MAXLEN": "500", "PAAS_ROUTER_FAST_PATH": "off",
    })
    assert config.bind == ("127.0.0.1", 9000) and config.tls_bind == ("::1", 9443)
    assert config.workers == 3 and config.redis_url == "redis://r:1/2" and config.domain == "apps.example.com"
    assert (config.connect_timeout, config.first_byte_timeout, config.idle_timeout) == (0.5, 2.0, 3.0)
    assert (config.header_timeout, config.drain_timeout, config.set_aside) == (4.0, 6.0, 7.0)
    assert (config.max_header_bytes, config.max_headers) == (2048, 20)
    assert (config.flush_interval, config.log_stream_maxlen) == (0.25, 500)
    assert config.fast_path is False


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PAAS_ROUTER_BIND", "8080", "PAAS_ROUTER_BIND must look like host:port, not '8080'"),
        ("PAAS_ROUTER_BIND", "0.0.0.0:http", "PAAS_ROUTER_BIND must end with a port number"),
        ("PAAS_ROUTER_BIND", "0.0.0.0:70000", "PAAS_ROUTER_BIND has a port out of range"),
        ("PAAS_ROUTER_WORKERS", "0", "PAAS_ROUTER_WORKERS must be at least 1, not 0"),
        ("PAAS_ROUTER_IDLE_TIMEOUT", "soon", "PAAS_ROUTER_IDLE_TIMEOUT must be a number of seconds, not 'soon'"),
        ("PAAS_ROUTER_CONNECT_TIMEOUT", "0", "PAAS_ROUTER_CONNECT_TIMEOUT must be more than 0 seconds"),
        ("PAAS_DOMAIN", "...", "PAAS_DOMAIN must be a domain name"),
        ("PAAS_ROUTER_FAST_PATH", "maybe", "PAAS_ROUTER_FAST_PATH must be 1 or 0 (true or false), not 'maybe'"),
    ],
)
def test_it_refuses_a_bad_value_naming_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        RouterConfig.from_env({name: value})
    assert message in str(refused.value)
