// simd search page: the cards of results and of the library, the legend of the score colours, and the
// list of files that could not be indexed. Loaded after net.js and before app.js (`window.simd.cards`).
(() => {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const { apiJson, friendly, setImage, openOriginal } = window.simd.net;

  function noPreview(img) {
    const holder = img.closest(".thumb-btn");
    if (!holder || holder.querySelector(".no-preview")) return;
    holder.classList.add("broken");
    const span = document.createElement("span");
    span.className = "no-preview";
    span.textContent = "No preview";
    holder.appendChild(span);
  }

  const basename = (p) => p.split("/").pop();
  // One decimal, but only identical features (up to float rounding) read as "100.0%": 0.9996 is
  // a re-saved copy, not the same picture.
  const percent = (s) => (s < 0.99999 && s * 100 >= 99.95 ? ">99.9" : (s * 100).toFixed(1)) + "%";

  const MATCH_TEXT = {
    "near-duplicate": "same photo, edited or re-saved",
    "similar": "similar subject",
    "weak": "only loosely alike",
  };

  // A card of an indexed image; `score` null in the library. onOpen(item): search by it;
  // onError(text): its original could not be fetched.
  function makeCard(item, score, onOpen, onError) {
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
    more.setAttribute("aria-label", "More like " + name);
    more.addEventListener("click", () => onOpen(item));
    open.addEventListener("click", () => onOpen(item));
    const link = node.querySelector(".open");
    link.href = item.url;
    link.setAttribute("aria-label", "Open the original of " + name);
    link.addEventListener("click", (e) => openOriginal(e, item.url, onError));
    return node;
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

  // -- failed files ----------------------------------------------------------------------------------
  // The list of files that could not be indexed, with why; `simd errors` prints the same. An original
  // gets a link only when the server can serve it (e.g. a truncated JPEG, which a browser shows in part).
  async function toggleErrors(show) {
    const panel = $("errors-panel");
    const open = typeof show === "boolean" ? show : panel.classList.contains("hidden");
    panel.classList.toggle("hidden", !open);
    $("failed-link").setAttribute("aria-expanded", String(open));
    if (!open) return;
    panel.scrollIntoView({ block: "nearest" });
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
        if (item.url) {
          const link = document.createElement("a");
          link.className = "link-small open";
          link.href = item.url;
          link.target = "_blank";
          link.rel = "noopener noreferrer";
          link.textContent = "Original ↗";
          const failed = (text) => { why.textContent = " — " + item.error + " (" + text + ")"; };
          link.addEventListener("click", (e) => openOriginal(e, item.url, failed));
          li.append(" ", link);
        }
        list.appendChild(li);
      }
      if (!data.errors.length) list.textContent = "No failed files.";
    } catch (e) {
      list.textContent = friendly(e);
    }
    $("errors-close").focus({ preventScroll: true });
  }
  $("failed-link").addEventListener("click", () => toggleErrors());
  $("browse-failed-link").addEventListener("click", () => toggleErrors(true));
  $("errors-close").addEventListener("click", () => {
    $("errors-panel").classList.add("hidden");
    $("failed-link").setAttribute("aria-expanded", "false");
    $("failed-link").focus();
  });

  window.simd.cards = { makeCard, renderLegend, noPreview, basename, percent };
})();
