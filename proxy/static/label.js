// The labelling page: a grid of images shown inverted; flag the bad ones, Enter saves and moves on.
// Plain script, no build step. The API token lives in sessionStorage (this tab only) and is sent as
// "Authorization: Bearer"; images are fetched with it and shown as blob: URLs.
"use strict";

(() => {
  const TOKEN_KEY = "invertornot-label-token";
  const QUEUE_KEY = "invertornot-label-queue";
  const PAGE_SIZE = 16;
  // Physical key positions (KeyboardEvent.code), so the 4x4 grid maps onto the keyboard in any layout.
  const KEY_CODES = [
    "Digit1", "Digit2", "Digit3", "Digit4",
    "KeyQ", "KeyW", "KeyE", "KeyR",
    "KeyA", "KeyS", "KeyD", "KeyF",
    "KeyZ", "KeyX", "KeyC", "KeyV",
  ];
  const KEY_NAMES = "1234QWERASDFZXCV";
  const COLUMNS = 4;
  const MARK_TEXT = { ok: "invert", flag: "don't invert", skip: "skip" };

  const $ = (id) => document.getElementById(id);
  const state = {
    token: sessionStorage.getItem(TOKEN_KEY),
    queue: sessionStorage.getItem(QUEUE_KEY) || "review",
    items: [],
    marks: [],
    selected: 0,
    blobUrls: [],
    busy: false,
    labelled: 0,
    startedAt: null,
  };

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, options = {}) {
    const headers = Object.assign({ Authorization: `Bearer ${state.token}` }, options.headers || {});
    const response = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
    if (!response.ok) {
      let message = `HTTP ${response.status}`;
      try {
        const body = await response.json();
        if (body && body.error) message = body.error.message;
      } catch (ignored) {
        // not JSON: keep the status line
      }
      throw new ApiError(response.status, message);
    }
    return response;
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  function showStats() {
    const seconds = state.startedAt === null ? 0 : (performance.now() - state.startedAt) / 1000;
    const rate = seconds > 0 ? state.labelled / seconds : 0;
    $("stats").textContent = `${state.labelled} labelled · ${rate.toFixed(1)} images/s`;
  }

  // -- signing in ------------------------------------------------------------------------------------

  function showLogin(message) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    $("work").hidden = true;
    $("session").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("token").focus();
  }

  function showWork() {
    $("login").hidden = true;
    $("session").hidden = false;
    $("work").hidden = false;
    $("queue").value = state.queue;
  }

  async function signIn(event) {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    state.token = token;
    try {
      await loadPage(); // the first queue request proves the token
    } catch (error) {
      showLogin(error.status === 401 ? "This token was not accepted." : error.message);
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
  }

  // -- the grid ----------------------------------------------------------------------------------------

  function caption(item) {
    const parts = [];
    if (item.suggested_invert !== undefined) {
      parts.push(`reported: ${item.suggested_invert ? "invert" : "don't invert"}`);
    }
    if (typeof item.p_invert === "number") {
      parts.push(`model: ${item.model_invert ? "invert" : "don't"} (p ${item.p_invert.toFixed(2)})`);
    }
    if (item.label !== undefined && item.label !== null) {
      parts.push(`label: ${item.label ? "invert" : "don't invert"}`);
    }
    return parts.join(" · ");
  }

  function renderTile(item, index) {
    const tile = document.createElement("figure");
    tile.className = "tile";
    tile.setAttribute("role", "gridcell");
    tile.dataset.index = String(index);
    tile.dataset.sha256 = item.sha256;
    tile.dataset.mark = "ok";
    const key = document.createElement("span");
    key.className = "key";
    key.textContent = KEY_NAMES[index] || "";
    const mark = document.createElement("span");
    mark.className = "mark";
    mark.textContent = MARK_TEXT.ok;
    const image = document.createElement("img");
    image.alt = `image ${index + 1}`;
    image.decoding = "async";
    const text = document.createElement("figcaption");
    text.className = "caption";
    text.textContent = caption(item);
    text.title = item.url || item.sha256;
    tile.append(image, key, mark, text);
    tile.addEventListener("click", () => {
      select(index);
      toggle(index, "flag");
    });
    tile.addEventListener("contextmenu", (event) => {
      event.preventDefault();
      select(index);
      toggle(index, "skip");
    });
    return tile;
  }

  function tileAt(index) {
    return $("grid").querySelector(`.tile[data-index="${index}"]`);
  }

  function toggle(index, mark) {
    if (index >= state.items.length) return;
    state.marks[index] = state.marks[index] === mark ? "ok" : mark;
    const tile = tileAt(index);
    tile.dataset.mark = state.marks[index];
    tile.querySelector(".mark").textContent = MARK_TEXT[state.marks[index]];
  }

  function select(index) {
    if (!state.items.length) return;
    const previous = tileAt(state.selected);
    if (previous) previous.classList.remove("selected");
    state.selected = Math.max(0, Math.min(state.items.length - 1, index));
    tileAt(state.selected).classList.add("selected");
  }

  async function showImage(item, tile) {
    const response = await api(item.image);
    const url = URL.createObjectURL(await response.blob());
    state.blobUrls.push(url);
    tile.querySelector("img").src = url;
  }

  async function loadPage() {
    const params = new URLSearchParams({ queue: state.queue, limit: String(PAGE_SIZE) });
    const response = await api(`/api/v1/label/queue?${params}`);
    const page = await response.json();
    showWork();
    for (const url of state.blobUrls) URL.revokeObjectURL(url);
    state.blobUrls = [];
    state.items = page.items;
    state.marks = page.items.map(() => "ok");
    state.selected = 0;
    const grid = $("grid");
    grid.replaceChildren(...page.items.map(renderTile));
    $("empty").hidden = page.items.length > 0;
    if (page.items.length) select(0);
    if (state.startedAt === null && page.items.length) state.startedAt = performance.now();
    showStats();
    const pending = page.queue === "review" ? ` · ${page.pending} waiting for review` : "";
    setStatus(`${page.items.length} image(s) from “${page.queue}”, model ${page.model}${pending}`);
    const tiles = Array.from(grid.children);
    const shown = await Promise.allSettled(page.items.map((item, index) => showImage(item, tiles[index])));
    const failed = shown.filter((result) => result.status === "rejected").length;
    if (failed) setStatus(`${failed} image(s) could not be loaded; they will be skipped unless you mark them`);
    grid.dataset.loaded = "true"; // for tests and for people: every image has been asked for
  }

  async function savePage() {
    if (state.busy) return;
    state.busy = true;
    try {
      const labels = [];
      state.items.forEach((item, index) => {
        if (state.marks[index] !== "skip") labels.push({ sha256: item.sha256, invert: state.marks[index] !== "flag" });
      });
      if (labels.length) {
        const response = await api("/api/v1/labels", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ queue: state.queue, labels }),
        });
        const outcome = await response.json();
        state.labelled += outcome.stored;
      }
      $("grid").dataset.loaded = "false";
      await loadPage();
    } catch (error) {
      if (error.status === 401) showLogin("The token is no longer accepted.");
      else setStatus(`Not saved: ${error.message}`);
    } finally {
      state.busy = false;
    }
  }

  // -- keyboard ------------------------------------------------------------------------------------------

  function onKeyDown(event) {
    if ($("work").hidden || event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target instanceof HTMLInputElement || target instanceof HTMLSelectElement) return;
    const position = KEY_CODES.indexOf(event.code);
    let handled = true;
    if (position >= 0) {
      select(position);
      toggle(position, event.shiftKey ? "skip" : "flag");
    } else if (event.code === "Enter" || event.code === "NumpadEnter") {
      savePage();
    } else if (event.code === "Space") {
      toggle(state.selected, "flag");
    } else if (event.code === "Period") {
      toggle(state.selected, "skip");
    } else if (event.code === "ArrowRight") {
      select(state.selected + 1);
    } else if (event.code === "ArrowLeft") {
      select(state.selected - 1);
    } else if (event.code === "ArrowDown") {
      select(state.selected + COLUMNS);
    } else if (event.code === "ArrowUp") {
      select(state.selected - COLUMNS);
    } else if (event.code === "KeyO") {
      document.body.classList.add("originals");
    } else {
      handled = false;
    }
    if (handled) event.preventDefault();
  }

  function onKeyUp(event) {
    if (event.code === "KeyO") document.body.classList.remove("originals");
  }

  function start() {
    $("login").addEventListener("submit", signIn);
    $("logout").addEventListener("click", () => showLogin("Signed out."));
    $("save").addEventListener("click", savePage);
    $("queue").addEventListener("change", () => {
      state.queue = $("queue").value;
      sessionStorage.setItem(QUEUE_KEY, state.queue);
      $("queue").blur(); // keys go back to the grid
      loadPage().catch((error) => setStatus(error.message));
    });
    document.addEventListener("keydown", onKeyDown);
    document.addEventListener("keyup", onKeyUp);
    if (state.token) {
      loadPage().catch((error) => showLogin(error.status === 401 ? "Please sign in again." : error.message));
    } else {
      showLogin("");
    }
  }

  start();
})();
