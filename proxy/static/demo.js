// The demo page: classify an uploaded image or an image URL with this server's API, show the original,
// inverted and dimmed versions side by side, and let people report a wrong verdict. No build step, no
// dependencies; every failure shows the API's own error ({"error": {"code", "message"}}).
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  let current = null; // {verdict, url, objectUrl}: what is shown now (url: null for an upload)
  let busy = false;

  /** fetch → {status, body}; body is the parsed JSON or null. A network failure is status 0. */
  async function callApi(path, init) {
    let response;
    try {
      response = await fetch(path, Object.assign({ credentials: 'same-origin', headers: { Accept: 'application/json' } }, init));
    } catch (error) {
      return { status: 0, body: null };
    }
    let body = null;
    try {
      body = await response.json();
    } catch (error) {
      body = null;
    }
    return { status: response.status, body: body };
  }

  /** A readable line and the raw JSON for an API error. */
  function describeError(status, body) {
    if (status === 0) return { line: 'The server could not be reached.', json: '' };
    const error = body && body.error;
    const line = error && error.code
      ? 'HTTP ' + status + ' ' + error.code + ': ' + error.message
      : 'HTTP ' + status + ': unexpected answer from the server';
    return { line: line, json: body ? JSON.stringify(body, null, 2) : '' };
  }

  function setStatus(text, failed) {
    $('status').textContent = text;
    $('status').classList.toggle('failed', Boolean(failed));
  }

  function showError(status, body) {
    const described = describeError(status, body);
    setStatus(described.line, true);
    $('error').textContent = described.json;
    $('error').hidden = !described.json;
  }

  /** Classify, then show the image from `url` (a pasted URL) or `objectUrl` (the user's own file). */
  async function classify(label, path, init, url, objectUrl) {
    if (busy) return;
    busy = true;
    setStatus('Classifying ' + label + '…');
    $('error').hidden = true;
    try {
      const { status, body } = await callApi(path, init);
      if (status !== 200 || !body || typeof body.invert !== 'boolean') {
        if (objectUrl) URL.revokeObjectURL(objectUrl);
        showError(status, body);
        return;
      }
      show(body, url, objectUrl);
      setStatus('');
    } finally {
      busy = false;
    }
  }

  function classifyFile(file) {
    if (!file) return;
    const objectUrl = URL.createObjectURL(file);
    const init = { method: 'POST', headers: { 'Content-Type': file.type || 'application/octet-stream' }, body: file };
    classify(file.name || 'the image', '/api/v1/classify/image', init, null, objectUrl);
  }

  function classifyUrl(url) {
    classify(url, '/api/v1/classify?url=' + encodeURIComponent(url), { method: 'GET' }, url, null);
  }

  function show(verdict, url, objectUrl) {
    if (current && current.objectUrl) URL.revokeObjectURL(current.objectUrl);
    current = { verdict: verdict, url: url, objectUrl: objectUrl };
    for (const id of ['img-original', 'img-inverted', 'img-dimmed']) $(id).src = url || objectUrl;
    $('verdict-text').textContent = verdict.invert ? 'Invert' : "Don't invert (dim)";
    $('confidence').textContent = (verdict.confidence * 100).toFixed(1) + ' %';
    $('p-invert').textContent = verdict.p_invert.toFixed(3);
    $('verdict-model').textContent = verdict.model;
    $('source').textContent = verdict.source + (verdict.cached ? ' (cached)' : '');
    $('sha256').textContent = verdict.sha256;
    $('panel-inverted').classList.toggle('chosen', verdict.invert);
    $('panel-dimmed').classList.toggle('chosen', !verdict.invert);
    $('report-button').disabled = false;
    $('report-button').textContent = verdict.invert ? 'Wrong: should not be inverted' : 'Wrong: should be inverted';
    $('report-status').textContent = '';
    $('report-status').className = '';
    $('report-error').hidden = true;
    $('result').hidden = false;
  }

  async function report() {
    if (!current) return;
    const note = $('report-note').value.trim();
    // A URL lets the server fetch and keep the image for retraining; an upload is named by its hash (the
    // server may not hold it, and then says so).
    const correction = current.url ? { url: current.url } : { sha256: current.verdict.sha256 };
    correction.invert = !current.verdict.invert;
    if (note) correction.note = note;
    $('report-button').disabled = true;
    const { status, body } = await callApi('/api/v1/corrections', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify(correction),
    });
    if (status === 202 && body && body.id !== undefined) {
      $('report-status').textContent = 'Thank you: report ' + body.id + ' is ' + body.status + '.';
      $('report-status').className = 'sent';
      $('report-error').hidden = true;
      return;
    }
    const described = describeError(status, body);
    $('report-status').textContent = 'Not reported: ' + described.line;
    $('report-status').className = 'failed';
    $('report-error').textContent = described.json;
    $('report-error').hidden = !described.json;
    $('report-button').disabled = false;
  }

  function wire() {
    $('file').addEventListener('change', (event) => classifyFile(event.target.files[0]));
    $('url-form').addEventListener('submit', (event) => {
      event.preventDefault();
      classifyUrl($('url').value.trim());
    });
    $('report-form').addEventListener('submit', (event) => {
      event.preventDefault();
      report();
    });
    const zone = $('upload-form');
    zone.addEventListener('submit', (event) => event.preventDefault());
    zone.addEventListener('dragover', (event) => {
      event.preventDefault();
      zone.classList.add('dragging');
    });
    zone.addEventListener('dragleave', () => zone.classList.remove('dragging'));
    zone.addEventListener('drop', (event) => {
      event.preventDefault();
      zone.classList.remove('dragging');
      classifyFile(event.dataTransfer.files[0]);
    });
    document.addEventListener('paste', (event) => {
      const file = Array.from(event.clipboardData ? event.clipboardData.files : []).find((f) => f.type.startsWith('image/'));
      if (file) classifyFile(file);
    });
    callApi('/healthz').then(({ status, body }) => {
      $('model-version').textContent = status === 200 && body ? body.model : 'unavailable';
    });
  }

  wire();
})();
