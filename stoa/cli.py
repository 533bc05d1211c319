"""The `stoa` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time

from shared.config import ConfigError, Settings, load_settings
from shared.roles import ROLES
from stoa import __version__

EPILOG = """\
Settings come from (later wins): defaults, a TOML file (--config or STOA_CONFIG), STOA_* environment
variables (STOA_PORT, STOA_API_SECRET, STOA_ICE_ADDRESSES=a,b, STOA_DATABASE, STOA_REDIS, ...), flags.
Examples:
  stoa serve --dev                                   try it on http://127.0.0.1:8080/
  stoa serve --host 0.0.0.0 --ice-address 192.0.2.10 --ice-server stun:stun.example.org:3478
  stoa token --room physics --identity ada --role instructor
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file (keys as in shared.config.Settings)")
    p.add_argument("--dev", action="store_true", default=None,
                   help="use a fixed development API key/secret (printed at start-up); not for production")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stoa", description="Stoa live-classroom media server",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"stoa {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the server", epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(serve)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="HTTP port (default 8080)")
    serve.add_argument("--ice-address", action="append", dest="ice_addresses", default=[], metavar="ADDR",
                       help="local address ICE gathers candidates on (repeatable); loopback only when named")
    serve.add_argument("--ice-server", action="append", dest="ice_servers", default=[], metavar="URL",
                       help="STUN/TURN server URL (repeatable); none by default")
    serve.add_argument("--data-dir", help="where the embedded database and recordings live (default ./data)")
    serve.add_argument("--database", help="postgresql://... (default: embedded SQLite in --data-dir)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--workers", type=int, metavar="N",
                       help="media worker processes for viewers (default: one per core; 0 or 1: all in one "
                            "process; see docs/scaling.md)")
    serve.add_argument("--redis", metavar="URL",
                       help="redis://... : join the nodes sharing this Redis as one service (docs/scaling.md)")
    serve.add_argument("--node-id", metavar="ID", help="this node's name in the cluster (default host-port)")
    serve.add_argument("--public-address", metavar="URL",
                       help="base URL clients reach this node at, for redirects (default http://host:port)")
    serve.add_argument("--record", action="store_true", dest="record_all", default=None,
                       help="record every room from its first published track (see docs/recording.md)")

    token = sub.add_parser("token", help="print an access token (JWT) for a room")
    _common(token)
    token.add_argument("--room", required=True)
    token.add_argument("--identity", required=True, help="unique user id, e.g. the LMS user id")
    token.add_argument("--name", default="", help="display name")
    token.add_argument("--role", required=True, choices=ROLES,
                       help="operator: reviews every recording (use --room '*')")
    token.add_argument("--ttl", type=int, default=6 * 3600, help="lifetime in seconds (default 6 h)")
    token.add_argument("--can-publish", action="store_true", default=None,
                       help="let a student publish (instructors and moderators always may)")

    db = sub.add_parser("db", help="database maintenance")
    _common(db)
    db.add_argument("action", choices=["upgrade", "status"])
    db.add_argument("--database", help="postgresql://... (default: embedded SQLite)")
    db.add_argument("--data-dir")
    _recording_parser(sub)
    _drain_parser(sub)
    _apikey_parser(sub)
    _quiz_parser(sub)
    _loadtest_parser(sub)
    return parser


LOADTEST_EPILOG = """\
Each viewer POSTs a WHEP offer (real ICE and DTLS, so the server does all its real work) and counts the RTP
it receives; --cheap viewers read only the clear RTP header at the socket (no SRTP decryption, no NACKs or
receiver reports), so one client process carries ~100 of them. Tokens are minted with --api-key/--api-secret
(or the server's own settings: --config, STOA_API_KEY/STOA_API_SECRET, --dev), or taken from --token, one per
peer (an identity that joins twice replaces its first session). A 503 is counted as refused, with the
server's message. Exit status: 0 when every admitted viewer got media, 1 otherwise, 2 on bad arguments.
Examples:
  stoa loadtest --dev --url http://127.0.0.1:8080 --room lecture --viewers 200 --publishers 1 --cheap
  stoa loadtest --url https://stoa.example.org --room physics --viewers 50 --api-key K --api-secret S
"""


def _loadtest_parser(sub) -> None:
    lt = sub.add_parser("loadtest", help="load-test a server: N WHEP viewers, optional synthetic WHIP publishers",
                        epilog=LOADTEST_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(lt)
    lt.add_argument("--url", required=True, help="the server's base URL, e.g. http://127.0.0.1:8080")
    lt.add_argument("--room", required=True)
    lt.add_argument("--viewers", type=int, required=True, metavar="N", help="WHEP viewers to start")
    lt.add_argument("--publishers", type=int, default=0, metavar="P",
                    help="WHIP publishers of synthetic 640x480 30 fps VP8 at ~1.5 Mbps + Opus (default 0: "
                         "watch what the room already publishes)")
    lt.add_argument("--publisher-video", choices=("loop", "live"), default="loop",
                    help="loop: VP8 encoded once at start and sent as a loop, a keyframe every second (default; "
                         "no encoding CPU beside the server); live: encoded frame by frame, a PLI gets a keyframe")
    lt.add_argument("--duration", type=float, default=30.0, metavar="S",
                    help="seconds measured once every viewer has joined (default 30)")
    lt.add_argument("--join-rate", type=float, default=20.0, metavar="R",
                    help="viewers started per second (default 20; 0: all at once)")
    lt.add_argument("--cheap", action="store_true", help="viewers count RTP headers at the socket, without "
                                                         "decrypting (many more viewers per client process)")
    lt.add_argument("--client-rx", choices=("drain", "tap"), default="drain",
                    help="how cheap viewers read their sockets: in batches from one timer (default), or one "
                         "loop wake-up per datagram (uvloop)")
    lt.add_argument("--processes", type=int, default=0, metavar="K",
                    help="client processes the viewers are spread over (default: from N)")
    lt.add_argument("--token", action="append", default=[], metavar="T",
                    help="a token to use (repeatable, one per peer: publishers first, then viewers)")
    lt.add_argument("--api-key", help="mint tokens with this API key (with --api-secret)")
    lt.add_argument("--api-secret", help="the API key's secret")
    lt.add_argument("--per-viewer", action="store_true", help="print one line per viewer (default for N <= 20)")
    lt.add_argument("--json", metavar="FILE", help="also write the whole report as JSON")


DRAIN_EPILOG = """\
The node stops taking new joins (its /readyz answers 503, so a load balancer stops sending it any). With
Redis, each room it hosts gets a new home on another node: room pages there are sent to it (`redirect`;
the page moves by itself), WHIP and WHEP sessions end so their clients POST again and land elsewhere. A
room no other node takes (one node alone) goes on until its participants leave. The node exits when
nobody is left, or at --deadline; its shutdown finalizes the recordings and disconnects whoever stayed.
Progress is printed every second. Calling it again only brings the deadline closer.
Exit status: 0 when the node exited, 1 when it was still up 30 s after the deadline, 2 when the drain was
refused (wrong key, no such node).
Examples:
  stoa drain --dev --url http://127.0.0.1:8080                 drain a development server (60 s deadline)
  stoa drain --url https://node-a.example.org --api-key K --api-secret S --deadline 600
"""


def _drain_parser(sub) -> None:
    dr = sub.add_parser("drain", help="drain a running node: no new joins, participants moved, exit when empty",
                        description="Drain a running node through its admin API (POST /api/node/drain with an "
                                    "API key), then follow it until it exits.",
                        epilog=DRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(dr)
    dr.add_argument("--url", help="the node's base URL (default: http://host:port from the settings)")
    dr.add_argument("--deadline", type=float, default=60.0, metavar="S",
                    help="exit at the latest this many seconds from now, whoever is left (default 60)")
    dr.add_argument("--api-key", help="an API key (admin); default: the settings' (--config, STOA_API_KEY, --dev)")
    dr.add_argument("--api-secret", help="the API key's secret")


def _quiz_parser(sub) -> None:
    quiz = sub.add_parser("quiz", help="quiz question banks: import FILE")
    actions = quiz.add_subparsers(dest="action", metavar="ACTION", required=True)
    imp = actions.add_parser("import", help="import a JSON bank (see docs/interactive.md)")
    imp.add_argument("file")
    _common(imp)
    imp.add_argument("--database", help="postgresql://... (default: embedded SQLite in --data-dir)")
    imp.add_argument("--data-dir")


def _apikey_parser(sub) -> None:
    keys = sub.add_parser("apikey", help="API keys for server-to-server calls (admin): create, revoke, list")
    _common(keys)
    keys.add_argument("--database", help="postgresql://... (default: embedded SQLite in --data-dir)")
    keys.add_argument("--data-dir")
    actions = keys.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="create a key; its secret is printed once")
    create.add_argument("key", nargs="?", help="the key's name (default: generated)")
    revoke = actions.add_parser("revoke", help="revoke a key (also one from the config file)")
    revoke.add_argument("key")
    actions.add_parser("list", help="keys with their dates, without secrets")


def _recording_parser(sub) -> None:
    rec = sub.add_parser("recording", help="list recordings, export a composite MP4")
    _common(rec)
    rec.add_argument("--database", help="postgresql://... (default: embedded SQLite in --data-dir)")
    rec.add_argument("--data-dir")
    actions = rec.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = actions.add_parser("list", help="recordings, newest first")
    ls.add_argument("--room")
    ls.add_argument("--date", help="UTC day, YYYY-MM-DD")
    ls.add_argument("--instructor")
    ex = actions.add_parser("export", help="compose one MP4 (H.264 + AAC) from a recording's tracks")
    ex.add_argument("id", help="recording id (see `stoa recording list`)")
    ex.add_argument("--layout", choices=["grid", "speaker"], default="grid")


def _settings(args, **overrides) -> Settings:
    return load_settings(args.config, overrides={"dev": args.dev, **overrides})


DATABASE_HINT = "is it running, and is --database (or STOA_DATABASE) right?"


def _database_problem(exc: Exception, url: str = "") -> str:
    """One line for a database Stoa cannot use (a storage.StorageError or the OSError of an unreachable
    server at `url`): what is wrong and what to do."""
    from storage import ConfigError as DatabaseUrlError
    from storage import SchemaError
    from storage.store import safe_url

    if isinstance(exc, SchemaError):
        # "behind"/"empty" already end in "run `stoa db upgrade`"; "ahead" in "upgrade Stoa".
        if exc.status is not None and exc.status.state == "ahead":
            return f"{exc}, or point --database (or STOA_DATABASE) at another database"
        return str(exc)
    if isinstance(exc, DatabaseUrlError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f" {safe_url(url)}" if url else ""
        return f"cannot reach the database{where}: {exc}; {DATABASE_HINT}"
    return f"{exc}; {DATABASE_HINT}"  # "cannot open database postgresql://...: ..."


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "token":
            return _token(args)
        if args.command == "db":
            return _db(args)
        if args.command == "recording":
            return _recording(args)
        if args.command == "apikey":
            return _apikey(args)
        if args.command == "quiz":
            return _quiz(args)
        if args.command == "loadtest":
            return _loadtest(args)
        if args.command == "drain":
            return _drain(args)
    except ConfigError as exc:
        print(f"stoa: configuration error: {exc}", file=sys.stderr)
        return 2
    return 2


def _serve(args) -> int:
    from aiohttp import web

    from signaling.routing import ClusterError
    from stoa.app import build_app
    from storage import StorageError

    settings = _settings(args, host=args.host, port=args.port, ice_addresses=args.ice_addresses,
                         ice_servers=args.ice_servers, data_dir=args.data_dir, database=args.database,
                         log_level=args.log_level, record_all=args.record_all, workers=args.workers,
                         redis=args.redis, node_id=args.node_id, public_address=args.public_address)
    if settings.workers is None:
        import os
        settings.workers = os.cpu_count() or 1
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("aioice", "aiortc", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        import uvloop  # cheaper datagram receive (see docs/forwarding.md)
        uvloop.install()
    except ImportError:
        pass
    app = build_app(settings)

    async def freeze_startup_objects(app) -> None:
        # Everything built at start-up lives until shutdown: keep the collector from rescanning it,
        # which takes tens of ms in big rooms and shows up as latency spikes.
        import gc
        gc.freeze()

    async def announce(app) -> None:
        # After the database and the services opened: a database Stoa cannot use stops us before this.
        url = f"http://{settings.host}:{settings.port}/"
        print(f"Stoa listening on {url}", flush=True)
        if settings.dev:
            print(f"  development mode: API key {settings.api_key!r}, secret {settings.api_secret!r}")
            print(f"  open {url} to create a room and join it in two tabs")
        if not settings.ice_servers:
            print("  ICE: no STUN/TURN servers configured (host candidates only)")
        workers = settings.workers if settings.workers >= 2 else 0
        print(f"  media: {workers} worker process(es) for viewers" if workers else
              "  media: viewers in the main process (--workers 0/1)")
        if settings.redis:
            print(f"  cluster: node {settings.node_id!r} at {settings.public_address}, registered in Redis")

    from shared.appkeys import DRAIN
    app[DRAIN].exit = lambda: signal.raise_signal(signal.SIGTERM)  # drained: the usual shutdown follows
    app.on_startup.append(freeze_startup_objects)
    app.on_startup.append(announce)
    try:
        web.run_app(app, host=settings.host, port=settings.port, print=None, access_log=None)
    except StorageError as exc:  # raised by the store's start-up hook: schema mismatch, unreachable server
        print(f"stoa serve: {_database_problem(exc)}", file=sys.stderr)
        return 2
    except ClusterError as exc:
        print(f"stoa serve: {exc}", file=sys.stderr)
        return 2
    return 0


def _token(args) -> int:
    from shared.auth import mint_token

    settings = _settings(args)
    try:
        token = mint_token(settings.api_key, settings.api_secret, room=args.room, identity=args.identity,
                           role=args.role, name=args.name, ttl=args.ttl, can_publish=args.can_publish)
    except ValueError as exc:
        print(f"stoa token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def _with_store(args, command: str, work, *, check: bool = True, upgrade_sqlite: bool = False) -> int:
    """Open the configured database, run `await work(store, settings)`, close it; errors say what to do."""
    from pathlib import Path

    from storage import StorageError, open_store

    settings = load_settings(args.config, overrides={"dev": True, "database": args.database,
                                                     "data_dir": args.data_dir})

    async def run() -> int:
        if not settings.database:
            Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        try:
            store = await open_store(settings.database_url, check=check,
                                     auto_upgrade=upgrade_sqlite and not settings.database)
        except StorageError as exc:
            print(f"stoa {command}: {_database_problem(exc)}", file=sys.stderr)
            return 2
        try:
            return await work(store, settings)
        except (OSError, StorageError) as exc:
            # The server went away, or was never there (check=False skips open_store's probe).
            print(f"stoa {command}: {_database_problem(exc, settings.database_url)}", file=sys.stderr)
            return 2
        finally:
            await store.close()

    return asyncio.run(run())


def _db(args) -> int:
    """`db status` prints the schema's state (exit 0 when at this Stoa's revision, else 1); `db upgrade` applies
    pending migrations and prints the new state, and refuses (exit 2) a database newer than this Stoa."""
    from storage import SchemaError

    async def work(store, settings) -> int:
        status = await store.schema_status()
        if args.action == "upgrade":
            if status.state == "ahead":
                print(f"stoa db upgrade: {_database_problem(SchemaError(status.message, status))}",
                      file=sys.stderr)
                return 2
            status = await store.upgrade()
        print(status.message)
        return 0 if status.ok else 1

    return _with_store(args, f"db {args.action}", work, check=False)


def _recording(args) -> int:
    from datetime import datetime, timedelta, timezone

    from recorder.service import RecordingError, export_offline
    from storage.recordings import RecordingRepo

    def progress(fraction: float) -> None:
        bar = "#" * int(fraction * 30)
        print(f"\r[{bar:<30}] {fraction * 100:5.1f}%", end="", file=sys.stderr, flush=True)

    async def work(store, settings) -> int:
        if args.action == "export":
            try:
                result = await export_offline(store, args.id, args.layout, progress)
            except RecordingError as exc:
                print(f"stoa recording export: {exc.message}", file=sys.stderr)
                return 1
            print(file=sys.stderr)
            print(f"{result['path']} ({result['duration']:.1f} s, {result['video_frames']} frames, "
                  f"layout {result['layout']})")
            return 0
        day = None
        if args.date:
            try:
                start = datetime.strptime(args.date, "%Y-%m-%d").replace(tzinfo=timezone.utc)
            except ValueError:
                print(f"stoa recording list: --date must look like 2026-01-31, got {args.date!r}",
                      file=sys.stderr)
                return 2
            day = (start.timestamp(), (start + timedelta(days=1)).timestamp())
        rows = await RecordingRepo(store).list(room=args.room, day=day, instructor=args.instructor)
        for r in rows:
            when = datetime.fromtimestamp(r.started_at, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")
            print(f"{r.id}  {r.room:<20} {when}  {r.duration_s or 0:8.1f} s  {r.status:<10} "
                  f"{len(r.files or [])} files  {r.instructor or ''}")
        if not rows:
            print("no recordings", file=sys.stderr)
        return 0

    return _with_store(args, "recording", work)


def _apikey(args) -> int:
    from classroom.errors import ClassroomError
    from signaling.api.identity import KeyRing

    async def work(store, settings) -> int:
        ring = KeyRing(settings, store)
        try:
            if args.action == "create":
                key, secret = await ring.create(args.key)
                print(f"key    {key}\nsecret {secret}\n(the secret is not shown again)")
            elif args.action == "revoke":
                await ring.revoke(args.key)
                print(f"revoked {args.key}")
            else:
                for row in await ring.list():
                    state = "revoked" if row["revoked_at"] else "active"
                    print(f"{row['key']}\t{state}\t{row['source']}")
        except ClassroomError as exc:
            print(f"stoa apikey: {exc.message}", file=sys.stderr)
            return 1
        return 0

    return _with_store(args, "apikey", work, upgrade_sqlite=True)


def _quiz(args) -> int:
    from classroom.interactive import QuizBankError, import_bank

    async def work(store, settings) -> int:
        try:
            result = await import_bank(store, args.file)
        except QuizBankError as exc:
            print(f"stoa quiz import: {exc}", file=sys.stderr)
            return 1
        print(f"imported {result['count']} questions into bank {result['bank']!r}")
        return 0

    return _with_store(args, "quiz import", work, upgrade_sqlite=True)


def _drain(args) -> int:
    import aiohttp

    def fail(message: str, status: int = 2) -> int:
        print(f"stoa drain: {message}", file=sys.stderr)
        return status

    if not 0 <= args.deadline <= 86400:
        return fail("--deadline must be between 0 and 86400 seconds")
    if bool(args.api_key) != bool(args.api_secret):
        return fail("--api-key and --api-secret go together")
    settings = _settings(args)
    key, secret = (args.api_key, args.api_secret) if args.api_key else (settings.api_key, settings.api_secret)
    url = (args.url or f"http://{settings.host}:{settings.port}").rstrip("/")
    if not url.startswith(("http://", "https://")):
        return fail(f"--url must start with http:// or https://, got {url!r}")

    def line(status: dict) -> str:
        rooms = ", ".join(f"{room} {n}" for room, n in sorted(status["rooms"].items())) or "none"
        return (f"node {status['node']}: {status['participants']} participant(s) left (rooms: {rooms}), "
                f"{status['recordings']} recording(s), {status['moved']} moved, "
                f"{status['deadline_in_s']:.0f} s to the deadline")

    async def run() -> int:
        started = time.monotonic()
        auth = aiohttp.BasicAuth(key, secret)
        async with aiohttp.ClientSession(auth=auth, timeout=aiohttp.ClientTimeout(total=10)) as http:
            try:
                async with http.post(f"{url}/api/node/drain", json={"deadline": args.deadline}) as resp:
                    if resp.status != 200:
                        body = await resp.text()
                        return fail(f"{url} refused the drain ({resp.status}): {body.strip()[:300]}")
                    status = await resp.json()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                return fail(f"cannot reach {url}: {exc or type(exc).__name__}")
            print(f"draining node {status['node']} at {url}", flush=True)
            last = None
            while True:
                text = line(status)
                if text != last:
                    print(text, flush=True)
                    last = text
                await asyncio.sleep(1.0)
                try:
                    async with http.get(f"{url}/api/node") as resp:
                        if resp.status != 200:
                            raise aiohttp.ClientConnectionError(f"status {resp.status}")
                        status = await resp.json()
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    print(f"node {status['node']} has exited, {time.monotonic() - started:.1f} s after the "
                          f"drain began", flush=True)
                    return 0
                if time.monotonic() - started > args.deadline + 30:
                    return fail(f"node {status['node']} is still up 30 s after its deadline", 1)

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return 130


def _loadtest(args) -> int:
    import json

    from shared.auth import mint_token
    from stoa.loadtest import LoadTest, format_report, run, statistics_ok

    def fail(message: str) -> int:
        print(f"stoa loadtest: {message}", file=sys.stderr)
        return 2

    if args.viewers < 0 or args.publishers < 0 or args.viewers + args.publishers == 0:
        return fail("--viewers and --publishers must not be negative, and something must join")
    if args.duration <= 0 or args.join_rate < 0 or args.processes < 0:
        return fail("--duration must be positive; --join-rate and --processes must not be negative")
    if not args.url.startswith(("http://", "https://")):
        return fail(f"--url must start with http:// or https://, got {args.url!r}")
    needed = args.viewers + args.publishers
    if args.token:
        if len(args.token) < needed:
            return fail(f"{len(args.token)} --token given for {needed} peers: give one per peer (an identity "
                        f"that joins twice replaces its first session), or --api-key and --api-secret to mint")
        pub_tokens, viewer_tokens = args.token[:args.publishers], args.token[args.publishers:needed]
    else:
        if bool(args.api_key) != bool(args.api_secret):
            return fail("--api-key and --api-secret go together")
        if args.api_key:
            key, secret = args.api_key, args.api_secret
        else:
            settings = _settings(args)
            key, secret = settings.api_key, settings.api_secret
        stamp = f"{int(time.time()) % 100000}"
        pub_tokens = [mint_token(key, secret, room=args.room, identity=f"loadtest-publisher-{stamp}-{i}",
                                 role="instructor", ttl=3600) for i in range(args.publishers)]
        viewer_tokens = [mint_token(key, secret, room=args.room, identity=f"loadtest-viewer-{stamp}-{i}",
                                    role="viewer", ttl=3600) for i in range(args.viewers)]
    test = LoadTest(url=args.url.rstrip("/"), room=args.room, viewers=args.viewers, publishers=args.publishers,
                    duration=args.duration, join_rate=args.join_rate, cheap=args.cheap, processes=args.processes,
                    rx=args.client_rx,
                    publisher_video=args.publisher_video, publisher_tokens=pub_tokens, viewer_tokens=viewer_tokens)

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        report = asyncio.run(run(test, say=say))
    except (RuntimeError, OSError) as exc:
        print(f"stoa loadtest: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print()
    print(format_report(report, per_viewer=args.per_viewer or args.viewers <= 20))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    return 0 if statistics_ok(report) else 1


if __name__ == "__main__":
    sys.exit(main())
