"""The documentation site: built strictly, served on 127.0.0.1, opened in headless Chromium.

`mkdocs build --strict` (mkdocs.yml) builds the site into a temporary directory: a broken
link, a missing page or an API reference that does not resolve fails the build. The built
site is then

- crawled: every internal `href` and `src` of every page (links, images, scripts, styles,
  the canonical URLs under `site_url`) resolves to a file of the site, and every `#fragment`
  to an element of its page;
- served by a stdlib HTTP server on 127.0.0.1 under the path of `site_url`
  (`/sdkguard/`, as GitHub Pages serves it), and opened in headless Chromium: the home page,
  the API reference and the telemetry page are screenshotted into `.cache/docs-screens/`,
  their DOM after scripts ran holds the expected content and pictures, every picture's URL
  answers 200, and a probe page proves Chromium decodes each of them (natural width > 0).

Needs the `docs` dependency group (`make test` installs it); the module is skipped, saying
so, where mkdocs is missing (the matrix's environments have the `dev` group only). Chromium
is Debian's package: when it is missing and the test runs as root with apt-get, the setup
installs it (`apt-get update`, `apt-get install -y chromium`; a few minutes, once per
machine); otherwise the browser tests are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import html
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import pytest

pytest.importorskip("mkdocs", reason="the docs dependency group is not installed (make test)")
pytest.importorskip("material", reason="the docs dependency group is not installed (make test)")

pytestmark = [pytest.mark.docs_site, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
SCREENS = ROOT / ".cache" / "docs-screens"
SITE_URL = "https://sdkguard.github.io/sdkguard/"
PREFIX = urlsplit(SITE_URL).path  # "/sdkguard/": where GitHub Pages serves the site
BUILD_TIMEOUT = 300.0
BROWSER_TIMEOUT = 60.0
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
# page (under the site's root) -> what a person must see there: text, and pictures by name
PAGES = {
    "": (
        ["Makes every call made with the official", "pip install sdkguard"],
        ["retried-call-trace.png"],
    ),
    "reference/": (["sdkguard.install", "sdkguard.testing.FakeAnthropic", "StreamInterrupted"], []),
    "telemetry/": (
        ["sdkguard.attempt", "A retry in time"],
        ["retried-call-trace.png", "timeline.png"],
    ),
}


# -- the built site ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built with `mkdocs build --strict` into a temporary directory."""
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    assert (out / "index.html").is_file()
    return out


class _Page(HTMLParser):
    """The links (href, src) and element ids of one HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        for name in ("href", "src"):
            value = found.get(name)
            if value:
                self.links.append(value)
        if found.get("id"):
            self.ids.add(str(found["id"]))
        if tag == "a" and found.get("name"):
            self.ids.add(str(found["name"]))
        if tag == "img" and found.get("src"):
            self.images.append(str(found["src"]))


def parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def site_file(site: Path, url_path: str) -> Path | None:
    """The file a URL path (under the site's root) is served from, if there is one."""
    relative = unquote(url_path).lstrip("/")
    target = site / relative
    if relative == "" or relative.endswith("/") or target.is_dir():
        target = target / "index.html"
    return target if target.is_file() else None


def internal_path(page_url: str, link: str) -> tuple[str, str] | None:
    """(path under the site's root, fragment) of a link, or None for an external one."""
    if link.startswith(("mailto:", "javascript:", "data:", "tel:")):
        return None
    if link.startswith(SITE_URL):
        link = PREFIX + link[len(SITE_URL) :]
    elif urlsplit(link).scheme or link.startswith("//"):
        return None
    absolute = urlsplit(urljoin(page_url, link))
    if not absolute.path.startswith(PREFIX):
        return ("\0outside the site: " + absolute.path, "")
    return absolute.path[len(PREFIX) :], absolute.fragment


def test_site_builds_strictly_and_every_internal_link_resolves(site: Path) -> None:
    pages = {p: parse(p.read_text(encoding="utf-8")) for p in sorted(site.rglob("*.html"))}
    assert len(pages) >= 20, sorted(str(p.relative_to(site)) for p in pages)
    broken: list[str] = []
    checked = 0
    for path, page in pages.items():
        relative = path.relative_to(site).as_posix()
        page_url = PREFIX + (
            relative[: -len("index.html")] if relative.endswith("index.html") else relative
        )
        for link in page.links:
            found = internal_path(page_url, link)
            if found is None:
                continue
            url_path, fragment = found
            checked += 1
            target = site_file(site, url_path) if not url_path.startswith("\0") else None
            if target is None:
                broken.append(f"{relative}: {link} (no such file)")
            elif fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else set()
                if unquote(fragment) not in ids:
                    broken.append(f"{relative}: {link} (no element with id {fragment!r})")
    assert checked > 500, checked
    assert not broken, f"{len(broken)} broken internal links:\n" + "\n".join(broken[:50])


def test_every_page_of_the_nav_is_built(site: Path) -> None:
    nav = re.findall(r"^\s+- [^:]+: ([\w-]+)\.md$", (ROOT / "mkdocs.yml").read_text(), re.M)
    assert len(nav) >= 20
    missing = [
        name for name in nav if site_file(site, f"{name}/" if name != "index" else "") is None
    ]
    assert not missing


# -- served, in a browser -----------------------------------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the site under PREFIX, as GitHub Pages does; quiet."""

    def translate_path(self, path: str) -> str:
        url_path = urlsplit(path).path
        if not url_path.startswith(PREFIX):
            return str(Path(self.directory) / "\0not-found")
        return super().translate_path("/" + url_path[len(PREFIX) :])

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    """The site's URL on 127.0.0.1 (a stdlib HTTP server in a thread)."""
    handler = functools.partial(_Handler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="docs-site", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{PREFIX}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's Chromium, installed with apt-get when missing and running as root."""
    found = _find_chromium()
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed, and installing it needs root and apt-get")
    SCREENS.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # One installation at a time: the workers of `make unit` may get here together.
    with open(SCREENS.parent / "chromium-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _find_chromium():
            for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
                done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
                assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}{done.stderr}"
    found = _find_chromium()
    assert found, "apt-get installed chromium, but no chromium command is on PATH"
    return found


def run_chromium(browser: str, *args: str) -> str:
    """Chromium with a fresh profile; its stdout (the DOM, for --dump-dom)."""
    with tempfile.TemporaryDirectory(prefix="sdkguard-chromium-") as profile:
        done = subprocess.run(
            [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=BROWSER_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    assert done.returncode == 0, f"chromium {args}: {done.returncode}\n{done.stderr[-3000:]}"
    return done.stdout


def fetch_status(url: str) -> int:
    with contextlib.suppress(Exception), urllib.request.urlopen(url, timeout=10) as answer:
        answer.read()
        return int(answer.status)
    return 0


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


@pytest.mark.parametrize("page", list(PAGES), ids=["home", "reference", "telemetry"])
def test_page_renders_in_chromium_with_its_pictures(
    page: str, served: str, chromium: str, site: Path
) -> None:
    url = served + page
    texts, pictures = PAGES[page]
    # The DOM once scripts ran (Material's own JavaScript included).
    dom = run_chromium(chromium, "--virtual-time-budget=5000", "--dump-dom", url)
    shown = " ".join(html.unescape(re.sub(r"<[^>]+>", "", dom)).split())
    for text in texts:
        assert text in shown, f"{url}: {text!r} is not on the rendered page"
    images = [urljoin(url, src) for src in parse(dom).images]
    for picture in pictures:
        assert any(src.endswith("/" + picture) for src in images), (picture, images)
    for src in images:
        assert fetch_status(src) == 200, f"{url}: picture {src} does not answer 200"

    # Chromium decodes each picture: a probe page loads them and writes their sizes down.
    if images:
        probe = site / f"probe-{page.strip('/') or 'home'}.html"
        probe.write_text(
            "<!doctype html><body><script>"
            f"const urls = {json.dumps(images)}; const out = {{}};"
            "Promise.all(urls.map(u => new Promise(done => { const i = new Image();"
            " i.onload = () => { out[u] = i.naturalWidth; done(); };"
            " i.onerror = () => { out[u] = 0; done(); }; i.src = u; })))"
            ".then(() => { const p = document.createElement('pre'); p.id = 'sizes';"
            " p.textContent = JSON.stringify(out); document.body.appendChild(p); });"
            "</script></body>"
        )
        probed = run_chromium(
            chromium, "--virtual-time-budget=10000", "--dump-dom", served + probe.name
        )
        found = re.search(r'<pre id="sizes">(.*?)</pre>', probed, re.S)
        assert found, f"the probe page reported nothing:\n{probed[-2000:]}"
        sizes = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
        assert sizes and all(width > 0 for width in sizes.values()), sizes

    # A screenshot, as a person would see the page (kept for looking at).
    SCREENS.mkdir(parents=True, exist_ok=True)
    shot = SCREENS / f"{page.strip('/') or 'home'}.png"
    shot.unlink(missing_ok=True)
    height = 2600 if page == "telemetry/" else 1000
    run_chromium(
        chromium,
        f"--window-size=1280,{height}",
        "--virtual-time-budget=5000",
        f"--screenshot={shot}",
        url,
    )
    assert shot.is_file(), f"no screenshot of {url}"
    assert png_size(shot) == (1280, height)
    assert shot.stat().st_size > 20_000, f"{shot} looks blank ({shot.stat().st_size} bytes)"
