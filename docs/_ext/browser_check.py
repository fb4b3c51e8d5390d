"""Opens the built site in headless Chromium and fails on what a reader would see broken.

    python docs/_ext/browser_check.py SITE_DIR SCREENSHOT_DIR

Serves SITE_DIR on localhost, opens the home page, a loss's API page, a guide and the gallery in
Debian's `chromium` (driven by Playwright, which downloads no browser of its own), saves a
full-page PNG of each, and fails on a blank page, a JavaScript error, a failed request, math left
as TeX or MathML that does not lay out, or an image that does not load. `make docs-check`.
"""

import functools
import http.server
import shutil
import sys
import tempfile
import threading
from pathlib import Path

PAGES = {
    "home": "index.html",
    "loss_api": "api/losses/regression.html",
    "guide": "objectives.html",
    "gallery": "gallery.html",
}
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

INSPECT = """() => {
  const main = document.querySelector("article") || document.body;
  const images = [...main.querySelectorAll("img")];
  const maths = [...main.querySelectorAll("math")];
  const text = main.innerText;
  return {
    title: document.title,
    text_length: text.trim().length,
    broken_images: images.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src),
    images: images.length,
    maths: maths.length,
    math_without_box: maths.filter(m => { const r = m.getBoundingClientRect();
                                          return r.width === 0 || r.height === 0; }).length,
    raw_tex: (text.match(/\\\\\\(|\\\\\\[|:math:`|\\$\\$/g) || []).length,
    search: !!document.querySelector("input.md-search__input"),
  };
}"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # failures are reported by the browser's side
        pass


def serve(root):
    if not (root / "index.html").exists():
        sys.exit(f"docs-check: {root}/index.html not found: build the site first (make docs)")
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def check(site, shots):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("docs-check: no chromium on PATH (Debian: apt-get install -y chromium)")
    shots.mkdir(parents=True, exist_ok=True)
    server = serve(site)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    failures, report = [], []
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            profile, executable_path=chromium, headless=True, args=FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        for name, path in PAGES.items():
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda err, errors=errors: errors.append(f"JavaScript: {err}"))
            page.on("console", lambda msg, errors=errors: errors.append(f"console: {msg.text}")
                    if msg.type == "error" else None)
            page.on("requestfailed", lambda req, errors=errors: errors.append(
                f"request failed: {req.url} ({req.failure})"))
            page.on("response", lambda resp, errors=errors: errors.append(
                f"HTTP {resp.status}: {resp.url}") if resp.status >= 400 else None)
            page.goto(base + path, wait_until="networkidle")
            page.wait_for_timeout(300)
            info = page.evaluate(INSPECT)
            page.screenshot(path=str(shots / f"{name}.png"), full_page=name != "loss_api")
            problems = list(errors)
            if info["text_length"] < 200:
                problems.append(f"blank page ({info['text_length']} characters)")
            problems += [f"broken image {src}" for src in info["broken_images"]]
            if info["raw_tex"]:
                problems.append(f"{info['raw_tex']} formulas left as TeX")
            if info["math_without_box"]:
                problems.append(f"{info['math_without_box']} MathML formulas with no size")
            if not info["search"]:
                problems.append("no search box")
            report.append(f"{name:9s} {path:32s} {info['text_length']:6d} chars, "
                          f"{info['images']} images, {info['maths']} formulas: "
                          + ("ok" if not problems else "; ".join(problems)))
            failures += [f"{path}: {p}" for p in problems]
            page.close()
        if not failures:  # the search index loads and answers
            page = browser.new_page()
            with page.expect_response("**/search/search_index.json", timeout=60000):
                page.goto(base + "index.html", wait_until="networkidle")
            page.click("label.md-search__icon, input.md-search__input")
            page.keyboard.type("huber", delay=50)
            try:  # the index is built in a web worker: slow on a busy machine
                page.wait_for_selector(".md-search-result__item", timeout=60000)
            except PlaywrightTimeout:
                pass
            hits = page.locator(".md-search-result__item").count()
            page.screenshot(path=str(shots / "search.png"))
            report.append(f"search    'huber' -> {hits} results")
            if hits == 0:
                failures.append("search for 'huber' finds nothing")
        browser.close()
    server.shutdown()
    print("\n".join(report))
    return failures


if __name__ == "__main__":
    site, shots = Path(sys.argv[1]), Path(sys.argv[2])
    failures = check(site, shots)
    if failures:
        sys.exit("docs-check failed:\n  " + "\n  ".join(failures))
    print(f"docs-check: ok, screenshots in {shots}/")
