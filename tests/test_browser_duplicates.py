"""The page's Duplicates view in a real browser: Playwright driving Debian's chromium against a real
`simd serve` (efficientnet-lite0) over a library of real copies: a 12 MP phone JPEG with a byte copy,
a resized re-saved copy and a crop; other photos with a byte copy, a resized copy or a crop; and
unrelated photos. What the page shows is checked against what GET /api/duplicates answers.

Browser, fixtures and checks come from tests/test_browser.py (skipped with it when chromium or
Playwright is missing). Screenshots go to `test-output/` (gitignored).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import test_browser as tb
from images import make_phone_photo
from PIL import Image

pytestmark = pytest.mark.browser

expect = tb.expect
browser = tb.browser  # the fixtures, under their names in this module
offline_env = tb.offline_env
PageWatch, shot = tb.PageWatch, tb.shot

HOSTILE = "<img src=x onerror=window.__injected=1>.jpg"
UNRELATED = ("camera", "coins", "clock", "moon", "brick", "hubble_deep_field", "retina", "horse")


def _photo(name: str, size: int = 640) -> Image.Image:
    from test_e2e_index import photo

    img = photo(name)
    img.thumbnail((size, size))
    return img


def build_library(root: Path) -> Path:
    """Real copies, as a phone's gallery and a backup folder have them."""
    for folder in ("DCIM/Camera", "backup/2026", "shared", "edits", "photos", "other"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    phone = make_phone_photo(root / "DCIM/Camera/PXL_20260601_120000.jpg", seed=1)
    shutil.copyfile(phone, root / "backup/2026/PXL_20260601_120000.jpg")  # a byte copy
    with Image.open(phone) as img:
        img.resize((1600, 1200)).save(root / "shared/PXL_20260601_120000-small.jpg", quality=80)  # re-saved
        w, h = img.size
        img.crop((w // 10, h // 10, w - w // 10, h - h // 10)).save(root / "edits/PXL_crop.jpg", quality=85)
    astronaut = _photo("astronaut")
    astronaut.save(root / "photos/astronaut.jpg", quality=92)
    shutil.copyfile(root / "photos/astronaut.jpg", root / "backup/2026/astronaut.jpg")
    rocket = _photo("rocket")
    rocket.save(root / "photos/rocket.jpg", quality=92)
    rocket.resize((rocket.width // 2, rocket.height // 2)).save(root / "shared/rocket-small.jpg", quality=75)
    cat = _photo("chelsea")
    cat.save(root / "photos/chelsea.jpg", quality=92)
    w, h = cat.size
    cat.crop((w // 12, h // 12, w - w // 10, h - h // 10)).save(root / "edits/chelsea-crop.jpg", quality=85)
    # a name that is HTML: paths are user data, shown as text and never run
    shutil.copyfile(root / "photos/chelsea.jpg", root / "other" / HOSTILE)
    for name in UNRELATED:
        _photo(name, 480).save(root / "other" / f"{name}.jpg", quality=90)
    return root


def files_in(root: Path) -> int:
    return sum(1 for p in root.rglob("*.jpg"))


def settled(d: dict) -> bool:
    """The pairs built and every pair of the ambiguous band verified: the groups will not change."""
    check = d.get("verification") or {}
    return bool(d["complete"]) and not check.get("pending") and check.get("state") in (None, "idle", "none")


def wait_listed(served, timeout: float = 300) -> dict:
    """Idle, every file indexed, the duplicate pairs built and verified (a verdict that lands between
    the API's answer and the page's would add a group)."""
    served.wait_idle(indexed=files_in(served.library), timeout=timeout)
    return served.wait_until(lambda: (d := served.get("/api/duplicates")) and settled(d) and d, timeout, "pairs")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from serving import Served

    tmp = tmp_path_factory.mktemp("dups")
    library = build_library(tmp / "library")
    daemon = Served(library, tmp / "state")
    try:
        wait_listed(daemon)
        yield daemon
        assert daemon.stop() == 0
    finally:
        daemon.stop()


def api(served, query: str = "") -> dict:
    return served.get("/api/duplicates" + ("?" + query if query else ""))


def page_groups(page) -> list[dict]:
    """The groups on screen: ids, their images' ids in order, and which is marked to keep."""
    return page.get_by_test_id("dup-group").evaluate_all(
        """els => els.map(g => ({id: g.dataset.id, images: [...g.querySelectorAll('[data-testid=dup-image]')]
            .map(i => ({id: Number(i.dataset.id), keep: i.dataset.keep === 'true',
                        path: i.querySelector('[data-testid=dup-path]').textContent,
                        badge: i.querySelector('[data-testid=dup-badge]').textContent}))}))"""
    )


def api_groups(data: dict) -> list[dict]:
    return [
        {"id": g["id"], "images": [{"id": i["id"], "keep": i["keep"], "path": i["path"]} for i in g["images"]]}
        for g in data["groups"]
    ]


def same_groups(page, data: dict) -> None:
    shown = page_groups(page)
    assert [{**g, "images": [{k: i[k] for k in ("id", "keep", "path")} for i in g["images"]]} for g in shown] == (
        api_groups(data)
    )
    for g in shown:  # one keeper, first, marked as such
        assert g["images"][0]["keep"] and g["images"][0]["badge"] == "Keep"
        assert [i["keep"] for i in g["images"]].count(True) == 1


def open_view(page, served, hash_: str = "#duplicates") -> None:
    page.goto(served.url + "/" + hash_)
    expect(page.get_by_test_id("dup-summary")).to_have_attribute("data-complete", "true", timeout=30_000)


def thumbs_loaded(page, group: int = 0) -> None:
    page.wait_for_function(
        "n => [...document.querySelectorAll('[data-testid=dup-group]')[n].querySelectorAll('img')]"
        ".every(i => i.complete && i.naturalWidth > 0)",
        arg=group,
    )


def test_groups_shown_are_the_apis_with_the_keeper_marked(browser, served):
    data = api(served)
    assert data["calibrated"] and data["total"] >= 3, data
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    watch = PageWatch(page, served.url)
    page.goto(served.url + "/")
    page.get_by_test_id("tab-duplicates").click()
    assert page.url.endswith("#duplicates")
    expect(page.get_by_test_id("search-view")).to_be_hidden()
    expect(page.get_by_test_id("dup-group")).to_have_count(data["total"])
    same_groups(page, data)

    summary = page.get_by_test_id("dup-summary")
    expect(summary).to_contain_text(f"{data['total']} groups · {data['total_images']} images")
    expect(summary).to_contain_text(f"threshold {data['threshold']:.3f}")
    expect(summary).to_contain_text(" MB reclaimable")  # the phone photo's copies: megabytes
    expect(page.get_by_test_id("dup-threshold")).to_have_value(str(data["threshold"]))
    expect(page.get_by_test_id("dup-threshold")).to_have_attribute("min", str(data["lowest"]))

    # the phone photo's group: its byte copy says so, every copy a score, a size and a path
    phone = next(g for g in data["groups"] if any("PXL_20260601_120000.jpg" in i["path"] for i in g["images"]))
    row = page.locator(f"[data-testid=dup-group][data-id='{phone['id']}']")
    assert {i["path"] for i in phone["images"]} >= {
        "DCIM/Camera/PXL_20260601_120000.jpg",
        "backup/2026/PXL_20260601_120000.jpg",
        "shared/PXL_20260601_120000-small.jpg",
    }
    expect(row.locator("[data-testid=dup-badge]", has_text="Identical copy")).to_have_count(
        sum(i["identical_to_keeper"] for i in phone["images"] if not i["keep"])
    )
    expect(row.get_by_test_id("dup-score")).to_have_count(len(phone["images"]) - 1)
    keeper = phone["images"][0]
    expect(row.get_by_test_id("dup-why")).to_contain_text("Suggested keeper: " + keeper["path"].split("/")[-1])
    row.get_by_test_id("dup-why").click()
    expect(row.get_by_test_id("dup-steps").locator("li")).to_have_count(len(phone["keep"]["steps"]))
    meta = row.get_by_test_id("dup-meta").first
    expect(meta).to_contain_text(f"{keeper['width']}×{keeper['height']}")
    expect(meta).to_contain_text(" MB")

    # a path that is HTML is shown as it is, and nothing of it runs
    expect(page.get_by_test_id("dup-path").filter(has_text=HOSTILE)).to_have_text("other/" + HOSTILE)
    assert page.evaluate("window.__injected === undefined && !document.querySelector('img[src=x]')")

    # thumbnails are lazy, and load
    assert set(row.locator("img").evaluate_all("els => els.map(e => e.loading)")) == {"lazy"}
    thumbs_loaded(page, 0)
    # trash is off by default: no button, and the page says how to allow it
    expect(page.get_by_test_id("dup-trash")).to_have_count(0)
    expect(page.get_by_test_id("dup-trash-note")).to_be_visible()
    expect(page.get_by_test_id("dup-trash-note")).to_contain_text("allow_trash = true")
    shot(page, "duplicates-desktop.png")
    watch.check()
    assert not watch.http_errors, watch.http_errors


def test_threshold_tier_and_pages_follow_the_api(browser, served):
    default = api(served)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    watch = PageWatch(page, served.url)
    open_view(page, served)
    expect(page.get_by_test_id("dup-group")).to_have_count(default["total"])

    # the slider: a stricter threshold lists fewer groups, as the API does at that threshold
    page.get_by_test_id("dup-threshold").fill("0.95")
    expect(page.get_by_test_id("dup-summary")).to_contain_text("threshold 0.950")
    strict = api(served, "threshold=0.95")
    assert strict["total"] < default["total"], (strict["total"], default["total"])
    expect(page.get_by_test_id("dup-group")).to_have_count(strict["total"])
    same_groups(page, strict)
    assert "threshold=0.95" in page.url
    page.reload()  # the address keeps it
    expect(page.get_by_test_id("dup-summary")).to_contain_text("threshold 0.950")
    expect(page.get_by_test_id("dup-group")).to_have_count(strict["total"])
    # by keyboard: End takes the slider to 1.0, where only identical files and the closest copies remain
    page.get_by_test_id("dup-threshold").focus()
    page.keyboard.press("End")
    expect(page.get_by_test_id("dup-summary")).to_contain_text("threshold 1.000")
    same_groups(page, api(served, "threshold=1.0"))
    page.get_by_test_id("dup-threshold-reset").click()
    expect(page.get_by_test_id("dup-group")).to_have_count(default["total"])

    # the tier filter
    page.get_by_test_id("dup-tier").select_option("identical")
    identical = api(served, "tier=identical")
    assert identical["total"] >= 1
    expect(page.get_by_test_id("dup-group")).to_have_count(identical["total"])
    same_groups(page, identical)
    expect(page.get_by_test_id("dup-tier-label")).to_have_text(["Identical files"] * identical["total"])
    page.get_by_test_id("dup-tier").select_option("")

    # pages of two groups
    open_view(page, served, "#duplicates?limit=2")
    pages = -(-default["total"] // 2)
    assert pages >= 2
    info = page.get_by_test_id("dup-page-info")
    expect(info).to_have_text(f"Page 1 of {pages}")
    same_groups(page, api(served, "limit=2"))
    expect(page.get_by_test_id("dup-prev")).to_be_disabled()
    page.get_by_test_id("dup-next").click()
    expect(info).to_have_text(f"Page 2 of {pages}")
    same_groups(page, api(served, "limit=2&offset=2"))
    page.get_by_test_id("dup-prev").click()
    expect(info).to_have_text(f"Page 1 of {pages}")
    same_groups(page, api(served, "limit=2"))
    watch.check()
    assert not watch.http_errors, watch.http_errors


def test_more_like_this_from_a_group_and_back(browser, served):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    watch = PageWatch(page, served.url)
    page.goto(served.url + "/")
    page.get_by_test_id("tab-duplicates").click()
    first = page.get_by_test_id("dup-group").first
    path = first.get_by_test_id("dup-path").nth(1).inner_text()
    first.get_by_test_id("dup-open").nth(1).click()  # a thumbnail: its neighbours, as in the search
    expect(page.get_by_test_id("search-view")).to_be_visible()
    expect(page.get_by_test_id("query-label")).to_contain_text(path)
    expect(page.locator("[data-testid=results] [data-testid=card]").first).to_be_visible(timeout=30_000)
    expect(page.get_by_test_id("tab-search")).to_have_attribute("aria-current", "page")
    page.go_back()  # back to the groups
    expect(page.get_by_test_id("dup-view")).to_be_visible()
    expect(page.get_by_test_id("dup-group").first).to_be_visible()
    page.get_by_test_id("tab-search").click()
    expect(page.get_by_test_id("search-view")).to_be_visible()
    assert "#" not in page.url
    watch.check()


def test_building_and_uncalibrated_states(browser, served):
    """Both are states of the server this library does not reach on its own (its pairs are built,
    its model calibrated): the server's real answer is altered on its way to the page."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    watch = PageWatch(page, served.url)
    altered = {"building": 2, "uncalibrated": True}

    def alter(route):
        response = route.fetch()
        body = response.json()
        if altered["building"]:
            altered["building"] -= 1
            body.update(complete=False, progress={"done": 3, "total": 10})
        if altered["uncalibrated"]:
            body.update(calibrated=False)
        route.fulfill(response=response, body=json.dumps(body))

    page.route("**/api/duplicates?*", alter)
    page.route("**/api/duplicates", alter)
    page.goto(served.url + "/#duplicates")
    summary = page.get_by_test_id("dup-summary")
    expect(summary).to_contain_text("still building (3/10)")
    expect(page.get_by_test_id("dup-uncalibrated")).to_be_visible()
    expect(page.get_by_test_id("dup-uncalibrated")).to_contain_text("no calibrated duplicate threshold")
    # the page asks again until the listing is complete
    expect(summary).to_have_attribute("data-complete", "true", timeout=15_000)
    expect(summary).not_to_contain_text("still building")
    watch.check()


def test_phone_has_no_sideways_scroll_and_big_tap_targets(browser, served):
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    page = context.new_page()
    watch = PageWatch(page, served.url)
    open_view(page, served)
    expect(page.get_by_test_id("dup-group").first).to_be_visible()
    thumbs_loaded(page, 0)
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"the page scrolls sideways: {width}"
    small = page.evaluate(
        """() => [...document.querySelectorAll(
                '#dup-view button, #dup-view a, #dup-view select, #dup-view input, #dup-view summary, .tabs a')]
            .filter(e => e.offsetParent !== null)
            .map(e => [e.dataset.testid || e.id || e.tagName, e.getBoundingClientRect().height])
            .filter(([, h]) => h < 40)"""
    )
    assert not small, f"tap targets under 40 px: {small}"
    shot(page, "duplicates-phone.png")
    watch.check()
    context.close()


def test_not_duplicates_removes_the_group_for_good(browser, served):
    before = api(served)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    watch = PageWatch(page, served.url)
    open_view(page, served)
    groups = page.get_by_test_id("dup-group")
    expect(groups).to_have_count(before["total"])
    gone, kept = before["groups"][0], before["groups"][1]
    page.evaluate("window.__samePage = true")
    other = page.locator(f"[data-testid=dup-group][data-id='{kept['id']}']").element_handle()
    # by keyboard: the button is a button
    page.locator(f"[data-testid=dup-group][data-id='{gone['id']}']").get_by_test_id("dup-dismiss").focus()
    page.keyboard.press("Enter")
    expect(page.locator(f"[data-testid=dup-group][data-id='{gone['id']}']")).to_have_count(0)
    expect(groups).to_have_count(before["total"] - 1)
    assert page.evaluate("window.__samePage === true")  # no reload
    assert other.evaluate("e => e.isConnected")  # the other rows were left as they were
    expect(page.get_by_test_id("dup-summary")).to_contain_text(f"{before['total'] - 1} groups")
    expect(page.get_by_test_id("dup-message")).to_contain_text("not duplicates")

    after = api(served)
    assert gone["id"] not in [g["id"] for g in after["groups"]] and after["total"] == before["total"] - 1
    page.reload()
    expect(groups).to_have_count(after["total"])
    same_groups(page, after)

    # a row whose file went away meanwhile: the server's refusal is shown in the row, in the error style
    row = page.locator(f"[data-testid=dup-group][data-id='{kept['id']}']")
    victim = kept["images"][-1]["path"]
    (served.library / victim).unlink()
    served.wait_until(lambda: victim not in served.paths(), 60, "the watcher to drop " + victim)
    row.get_by_test_id("dup-dismiss").click()
    message = row.get_by_test_id("dup-group-message")
    expect(message).to_be_visible()
    expect(message).to_have_class(re.compile(r"\bmessage\b.*\berror\b"))  # the page's error style
    expect(message).to_contain_text("Could not mark them as not duplicates")
    expect(row).to_have_count(1)  # still there: nothing was dismissed
    watch.check()


# -- trash: only when allowed -------------------------------------------------------------------------


def test_move_to_trash_when_allowed(browser, tmp_path):
    from serving import Served

    library = tmp_path / "library"
    (library / "a").mkdir(parents=True)
    (library / "b").mkdir()
    _photo("rocket").save(library / "a/rocket.jpg", quality=92)
    shutil.copyfile(library / "a/rocket.jpg", library / "b/rocket copy.jpg")
    _photo("coins").save(library / "a/coins.jpg", quality=92)
    config = tmp_path / "simd.toml"
    config.write_text("allow_trash = true\n")
    home = tmp_path / "home"  # the freedesktop trash of this test, on the library's file system
    home.mkdir()
    extra = {"HOME": str(home), "XDG_DATA_HOME": str(home / ".local/share")}
    daemon = Served(library, tmp_path / "state", args=("--config", str(config)), extra_env=extra)
    try:
        data = wait_listed(daemon)
        assert data["allow_trash"] and data["total"] == 1, data
        group = data["groups"][0]
        keeper = next(i for i in group["images"] if i["keep"])
        other = next(i for i in group["images"] if not i["keep"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        watch = PageWatch(page, daemon.url)
        open_view(page, daemon)
        expect(page.get_by_test_id("dup-trash-note")).to_be_hidden()
        trash = page.get_by_test_id("dup-trash")
        expect(trash).to_have_text("Move 1 copy to trash")

        thumbs_loaded(page, 0)
        shot(page, "duplicates-trash.png")
        dialogs = []
        page.once("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))  # "Cancel" first
        trash.click()
        expect(page.get_by_test_id("dup-group")).to_have_count(1)
        assert dialogs and other["path"] in dialogs[0] and keeper["path"] in dialogs[0]
        assert (library / other["path"]).exists()

        page.once("dialog", lambda d: d.accept())
        listings = []
        page.on("response", lambda r: listings.append(r.url) if "/api/duplicates?" in r.url else None)
        trash.click()
        message = page.get_by_test_id("dup-message")
        expect(message).to_contain_text("Moved 1 file to the trash; kept " + keeper["path"])
        expect(page.get_by_test_id("dup-group")).to_have_count(0)
        assert not (library / other["path"]).exists() and (library / keeper["path"]).exists()
        trashed = list((home / ".local/share/Trash/files").iterdir())
        assert [p.name for p in trashed] == [Path(other["path"]).name]
        # the page empty, it lists again: the server may still list the group until its watcher has
        # seen the file go; the page must not show it again meanwhile, and stops asking once it is gone
        daemon.wait_until(lambda: api(daemon)["total"] == 0, 60, "an empty listing")
        page.wait_for_timeout(2500)  # more than the page's poll period (2 s)
        assert listings, "the page did not list again"
        n = len(listings)
        page.wait_for_timeout(2500)
        assert len(listings) == n, "the page keeps polling a listing that is up to date"
        expect(page.get_by_test_id("dup-group")).to_have_count(0)
        expect(page.get_by_test_id("dup-summary")).to_have_attribute("data-total", "0")
        expect(message).to_contain_text("Moved 1 file to the trash")  # what was done stays in view
        shot(page, "duplicates-trashed.png")
        page.reload()
        expect(page.get_by_test_id("dup-empty")).to_have_text("No duplicates found at this threshold.")
        expect(page.get_by_test_id("dup-message")).to_be_hidden()
        expect(page.get_by_test_id("dup-page-info")).to_have_text("")
        watch.check()
        assert daemon.stop() == 0
    finally:
        daemon.stop()
