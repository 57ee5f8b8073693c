// simd search page, the part that talks to the server: requests with the token (when the server has
// one), the token form, error messages, and pictures fetched with the token. Loaded before app.js,
// which uses `window.simd.net`. Every text from the server is inserted with textContent.
(() => {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "simd.token";
  const MAX_MB = document.body.dataset.maxUploadMb || "?";

  let token = "";
  try { token = localStorage.getItem(TOKEN_KEY) || ""; } catch (e) { token = ""; }
  let tokenSource = token ? "saved" : ""; // "saved" (in this browser) or "entered" (just now)
  let refused = false; // the server answered 401 to the token we have
  const onTokenSaved = [];

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, opts = {}) {
    const headers = new Headers(opts.headers || {});
    const sent = token;
    if (sent) headers.set("Authorization", "Bearer " + sent);
    let res;
    try {
      res = await fetch(path, { ...opts, headers, cache: "no-store" });
    } catch (e) {
      throw new ApiError(0, "network", "The server cannot be reached.");
    }
    if (sent === token) { // an answer to a token replaced meanwhile says nothing about the new one
      if (res.status === 401) unauthorized();
      else if (res.ok && path.startsWith("/api/")) accepted();
    }
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
      case 401: return refused
        ? "The server refused the token: enter the right one in the form above."
        : "This server needs a token: enter it in the form above.";
      case 404: return "That image is no longer in the library (" + err.message + ").";
      case 413: return "That file is larger than the " + MAX_MB + " MB upload limit.";
      case 415: return "simd cannot read that file as an image: " + err.message + ". "
        + "Try a JPEG, PNG, WebP, GIF, BMP, TIFF or HEIC.";
      case 503: return "Not ready yet: " + err.message;
      default: return err.message || "Something went wrong.";
    }
  }

  // -- the token form: shown on a 401, with what went wrong; hidden once a request gets through ----
  function unauthorized() {
    const form = $("token-form");
    const wasRefused = refused;
    refused = Boolean(token);
    const text = !token ? "This server needs a token. Enter the token from the server's configuration "
      + "(token or SIMD_TOKEN); it is kept in this browser only."
      : tokenSource === "entered" ? "The server refused that token (401 Unauthorized). Check it and enter it again."
        : "The server refused the token saved in this browser (401 Unauthorized): it may have changed. "
          + "Enter the current one.";
    const message = $("token-message");
    message.textContent = text;
    message.classList.toggle("error", refused);
    const input = $("token-input");
    input.setAttribute("aria-invalid", String(refused));
    if (form.classList.contains("hidden") || refused !== wasRefused) {
      form.classList.remove("hidden");
      input.focus();
      input.select(); // typing replaces a refused token
    }
  }

  function accepted() {
    refused = false;
    $("token-input").removeAttribute("aria-invalid");
    $("token-form").classList.add("hidden");
  }

  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("token-input").value.trim();
    tokenSource = "entered";
    refused = false;
    try { localStorage.setItem(TOKEN_KEY, token); } catch (err) { /* private mode: keep it in memory */ }
    const message = $("token-message");
    message.textContent = "Checking the token…";
    message.classList.remove("error");
    for (const fn of onTokenSaved) fn();
  });

  // -- pictures: a plain <img> when there is no token, fetched with the token otherwise -------------
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

  // A link to an original: a normal link without a token; fetched with the token otherwise.
  async function openOriginal(event, url, onError) {
    if (!token) return;
    event.preventDefault();
    const win = window.open("", "_blank");
    try {
      const blob = await (await api(url)).blob();
      const objectUrl = URL.createObjectURL(blob);
      if (win) win.location = objectUrl; else window.location = objectUrl;
    } catch (e) {
      if (win) win.close();
      onError(friendly(e));
    }
  }

  window.simd = {
    net: {
      ApiError, api, apiJson, friendly, setImage, openOriginal,
      isRefused: () => refused,
      onTokenSaved: (fn) => onTokenSaved.push(fn),
    },
  };
})();
