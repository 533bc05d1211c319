"""Settings: defaults, then a TOML config file, then STOA_* environment variables, then CLI flags."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

DEV_API_KEY = "devkey"
DEV_API_SECRET = "devsecret-not-for-production-use-0123456789"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says which and what to do."""


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    dev: bool = False
    # Tokens are signed with api_secret; api_key names the key (JWT "iss").
    api_key: str = ""
    api_secret: str = ""
    # Extra API key/secret pairs for server-to-server calls: {"key": "secret"}.
    api_keys: dict[str, str] = field(default_factory=dict)
    # Local addresses ICE gathers on. Empty: every non-loopback interface (aioice's default).
    ice_addresses: list[str] = field(default_factory=list)
    # STUN/TURN URLs. Empty by default: Stoa never contacts an outside server unless told to.
    ice_servers: list[str] = field(default_factory=list)
    ice_username: str = ""
    ice_credential: str = ""
    # TURN REST API (coturn use-auth-secret): the shared secret, and how long minted credentials last (s).
    # Set, it replaces ice_username/ice_credential for turn: URLs; each client gets "<expiry>:<identity>".
    turn_secret: str = ""
    turn_ttl: int = 86400
    data_dir: str = "./data"
    # None: embedded SQLite in data_dir. Else postgresql://...
    database: str | None = None
    # None: one node with an in-process bus. Else redis://...
    redis: str | None = None
    # With redis: this node's name in the cluster (default host-port), the base URL clients reach it at
    # (redirects point there; default http://host:port), the key prefix of everything it keeps in Redis,
    # and how many participants it is meant to carry (placement compares shares of it; 0: counts).
    node_id: str = ""
    public_address: str = ""
    redis_prefix: str = "stoa:"
    node_capacity: int = 0
    # Serve a room's room-protocol students on the node they reach, as edge members (docs/scaling.md), even
    # before the home is at its node_capacity (when it always happens). Teachers always go to the home.
    spread_members: bool = False
    # The relay between nodes (docs/scaling.md): the UDP port media arrives on (0: any free port; set one
    # to open it in a firewall), and the key relay requests and datagrams are authenticated with (empty:
    # derived from api_secret, which the nodes share anyway).
    relay_port: int = 0
    cluster_secret: str = ""
    # A room's home relays it to at most this many edge nodes; further ones get it from those (a tree,
    # docs/scaling.md "Relay trees"). 0: every edge node from the home.
    relay_fanout: int = 0
    max_participants: int = 500
    # Media worker processes for viewers (docs/scaling.md). 0 or 1: everything in this process. None (unset):
    # `stoa serve` starts one per core; an app built by hand (tests) stays in-process.
    workers: int | None = None
    # Forwarding legs (track x subscriber) one media process takes before refusing joins; 0: no fixed
    # number, joins are refused only while the measured load says so (docs/scaling.md).
    capacity_legs: int = 0
    # Shed work and refuse joins while this process's event loop is behind (sfu/overload.py). Off, the lag
    # is still measured and exported; in-process test servers turn it off, their loop runs the clients too.
    overload_control: bool = True
    # Test/diagnostic endpoints (POST /debug/burn starves the loop on purpose). Never in production.
    debug_hooks: bool = False
    # Record every room from its first published track (a server-wide recording flag).
    record_all: bool = False
    # The room page publishes the camera in three simulcast layers (docs/simulcast.md); off: one stream.
    simulcast: bool = True
    # The room page publishes a screen share in three layers too (full size at 5 fps for large tiles, 1/2 and
    # 1/4 at 15 fps for small ones; docs/simulcast.md). Off: the screen is one stream. Needs `simulcast`.
    screen_simulcast: bool = False
    # Last-N (docs/simulcast.md): each viewer is sent the video of the N most recent speakers, its pinned
    # participants and every screen share; the others' tiles show an avatar. 9 fills a 3 x 3 grid, what a
    # laptop shows at a size where faces read, at a downlink a home connection carries. 0: every video.
    last_n: int = 9
    # Number the packets sent to viewers with the transport-wide sequence number and read the viewers'
    # transport-cc feedback (docs/simulcast.md): per-packet delay for the layer allocator's probes. Off
    # until the allocator judges by it; off, viewers get what they got before.
    downlink_transport_cc: bool = False
    log_level: str = "info"
    # Outgoing webhooks kept in step with the database at start-up: [{url, secret, events}] (TOML tables).
    webhooks: list[dict] = field(default_factory=list)
    # A tutoring request nobody accepts expires after this many seconds; expiry is checked this often.
    tutoring_ttl: int = 900
    tutoring_expire_interval: int = 15

    @property
    def database_url(self) -> str:
        if self.database:
            return self.database
        return "sqlite:///" + str(Path(self.data_dir) / "stoa.sqlite3")

    def all_api_keys(self) -> dict[str, str]:
        keys = dict(self.api_keys)
        if self.api_key and self.api_secret:
            keys[self.api_key] = self.api_secret
        return keys

    def validate(self) -> "Settings":
        if self.dev and not self.api_secret:
            self.api_key, self.api_secret = DEV_API_KEY, DEV_API_SECRET
        if not self.api_secret:
            raise ConfigError(
                "no API secret: set STOA_API_SECRET (and STOA_API_KEY), put api_secret in the "
                "config file, or run with --dev for a fixed development key"
            )
        if not self.api_key:
            self.api_key = "stoa"
        if len(self.api_secret) < 32:
            raise ConfigError("api_secret is too short: use at least 32 characters (HS256)")
        if not (0 < self.port < 65536):
            raise ConfigError(f"port {self.port} is out of range 1-65535")
        for url in self.ice_servers:
            if not url.startswith(("stun:", "turn:", "turns:")):
                raise ConfigError(f"ice server {url!r} must start with stun:, turn: or turns:")
        if self.turn_ttl <= 0:
            raise ConfigError("turn_ttl must be a positive number of seconds")
        if self.turn_secret and not any(u.startswith(("turn:", "turns:")) for u in self.ice_servers):
            raise ConfigError("turn_secret is set but ice_servers has no turn: or turns: URL to use it with")
        if self.database and not self.database.startswith(("postgresql://", "postgres://", "sqlite:///")):
            raise ConfigError("database must be a postgresql:// or sqlite:/// URL")
        for i, hook in enumerate(self.webhooks):
            if not isinstance(hook, dict) or not isinstance(hook.get("url"), str):
                raise ConfigError(f"webhooks[{i}] must be a table with a url (and optional secret, events)")
            unknown = set(hook) - {"url", "secret", "events"}
            if unknown:
                raise ConfigError(f"webhooks[{i}] has unknown keys {', '.join(sorted(unknown))}")
        if self.workers is not None and not 0 <= self.workers <= 64:
            raise ConfigError(f"workers must be between 0 and 64, got {self.workers}")
        if self.capacity_legs < 0:
            raise ConfigError("capacity_legs must be 0 (measured capacity only) or a positive number of legs")
        if not 0 <= self.last_n <= 1000:
            raise ConfigError(f"last_n must be 0 (every video) or a number of videos up to 1000, got {self.last_n}")
        if self.tutoring_ttl <= 0 or self.tutoring_expire_interval <= 0:
            raise ConfigError("tutoring_ttl and tutoring_expire_interval must be positive")
        if self.redis is not None and not self.redis.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("redis must be a redis://, rediss:// or unix:// URL")
        if self.public_address and not self.public_address.startswith(("http://", "https://")):
            raise ConfigError(f"public_address must be an http:// or https:// base URL, got {self.public_address!r}")
        if not 0 <= self.relay_port < 65536:
            raise ConfigError(f"relay_port {self.relay_port} is out of range 0-65535")
        if self.relay_fanout < 0:
            raise ConfigError("relay_fanout must be 0 (every edge node from the home) or a positive number")
        if self.node_capacity < 0:
            raise ConfigError("node_capacity must be 0 (compare participant counts) or a positive number")
        if not self.node_id:
            self.node_id = f"{os.uname().nodename}-{self.port}"
        if not self.public_address:
            self.public_address = f"http://{self.host}:{self.port}"
        self.public_address = self.public_address.rstrip("/")
        return self


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _coerce(name: str, value: Any) -> Any:
    kind = str(_FIELDS[name].type)
    if isinstance(value, str):
        if kind.startswith("bool"):
            return value.strip().lower() in ("1", "true", "yes", "on")
        if kind.startswith("int"):
            try:
                return int(value)
            except ValueError:
                raise ConfigError(f"{name} must be a whole number, got {value!r}") from None
        if kind.startswith("list"):
            return [v.strip() for v in value.split(",") if v.strip()]
        if kind.startswith("dict"):
            pairs = [p.split(":", 1) for p in value.split(",") if p.strip()]
            return {k.strip(): v.strip() for k, v in pairs}
    return value


def load_settings(
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    values: dict[str, Any] = {}
    environ = os.environ if environ is None else environ
    config_file = config_file or environ.get("STOA_CONFIG")
    if config_file:
        try:
            with open(config_file, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {config_file} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from None
        for key, value in data.items():
            key = key.replace("-", "_")
            if key not in _FIELDS:
                raise ConfigError(f"unknown setting {key!r} in {config_file}")
            values[key] = _coerce(key, value)
    for name in _FIELDS:
        env = environ.get("STOA_" + name.upper())
        if env is not None:
            values[name] = _coerce(name, env)
    for key, value in (overrides or {}).items():
        if value is not None and value != []:
            values[key] = value
    return Settings(**values).validate()
