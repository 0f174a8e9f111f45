/*!
 * InvertOrNot site snippet v0.1.0 (MIT). In dark mode, inverts this page's diagrams, plots and scanned
 * text and only dims its photos, as an InvertOrNot server decides. One tag, at the end of <body> or with
 * `defer`:
 *
 *   <script src="https://YOUR-SERVER/userscript/invertornot.js" data-api="https://YOUR-SERVER" defer></script>
 *
 * Attributes (all optional):
 *   data-api            the server's base URL (default: where this file came from)
 *   data-dark-selector  a selector matching <html> when the site's own dark mode is on, e.g. ".dark"
 *                       (default: Wikipedia's ".skin-theme-clientpref-night"; "" for none)
 *   data-light-selector a selector matching <html> when the site is forced light (default: Wikipedia's
 *                       ".skin-theme-clientpref-day"; "" for none)
 *   data-css="none"     don't inject the rules; link or copy invertornot.css instead (strict style-src CSP)
 *   data-cache="none"   don't keep answers in localStorage
 *   data-batch-size     URLs per request (1-100, default 50)
 * Without a site marker, the OS preference (prefers-color-scheme: dark) decides. Images with manual markup
 * (invert, invert-not, skin-invert, notheme... on the image or an ancestor) are never touched.
 * `window.InvertOrNot` offers refresh(), stop() and clearCache().
 */
(function () {
  'use strict';

  // Only while this script runs synchronously: read it first.
  const script = document.currentScript;

  // ---- invertornot core: begin (identical in invertornot.user.js and invertornot.js; a test checks) ----

  /** Version of the script; the userscript's @version says the same (a test checks). */
  const VERSION = '0.1.0';
  const ATTR = 'data-invertornot';
  // Set on <html> while dark mode is on: every rule below hangs off it, so light mode shows nothing.
  const ACTIVE_CLASS = 'invertornot-active';
  const STYLE_ID = 'invertornot-style';
  // Classes by which page authors decide by hand, on the image or an ancestor (the page proxy's lists in
  // proxy/rewrite.py). Such images are never touched. On one element "don't invert" wins: a wrongly
  // inverted photo is worse than a dimmed diagram.
  const MANUAL_INVERT = ['invert', 'invert-auto', 'skin-invert', 'skin-invert-image'];
  const MANUAL_INVERT_NOT = ['invert-not', 'invert-not-auto', 'notheme'];
  // "pending" (waiting for the API) and "error" (no answer) look like "don't invert": dimming a diagram is
  // harmless, inverting a photo is not. Hovering shows the original. Also shipped as invertornot.css.
  const CSS = [
    'html.invertornot-active img[data-invertornot="invert"] {',
    '  filter: grayscale(50%) invert(100%) brightness(95%) hue-rotate(180deg);',
    '}',
    'html.invertornot-active img[data-invertornot="invert-not"],',
    'html.invertornot-active img[data-invertornot="pending"],',
    'html.invertornot-active img[data-invertornot="error"] {',
    '  filter: grayscale(50%);',
    '}',
    'html.invertornot-active img[data-invertornot]:hover {',
    '  filter: none;',
    '}',
  ].join('\n');
  const HOUR = 3600 * 1000;
  const DAY = 24 * HOUR;
  const MAX_BACKOFF_MS = 30 * 60 * 1000;
  const DEFAULTS = {
    apiUrl: '',
    batchSize: 50, // URLs per request (the server accepts 100 by default)
    flushDelayMs: 50, // a page's images arrive together: wait this long to send them as one batch
    timeoutMs: 15000,
    minSize: 16, // images this small (both sides, in px) are spacers and icons: not worth a lookup
    cacheMaxEntries: 5000,
    cacheMaxAgeDays: 30,
    modelCheckHours: 24, // after this, cached answers are re-asked once, to learn of a new model
    retryAfterMs: 60000, // after a failed request, ask nothing for this long (doubling up to 30 min)
    darkSelector: '.skin-theme-clientpref-night', // <html> matching it: the site is dark (Wikipedia night)
    lightSelector: '.skin-theme-clientpref-day', // <html> matching it: the site is light, whatever the OS says
    injectCss: true,
  };

  /**
   * The engine shared by the userscript and the site snippet. `host` supplies what differs between them:
   * `config` (overrides of DEFAULTS), `postJson(url, body, timeoutMs)` resolving to {status, body} and
   * rejecting on network failure, `loadCache()`/`saveCache(data)` (data is null to clear) and `log(text)`.
   */
  function createInvertOrNot(host) {
    const config = Object.assign({}, DEFAULTS, host.config);
    const endpoint = String(config.apiUrl).replace(/\/+$/, '') + '/api/v1/classify';
    const root = document.documentElement;
    const darkQuery = window.matchMedia('(prefers-color-scheme: dark)');
    const handled = new WeakMap(); // img -> the URL it was marked for, so a changed src is noticed
    const waiting = new Map(); // URL -> Set of imgs waiting for its verdict
    const queue = []; // URLs not sent yet, in page order
    const failed = new Set(); // URLs the API could not judge during this page view: not asked again
    const imageObserver = new MutationObserver(onMutations);
    const modeObserver = new MutationObserver(update);
    let cache = emptyCache(null);
    let saving = Promise.resolve();
    let active = false;
    let started = false;
    let flushTimer = 0;
    let pumping = false;
    let pausedUntil = 0;
    let backoffMs = config.retryAfterMs;
    let warned = false;

    // -- dark mode ---------------------------------------------------------------------------------

    function matches(element, selector) {
      try {
        return Boolean(selector) && element.matches(selector);
      } catch (error) {
        return false; // a malformed selector from the settings must not break the page
      }
    }

    function isDark() {
      if (matches(root, config.lightSelector)) return false;
      if (matches(root, config.darkSelector)) return true;
      return darkQuery.matches;
    }

    /** Follow the mode: called at start, when the OS preference changes and when <html>'s class does. */
    function update() {
      const dark = isDark();
      if (dark === active) return;
      active = dark;
      root.classList.toggle(ACTIVE_CLASS, dark);
      if (!dark) {
        imageObserver.disconnect(); // marks stay, inert without ACTIVE_CLASS, ready for the next switch
        document.removeEventListener('load', onLoad, true);
        return;
      }
      if (config.injectCss && !document.getElementById(STYLE_ID)) {
        const style = document.createElement('style');
        style.id = STYLE_ID;
        style.textContent = CSS;
        (document.head || root).appendChild(style);
      }
      imageObserver.observe(root, { childList: true, subtree: true, attributes: true, attributeFilter: ['src', 'srcset'] });
      document.addEventListener('load', onLoad, true); // load does not bubble: listen in the capture phase
      collect(document);
      schedule();
    }

    // -- images ------------------------------------------------------------------------------------

    function onMutations(records) {
      for (const record of records) {
        if (record.type === 'childList') {
          for (const node of record.addedNodes) if (node.nodeType === 1) collect(node);
        } else if (record.target.tagName === 'IMG') {
          consider(record.target); // a lazy loader swapped in the real src
        }
      }
    }

    /** An image known only by srcset has no URL until it loads. Images already judged are left alone:
     *  a different srcset candidate (a 2x screen) is the same picture, not worth another request. */
    function onLoad(event) {
      if (event.target.tagName === 'IMG' && !handled.has(event.target)) consider(event.target);
    }

    function collect(node) {
      if (node.tagName === 'IMG') consider(node);
      else if (node.querySelectorAll) for (const img of node.querySelectorAll('img')) consider(img);
    }

    /** true / false: the author marked it (invert / don't); null: no manual markup on it or above. */
    function manualMarkup(img) {
      for (let element = img; element && element.nodeType === 1; element = element.parentElement) {
        // On the image itself, "invert"/"invert-not" next to data-invertornot are a machine's mark.
        const machine = element === img && element.hasAttribute(ATTR);
        const has = (name) => element.classList.contains(name) && !(machine && (name === 'invert' || name === 'invert-not'));
        if (MANUAL_INVERT_NOT.some(has)) return false;
        if (MANUAL_INVERT.some(has)) return true;
      }
      return null;
    }

    function imageUrl(img) {
      const raw = img.currentSrc || img.src;
      if (!raw) return null;
      try {
        const url = new URL(raw, document.baseURI);
        url.hash = '';
        // data: and blob: images cannot be fetched by the server.
        return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
      } catch (error) {
        return null;
      }
    }

    /** Shown this small, it is a spacer or an icon. The displayed size counts (img.width: the layout's, else
     *  the attribute's, else the file's); 0 means not known yet. */
    function isTiny(img) {
      return img.width > 0 && img.height > 0 && img.width <= config.minSize && img.height <= config.minSize;
    }

    function consider(img) {
      const url = imageUrl(img);
      if (!url || handled.get(img) === url) return;
      if (manualMarkup(img) !== null) return;
      const mark = img.getAttribute(ATTR);
      if (!handled.has(img) && (mark === 'invert' || mark === 'invert-not')) return; // marked by the page proxy
      if (isTiny(img)) return;
      handled.set(img, url);
      const known = lookup(url);
      if (known) {
        apply(img, known.invert ? 'invert' : 'invert-not', known);
      } else if (failed.has(url) || Date.now() < pausedUntil) {
        apply(img, 'error', null);
      } else {
        apply(img, 'pending', null);
        let images = waiting.get(url);
        if (!images) {
          images = new Set();
          waiting.set(url, images);
          queue.push(url);
        }
        images.add(img);
        schedule();
      }
    }

    function apply(img, state, verdict) {
      img.classList.remove('invert', 'invert-not');
      img.classList.add(state === 'invert' ? 'invert' : 'invert-not');
      img.setAttribute(ATTR, state);
      if (verdict) {
        img.setAttribute(ATTR + '-p', verdict.p.toFixed(3));
        img.setAttribute(ATTR + '-model', verdict.model);
      } else {
        img.removeAttribute(ATTR + '-p');
        img.removeAttribute(ATTR + '-model');
      }
    }

    /** Mark every image still waiting for `url` (and still showing it). */
    function settle(url, state, verdict) {
      for (const img of waiting.get(url) || []) if (handled.get(img) === url) apply(img, state, verdict);
      waiting.delete(url);
    }

    // -- the API -----------------------------------------------------------------------------------

    function schedule() {
      if (active && queue.length && !flushTimer && !pumping) flushTimer = setTimeout(pump, config.flushDelayMs);
    }

    /** Send the queue one capped batch at a time: one request in flight keeps the server's load fair. */
    async function pump() {
      flushTimer = 0;
      pumping = true;
      try {
        while (active && queue.length) await send(queue.splice(0, config.batchSize));
      } finally {
        pumping = false;
        schedule();
      }
    }

    async function send(urls) {
      let response = null;
      try {
        response = await host.postJson(endpoint, { urls: urls }, config.timeoutMs);
      } catch (error) {
        response = null;
      }
      const results = response && response.status === 200 && response.body && response.body.results;
      if (!Array.isArray(results) || results.length !== urls.length) {
        fail(urls, response ? 'answered HTTP ' + response.status : 'is unreachable');
        return;
      }
      backoffMs = config.retryAfterMs;
      const fresh = [];
      urls.forEach(function (url, index) {
        const result = results[index];
        if (result && typeof result.invert === 'boolean' && typeof result.model === 'string') {
          const verdict = { invert: result.invert, p: Number(result.p_invert) || 0, model: result.model };
          fresh.push([url, verdict]);
          settle(url, verdict.invert ? 'invert' : 'invert-not', verdict);
        } else {
          failed.add(url); // this image only (broken link, unsupported format): stays dimmed
          settle(url, 'error', null);
        }
      });
      if (fresh.length) remember(fresh);
    }

    /** The API failed as a whole: these and all queued images stay dimmed, and nothing is asked for a while. */
    function fail(urls, reason) {
      pausedUntil = Date.now() + backoffMs;
      backoffMs = Math.min(backoffMs * 2, MAX_BACKOFF_MS);
      for (const url of urls.concat(queue.splice(0))) {
        failed.add(url);
        settle(url, 'error', null);
      }
      if (!warned) {
        warned = true; // one line per page view, however many images fail
        host.log('InvertOrNot: the API at ' + endpoint + ' ' + reason + '; images stay dimmed');
      }
    }

    // -- the cache: {version, model, modelSeenAt, entries: {url: [invert 0|1, p_invert, savedAt]}} -------

    function emptyCache(model) {
      return { version: 1, model: model, modelSeenAt: 0, entries: {} };
    }

    function readCache(data) {
      const ok = data && data.version === 1 && typeof data.model === 'string' && data.entries && typeof data.entries === 'object';
      return ok ? { version: 1, model: data.model, modelSeenAt: Number(data.modelSeenAt) || 0, entries: data.entries } : emptyCache(null);
    }

    function lookup(url) {
      const entry = cache.entries[url];
      const now = Date.now();
      if (!Array.isArray(entry) || !cache.model) return null;
      // Answers are only as good as the model that gave them: re-ask now and then to learn of a new one.
      if (now - cache.modelSeenAt > config.modelCheckHours * HOUR) return null;
      if (now - entry[2] > config.cacheMaxAgeDays * DAY) return null;
      return { invert: entry[0] === 1, p: Number(entry[1]) || 0, model: cache.model };
    }

    function remember(verdicts) {
      const now = Date.now();
      for (const [url, verdict] of verdicts) {
        if (verdict.model !== cache.model) cache = emptyCache(verdict.model); // a new model voids every answer
        cache.modelSeenAt = now;
        cache.entries[url] = [verdict.invert ? 1 : 0, Math.round(verdict.p * 1000) / 1000, now];
      }
      saving = saving.then(persist).catch(function () {}); // storage full or gone: the page still works
    }

    async function persist() {
      // Another tab may have saved since this one loaded: keep its newer answers from the same model.
      const stored = readCache(await host.loadCache());
      if (stored.model === cache.model) {
        for (const [url, entry] of Object.entries(stored.entries)) {
          const mine = cache.entries[url];
          if (Array.isArray(entry) && (!mine || mine[2] < entry[2])) cache.entries[url] = entry;
        }
      }
      trim();
      await host.saveCache(cache);
    }

    function trim() {
      const oldest = Date.now() - config.cacheMaxAgeDays * DAY;
      const live = Object.entries(cache.entries).filter(([, entry]) => Array.isArray(entry) && entry[2] >= oldest);
      live.sort((a, b) => b[1][2] - a[1][2]); // newest first
      cache.entries = Object.fromEntries(live.slice(0, config.cacheMaxEntries));
    }

    // -- lifecycle ---------------------------------------------------------------------------------

    async function start() {
      if (started) return;
      started = true;
      try {
        cache = readCache(await host.loadCache());
      } catch (error) {
        cache = emptyCache(null);
      }
      darkQuery.addEventListener('change', update);
      modeObserver.observe(root, { attributes: true, attributeFilter: ['class'] });
      update();
    }

    /** Stop watching and remove every mark this engine made (manual markup was never touched). */
    function stop() {
      started = false;
      active = false;
      clearTimeout(flushTimer);
      flushTimer = 0;
      queue.length = 0;
      waiting.clear();
      darkQuery.removeEventListener('change', update);
      document.removeEventListener('load', onLoad, true);
      modeObserver.disconnect();
      imageObserver.disconnect();
      root.classList.remove(ACTIVE_CLASS);
      for (const img of document.querySelectorAll('img[' + ATTR + ']')) {
        if (!handled.has(img)) continue;
        handled.delete(img);
        img.classList.remove('invert', 'invert-not');
        for (const name of [ATTR, ATTR + '-p', ATTR + '-model']) img.removeAttribute(name);
      }
    }

    function clearCache() {
      cache = emptyCache(null);
      saving = saving.then(() => host.saveCache(null)).catch(function () {});
      return saving;
    }

    return {
      version: VERSION,
      start: start,
      stop: stop,
      clearCache: clearCache,
      isActive: () => active,
      refresh: () => active && collect(document),
    };
  }

  // ---- invertornot core: end ----

  // ---- the snippet's host: fetch (the server answers CORS) and localStorage --------------------------

  const CACHE_KEY = 'invertornot.cache';
  const data = script ? script.dataset : {};

  function storage() {
    try {
      return data.cache === 'none' ? null : window.localStorage; // throws in sandboxed frames
    } catch (error) {
      return null;
    }
  }

  function snippetConfig() {
    const config = { injectCss: data.css !== 'none' };
    let origin = location.origin;
    try {
      if (script && script.src) origin = new URL(script.src, document.baseURI).origin;
    } catch (error) {
      origin = location.origin;
    }
    config.apiUrl = data.api || origin;
    if (data.darkSelector !== undefined) config.darkSelector = data.darkSelector;
    if (data.lightSelector !== undefined) config.lightSelector = data.lightSelector;
    const batchSize = parseInt(data.batchSize, 10);
    if (batchSize >= 1 && batchSize <= 100) config.batchSize = batchSize;
    return config;
  }

  function postJson(url, body, timeoutMs) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    return fetch(url, {
      method: 'POST',
      mode: 'cors',
      credentials: 'omit', // the API needs no cookies; never send the reader's
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
      signal: controller.signal,
    })
      .then((response) => response.json().then((parsed) => ({ status: response.status, body: parsed }), () => ({ status: response.status, body: null })))
      .finally(() => clearTimeout(timer));
  }

  const engine = createInvertOrNot({
    config: snippetConfig(),
    postJson: postJson,
    loadCache: async function () {
      const store = storage();
      try {
        return store ? JSON.parse(store.getItem(CACHE_KEY) || 'null') : null;
      } catch (error) {
        return null; // corrupt: start afresh
      }
    },
    saveCache: async function (cache) {
      const store = storage();
      if (!store) return;
      if (cache === null) store.removeItem(CACHE_KEY);
      else store.setItem(CACHE_KEY, JSON.stringify(cache)); // may throw when full: the engine shrugs
    },
    log: (text) => console.debug(text),
  });

  window.InvertOrNot = { version: engine.version, refresh: engine.refresh, stop: engine.stop, clearCache: engine.clearCache };
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', () => engine.start(), { once: true });
  else engine.start();
})();
