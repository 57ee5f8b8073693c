// simd page, the rows of the Duplicates view: one group of copies a row, each copy with its
// thumbnail, score to the keeper, size, dimensions and path, the keeper marked and why. Loaded after
// cards.js, before duplicates.js (`window.simd.dupRows`). Paths are user data: every text from the
// server is inserted with textContent (never innerHTML).
(() => {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const { setImage, openOriginal } = window.simd.net;
  const { noPreview, basename, percent } = window.simd.cards;

  const TIER_LABEL = { identical: "Identical files", "near-duplicate": "Near-duplicates" };
  const RULE_LABEL = {
    most_pixels: "most pixels", largest_file: "largest file", oldest: "oldest", newest: "newest",
    shortest_path: "shortest path", first_path: "first by path", only_member: "the only member",
  };

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

  // A group's row. `allowTrash`: offer "Move to trash"; `on`: {dismiss(g, node, button),
  // trash(g, others, node, button), search(image), error(text)}, what its buttons and links do.
  function makeGroup(g, allowTrash, on) {
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
    for (const img of g.images) list.appendChild(makeImage(img, on));

    const keeper = g.images.find((i) => i.keep) || g.images[0];
    const decisive = g.keep.steps.find((s) => s.rule === g.keep.decided_by);
    node.querySelector(".dup-why summary").textContent = "Suggested keeper: " + basename(keeper.path) + ", by "
      + ruleLabel(g.keep.decided_by) + (decisive && decisive.reason ? " (" + decisive.reason + ")" : "");
    const steps = node.querySelector(".dup-steps");
    for (const s of g.keep.steps) {
      const li = document.createElement("li");
      li.textContent = ruleLabel(s.rule) + ": " + (s.reason || "decided") + " ("
        + plural(s.kept.length, "copy", "copies") + " left)";
      steps.appendChild(li);
    }
    if (!g.keep.steps.length) node.querySelector(".dup-why summary").textContent += ".";

    const dismiss = node.querySelector(".dup-dismiss");
    dismiss.setAttribute("aria-label", "Not duplicates: stop listing these " + g.images.length
      + " pictures together");
    dismiss.addEventListener("click", () => on.dismiss(g, node, dismiss));
    const trash = node.querySelector(".dup-trash");
    const others = g.images.filter((i) => !i.keep);
    if (allowTrash && others.length) {
      trash.textContent = "Move " + plural(others.length, "copy", "copies") + " to trash";
      trash.setAttribute("aria-label", "Move the " + plural(others.length, "copy", "copies")
        + " not kept to the trash, keeping " + basename(keeper.path));
      trash.classList.remove("hidden");
      trash.addEventListener("click", () => on.trash(g, others, node, trash));
    } else {
      trash.remove(); // not allowed: the note above the groups says how to allow it
    }
    return node;
  }

  function makeImage(img, on) {
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
    link.addEventListener("click", (e) => openOriginal(e, img.url, on.error));
    const more = node.querySelector(".more");
    more.setAttribute("aria-label", "More like " + name);
    const search = () => on.search(img);
    more.addEventListener("click", search);
    open.addEventListener("click", search);
    return node;
  }


  window.simd.dupRows = { makeGroup, bytes, plural, TIER_LABEL };
})();
