"""Headless Chromium for tests (see ../shared/browser-testing.md), driven by Playwright's async API.

Fixtures:
- `chromium`: a `Chromium` running for one test in the test's event loop. `await chromium.page(url)` opens a page
  in a fresh, isolated browser context; `chromium.logs` keeps every page's console output and errors.
- `browser_args`: extra launch flags for one test (override it in a test module).
- `browser_netns`: a tests.netns link whose namespace Chromium runs in (override it in a test module; None: here).

Helpers: `stats(page, pc_expr)`, `wait_frames_decoded(page, pc_expr)`, `wait_js(page, expr)` (awaits async
expressions, which Playwright's wait_for_function does not), `screenshot(page, artifacts_dir, name)`;
`UFRAGS_JS` / `ice_restarted(page, which, before)` for the room page's ICE restarts.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("STOA_CHROMIUM", "/usr/bin/chromium")

# Every flag matters; the reasons are in ../shared/browser-testing.md.
BASE_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
]
OUR_DISABLED_FEATURES = ["WebRtcHideLocalIpsWithMdns"]


def playwright_disabled_features() -> list[str]:
    """Playwright's own --disable-features list, read from the installed driver.

    Chromium honours only the last --disable-features switch, so ours has to repeat Playwright's."""
    import playwright

    bundle = Path(playwright.__file__).parent / "driver" / "package" / "lib" / "coreBundle.js"
    text = bundle.read_text(encoding="utf-8")
    match = re.search(r"disabledFeatures = \[(.*?)\]", text, re.S)
    if match is None:
        raise RuntimeError(f"no 'disabledFeatures = [...]' in {bundle}: Playwright changed; update tests/browser.py")
    body = "\n".join(line.split("//", 1)[0] for line in match.group(1).splitlines())
    features = re.findall(r"""["']([A-Za-z0-9_]+)["']""", body)
    if not features:
        raise RuntimeError(f"Playwright's disabledFeatures list in {bundle} parsed as empty")
    return features


def chromium_args(extra: list[str] | tuple[str, ...] = (), hosts: tuple[str, ...] = ()) -> list[str]:
    """The launch flags; `hosts`: addresses besides 127.0.0.1 that pages may open (no name is ever looked up)."""
    features = playwright_disabled_features() + OUR_DISABLED_FEATURES
    rules = " , ".join(["MAP * ~NOTFOUND", *(f"EXCLUDE {h}" for h in ("127.0.0.1", *hosts))])
    return [*BASE_ARGS, f"--host-resolver-rules={rules}",
            "--disable-features=" + ",".join(dict.fromkeys(features)), *extra]


def _browser_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    for name in ("HOME", "TMPDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME",
                 "XDG_RUNTIME_DIR"):
        path = home / name.lower()
        path.mkdir(mode=0o700, exist_ok=True)
        env[name] = str(path)
    return env


@dataclass
class Chromium:
    """One Chromium process. Pages get isolated contexts (cookies, storage) unless told otherwise."""

    playwright: object
    context: object                       # the persistent context Chromium starts with
    logs: list[str] = field(default_factory=list)
    contexts: list = field(default_factory=list)

    async def new_context(self, **kw):
        ctx = await self.context.browser.new_context(**kw)
        self.contexts.append(ctx)
        return ctx

    def watch(self, page, label: str = ""):
        """Record a page's console output and errors in self.logs."""
        tag = label or f"page{len(self.logs)}"
        page.on("console", lambda m: self.logs.append(f"[{tag}] {m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.logs.append(f"[{tag}] pageerror: {e}"))
        return page

    async def page(self, url: str | None = None, *, label: str = "", context=None, **context_kw):
        """A new page in a fresh context (or in `context`), opened at `url` if given."""
        ctx = context or await self.new_context(**context_kw)
        page = self.watch(await ctx.new_page(), label)
        if url:
            await page.goto(url)
        return page

    def errors(self) -> list[str]:
        return [line for line in self.logs if "pageerror" in line]


@pytest.fixture
def browser_args() -> list[str]:
    """Extra Chromium flags; override in a test module to add some."""
    return []


@pytest.fixture
def browser_netns():
    """A tests.netns link whose namespace Chromium runs in; override in a test module (None: this namespace)."""
    return None


def _netns_wrapper(home: Path, namespace: str) -> str:
    """An executable that starts Chromium inside `namespace` (Playwright's pipes are inherited)."""
    path = home / "chromium-in-netns"
    path.write_text(f'#!/bin/sh\nexec ip netns exec {namespace} {CHROMIUM} "$@"\n')
    path.chmod(0o700)
    return str(path)


async def launch_chromium(home: Path, browser_args=(), browser_netns=None) -> Chromium:
    """Start one Chromium with its profile under `home`, inside `browser_netns`'s namespace if given (a test
    that needs several, one per namespace, calls this; `close_chromium` stops it)."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` "
                    "(Playwright's own browser downloads are not used)")
    from playwright.async_api import async_playwright

    profile = home / "profile"
    executable, hosts = CHROMIUM, ()
    if browser_netns is not None:
        executable, hosts = _netns_wrapper(home, browser_netns.namespace), (browser_netns.host_address,)
    pw = await async_playwright().start()
    try:
        context = await pw.chromium.launch_persistent_context(
            str(profile), executable_path=executable, headless=True, args=chromium_args(browser_args, hosts),
            env=_browser_env(home), viewport={"width": 1024, "height": 640},
        )
    except BaseException:
        await pw.stop()
        raise
    return Chromium(pw, context)


async def close_chromium(browser: Chromium) -> None:
    for ctx in browser.contexts:
        await _quietly(ctx.close())
    await _quietly(browser.context.close())
    await _quietly(browser.playwright.stop())


@pytest.fixture
async def chromium(tmp_path_factory, browser_args, browser_netns, request):
    """Headless Chromium for one test (Playwright objects belong to one event loop: the test's)."""
    home = Path(tempfile.mkdtemp(prefix="stoa-chromium-", dir=tmp_path_factory.getbasetemp()))
    browser = await launch_chromium(home, browser_args, browser_netns)
    try:
        yield browser
    finally:
        failed = getattr(request.node, "rep_call", None)
        if browser.logs and (failed is None or failed.failed):
            print("\n--- browser console ---\n" + "\n".join(browser.logs[-200:]))
        await close_chromium(browser)
        shutil.rmtree(home, ignore_errors=True)


async def _quietly(coro) -> None:
    try:
        await asyncio.wait_for(coro, 10)
    except Exception:
        pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report


# ---- reading results from a page -----------------------------------------------------------------

STATS_JS = """async (expr) => {
  const pc = eval(expr);
  if (!pc || pc.connectionState === 'closed') return null;
  const out = [];
  (await pc.getStats()).forEach((s) => out.push(s));
  return out;
}"""


async def stats(page, pc_expr: str = "window.stoa.state.sub") -> list[dict]:
    """The getStats() entries of the RTCPeerConnection that `pc_expr` names (empty if there is none)."""
    return await page.evaluate(STATS_JS, pc_expr) or []


async def inbound(page, kind: str = "video", pc_expr: str = "window.stoa.state.sub") -> list[dict]:
    return [s for s in await stats(page, pc_expr) if s.get("type") == "inbound-rtp" and s.get("kind") == kind]


async def wait_js(page, expr: str, timeout: float = 10.0, interval: float = 0.1):
    """Poll a JS expression (it may return a Promise) until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = await page.evaluate(f"(async () => ({expr}))()")
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"{expr!r} stayed falsy for {timeout} s (last value {last!r})")
        await asyncio.sleep(interval)


async def wait_frames_decoded(page, pc_expr: str = "window.stoa.state.sub", minimum: int = 1,
                              timeout: float = 15.0, above: int = 0) -> dict:
    """Poll getStats() until one inbound video entry has decoded `minimum` frames more than `above`.

    Returns that inbound-rtp entry."""
    deadline = time.monotonic() + timeout
    seen: list[dict] = []
    while True:
        seen = await inbound(page, "video", pc_expr)
        for entry in seen:
            if entry.get("framesDecoded", 0) >= above + minimum:
                return entry
        if time.monotonic() > deadline:
            raise TimeoutError(f"no inbound video decoded {minimum} frames in {timeout} s; inbound-rtp: {seen}")
        await asyncio.sleep(0.1)


async def screenshot(page, artifacts_dir: str, name: str) -> str:
    """Save a PNG of the page to artifacts/<name>.png and return its path."""
    path = os.path.join(artifacts_dir, f"{name}.png")
    await page.screenshot(path=path)
    return path


# ---- ICE restarts of the room page (web/static/room.js) ---------------------------------------------

UFRAGS_JS = """(which) => {
  const pc = window.stoa.state[which];
  const of = (d) => d && (/a=ice-ufrag:(\\S+)/.exec(d.sdp) || [])[1];
  return pc ? {local: of(pc.localDescription), remote: of(pc.remoteDescription), ice: pc.iceConnectionState,
               restarting: !!window.stoa.state.iceRestart[which]} : null;
}"""


async def ice_restarted(page, which: str, before: dict, timeout: float = 15.0) -> dict:
    """Both ICE ufrags of the connection changed (an ICE restart, not a new connection) and it settled."""
    deadline = time.monotonic() + timeout
    while True:
        now = await page.evaluate(UFRAGS_JS, which)
        if (now and now["local"] != before["local"] and now["remote"] != before["remote"]
                and now["ice"] in ("connected", "completed") and not now["restarting"]):
            return now
        if time.monotonic() > deadline:
            raise TimeoutError(f"the {which} connection did not restart ICE in {timeout} s: {before} -> {now}")
        await asyncio.sleep(0.1)
