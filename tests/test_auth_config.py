"""Tokens, settings and the protocol schemas."""

from __future__ import annotations

import time

import pytest

from shared.auth import TokenError, mint_token, verify_token
from shared.config import ConfigError, load_settings
from signaling.schemas import ProtocolError, parse_client_message
from stoa.cli import main

pytestmark = pytest.mark.unit  # the fast lane: no server, no browser (README)

KEY, SECRET = "k1", "s" * 40


def test_token_roundtrip_and_grants():
    token = mint_token(KEY, SECRET, room="r", identity="ada", role="instructor", name="Ada")
    g = verify_token(token, {KEY: SECRET}, room="r")
    assert (g.identity, g.room, g.role, g.name) == ("ada", "r", "instructor", "Ada")
    assert g.can_publish and g.can_subscribe and g.can_publish_data
    s = verify_token(mint_token(KEY, SECRET, room="r", identity="s", role="student"), {KEY: SECRET})
    assert not s.can_publish and s.can_publish_data
    v = verify_token(mint_token(KEY, SECRET, room="r", identity="v", role="viewer"), {KEY: SECRET})
    assert not v.can_publish and not v.can_publish_data
    allowed = mint_token(KEY, SECRET, room="r", identity="s", role="student", can_publish=True)
    assert verify_token(allowed, {KEY: SECRET}).can_publish


def test_token_failures_name_the_problem():
    token = mint_token(KEY, SECRET, room="r", identity="a", role="student")
    with pytest.raises(TokenError, match="room 'r', not 'q'"):
        verify_token(token, {KEY: SECRET}, room="q")
    with pytest.raises(TokenError, match="unknown or revoked"):
        verify_token(token, {"other": SECRET})
    with pytest.raises(TokenError, match="signature"):
        verify_token(token, {KEY: "t" * 40})
    old = mint_token(KEY, SECRET, room="r", identity="a", role="student", ttl=10, now=time.time() - 100)
    with pytest.raises(TokenError, match="expired"):
        verify_token(old, {KEY: SECRET})
    with pytest.raises(TokenError, match="not a valid JWT"):
        verify_token("x.y", {KEY: SECRET})
    star = mint_token(KEY, SECRET, room="*", identity="a", role="student")
    assert verify_token(star, {KEY: SECRET}).room == "*"  # fine where no room is asked for (dashboards)
    with pytest.raises(TokenError, match="'\\*' is not a room"):
        verify_token(star, {KEY: SECRET}, room="*")  # but it joins no room, not even one named "*"
    with pytest.raises(ValueError):
        mint_token(KEY, SECRET, room="r", identity="a", role="viewer", can_publish=True)


def test_settings_layering(tmp_path):
    cfg = tmp_path / "stoa.toml"
    cfg.write_text('port = 9000\nice_addresses = ["10.0.0.5"]\napi_secret = "' + "x" * 40 + '"\n')
    s = load_settings(str(cfg), environ={"STOA_PORT": "9100"}, overrides={"host": "127.0.0.1"})
    assert (s.port, s.host, s.ice_addresses, s.ice_servers) == (9100, "127.0.0.1", ["10.0.0.5"], [])
    env = load_settings(environ={"STOA_DEV": "1", "STOA_ICE_ADDRESSES": "127.0.0.1,::1"})
    assert env.ice_addresses == ["127.0.0.1", "::1"] and env.api_secret


def test_settings_errors_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="--dev"):
        load_settings(environ={})
    with pytest.raises(ConfigError, match="stun:"):
        load_settings(environ={"STOA_DEV": "1", "STOA_ICE_SERVERS": "http://x"})
    with pytest.raises(ConfigError, match="whole number"):
        load_settings(environ={"STOA_DEV": "1", "STOA_PORT": "eighty"})
    bad = tmp_path / "bad.toml"
    bad.write_text("colour = 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load_settings(str(bad), environ={})


def test_cli_token_and_help(capsys):
    assert main(["token", "--dev", "--room", "r", "--identity", "a", "--role", "student"]) == 0
    token = capsys.readouterr().out.strip()
    from shared.config import DEV_API_KEY, DEV_API_SECRET
    assert verify_token(token, {DEV_API_KEY: DEV_API_SECRET}).room == "r"
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "--ice-address" in capsys.readouterr().out
    assert main(["token", "--room", "r", "--identity", "a", "--role", "student"]) == 2
    assert "--dev" in capsys.readouterr().err


@pytest.mark.parametrize("raw, code", [
    (b"\xff\xfe", "bad_json"),
    ("{}", "invalid"),
    ('{"type": 3}', "invalid"),
    ('{"type": "ice", "target": "sideways", "candidate": {"candidate": ""}}', "invalid"),
    ('{"type": "join", "token": "t", "extra": 1}', "invalid"),
    ('{"type": "nope"}', "unknown_type"),
])
def test_schema_errors(raw, code):
    with pytest.raises(ProtocolError) as err:
        parse_client_message(raw)
    assert err.value.code == code and err.value.message


def test_schema_accepts_valid_messages():
    assert parse_client_message('{"type": "ping"}')["type"] == "ping"
    msg = parse_client_message('{"type": "publish", "sdp": "v=0", "tracks": [{"mid": "0", "source": "screen"}]}')
    assert msg["tracks"][0]["source"] == "screen"


def test_one_reader_of_the_authorization_header():
    import base64

    from shared.auth import basic_credentials, bearer_token

    good = "Basic " + base64.b64encode(b"key:se:cret").decode()
    assert basic_credentials(good) == ("key", "se:cret")
    assert basic_credentials("Bearer abc") is None and basic_credentials("") is None
    for bad in ("Basic key:secret", "Basic " + base64.b64encode(b"no-colon").decode()):
        with pytest.raises(TokenError, match="not base64 of key:secret"):
            basic_credentials(bad)
    assert bearer_token("Bearer  abc ") == "abc" and bearer_token("bearer x") == "x"
    assert bearer_token("Basic abc") == "" and bearer_token("") == ""
