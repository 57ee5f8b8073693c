"""The search page in a real browser: Playwright for Python driving Debian's chromium.

Two targets: a fast one (the Flask app from `create_app` on a waitress server in this process, over
a real SearchService with the histogram fake embedder of tests/webfixtures.py), and the real thing
(a `simd serve` subprocess with the efficientnet-lite0 network). Screenshots go to
`test-output/` at the repository root (gitignored). Nothing may reach the network: every request
the page makes is checked to go to the server under test.
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
OUT = Path(__file__).resolve().parent.parent / "test-output"

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing: `apt-get install chromium` to run the browser tests", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

expect = sync_api.expect


@pytest.fixture(autouse=True)
def offline_env(monkeypatch):
    """Nothing may reach the network: no browser download, no weights download, no proxy."""
    monkeypatch.setenv("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    monkeypatch.setenv("SIMD_WEIGHTS_DOWNLOAD", "0")
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def browser(offline_env):
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class PageWatch:
    """Console errors, page errors and any request that is not to the server under test; `http_errors`
    lists the responses >= 400 (a test that expects none asserts it)."""

    def __init__(self, page, base: str):
        self.base = base
        self.errors: list[str] = []
        self.foreign: list[str] = []
        self.http_errors: list[tuple[int, str]] = []
        page.on("console", self._console)
        page.on("response", lambda r: self.http_errors.append((r.status, r.url)) if r.status >= 400 else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.context.route("**/*", self._route)

    def _console(self, msg):
        # an HTTP error the page expects (415 of a test upload) shows as "Failed to load resource"
        if msg.type == "error" and "Failed to load resource" not in msg.text:
            self.errors.append(msg.text)

    def _route(self, route):
        url = route.request.url
        if url.startswith(self.base + "/") or url.startswith(("blob:", "data:")):
            route.continue_()
        else:
            self.foreign.append(url)
            route.abort()

    def check(self):
        assert not self.foreign, f"the page tried to reach: {self.foreign}"
        assert not self.errors, f"console errors: {self.errors}"


def shot(page, name: str) -> Path:
    OUT.mkdir(exist_ok=True)
    path = OUT / name
    page.screenshot(path=str(path), full_page=True)
    return path


def results(page):
    return page.locator("[data-testid=results] [data-testid=card]")


def wait_idle(page, count: int, timeout: float = 60_000):
    status = page.get_by_test_id("status")
    expect(status).to_have_attribute("data-state", "idle", timeout=timeout)
    expect(page.locator("#status-text")).to_contain_text(f"{count} indexed", timeout=timeout)


def search_flow(page, base: str, count: int, upload: Path, name_prefix: str):
    """The flow every target must pass: returns the (upload, neighbours) screenshot paths."""
    page.goto(base + "/")
    wait_idle(page, count, timeout=180_000)
    expect(page.locator("[data-testid=browse-grid] [data-testid=card]")).to_have_count(count)
    expect(page.get_by_test_id("page-info")).to_have_text(f"1–{count} of {count}")

    # upload through the file picker -> 10 results with scores, best first
    page.get_by_test_id("file-input").set_input_files(str(upload))
    expect(results(page)).to_have_count(10, timeout=60_000)
    scores = results(page).locator("[data-testid=score]")
    expect(scores.first).to_be_visible()
    values = [float(t.rstrip("%").lstrip(">")) for t in scores.all_inner_texts()]
    assert values == sorted(values, reverse=True) and all(-100 <= v <= 100 for v in values)
    assert "cosine similarity" in scores.first.get_attribute("title").lower()
    expect(page.get_by_test_id("query-label")).to_contain_text(upload.name)
    if results(page).locator("[data-match]").count():  # calibrated scores: their colours explained
        expect(page.get_by_test_id("legend")).to_contain_text("same photo, edited or re-saved")
    first_name = results(page).first.get_by_test_id("card-name").inner_text()
    first_score = scores.first.inner_text()
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=results] img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    upload_shot = shot(page, f"{name_prefix}-upload.png")

    # click the third result -> its own neighbours, itself left out
    third = results(page).nth(2)
    third_path = third.get_by_test_id("card-name").get_attribute("title")
    third.get_by_test_id("card-open").click()
    expect(page.get_by_test_id("query-label")).to_contain_text(third_path)
    expect(results(page)).to_have_count(10)
    names = results(page).get_by_test_id("card-name").all_inner_texts()
    assert third_path not in [
        n for n in results(page).get_by_test_id("card-name").evaluate_all("els => els.map(e => e.title)")
    ]
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=results] img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    neighbours_shot = shot(page, f"{name_prefix}-neighbours.png")

    # keyboard: focus "More like this" on the first result and press Enter
    results(page).first.get_by_test_id("more-like-this").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("query-label")).to_contain_text(names[0])
    return first_name, first_score, upload_shot, neighbours_shot


# -- fast: the app in this process --------------------------------------------------------------------


@pytest.fixture
def local_server(tmp_path):
    from webfixtures import build_env, web_config

    from simd.web import create_app
    from simd.web.server import Server

    env = build_env(tmp_path, count=16, size=(360, 260))
    server = Server(create_app(web_config(max_upload_mb=2), env.service), "127.0.0.1", 0, threads=4).start()
    try:
        yield env, server
    finally:
        server.stop()


def test_page_against_local_server(browser, local_server, tmp_path):
    env, server = local_server
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    watch = PageWatch(page, server.url)
    upload = tmp_path / "query.jpg"
    shutil.copy(env.path_of("holiday/photo06.jpg"), upload)
    first, first_score, up_shot, nb_shot = search_flow(page, server.url, 16, upload, "browser-local")
    assert (first, first_score) == ("photo06.jpg", "100.0%")  # the same picture is found first

    # the status line follows the daemon
    env.runtime.update(phase="indexing", pending=3, progress={"phase": "indexing", "done": 2, "total": 5})
    expect(page.locator("#status-text")).to_contain_text("Indexing", timeout=10_000)
    expect(page.locator("#status-text")).to_contain_text("2/5")
    expect(page.get_by_test_id("status")).to_have_attribute("data-state", "indexing")
    env.runtime.update(phase="idle", pending=0, progress=None)
    expect(page.get_by_test_id("status")).to_have_attribute("data-state", "idle", timeout=10_000)

    # failed files: the status line links to the list; the library counts indexed images only
    (env.library / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    env.add("broken.jpg", failed="truncated JPEG")
    expect(page.get_by_test_id("failed-link")).to_have_text("1 failed", timeout=10_000)
    expect(page.get_by_test_id("browse-failed")).to_contain_text("1 file could not be indexed")
    page.get_by_test_id("failed-link").click()
    expect(page.get_by_test_id("errors-panel")).to_contain_text("broken.jpg")
    expect(page.get_by_test_id("errors-panel")).to_contain_text("truncated JPEG")
    page.locator("#errors-close").click()
    expect(page.get_by_test_id("errors-panel")).to_be_hidden()

    # filter and paging of the library
    page.get_by_test_id("filter").fill("holiday")
    expect(page.locator("[data-testid=browse-grid] [data-testid=card]")).to_have_count(6)
    expect(page.get_by_test_id("page-info")).to_have_text("1–6 of 6")
    page.get_by_test_id("filter").fill("no-such-name")
    expect(page.get_by_test_id("browse-message")).to_contain_text("No file or folder names contain")
    page.get_by_test_id("filter").fill("")
    expect(page.get_by_test_id("page-info")).to_have_text("1–16 of 16")  # broken.jpg is not a card

    # clear messages for a non-image and for a file over the limit
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is a text file, not a picture\n" * 20)
    page.get_by_test_id("file-input").set_input_files(str(bad))
    expect(page.get_by_test_id("message")).to_contain_text("cannot read that file as an image")
    expect(results(page)).to_have_count(0)
    big = tmp_path / "huge.jpg"
    big.write_bytes(env.path_of("holiday/photo06.jpg").read_bytes() + b"\0" * (3 * 1024 * 1024))
    page.get_by_test_id("file-input").set_input_files(str(big))
    expect(page.get_by_test_id("message")).to_contain_text("larger than the 2 MB upload limit")
    error_shot = shot(page, "browser-local-error.png")

    # not ready: 503 explained
    env.runtime.update(model=None, phase="starting")
    env.service.set_embedder(None)  # the model is still loading
    page.get_by_test_id("file-input").set_input_files(str(upload))
    expect(page.get_by_test_id("message")).to_contain_text("Not ready yet")

    # a narrow screen still works (responsive grid)
    page.set_viewport_size({"width": 420, "height": 900})
    env.runtime.update(model="histogram-test", phase="idle")
    env.service.set_embedder(env.embedder)
    page.get_by_test_id("file-input").set_input_files(str(upload))
    expect(results(page)).to_have_count(10)
    mobile_shot = shot(page, "browser-local-narrow.png")
    watch.check()
    for p in (up_shot, nb_shot, error_shot, mobile_shot):
        assert p.stat().st_size > 10_000


def test_back_reload_and_a_changing_library(browser, local_server):
    """The search, the filter and the page are in the URL (Back, Forward and reload work), and the
    library grid follows the library: one file added and one deleted (the same total) shows at once."""
    from simd.store import Store

    env, server = local_server
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    watch = PageWatch(page, server.url)
    page.goto(server.url + "/")
    wait_idle(page, 16)
    grid = page.locator("[data-testid=browse-grid] [data-testid=card]")
    expect(grid).to_have_count(16)
    # an upload before any search: Back returns to the page without results, and stays on it
    page.get_by_test_id("file-input").set_input_files(str(env.path_of("garden/photo04.jpg")))
    expect(results(page)).to_have_count(10)
    page.go_back()
    expect(page.get_by_test_id("results-section")).to_be_hidden()
    assert page.url.startswith(server.url)

    first = grid.nth(0).get_by_test_id("card-name").get_attribute("title")
    second = grid.nth(1).get_by_test_id("card-name").get_attribute("title")
    grid.nth(0).get_by_test_id("card-open").click()
    expect(page.get_by_test_id("query-label")).to_contain_text(first)
    grid.nth(1).get_by_test_id("card-open").click()
    expect(page.get_by_test_id("query-label")).to_contain_text(second)
    assert "similar=" + second in page.url  # readable: "/" is left as it is
    page.go_back()
    expect(page.get_by_test_id("query-label")).to_contain_text(first)
    expect(results(page)).to_have_count(10)
    page.go_back()
    expect(page.get_by_test_id("results-section")).to_be_hidden()
    page.go_forward()
    expect(page.get_by_test_id("query-label")).to_contain_text(first)
    page.reload()  # the search comes back from the URL, with its query picture
    expect(page.get_by_test_id("query-label")).to_contain_text(first)
    expect(results(page)).to_have_count(10)
    expect(page.locator("#query-thumb")).to_be_visible()
    page.get_by_test_id("file-input").set_input_files(str(env.path_of("garden/photo04.jpg")))
    expect(page.get_by_test_id("query-label")).to_contain_text("uploaded photo04.jpg")
    assert "similar=" not in page.url
    page.go_back()  # from an upload, Back returns to the search before it
    expect(page.get_by_test_id("query-label")).to_contain_text(first)

    page.get_by_test_id("filter").fill("holiday")
    expect(grid).to_have_count(6)
    page.wait_for_function("() => location.search.includes('q=holiday')")
    page.reload()
    expect(page.get_by_test_id("filter")).to_have_value("holiday")
    expect(grid).to_have_count(6)
    page.get_by_test_id("filter").fill("")
    expect(grid).to_have_count(16)

    # one image added and another deleted behind the page's back: the total stays 16
    gone = "garden/photo01.jpg"
    stale_card = grid.filter(has=page.locator(f"[title='{gone}']")).first
    expect(stale_card).to_be_visible()
    shutil.copy(env.path_of("holiday/photo00.jpg"), env.path_of("garden/new.jpg"))
    env.add("garden/new.jpg")
    with Store(env.db) as store, store.batch():
        store.delete_paths([gone])
    env.service.vectors.remove([env.ids[gone]])
    expect(grid.get_by_test_id("card-name").filter(has_text="new.jpg")).to_have_count(1, timeout=10_000)
    expect(grid.locator(f"[title='{gone}']")).to_have_count(0)
    expect(page.get_by_test_id("page-info")).to_have_text("1–16 of 16")
    watch.check()


def test_paste_and_drop(browser, local_server):
    env, server = local_server
    page = browser.new_page()
    watch = PageWatch(page, server.url)
    choosers = []
    page.on("filechooser", lambda fc: choosers.append(fc))  # before any chooser opens: enabling it is asynchronous
    page.goto(server.url + "/")
    wait_idle(page, 16)
    data = list(env.path_of("garden/photo04.jpg").read_bytes())
    make_file = "bytes => new File([new Uint8Array(bytes)], 'pasted.jpg', {type: 'image/jpeg'})"
    page.evaluate(
        f"""bytes => {{
        const dt = new DataTransfer(); dt.items.add(({make_file})(bytes));
        document.dispatchEvent(new ClipboardEvent('paste', {{clipboardData: dt, bubbles: true}}));
    }}""",
        data,
    )
    expect(results(page)).to_have_count(10)
    expect(results(page).first.get_by_test_id("card-name")).to_have_text("photo04.jpg")
    data = list(env.path_of("holiday/photo09.jpg").read_bytes())
    page.evaluate(
        f"""bytes => {{
        const dt = new DataTransfer(); dt.items.add(({make_file})(bytes));
        const zone = document.querySelector('[data-testid=dropzone]');
        zone.dispatchEvent(new DragEvent('dragover', {{dataTransfer: dt, bubbles: true, cancelable: true}}));
        zone.dispatchEvent(new DragEvent('drop', {{dataTransfer: dt, bubbles: true, cancelable: true}}));
    }}""",
        data,
    )
    expect(results(page).first.get_by_test_id("card-name")).to_have_text("photo09.jpg")
    # the drop zone is keyboard reachable: Space (or Enter) opens the file chooser
    page.get_by_test_id("dropzone").focus()
    page.keyboard.press("Space")
    for _ in range(100):
        if choosers:
            break
        page.wait_for_timeout(50)
    assert choosers, "Space on the drop zone did not open the file chooser"
    choosers[0].set_files(str(env.path_of("garden/photo10.jpg")))
    expect(results(page).first.get_by_test_id("card-name")).to_have_text("photo10.jpg")
    watch.check()


def test_token_is_asked_once_and_kept(browser, tmp_path):
    from webfixtures import build_env, web_config

    from simd.web import create_app
    from simd.web.server import Server

    env = build_env(tmp_path, count=12, size=(200, 150))
    server = Server(create_app(web_config(token="open-sesame"), env.service), "127.0.0.1", 0, threads=4).start()
    try:
        context = browser.new_context()
        page = context.new_page()
        watch = PageWatch(page, server.url)
        page.goto(server.url + "/")
        expect(page.get_by_test_id("token-form")).to_be_visible()
        page.locator("#token-input").fill("open-sesame")
        page.locator("#token-input").press("Enter")
        wait_idle(page, 12)
        expect(page.get_by_test_id("token-form")).to_be_hidden()
        page.wait_for_function(
            "() => { const i = [...document.querySelectorAll('[data-testid=browse-grid] img')];"
            " return i.length === 12 && i.every(x => x.complete && x.naturalWidth > 0); }"
        )
        page.get_by_test_id("file-input").set_input_files(str(env.path_of("garden/photo01.jpg")))
        expect(results(page)).to_have_count(10)
        page.reload()  # kept in localStorage: not asked again
        wait_idle(page, 12)
        expect(page.get_by_test_id("token-form")).to_be_hidden()
        page.wait_for_function(
            "() => { const i = [...document.querySelectorAll('[data-testid=browse-grid] img')];"
            " return i.length === 12 && i.every(x => x.complete && x.naturalWidth > 0); }"
        )
        shot(page, "browser-token.png")
        watch.check()
        context.close()
    finally:
        server.stop()


def test_failed_files_are_counted_apart_not_shown_as_cards(browser, local_server):
    """Files that could not be indexed are no cards of the library (no "No preview", no thumbnail
    requests answered 415), the pager counts indexed images only, and the library says how many
    failed with a way to their list; an original that can be served gets a link there."""
    env, server = local_server
    (env.library / "aaa-truncated.jpg").write_bytes(env.path_of("garden/photo01.jpg").read_bytes()[:300])
    env.add("aaa-truncated.jpg", failed="truncated JPEG")
    (env.library / "aab-notes.jpg").write_text("this is a text file, not a picture\n")
    env.add("aab-notes.jpg", failed="not an image (looks like a text file)")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    watch = PageWatch(page, server.url)
    page.goto(server.url + "/")
    wait_idle(page, 16)
    grid = page.locator("[data-testid=browse-grid] [data-testid=card]")
    expect(grid).to_have_count(16)
    expect(page.get_by_test_id("page-info")).to_have_text("1–16 of 16")
    expect(grid.first.get_by_test_id("card-name")).to_have_attribute("title", "garden/photo01.jpg")
    expect(page.locator(".no-preview")).to_have_count(0)
    note = page.get_by_test_id("browse-failed")
    expect(note).to_contain_text("2 files could not be indexed")
    expect(note).to_contain_text("simd errors")
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=browse-grid] img')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    note.get_by_role("button").click()
    panel = page.get_by_test_id("errors-panel")
    expect(panel).to_be_visible()
    expect(panel.locator("li")).to_have_count(2)
    expect(panel.locator("li").nth(0)).to_contain_text("aaa-truncated.jpg — truncated JPEG")
    original = f"/api/images/{env.ids['aaa-truncated.jpg']}/file?v={env.service.errors()[0]['version']}"
    expect(panel.locator("li").nth(0).locator("a")).to_have_attribute("href", original)
    expect(panel.locator("li").nth(1).locator("a")).to_have_count(0)  # a text file: nothing to open
    shot(page, "browser-local-failed.png")
    assert not watch.http_errors, watch.http_errors
    watch.check()


@pytest.fixture
def token_server(tmp_path):
    from webfixtures import build_env, web_config

    from simd.web import create_app
    from simd.web.server import Server

    env = build_env(tmp_path, count=12, size=(200, 150))
    server = Server(create_app(web_config(token="open-sesame"), env.service), "127.0.0.1", 0, threads=4).start()
    try:
        yield env, server
    finally:
        server.stop()


def test_a_refused_token_says_so_and_can_be_entered_again(browser, token_server):
    env, server = token_server
    context = browser.new_context()
    page = context.new_page()
    watch = PageWatch(page, server.url)
    page.goto(server.url + "/")
    form, message = page.get_by_test_id("token-form"), page.get_by_test_id("token-message")
    field = page.locator("#token-input")
    expect(form).to_be_visible()
    expect(message).to_contain_text("needs a token")
    field.fill("open-sesame-typo")
    field.press("Enter")
    expect(message).to_contain_text("refused that token")  # not a silent form again, nor a hidden one
    expect(form).to_be_visible()
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(field).to_be_focused()
    expect(page.locator("#status-text")).to_have_text("Token refused")
    page.get_by_test_id("file-input").set_input_files(str(env.path_of("garden/photo01.jpg")))
    expect(page.get_by_test_id("message")).to_contain_text("refused the token")
    shot(page, "browser-token-refused.png")
    page.keyboard.type("open-sesame")  # the refused token is selected: typing replaces it
    page.keyboard.press("Enter")
    wait_idle(page, 12)
    expect(form).to_be_hidden()
    expect(page.locator("[data-testid=browse-grid] [data-testid=card]")).to_have_count(12)
    # a token saved in this browser that the server no longer takes (it was changed)
    page.evaluate("localStorage.setItem('simd.token', 'an-old-token')")
    page.reload()
    expect(message).to_contain_text("saved in this browser")
    expect(form).to_be_visible()
    field.fill("open-sesame")
    page.get_by_role("button", name="Save token").click()
    wait_idle(page, 12)
    expect(form).to_be_hidden()
    page.reload()  # the accepted token is the one kept
    wait_idle(page, 12)
    expect(form).to_be_hidden()
    assert {status for status, _ in watch.http_errors} == {401}
    watch.check()
    context.close()


def test_phone_page_is_a_few_screens_high(browser, tmp_path):
    """On a phone the library shows fewer cards a page: 48 in two columns was a 7,000+ px page."""
    from webfixtures import build_env, web_config

    from simd.web import create_app
    from simd.web.server import Server

    env = build_env(tmp_path, count=60, size=(120, 90))
    server = Server(create_app(web_config(), env.service), "127.0.0.1", 0, threads=4).start()
    try:
        context = browser.new_context(
            viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
        )
        page = context.new_page()
        watch = PageWatch(page, server.url)
        page.goto(server.url + "/")
        wait_idle(page, 60)
        grid = page.locator("[data-testid=browse-grid] [data-testid=card]")
        expect(page.get_by_test_id("page-info")).to_have_text("1–12 of 60")
        expect(grid).to_have_count(12)
        page.wait_for_function(
            "() => [...document.querySelectorAll('[data-testid=browse-grid] img')]"
            ".every(i => i.complete && i.naturalWidth > 0)"
        )
        height = page.evaluate("document.documentElement.scrollHeight")
        assert height <= 3.5 * 844, f"the phone page is {height} px high"
        shot(page, "browser-phone.png")
        page.get_by_test_id("next-page").click()
        expect(page.get_by_test_id("page-info")).to_have_text("13–24 of 60")
        assert "offset=12" in page.url
        page.set_viewport_size({"width": 1280, "height": 900})  # the page size follows the screen
        expect(page.get_by_test_id("page-info")).to_have_text("1–48 of 60")
        expect(grid).to_have_count(48)
        watch.check()
        context.close()
    finally:
        server.stop()


def test_dropping_a_phone_photo_finds_its_library_copy(browser, tmp_path, phone_jpeg, phone_heic):
    """What a user does first: drop a 12 MP, ~4 MB photo from a phone on the page. Its copy in the
    library comes first; an iPhone HEIC through the file picker as well."""
    from webfixtures import build_env, web_config

    from simd.web import create_app
    from simd.web.server import Server

    env = build_env(tmp_path, count=12, size=(200, 150))
    (env.library / "phone").mkdir()
    for src in (phone_jpeg, phone_heic):
        shutil.copy(src, env.library / "phone" / src.name)
        env.add(f"phone/{src.name}")
    assert phone_jpeg.stat().st_size > 3 * 1024 * 1024
    server = Server(create_app(web_config(max_upload_mb=25), env.service), "127.0.0.1", 0, threads=4).start()
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        watch = PageWatch(page, server.url)
        page.goto(server.url + "/")
        wait_idle(page, 14)
        data = base64.b64encode(phone_jpeg.read_bytes()).decode("ascii")
        posted = lambda r: "/api/similar" in r.url and r.request.method == "POST"  # noqa: E731
        with page.expect_response(posted, timeout=60_000) as response:
            page.evaluate(
                """([b64, name]) => {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                const dt = new DataTransfer();
                dt.items.add(new File([bytes], name, {type: 'image/jpeg'}));
                const zone = document.querySelector('[data-testid=dropzone]');
                zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: dt, bubbles: true, cancelable: true}));
                zone.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
            }""",
                [data, phone_jpeg.name],
            )
        assert response.value.status == 200, response.value.text()
        first = results(page).first
        expect(first.get_by_test_id("card-name")).to_have_attribute("title", f"phone/{phone_jpeg.name}")
        expect(first.get_by_test_id("score")).to_have_text("100.0%")
        expect(page.get_by_test_id("query-label")).to_contain_text(phone_jpeg.name)
        page.wait_for_function(
            "() => [...document.querySelectorAll('[data-testid=results] img')]"
            ".every(i => i.complete && i.naturalWidth > 0)"
        )
        shot(page, "browser-phone-photo.png")
        with page.expect_response(posted, timeout=60_000) as response:
            page.get_by_test_id("file-input").set_input_files(str(phone_heic))
        assert response.value.status == 200, response.value.text()
        first = results(page).first
        expect(first.get_by_test_id("card-name")).to_have_attribute("title", f"phone/{phone_heic.name}")
        expect(results(page).first.get_by_test_id("score")).to_have_text("100.0%")
        # the sideways HEIC is shown upright (portrait) and within its square, as every card's picture
        page.wait_for_function("() => [...document.querySelectorAll('.thumb')].every(i => i.complete)")
        boxes = page.locator(".thumb-btn").evaluate_all(
            "els => els.map(e => [e.getBoundingClientRect().width, e.getBoundingClientRect().height])"
        )
        assert boxes and all(abs(w - h) <= 1 for w, h in boxes), boxes
        heic = results(page).first.locator("img")
        assert heic.evaluate("i => i.naturalHeight > i.naturalWidth")
        shot(page, "browser-phone-heic.png")
        assert not watch.http_errors, watch.http_errors
        watch.check()
    finally:
        server.stop()


# -- real: `simd serve` with the efficientnet-lite0 network ---------------------------------------------

REAL_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "camera",
    "coins",
    "clock",
    "horse",
    "moon",
    "cat",
    "hubble_deep_field",
    "immunohistochemistry",
    "brick",
    "grass",
    "gravel",
    "retina",
)


def test_page_against_real_simd_serve(browser, tmp_path):
    from serving import Served
    from test_e2e_index import photo

    library = tmp_path / "library"
    (library / "pictures").mkdir(parents=True)
    (library / "more").mkdir()
    for i, name in enumerate(REAL_PHOTOS):
        img = photo(name)
        img.thumbnail((480, 480))
        img.save(library / ("pictures" if i % 2 else "more") / f"{name}.jpg", quality=90)
    chelsea = photo("chelsea")
    w, h = chelsea.size
    upload = tmp_path / "my-cat-crop.jpg"
    chelsea.crop((w // 8, h // 10, w - w // 6, h - h // 8)).resize((w // 2, h // 2)).save(upload, quality=80)
    served = Served(library, tmp_path / "state")
    try:
        served.wait_idle(indexed=len(REAL_PHOTOS), timeout=300)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        watch = PageWatch(page, served.url)
        first, _, up_shot, nb_shot = search_flow(page, served.url, len(REAL_PHOTOS), upload, "browser-real")
        assert first in ("chelsea.jpg", "cat.jpg"), first  # the network finds the cat
        expect(page.locator("#status-text")).to_contain_text("efficientnet")
        watch.check()
        assert up_shot.exists() and nb_shot.exists()
        assert served.stop() == 0
    finally:
        served.stop()
