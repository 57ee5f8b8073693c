// simd search page: upload / paste / drop an image, or click one, to see the most similar pictures.
// Vanilla JS, no build step, no network access beyond this server. Every text from the server is
// inserted with textContent (never innerHTML).
(() => {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const K = 10;
  const PAGE = 48;
  const TOKEN_KEY = "simd.token";
  const MAX_UPLOAD = Number(document.body.dataset.maxUpload) || 0;
  const MAX_MB = document.body.dataset.maxUploadMb || "?";
  const STATE_LABEL = {
    starting: "Starting", scanning: "Scanning", indexing: "Indexing", idle: "Idle", offline: "Library offline",
  };

  let token = "";
  try { token = localStorage.getItem(TOKEN_KEY) || ""; } catch (e) { token = ""; }
  let lastStatus = null;
  let searchSeq = 0;
  let browseSeq = 0;
  const browse = { offset: 0, q: "", total: 0 };
  let currentSimilar = ""; // path of the indexed image whose neighbours are shown ("" for none/upload)

  // -- the address bar: the search by an indexed image, the filter and the page live in the URL,
  // so Back, Forward, reload and bookmarks work (an upload cannot: its bytes are not kept).
  function readUrl() {
    const p = new URLSearchParams(location.search);
    const offset = parseInt(p.get("offset") || "0", 10);
    return { similar: p.get("similar") || "", q: (p.get("q") || "").trim(),
      offset: Number.isFinite(offset) && offset > 0 ? offset - (offset % PAGE) : 0 };
  }

  // `upload`: the entry of an upload search, pushed even when the address does not change, so that
  // Back from it returns to what was on screen before (the page without results, or a search).
  function writeUrl(push, upload = false) {
    const p = new URLSearchParams();
    if (currentSimilar) p.set("similar", currentSimilar);
    if (browse.q) p.set("q", browse.q);
    if (browse.offset) p.set("offset", String(browse.offset));
    // "/" reads better than %2F in an address a person may bookmark; the server decodes both
    const url = location.pathname + (p.toString() ? "?" + p.toString().replace(/%2F/g, "/") : "");
    const same = url === location.pathname + location.search;
    if (push && (upload || !same)) history.pushState(upload ? { upload: true } : null, "", url);
    else if (!same) history.replaceState(history.state, "", url);
  }

  // Back/Forward (and the first load): make the page say what the URL says.
  function applyUrl() {
    const u = readUrl();
    if (u.q !== browse.q || u.offset !== browse.offset) {
      browse.q = u.q;
      browse.offset = u.offset;
      $("filter").value = u.q;
      if (lastStatus) loadBrowse(); // before the first status, pollStatus loads it
    }
    if (u.similar && u.similar !== currentSimilar) {
      searchByPath(u.similar, null, false);
    } else if (!u.similar && !(history.state && history.state.upload)) {
      currentSimilar = "";
      searchSeq++; // a search still in flight must not show up any more
      $("results-section").classList.add("hidden");
      $("results").replaceChildren();
      hideMessage($("message"));
    }
  }
  window.addEventListener("popstate", applyUrl);

  // -- HTTP --------------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, opts = {}) {
    const headers = new Headers(opts.headers || {});
    if (token) headers.set("Authorization", "Bearer " + token);
    let res;
    try {
      res = await fetch(path, { ...opts, headers, cache: "no-store" });
    } catch (e) {
      throw new ApiError(0, "network", "The server cannot be reached.");
    }
    if (res.status === 401) showTokenForm();
    if (!res.ok) {
      let code = "http_" + res.status;
      let message = res.statusText || "request failed";
      try {
        const body = await res.json();
        if (body && body.error) { code = body.error.code; message = body.error.message; }
      } catch (e) { /* not JSON: keep the status text */ }
      throw new ApiError(res.status, code, message);
    }
    return res;
  }

  const apiJson = async (path, opts) => (await api(path, opts)).json();

  function friendly(err) {
    switch (err.status) {
      case 0: return "The server cannot be reached. Is simd still running?";
      case 401: return "This server needs a token: enter it in the form above.";
      case 404: return "That image is no longer in the library (" + err.message + ").";
      case 413: return "That file is larger than the " + MAX_MB + " MB upload limit.";
      case 415: return "simd cannot read that file as an image: " + err.message + ". "
        + "Try a JPEG, PNG, WebP, GIF, BMP or TIFF.";
      case 503: return "Not ready yet: " + err.message;
      default: return err.message || "Something went wrong.";
    }
  }

  // -- images (plain <img> when there is no token; fetched with the token otherwise) -------------
  const lazy = "IntersectionObserver" in window ? new IntersectionObserver((entries) => {
    for (const entry of entries) {
      if (entry.isIntersecting) {
        lazy.unobserve(entry.target);
        loadWithToken(entry.target);
      }
    }
  }, { rootMargin: "300px" }) : null;

  // onBroken(img) runs if the image cannot be shown (e.g. a file that does not decode: 415)
  function setImage(img, url, onBroken) {
    img.addEventListener("error", () => onBroken(img), { once: true });
    if (!token) { img.src = url; return; }
    img.dataset.src = url;
    img.simdBroken = onBroken;
    if (lazy) lazy.observe(img); else loadWithToken(img);
  }

  async function loadWithToken(img) {
    try {
      const blob = await (await api(img.dataset.src)).blob();
      const objectUrl = URL.createObjectURL(blob);
      img.addEventListener("load", () => URL.revokeObjectURL(objectUrl), { once: true });
      img.src = objectUrl;
    } catch (e) {
      img.simdBroken(img);
    }
  }

  function noPreview(img) {
    const holder = img.closest(".thumb-btn");
    if (!holder || holder.querySelector(".no-preview")) return;
    holder.classList.add("broken");
    const span = document.createElement("span");
    span.className = "no-preview";
    span.textContent = "No preview";
    holder.appendChild(span);
  }

  async function openOriginal(event, url) {
    if (!token) return; // a normal link
    event.preventDefault();
    const win = window.open("", "_blank");
    try {
      const blob = await (await api(url)).blob();
      const objectUrl = URL.createObjectURL(blob);
      if (win) win.location = objectUrl; else window.location = objectUrl;
    } catch (e) {
      if (win) win.close();
      showMessage($("message"), friendly(e), "error");
    }
  }

  // -- cards ---------------------------------------------------------------------------------------
  const basename = (p) => p.split("/").pop();
  // One decimal, but only identical features (up to float rounding) read as "100.0%": 0.9996 is
  // a re-saved copy, not the same picture.
  const percent = (s) => (s < 0.99999 && s * 100 >= 99.95 ? ">99.9" : (s * 100).toFixed(1)) + "%";

  const MATCH_TEXT = {
    "near-duplicate": "same photo, edited or re-saved",
    "similar": "similar subject",
    "weak": "only loosely alike",
  };

  function makeCard(item, score) {
    const node = $("card-template").content.firstElementChild.cloneNode(true);
    const name = basename(item.path);
    node.dataset.id = String(item.id);
    const img = node.querySelector("img");
    img.alt = name;
    setImage(img, item.thumb, noPreview);
    const open = node.querySelector(".thumb-btn");
    open.title = item.path;
    open.setAttribute("aria-label", "Find images similar to " + name);
    const nameEl = node.querySelector(".name");
    // a line may break after _ - . (camera and export names have no spaces) rather than mid-word:
    // <wbr> between the pieces, which the text itself (copy, innerText) does not contain
    nameEl.replaceChildren();
    for (const piece of name.split(/(?<=[_\-.])/)) {
      if (nameEl.firstChild) nameEl.appendChild(document.createElement("wbr"));
      nameEl.appendChild(document.createTextNode(piece));
    }
    nameEl.title = item.path;
    const folder = item.path.includes("/") ? item.path.slice(0, item.path.lastIndexOf("/")) : "";
    const folderEl = node.querySelector(".folder");
    folderEl.textContent = folder ? folder + "/" : "library root";
    folderEl.title = item.path;
    const scoreEl = node.querySelector(".score");
    if (typeof score === "number") {
      scoreEl.textContent = percent(score);
      const meaning = item.match ? MATCH_TEXT[item.match] + " \u2014 " : "";
      scoreEl.title = meaning + "cosine similarity " + score.toFixed(3) + " between the two pictures' "
        + "feature vectors (100% = identical features; the same score means the same for every query).";
      scoreEl.setAttribute("aria-label", "similarity " + percent(score) + (item.match ? ", " + item.match : ""));
      if (item.match) { scoreEl.dataset.match = item.match; node.dataset.match = item.match; }
      scoreEl.classList.remove("hidden");
    }
    const more = node.querySelector(".more");
    const failed = item.state === "failed";
    if (failed) {
      node.classList.add("failed");
      more.disabled = true;
      more.title = "Not indexed: " + (item.error || "could not be read");
      open.disabled = true;
      open.title = "Not indexed: " + (item.error || "could not be read");
    } else {
      more.setAttribute("aria-label", "More like " + name);
      more.addEventListener("click", () => searchById(item));
      open.addEventListener("click", () => searchById(item));
    }
    const link = node.querySelector(".open");
    link.href = item.url;
    link.setAttribute("aria-label", "Open the original of " + name);
    link.addEventListener("click", (e) => openOriginal(e, item.url));
    return node;
  }

  function showMessage(el, text, kind) {
    el.textContent = text;
    el.className = "message " + (kind || "info");
  }

  function hideMessage(el) {
    el.textContent = "";
    el.className = "message hidden";
  }

  // -- search ----------------------------------------------------------------------------------------
  function beginSearch(label, thumbUrl) {
    const seq = ++searchSeq;
    $("results-section").classList.remove("hidden");
    $("results-section").setAttribute("aria-busy", "true");
    $("query-label").textContent = label;
    // a fresh <img> each time: no listener or load of the previous query can touch it
    const old = $("query-thumb");
    if (old.dataset.objectUrl) URL.revokeObjectURL(old.dataset.objectUrl);
    const q = old.cloneNode(false);
    q.removeAttribute("src");
    delete q.dataset.objectUrl;
    delete q.dataset.src;
    old.replaceWith(q);
    q.classList.toggle("hidden", !thumbUrl);
    if (thumbUrl && thumbUrl.startsWith("blob:")) {
      q.dataset.objectUrl = thumbUrl;
      q.addEventListener("error", () => q.classList.add("hidden"), { once: true });
      q.src = thumbUrl;
    } else if (thumbUrl) {
      setImage(q, thumbUrl, () => q.classList.add("hidden"));
    }
    $("legend").classList.add("hidden");
    $("results-title").textContent = "Searching…";
    $("results").replaceChildren();
    showMessage($("message"), "Searching…", "info");
    return seq;
  }

  function renderResults(seq, data) {
    if (seq !== searchSeq) return;
    const section = $("results-section");
    section.removeAttribute("aria-busy");
    const grid = $("results");
    grid.replaceChildren();
    if (!data.results.length) {
      const empty = lastStatus && lastStatus.indexed === 0;
      showMessage($("message"), empty
        ? "The library has no indexed images yet. Results appear once indexing has made progress."
        : "No similar images found.", "info");
    } else {
      hideMessage($("message"));
      for (const r of data.results) grid.appendChild(makeCard(r, r.score));
    }
    renderLegend(data.results.some((r) => r.match));
    const took = typeof data.took_ms === "number" ? " · " + data.took_ms + " ms" : "";
    $("results-title").textContent = data.results.length
      ? data.results.length + " most similar" : "Most similar";
    $("results-title").dataset.count = String(data.results.length);
    const q = data.query || {};
    const qThumb = $("query-thumb");
    if (q.thumb && !qThumb.getAttribute("src") && !qThumb.dataset.src) {
      qThumb.classList.remove("hidden");
      setImage(qThumb, q.thumb, () => qThumb.classList.add("hidden"));
    }
    $("query-label").textContent = (q.path ? "to " + q.path : "to the uploaded " + (q.upload || "image"))
      + " · model " + data.model + took;
  }

  // What the score colours mean, under the results (only for models whose scores are calibrated).
  function renderLegend(show) {
    const legend = $("legend");
    legend.classList.toggle("hidden", !show);
    if (!show || legend.childElementCount) return;
    for (const [match, text] of Object.entries(MATCH_TEXT)) {
      const item = document.createElement("span");
      const chip = document.createElement("span");
      chip.className = "score";
      chip.dataset.match = match;
      chip.textContent = match;
      item.append(chip, text);
      legend.appendChild(item);
    }
  }

  function failSearch(seq, err) {
    if (seq !== searchSeq) return;
    $("results-section").removeAttribute("aria-busy");
    $("results").replaceChildren();
    $("results-title").textContent = "Could not search";
    $("results-title").dataset.count = "0";
    showMessage($("message"), friendly(err), "error");
    if (err.status === 404) loadBrowse(); // the image went away: so should its card
  }

  // By path, not id: the path is what a bookmark or the Back button can keep (a rename gives a file
  // a new id). `push`: a new history entry (a click); false when the URL already says it.
  async function searchByPath(path, thumb, push = true) {
    currentSimilar = path;
    writeUrl(push);
    const seq = beginSearch("to " + path, thumb);
    $("results-section").scrollIntoView({ behavior: "smooth", block: "start" });
    try {
      renderResults(seq, await apiJson("/api/similar?path=" + encodeURIComponent(path) + "&k=" + K));
    } catch (e) {
      failSearch(seq, e);
    }
    $("results-title").focus({ preventScroll: true });
  }

  const searchById = (item) => searchByPath(item.path, item.thumb);

  async function searchUpload(file) {
    if (!file) return;
    currentSimilar = ""; // an upload is not kept: the URL cannot bring it back, but Back returns
    writeUrl(true, true); // to what was there before
    const name = file.name || "pasted image";
    if (MAX_UPLOAD && file.size > MAX_UPLOAD) {
      const seq = beginSearch("to " + name, null);
      failSearch(seq, new ApiError(413, "too_large", "too large"));
      return;
    }
    const preview = file.type && file.type.startsWith("image/") ? URL.createObjectURL(file) : null;
    const seq = beginSearch("to the uploaded " + name, preview);
    const form = new FormData();
    form.append("image", file, name);
    try {
      renderResults(seq, await apiJson("/api/similar?k=" + K, { method: "POST", body: form }));
    } catch (e) {
      failSearch(seq, e);
    }
  }

  // -- browse ----------------------------------------------------------------------------------------
  async function loadBrowse() {
    const seq = ++browseSeq;
    const params = new URLSearchParams({ offset: String(browse.offset), limit: String(PAGE) });
    if (browse.q) params.set("q", browse.q);
    let data;
    try {
      data = await apiJson("/api/images?" + params.toString());
    } catch (e) {
      if (seq === browseSeq) showMessage($("browse-message"), friendly(e), "error");
      return;
    }
    if (seq !== browseSeq) return;
    browse.total = data.total;
    const grid = $("browse-grid");
    grid.replaceChildren();
    for (const item of data.images) grid.appendChild(makeCard(item, null));
    if (!data.total) {
      showMessage($("browse-message"), browse.q
        ? "No file or folder names contain “" + browse.q + "”."
        : lastStatus && lastStatus.state !== "idle" && lastStatus.state !== "offline"
          ? "Indexing the library: pictures appear here as they are indexed."
          : "The library is empty so far. Add pictures to the library folder; they are indexed automatically.",
      "info");
    } else {
      hideMessage($("browse-message"));
    }
    const first = data.total ? data.offset + 1 : 0;
    const last = data.offset + data.images.length;
    $("page-info").textContent = data.total ? first + "–" + last + " of " + data.total : "";
    $("prev-page").disabled = data.offset <= 0;
    $("next-page").disabled = last >= data.total;
  }

  let filterTimer = null;
  $("filter").addEventListener("input", () => {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(() => {
      browse.q = $("filter").value.trim();
      browse.offset = 0;
      writeUrl(false);
      loadBrowse();
    }, 250);
  });
  $("prev-page").addEventListener("click", () => {
    browse.offset = Math.max(0, browse.offset - PAGE);
    writeUrl(false);
    loadBrowse();
  });
  $("next-page").addEventListener("click", () => {
    if (browse.offset + PAGE < browse.total) browse.offset += PAGE;
    writeUrl(false);
    loadBrowse();
  });

  // -- status line -----------------------------------------------------------------------------------
  function renderStatus(st) {
    const el = $("status");
    el.dataset.state = st.state;
    el.dataset.indexed = String(st.indexed);
    const total = typeof st.total === "number" ? st.total : st.indexed + st.failed + st.pending;
    // While a scan runs its own counter says it all ("Indexing 128/318 (40%)"); the store's total
    // only grows batch by batch, so "N of total" would mislead until the scan is done.
    const p = st.progress;
    const busy = p && p.total && p.done < p.total;
    const parts = [busy
      ? (STATE_LABEL[st.state] || st.state) + " " + p.done + "/" + p.total
        + " (" + Math.floor((100 * p.done) / p.total) + "%)"
      : STATE_LABEL[st.state] || st.state,
    st.indexed + " indexed"];
    if (st.pending && !busy) parts.push(st.pending + " pending");
    if (st.model) parts.push("model " + st.model);
    $("status-text").textContent = parts.join(" · ");
    el.title = st.last_error ? "Last problem: " + st.last_error : (st.library || "");
    const failed = $("failed-link");
    if (st.failed) {
      failed.textContent = st.failed + " failed";
      failed.classList.remove("hidden");
    } else {
      failed.classList.add("hidden");
    }
    // Reload the library page when images were added, removed, renamed or re-embedded (the
    // revision changes; one added and one deleted leave the total as it was), but do not reshuffle
    // a full page under the reader's eyes while indexing runs: then only once it is idle again.
    const revision = st.revision !== undefined ? st.revision : String(total);
    const pageFull = $("browse-grid").children.length >= PAGE;
    const reload = !lastStatus || (lastStatus.revision !== revision && (!pageFull || st.state === "idle"))
      || (lastStatus.state !== "idle" && st.state === "idle");
    lastStatus = { ...st, total, revision };
    if (reload) loadBrowse();
  }

  async function pollStatus() {
    try {
      renderStatus(await apiJson("/api/status"));
    } catch (e) {
      $("status").dataset.state = e.status === 401 ? "locked" : "unreachable";
      $("status-text").textContent = e.status === 401 ? "Token needed" : friendly(e);
    } finally {
      setTimeout(pollStatus, document.hidden ? 10000 : 2000);
    }
  }

  // -- failed files ----------------------------------------------------------------------------------
  async function toggleErrors() {
    const panel = $("errors-panel");
    const open = panel.classList.contains("hidden");
    panel.classList.toggle("hidden", !open);
    $("failed-link").setAttribute("aria-expanded", String(open));
    if (!open) return;
    const list = $("errors-list");
    list.replaceChildren();
    try {
      const data = await apiJson("/api/errors");
      for (const item of data.errors) {
        const li = document.createElement("li");
        const path = document.createElement("code");
        path.textContent = item.path;
        const why = document.createElement("span");
        why.className = "muted";
        why.textContent = " — " + (item.error || "unknown error");
        li.append(path, why);
        list.appendChild(li);
      }
      if (!data.errors.length) list.textContent = "No failed files.";
    } catch (e) {
      list.textContent = friendly(e);
    }
    $("errors-close").focus();
  }
  $("failed-link").addEventListener("click", toggleErrors);
  $("errors-close").addEventListener("click", () => {
    $("errors-panel").classList.add("hidden");
    $("failed-link").setAttribute("aria-expanded", "false");
    $("failed-link").focus();
  });

  // -- token -----------------------------------------------------------------------------------------
  function showTokenForm() {
    const form = $("token-form");
    if (!form.classList.contains("hidden")) return;
    form.classList.remove("hidden");
    $("token-input").focus();
  }
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("token-input").value.trim();
    try { localStorage.setItem(TOKEN_KEY, token); } catch (err) { /* private mode: keep it in memory */ }
    $("token-form").classList.add("hidden");
    lastStatus = null;
    $("status-text").textContent = "Connecting…";
  });

  // -- upload: picker, drop, paste ------------------------------------------------------------------
  const dropzone = $("dropzone");
  const fileInput = $("file-input");
  dropzone.addEventListener("click", () => fileInput.click());
  dropzone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); fileInput.click(); }
  });
  fileInput.addEventListener("click", (e) => e.stopPropagation());
  fileInput.addEventListener("change", () => {
    const file = fileInput.files && fileInput.files[0];
    if (file) searchUpload(file);
    fileInput.value = "";
  });
  const hasFiles = (e) => e.dataTransfer && Array.from(e.dataTransfer.types || []).includes("Files");
  document.addEventListener("dragover", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dropzone.classList.add("dragging");
  });
  document.addEventListener("dragleave", (e) => {
    if (e.target === document.documentElement || e.target === dropzone || !e.relatedTarget) {
      dropzone.classList.remove("dragging");
    }
  });
  document.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dropzone.classList.remove("dragging");
    const file = e.dataTransfer.files && e.dataTransfer.files[0];
    if (file) searchUpload(file);
  });
  document.addEventListener("paste", (e) => {
    const items = (e.clipboardData && e.clipboardData.items) || [];
    for (const item of items) {
      if (item.kind === "file" && item.type.startsWith("image/")) {
        e.preventDefault();
        searchUpload(item.getAsFile());
        return;
      }
    }
  });

  applyUrl();
  pollStatus();
})();
