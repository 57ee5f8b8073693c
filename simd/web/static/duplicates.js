// simd page, the Duplicates view (#duplicates): groups of copies from GET /api/duplicates, one row each,
// with the copy simd suggests keeping and why; "Not duplicates" and "Move to trash" per group; a
// threshold, a tier filter and pages. Loaded after app.js. Paths are user data: every text from the
// server is inserted with textContent (never innerHTML).
(() => {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const { apiJson, friendly, onTokenSaved } = window.simd.net;
  const { basename } = window.simd.cards;
  const { makeGroup, bytes, plural, TIER_LABEL } = window.simd.dupRows;
  const { searchById } = window.simd.search;

  const HASH = "#duplicates";
  const DEFAULT_LIMIT = 20;
  const POLL_MS = 2000; // while the pairs of an existing index are still being built
  const VERIFY_POLL_MS = 10000; // while only the verification of pairs by their pixels goes on
  // What is asked: `threshold` null = the model's default (the response says which it is).
  const view = { threshold: null, tier: "", offset: 0, limit: DEFAULT_LIMIT };
  let data = null; // the last response, kept up to date as groups are dismissed or trashed
  let seq = 0;
  // Groups trashed from this page: the server lists them until its watcher has seen the files go
  // (a moment later), and the page must not show them again meanwhile.
  const trashed = new Set();
  let pollTimer = null;
  let sliderTimer = null;

  // -- the view in the address: #duplicates?threshold=0.8&tier=identical&offset=20&limit=20 ----------
  const isOn = () => location.hash === HASH || location.hash.startsWith(HASH + "?");

  function readHash() {
    const q = location.hash.indexOf("?");
    const p = new URLSearchParams(q >= 0 ? location.hash.slice(q + 1) : "");
    const num = (name) => (p.get(name) !== null && p.get(name) !== "" ? Number(p.get(name)) : NaN);
    const limit = Math.trunc(num("limit"));
    const offset = Math.trunc(num("offset"));
    view.threshold = Number.isFinite(num("threshold")) ? num("threshold") : null;
    view.tier = TIER_LABEL[p.get("tier")] ? p.get("tier") : "";
    view.limit = limit >= 1 && limit <= 500 ? limit : DEFAULT_LIMIT;
    view.offset = offset > 0 ? offset : 0;
  }

  function query() {
    const p = new URLSearchParams();
    if (view.threshold !== null) p.set("threshold", String(view.threshold));
    if (view.tier) p.set("tier", view.tier);
    if (view.offset) p.set("offset", String(view.offset));
    if (view.limit !== DEFAULT_LIMIT) p.set("limit", String(view.limit));
    return p;
  }

  // The threshold, tier and page are replaced in the address (reload and bookmarks keep them);
  // only switching between the views makes history entries.
  function writeHash() {
    const q = query().toString();
    history.replaceState(history.state, "", location.pathname + location.search + HASH + (q ? "?" + q : ""));
    routed = location.hash + true;
  }

  // -- switching views -------------------------------------------------------------------------------
  function setView(on) {
    $("dup-view").classList.toggle("hidden", !on);
    $("search-view").classList.toggle("hidden", on);
    $(on ? "tab-search" : "tab-duplicates").removeAttribute("aria-current");
    $(on ? "tab-duplicates" : "tab-search").setAttribute("aria-current", "page");
    document.title = on ? "simd · duplicates" : "simd · similar images";
    clearTimeout(pollTimer);
  }

  let routed = null; // the address last shown: a hash change fires both hashchange and popstate
  function route() {
    const on = isOn();
    if (location.hash + on === routed) return;
    routed = location.hash + on;
    setView(on);
    if (!on) return;
    readHash();
    load();
  }

  // `push`: a new history entry for the search view (its tab); false for a search started here,
  // which makes its own entry (?similar=...), so that Back returns to these groups.
  function showSearch(push) {
    if (push) {
      history.pushState(null, "", location.pathname + location.search);
      route();
    } else {
      routed = null;
      setView(false);
    }
  }

  $("tab-search").addEventListener("click", (e) => {
    e.preventDefault();
    if (isOn()) showSearch(true);
  });
  window.addEventListener("hashchange", route);
  window.addEventListener("popstate", route);
  onTokenSaved(() => { if (isOn()) load(); }); // a 401 asked for it: list again with it

  // -- loading a page of groups ----------------------------------------------------------------------
  async function load() {
    const my = ++seq;
    clearTimeout(pollTimer);
    $("dup-view").setAttribute("aria-busy", "true");
    let got;
    try {
      got = await apiJson("/api/duplicates?" + query().toString());
    } catch (e) {
      if (my !== seq) return;
      $("dup-view").removeAttribute("aria-busy");
      $("dup-summary").textContent = "Could not list the duplicates.";
      delete $("dup-message").dataset.keep;
      showMessage(friendly(e), "error");
      if (e.status === 503 || e.status === 0) pollTimer = setTimeout(load, 2 * POLL_MS); // not ready yet
      return;
    }
    if (my !== seq || !isOn()) return;
    $("dup-view").removeAttribute("aria-busy");
    // a page past the end (groups dismissed meanwhile, an old bookmark): the last page instead
    if (got.total && got.offset >= got.total) {
      view.offset = Math.max(0, (Math.ceil(got.total / view.limit) - 1) * view.limit);
      writeHash();
      load();
      return;
    }
    const stale = got.groups.filter((g) => trashed.has(g.id));
    trashed.clear();
    for (const g of stale) trashed.add(g.id);
    data = got;
    for (const g of stale) forget(g);
    render();
    // Verification can take hours on a large library, and each listing after new verdicts regroups it
    // (seconds at 100k): poll it less often than a build that is about to finish.
    const wait = data.complete && !stale.length ? VERIFY_POLL_MS : POLL_MS;
    if (!data.complete || verifying() || stale.length) pollTimer = setTimeout(() => { if (isOn()) load(); }, wait);
  }

  function showMessage(text, kind, el = $("dup-message")) {
    el.textContent = text;
    el.classList.remove("hidden", "info", "error");
    el.classList.add(kind || "info");
  }
  const hideMessage = (el = $("dup-message")) => { el.textContent = ""; el.classList.add("hidden"); };

  function render() {
    renderControls();
    renderSummary();
    const list = $("dup-groups");
    list.replaceChildren();
    for (const g of data.groups) list.appendChild(makeGroup(g, Boolean(data.allow_trash), actions));
    $("dup-empty").classList.toggle("hidden", data.total > 0);
    $("dup-empty").textContent = data.complete ? "No duplicates found at this threshold."
      : "No duplicates found at this threshold so far: still comparing the library.";
    if (!$("dup-message").dataset.keep) hideMessage(); // what an action did stays (see said()); an old error goes
    renderPager();
  }

  function renderControls() {
    const slider = $("dup-threshold");
    slider.min = String(data.lowest);
    if (!sliderTimer) slider.value = String(data.threshold); // not under a finger being dragged
    $("dup-threshold-value").textContent = Number(slider.value).toFixed(3);
    $("dup-threshold-reset").disabled = view.threshold === null;
    $("dup-tier").value = view.tier;
    const calibrated = $("dup-uncalibrated");
    calibrated.classList.toggle("hidden", data.calibrated);
    calibrated.textContent = data.calibrated ? "" : "The model " + data.model + " has no calibrated duplicate "
      + "threshold: which pictures are copies is a guess here. Check each group before acting on it, and "
      + "move the threshold to see more or fewer.";
    $("dup-trash-note").classList.toggle("hidden", Boolean(data.allow_trash));
  }

  // Pairs of the ambiguous band link only once their pixels are verified: while some wait, groups of
  // crops and thumbnails are still to appear (the page polls, and says so).
  const verifying = () => Boolean(data.verification && data.verification.state === "verifying"
    && data.verification.pending > 0);

  function renderSummary() {
    const el = $("dup-summary");
    el.dataset.total = String(data.total);
    el.dataset.complete = String(data.complete);
    const parts = [plural(data.total, "group", "groups"), plural(data.total_images, "image", "images"),
      bytes(data.reclaimable_bytes) + " reclaimable", "threshold " + data.threshold.toFixed(3)];
    if (!data.complete) {
      const p = data.progress;
      parts.push("still building" + (p && p.total ? " (" + p.done + "/" + p.total + ")" : "…"));
    }
    if (verifying()) {
      const v = data.verification;
      parts.push("checking " + v.pending + " possible copies by their pixels; they join their groups once "
        + "confirmed");
    }
    el.textContent = parts.join(" · ");
    el.title = "Reclaimable: what the copies not kept take, in every group listed (all pages). "
      + "Model " + data.model + "; the least score within a group is " + data.floor.toFixed(3) + ".";
  }

  function renderPager() {
    const pages = Math.max(1, Math.ceil(data.total / view.limit));
    const page = Math.floor(view.offset / view.limit) + 1;
    $("dup-page-info").textContent = data.total ? "Page " + page + " of " + pages : "";
    $("dup-pager").classList.toggle("hidden", pages <= 1 && view.offset === 0); // one page: nothing to turn
    $("dup-prev").disabled = view.offset <= 0;
    $("dup-next").disabled = view.offset + view.limit >= data.total;
  }

  // -- actions ---------------------------------------------------------------------------------------
  const postJson = (path, body) => apiJson(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });

  // A group gone from this page (dismissed, trashed): the totals follow without a new listing; a page
  // left empty loads again (the next groups move up).
  function forget(g) {
    data.groups = data.groups.filter((x) => x.id !== g.id);
    data.total = Math.max(0, data.total - 1);
    data.total_images = Math.max(0, data.total_images - g.images.length);
    data.reclaimable_bytes = Math.max(0, data.reclaimable_bytes - g.reclaimable_bytes);
  }

  function removeGroup(g, node) {
    node.remove();
    forget(g);
    renderSummary();
    renderPager();
    if (!data.groups.length) load();
    $("dup-title").focus({ preventScroll: true }); // the button pressed is gone: focus stays in the view
  }

  // What an action did, over the groups: it stays while this listing does (its pages, its polls), and
  // goes with a new threshold, tier or page.
  function said(text) {
    showMessage(text, "info");
    $("dup-message").dataset.keep = "1";
  }

  async function dismissGroup(g, node, button) {
    button.disabled = true;
    const message = node.querySelector(".dup-group-message");
    hideMessage(message);
    try {
      await postJson("/api/duplicates/dismiss", { images: g.images.map((i) => i.id) });
    } catch (e) {
      button.disabled = false;
      showMessage("Could not mark them as not duplicates: " + friendly(e), "error", message);
      return;
    }
    said("Marked " + plural(g.images.length, "picture", "pictures") + " (" + basename(g.images[0].path)
      + "…) as not duplicates: they are not listed together again.");
    removeGroup(g, node);
  }

  async function trashGroup(g, others, node, button) {
    const keeper = g.images.find((i) => i.keep) || g.images[0];
    const list = others.map((i) => "  " + i.path).join("\n");
    if (!window.confirm("Move " + plural(others.length, "file", "files") + " to the trash, keeping "
      + keeper.path + "?\n\n" + list)) return;
    button.disabled = true;
    const message = node.querySelector(".dup-group-message");
    hideMessage(message);
    let result;
    try {
      // the group as listed: at the threshold it was listed at, not the model's default
      const body = { images: others.map((i) => i.id) };
      if (data && Number.isFinite(data.threshold)) body.threshold = data.threshold;
      result = await postJson("/api/duplicates/trash", body);
    } catch (e) {
      button.disabled = false;
      showMessage("Nothing was moved to the trash: " + friendly(e), "error", message);
      return;
    }
    const failed = result.failed || [];
    if (!failed.length) {
      said("Moved " + plural(result.trashed.length, "file", "files") + " to the trash; kept " + keeper.path + ".");
      trashed.add(g.id);
      removeGroup(g, node);
      return;
    }
    button.disabled = false;
    showMessage("Moved " + plural(result.trashed.length, "file", "files") + " to the trash. Not moved: "
      + failed.map((f) => f.path + " (" + f.error + ")").join("; "), "error", message);
  }

  const actions = {
    dismiss: dismissGroup,
    trash: trashGroup,
    search: (img) => { showSearch(false); searchById(img); },
    error: (text) => showMessage(text, "error"),
  };

  // -- controls --------------------------------------------------------------------------------------
  function changed() {
    delete $("dup-message").dataset.keep;
    view.offset = 0;
    writeHash();
    load();
  }

  $("dup-threshold").addEventListener("input", () => {
    $("dup-threshold-value").textContent = Number($("dup-threshold").value).toFixed(3);
    clearTimeout(sliderTimer);
    sliderTimer = setTimeout(() => {
      sliderTimer = null;
      view.threshold = Number($("dup-threshold").value);
      changed();
    }, 350);
  });
  $("dup-threshold-reset").addEventListener("click", () => {
    view.threshold = null;
    changed();
  });
  $("dup-tier").addEventListener("change", () => {
    view.tier = $("dup-tier").value;
    changed();
  });
  $("dup-controls").addEventListener("submit", (e) => e.preventDefault());
  function turnPage(step) {
    delete $("dup-message").dataset.keep;
    view.offset = Math.max(0, Math.min(view.offset + step * view.limit, data ? data.total - 1 : 0));
    view.offset -= view.offset % view.limit;
    writeHash();
    load();
    $("dup-title").scrollIntoView({ block: "start" });
  }
  $("dup-prev").addEventListener("click", () => turnPage(-1));
  $("dup-next").addEventListener("click", () => turnPage(1));

  route();
})();
