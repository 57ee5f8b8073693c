// simd search page: upload / paste / drop an image, or click one, to see the most similar pictures.
// Vanilla JS, no build step, no network access beyond this server. Every text from the server is
// inserted with textContent (never innerHTML). net.js (requests, token) and cards.js (cards, the
// list of failed files) are loaded before this file.
(() => {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const { ApiError, apiJson, friendly, setImage, isRefused, onTokenSaved } = window.simd.net;
  const { makeCard, renderLegend } = window.simd.cards;
  const K = 10;
  const MAX_UPLOAD = Number(document.body.dataset.maxUpload) || 0;
  const STATE_LABEL = {
    starting: "Starting", scanning: "Scanning", indexing: "Indexing", idle: "Idle", offline: "Library offline",
    retrying: "Cannot write the index; retrying",
  };

  let lastStatus = null;
  let searchSeq = 0;
  let browseSeq = 0;
  const browse = { offset: 0, q: "", total: 0, limit: 48 }; // limit: cards per page, see pageSize()
  let currentSimilar = ""; // path of the indexed image whose neighbours are shown ("" for none/upload)

  // -- the address bar: the search by an indexed image, the filter and the page live in the URL,
  // so Back, Forward, reload and bookmarks work (an upload cannot: its bytes are not kept).
  function readUrl() {
    const p = new URLSearchParams(location.search);
    const offset = parseInt(p.get("offset") || "0", 10);
    return { similar: p.get("similar") || "", q: (p.get("q") || "").trim(),
      offset: Number.isFinite(offset) && offset > 0 ? offset - (offset % browse.limit) : 0 };
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
    // a new search is the search view (no #duplicates); a replaced address keeps the view it is in
    if (push && (upload || !same || location.hash)) history.pushState(upload ? { upload: true } : null, "", url);
    else if (!same) history.replaceState(history.state, "", url + location.hash);
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

  function showMessage(el, text, kind) {
    el.textContent = text;
    el.className = "message " + (kind || "info");
  }

  function hideMessage(el) {
    el.textContent = "";
    el.className = "message hidden";
  }

  const showError = (text) => showMessage($("message"), text, "error");

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
      for (const r of data.results) grid.appendChild(makeCard(r, r.score, searchById, showError));
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
  // Cards per library page: as many as fill about three screens (12 on a phone, 48 on a desktop), so
  // that a page on a phone is not a scroll of metres. Each size divides the next: an offset in an
  // address (a bookmark, a rotated phone) is a page start whatever the screen.
  const PAGE_SIZES = [12, 24, 48];
  function pageSize() {
    const grid = $("browse-grid");
    const columns = getComputedStyle(grid).gridTemplateColumns.split(" ").filter(Boolean).length || 1;
    const rowHeight = grid.clientWidth / columns + 110; // a square thumbnail, the name, folder and button
    const fits = PAGE_SIZES.filter((n) => Math.ceil(n / columns) * rowHeight <= 3 * window.innerHeight);
    return fits.length ? fits[fits.length - 1] : PAGE_SIZES[0];
  }

  // Only a change of width (a rotated phone, a resized window) counts: a phone's address bar that
  // hides while scrolling changes the height, and must not reload the grid under the finger.
  let resizeTimer = null;
  let lastWidth = window.innerWidth;
  window.addEventListener("resize", () => {
    if (window.innerWidth === lastWidth) return;
    lastWidth = window.innerWidth;
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      const size = pageSize();
      if (size === browse.limit) return;
      browse.limit = size;
      browse.offset -= browse.offset % size;
      writeUrl(false);
      if (lastStatus) loadBrowse();
    }, 200);
  });

  // Indexed images only (state=ok): a file that could not be indexed has no picture to show; the
  // library says how many there are and links to their list.
  async function loadBrowse() {
    const seq = ++browseSeq;
    const params = new URLSearchParams({ offset: String(browse.offset), limit: String(browse.limit), state: "ok" });
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
    for (const item of data.images) grid.appendChild(makeCard(item, null, searchById, showError));
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
    browse.offset = Math.max(0, browse.offset - browse.limit);
    writeUrl(false);
    loadBrowse();
  });
  $("next-page").addEventListener("click", () => {
    if (browse.offset + browse.limit < browse.total) browse.offset += browse.limit;
    writeUrl(false);
    loadBrowse();
  });

  // -- status line -----------------------------------------------------------------------------------
  function renderStatus(st) {
    const el = $("status");
    if (st.retrying) st = Object.assign({}, st, { state: "retrying" }); // the index cannot be written now
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
    $("failed-link").textContent = st.failed + " failed";
    $("failed-link").classList.toggle("hidden", !st.failed);
    $("browse-failed").classList.toggle("hidden", !st.failed);
    $("browse-failed-count").textContent = st.failed === 1 ? "1 file could not be indexed and is"
      : st.failed + " files could not be indexed and are";
    // Reload the library page when images were added, removed, renamed or re-embedded (the
    // revision changes; one added and one deleted leave the total as it was), but do not reshuffle
    // a full page under the reader's eyes while indexing runs: then only once it is idle again.
    const revision = st.revision !== undefined ? st.revision : String(total);
    const pageFull = $("browse-grid").children.length >= browse.limit;
    const reload = !lastStatus || (lastStatus.revision !== revision && (!pageFull || st.state === "idle"))
      || (lastStatus.state !== "idle" && st.state === "idle");
    lastStatus = { ...st, total, revision };
    if (reload) loadBrowse();
  }

  let pollTimer = null;
  async function pollStatus() {
    clearTimeout(pollTimer);
    try {
      renderStatus(await apiJson("/api/status"));
    } catch (e) {
      $("status").dataset.state = e.status === 401 ? "locked" : "unreachable";
      $("status-text").textContent = e.status !== 401 ? friendly(e) : isRefused() ? "Token refused" : "Token needed";
    } finally {
      clearTimeout(pollTimer); // a poll started by a saved token meanwhile: one timer only
      pollTimer = setTimeout(pollStatus, document.hidden ? 10000 : 2000);
    }
  }

  // a token was entered: check it at once (the form stays until the server takes it), then reload
  onTokenSaved(() => {
    lastStatus = null;
    $("status-text").textContent = "Connecting…";
    pollStatus();
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

  window.simd.search = { searchById }; // duplicates.js: "More like this" from a group

  browse.limit = pageSize();
  applyUrl();
  pollStatus();
})();
