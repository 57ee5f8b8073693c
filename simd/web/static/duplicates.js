// simd page, the Duplicates view (#duplicates): groups of copies from GET /api/duplicates, one row each,
// with the copy simd suggests keeping and why; "Not duplicates" and "Move to trash" per group; a
// threshold, a tier filter and pages. Loaded after app.js. Paths are user data: every text from the
// server is inserted with textContent (never innerHTML).
(() => {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const { apiJson, friendly, setImage, openOriginal } = window.simd.net;
  const { noPreview, basename, percent } = window.simd.cards;
  const { searchById } = window.simd.search;

  const HASH = "#duplicates";
  const DEFAULT_LIMIT = 20;
  const POLL_MS = 2000; // while the pairs of an existing index are still being built
  const TIER_LABEL = { identical: "Identical files", "near-duplicate": "Near-duplicates" };
  const RULE_LABEL = {
    most_pixels: "most pixels", largest_file: "largest file", oldest: "oldest", newest: "newest",
    shortest_path: "shortest path", first_path: "first by path", only_member: "the only member",
  };

  // What is asked: `threshold` null = the model's default (the response says which it is).
  const view = { threshold: null, tier: "", offset: 0, limit: DEFAULT_LIMIT };
  let data = null; // the last response, kept up to date as groups are dismissed or trashed
  let seq = 0;
  let pollTimer = null;
  let sliderTimer = null;

  // -- small formatting helpers ----------------------------------------------------------------------
  // 1024 to the KB, as the keep rules' reasons (simd/keeprules.py) count: the two must agree
  function bytes(n) {
    if (!(n > 0)) return "0 bytes";
    const units = ["bytes", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? String(n) : n.toFixed(1)) + " " + units[i];
  }
  // a path may break after / _ - . rather than mid-name (<wbr>, which its text does not contain)
  function breakable(el, text) {
    el.replaceChildren();
    for (const piece of text.split(/(?<=[/_\-.])/)) {
      if (el.firstChild) el.appendChild(document.createElement("wbr"));
      el.appendChild(document.createTextNode(piece));
    }
  }
  const plural = (n, one, many) => n + " " + (n === 1 ? one : many);
  const ruleLabel = (rule) => {
    const [name, arg] = rule.split(":");
    return (RULE_LABEL[name] || name.replace(/_/g, " ")) + (arg ? " " + arg : "");
  };

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
    data = got;
    render();
    if (!data.complete) pollTimer = setTimeout(() => { if (isOn()) load(); }, POLL_MS);
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
    for (const g of data.groups) list.appendChild(makeGroup(g));
    if (!data.total) {
      showMessage(data.complete ? "No duplicates found at this threshold."
        : "No duplicates found at this threshold so far: still comparing the library.", "info");
    } else if (!$("dup-message").dataset.keep) { // what an action just did stays; an old error goes
      hideMessage();
    }
    delete $("dup-message").dataset.keep;
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
    el.textContent = parts.join(" · ");
    el.title = "Reclaimable: what the copies not kept take, in every group listed (all pages). "
      + "Model " + data.model + "; the least score within a group is " + data.floor.toFixed(3) + ".";
  }

  function renderPager() {
    const pages = Math.max(1, Math.ceil(data.total / view.limit));
    const page = Math.floor(view.offset / view.limit) + 1;
    $("dup-page-info").textContent = data.total ? "Page " + page + " of " + pages : "";
    $("dup-prev").disabled = view.offset <= 0;
    $("dup-next").disabled = view.offset + view.limit >= data.total;
  }

  // -- one group -------------------------------------------------------------------------------------
  function makeGroup(g) {
    const node = $("dup-group-template").content.firstElementChild.cloneNode(true);
    node.dataset.id = g.id;
    node.dataset.tier = g.tier;
    const tier = node.querySelector(".tier");
    tier.textContent = TIER_LABEL[g.tier] || g.tier;
    tier.dataset.tier = g.tier;
    const scores = g.tier === "identical" ? "same bytes"
      : "scores " + percent(g.min_score) + (g.max_score !== g.min_score ? "–" + percent(g.max_score) : "");
    node.querySelector(".dup-facts").textContent = [plural(g.images.length, "image", "images"), scores,
      bytes(g.reclaimable_bytes) + " reclaimable"].join(" · ");
    const list = node.querySelector(".dup-images");
    for (const img of g.images) list.appendChild(makeImage(img));

    const keeper = g.images.find((i) => i.keep) || g.images[0];
    const decisive = g.keep.steps.find((s) => s.rule === g.keep.decided_by);
    node.querySelector(".dup-why summary").textContent = "Suggested keeper: " + basename(keeper.path) + ", by "
      + ruleLabel(g.keep.decided_by) + (decisive && decisive.reason ? " (" + decisive.reason + ")" : "");
    const steps = node.querySelector(".dup-steps");
    for (const s of g.keep.steps) {
      const li = document.createElement("li");
      li.textContent = ruleLabel(s.rule) + ": " + (s.reason || "decided") + " — " + plural(s.kept.length, "left", "left");
      steps.appendChild(li);
    }
    if (!g.keep.steps.length) node.querySelector(".dup-why summary").textContent += ".";

    const dismiss = node.querySelector(".dup-dismiss");
    dismiss.setAttribute("aria-label", "Not duplicates: stop listing these " + g.images.length + " pictures together");
    dismiss.addEventListener("click", () => dismissGroup(g, node, dismiss));
    const trash = node.querySelector(".dup-trash");
    const others = g.images.filter((i) => !i.keep);
    if (data.allow_trash && others.length) {
      trash.textContent = "Move " + plural(others.length, "copy", "copies") + " to trash";
      trash.setAttribute("aria-label", "Move the " + plural(others.length, "copy", "copies")
        + " not kept to the trash, keeping " + basename(keeper.path));
      trash.classList.remove("hidden");
      trash.addEventListener("click", () => trashGroup(g, others, node, trash));
    } else {
      trash.remove(); // not allowed: the note above the groups says how to allow it
    }
    return node;
  }

  function makeImage(img) {
    const node = $("dup-image-template").content.firstElementChild.cloneNode(true);
    const name = basename(img.path);
    node.dataset.id = String(img.id);
    node.dataset.keep = String(img.keep);
    const pic = node.querySelector("img");
    pic.alt = name;
    setImage(pic, img.thumb, noPreview);
    const open = node.querySelector(".thumb-btn");
    open.title = img.path;
    open.setAttribute("aria-label", "Find images similar to " + name);
    const badge = node.querySelector(".dup-badge");
    badge.textContent = img.keep ? "Keep" : img.identical_to_keeper ? "Identical copy" : "Copy";
    badge.dataset.kind = img.keep ? "keep" : img.identical_to_keeper ? "identical" : "copy";
    const score = node.querySelector(".score");
    if (img.keep) {
      score.remove();
    } else {
      score.textContent = img.identical_to_keeper ? "100%" : percent(img.score);
      score.title = img.identical_to_keeper ? "the same bytes as the keeper"
        : "cosine similarity " + img.score.toFixed(3) + " to the keeper's features (100% = identical features)";
      score.setAttribute("aria-label", "similarity to the keeper " + score.textContent);
    }
    const dims = img.width && img.height ? img.width + "×" + img.height : "size unknown";
    node.querySelector(".dup-meta").textContent = [bytes(img.bytes), dims, (img.format || "").toUpperCase()]
      .filter(Boolean).join(" · ");
    const path = node.querySelector(".dup-path");
    breakable(path, img.path);
    path.title = img.path;
    const link = node.querySelector(".open");
    link.href = img.url;
    link.setAttribute("aria-label", "Open the original of " + name);
    link.addEventListener("click", (e) => openOriginal(e, img.url, (text) => showMessage(text, "error")));
    const more = node.querySelector(".more");
    more.setAttribute("aria-label", "More like " + name);
    const search = () => { showSearch(false); searchById(img); };
    more.addEventListener("click", search);
    open.addEventListener("click", search);
    return node;
  }

  // -- actions ---------------------------------------------------------------------------------------
  const postJson = (path, body) => apiJson(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });

  // A group gone from this page (dismissed, trashed): the totals follow without a new listing; a page
  // left empty loads again (the next groups move up).
  function removeGroup(g, node) {
    node.remove();
    data.groups = data.groups.filter((x) => x !== g);
    data.total = Math.max(0, data.total - 1);
    data.total_images = Math.max(0, data.total_images - g.images.length);
    data.reclaimable_bytes = Math.max(0, data.reclaimable_bytes - g.reclaimable_bytes);
    renderSummary();
    renderPager();
    if (!data.groups.length) {
      $("dup-message").dataset.keep = "1";
      load();
    }
    $("dup-title").focus({ preventScroll: true }); // the button pressed is gone: focus stays in the view
  }

  async function dismissGroup(g, node, button) {
    button.disabled = true;
    hideMessage(node.querySelector(".dup-group-message"));
    try {
      await postJson("/api/duplicates/dismiss", { images: g.images.map((i) => i.id) });
    } catch (e) {
      button.disabled = false;
      showMessage("Could not mark them as not duplicates: " + friendly(e), "error", node.querySelector(".dup-group-message"));
      return;
    }
    showMessage("Marked " + plural(g.images.length, "picture", "pictures") + " (" + basename(g.images[0].path)
      + "…) as not duplicates: they are not listed together again.", "info");
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
      result = await postJson("/api/duplicates/trash", { images: others.map((i) => i.id) });
    } catch (e) {
      button.disabled = false;
      showMessage("Nothing was moved to the trash: " + friendly(e), "error", message);
      return;
    }
    const failed = result.failed || [];
    if (!failed.length) {
      showMessage("Moved " + plural(result.trashed.length, "file", "files") + " to the trash; kept "
        + keeper.path + ".", "info");
      removeGroup(g, node);
      return;
    }
    button.disabled = false;
    showMessage("Moved " + plural(result.trashed.length, "file", "files") + " to the trash. Not moved: "
      + failed.map((f) => f.path + " (" + f.error + ")").join("; "), "error", message);
  }

  // -- controls --------------------------------------------------------------------------------------
  function changed() {
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
