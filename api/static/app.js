// clipmorph web page: upload a video or image, pick a style, follow the job, watch and compare the result.
// Plain browser JavaScript, no build step; talks to the /v1 REST API of the same server.
"use strict";

const TOKEN_KEY = "clipmorph.apiToken";
const POLL_MS = 1000;
const POLL_MISSES_ALLOWED = 10;
const IMAGE_PREVIEW_DELAY_MS = 400;
const TERMINAL = new Set(["finished", "failed", "cancelled", "canceled", "stopped"]);

const $ = (id) => document.getElementById(id);

const state = {
  mode: "video",
  file: null,
  styles: [],
  run: 0, // increases on every submission so stale callbacks can tell they are stale
  xhr: null,
  statusUrl: null,
  objectUrls: [],
  previewUrls: [],
  imageTimer: null,
};

// ---------- API access ----------

class ApiError extends Error {
  constructor(status, detail, context) {
    super(explain(status, detail, context));
    this.status = status;
    this.detail = detail;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function authHeaders() {
  const t = token();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

// Relative to the page, so the UI also works behind a reverse proxy that adds a path prefix.
function apiUrl(path) {
  return new URL(path, document.baseURI).href;
}

async function errorFromResponse(res, context) {
  let detail = null;
  try {
    const text = await res.text();
    try {
      detail = JSON.parse(text).detail ?? text;
    } catch {
      detail = text;
    }
  } catch {
    // body unreadable: the status alone has to do
  }
  return new ApiError(res.status, detail, context);
}

async function getJson(url, context) {
  let res;
  try {
    res = await fetch(url, { headers: { ...authHeaders(), Accept: "application/json" }, cache: "no-store" });
  } catch {
    throw new ApiError(0, null, context);
  }
  if (!res.ok) throw await errorFromResponse(res, context);
  return res.json();
}

// <video src> and <img src> cannot send an Authorization header, so protected media is fetched as a blob.
async function getBlob(url, context) {
  let res;
  try {
    res = await fetch(url, { headers: authHeaders(), cache: "no-store" });
  } catch {
    throw new ApiError(0, null, context);
  }
  if (!res.ok) throw await errorFromResponse(res, context);
  return res.blob();
}

// XMLHttpRequest rather than fetch: only XHR reports upload progress.
function postForm(url, form, { onProgress, responseType = "text" } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    state.xhr = xhr;
    xhr.open("POST", url);
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.responseType = responseType;
    if (onProgress) xhr.upload.addEventListener("progress", (e) => onProgress(e.loaded, e.lengthComputable ? e.total : 0));
    xhr.addEventListener("load", () => resolve(xhr));
    xhr.addEventListener("error", () => reject(new ApiError(0, null, "upload")));
    xhr.addEventListener("abort", () => reject(new DOMException("cancelled", "AbortError")));
    xhr.send(form);
  }).finally(() => {
    state.xhr = null;
  });
}

async function xhrError(xhr, context) {
  let text = "";
  if (xhr.responseType === "blob" && xhr.response) text = await xhr.response.text();
  else if (xhr.responseType === "" || xhr.responseType === "text") text = xhr.responseText;
  let detail = text;
  try {
    detail = JSON.parse(text).detail ?? text;
  } catch {
    // not JSON: keep the text
  }
  return new ApiError(xhr.status, detail, context);
}

// ---------- Turning API errors into sentences ----------

function detailText(detail) {
  if (detail == null || detail === "") return "";
  // An HTML error page from a proxy says nothing a person can use.
  if (typeof detail === "string" && /^\s*</.test(detail)) return "";
  if (typeof detail === "string") return detail.length > 300 ? `${detail.slice(0, 300)}…` : detail;
  if (Array.isArray(detail)) {
    // FastAPI validation errors: [{loc: ["body", "style"], msg: "..."}]
    return detail
      .map((d) => (d && d.msg ? `${(d.loc || []).filter((x) => x !== "body").join(".") || "request"}: ${d.msg}` : JSON.stringify(d)))
      .join("; ");
  }
  if (typeof detail === "object" && detail.message) return String(detail.message);
  return JSON.stringify(detail);
}

function formatBytes(n) {
  if (!Number.isFinite(n) || n <= 0) return "";
  const units = ["bytes", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i += 1;
  }
  return `${n >= 10 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

function kind() {
  return state.mode === "image" ? "image" : "video";
}

function explain(status, detail, context) {
  const d = detailText(detail);
  const lower = d.toLowerCase();
  const what = kind();
  if (status === 0) {
    return context === "upload"
      ? `The upload was interrupted before the server answered. If the ${what} is very large the server may have refused it; otherwise check your connection and try again.`
      : "Couldn't reach the server. Check that it is running and that your connection works, then try again.";
  }
  if (status === 401 || status === 403) {
    return token()
      ? "The server didn't accept your API token. Check the token in the “API token” panel at the top and try again."
      : "This server needs an API token. Open the “API token” panel at the top, paste your token, and try again.";
  }
  if (status === 413 && /^(video|image) too large: /.test(lower)) {
    // A limit on the picture or the length (frame size, frames, duration), not on the bytes.
    return `That ${what} is too big for this server: ${d.replace(/^(video|image) too large: /i, "")}. Try a smaller resolution or a shorter clip.`;
  }
  if (status === 413) {
    const size = state.file ? ` (${formatBytes(state.file.size)})` : "";
    const limit = /limit of (\d+)/.exec(d);
    const most = limit ? ` accepts at most ${formatBytes(Number(limit[1]))}` : " refused it";
    return `That file${size} is too large: this server${most}. Try a shorter clip or a smaller file.`;
  }
  if (/unknown style|no model version/.test(lower)) {
    return "The chosen style isn't available on this server any more. Reload the page and pick another style.";
  }
  if (/pixels a side|exceeds the limit of \d+ pixels/.test(lower)) {
    return `That ${what}'s picture is too big for this server (${d.replace(/^.*?: (?=\d+x\d+)/, "")}). Try a smaller resolution.`;
  }
  if (/not a (usable|readable) (video|image)|no video stream|cannot be decoded|truncated or corrupt|has no frames|no frame of the video/.test(lower)) {
    return what === "video"
      ? "That file doesn't look like a video the server can read. Try an MP4, WebM or MOV file."
      : "That file doesn't look like an image the server can read. Try a JPEG, PNG or WebP file.";
  }
  if (/file is empty/.test(lower)) {
    return "That file is empty. Choose another one.";
  }
  if (status === 404 && context === "job") {
    return "The server no longer knows this job; it may have expired. Please submit the file again.";
  }
  if ((status === 404 || status === 410) && context === "result") {
    return "The result is not available any more; it may have expired. Please submit the file again.";
  }
  if (status === 400 || status === 422) {
    return Array.isArray(detail)
      ? `The server couldn't use these settings: ${d}`
      : `The server couldn't process this ${what}${d ? `: ${d}` : "."}`;
  }
  if (status === 429 || status === 503) {
    return "The server is busy right now. Please wait a minute and try again.";
  }
  if (status >= 500) {
    return `The server ran into a problem (error ${status}). Please try again later.${d ? ` (${d})` : ""}`;
  }
  return `The server answered with error ${status}.${d ? ` ${d}` : ""}`;
}

// ---------- Small view helpers ----------

function showError(err) {
  if (err && err.name === "AbortError") return;
  const box = $("error");
  box.textContent = err instanceof Error ? err.message : String(err);
  box.hidden = false;
  if (err instanceof ApiError && (err.status === 401 || err.status === 403)) $("token-panel").open = true;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function setBusy(busy) {
  $("submit").disabled = busy;
  $("cancel").hidden = !busy;
}

function trackUrl(blobOrFile) {
  const url = URL.createObjectURL(blobOrFile);
  state.objectUrls.push(url);
  return url;
}

function releaseUrls() {
  for (const url of state.objectUrls) URL.revokeObjectURL(url);
  state.objectUrls = [];
}

function formatDuration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

function fileStem(name) {
  return (name || "clip").replace(/\.[^.]+$/, "") || "clip";
}

function extensionFor(blob, fallback) {
  const sub = (blob.type || "").split("/")[1] || "";
  const ext = { jpeg: "jpg", quicktime: "mov", "x-matroska": "mkv" }[sub] || sub.replace(/[^a-z0-9]/g, "");
  return ext || fallback;
}

// ---------- Token ----------

function renderTokenState() {
  $("token-state").textContent = token() ? "(set for this tab)" : "(none set)";
}

function initToken() {
  $("token").value = token();
  renderTokenState();
  const apply = () => {
    const value = $("token").value.trim();
    if (value === token()) return;
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
    renderTokenState();
    clearError();
    loadStyles();
  };
  // Typing a token and going straight to "Stylize" must use it too, hence `change` as well as the button.
  $("token").addEventListener("change", apply);
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    apply();
  });
  $("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $("token").value = "";
    renderTokenState();
    loadStyles();
  });
}

// ---------- Styles ----------

// The models listing is read tolerantly: a list or {models: [...]}, with the champion's fields
// either at the top level of each entry or under `champion`.
function normalizeStyle(entry) {
  const champion = entry.champion || {};
  const style = entry.style || entry.name || champion.style;
  return {
    style: String(style || "").replace(/^clipmorph-/, ""),
    version: entry.champion_version ?? champion.version ?? entry.version ?? null,
    previewUrl: entry.preview_url || champion.preview_url || null,
    paintingUrl: entry.painting_url || null,
    traits: Array.isArray(entry.traits) ? entry.traits : [],
    figures: Array.isArray(entry.figures) ? entry.figures : [],
    metrics: champion.metrics || entry.metrics || {},
    description: entry.description || "",
  };
}

async function loadPreview(img, url) {
  try {
    const blob = await getBlob(apiUrl(url), "preview");
    const objectUrl = URL.createObjectURL(blob);
    state.previewUrls.push(objectUrl);
    img.src = objectUrl;
  } catch {
    img.closest(".style-thumb").classList.add("no-preview");
  }
}

// A picture slot of a style card: filled from the API (with the token), else the style's initial.
function thumbnail(style, url, className, caption) {
  const figure = document.createElement("figure");
  figure.className = "style-figure";
  const thumb = document.createElement("span");
  thumb.className = `style-thumb ${className}`;
  thumb.dataset.initial = style.slice(0, 1).toUpperCase();
  const img = document.createElement("img");
  img.alt = `${caption} (${style})`;
  img.width = 160;
  img.height = 120;
  thumb.append(img);
  if (url) loadPreview(img, url);
  else thumb.classList.add("no-preview");
  const label = document.createElement("figcaption");
  label.className = "muted";
  label.textContent = caption;
  figure.append(thumb, label);
  return figure;
}

function formatFigure(value) {
  return Math.abs(value) >= 100 ? value.toFixed(0) : Number(value.toPrecision(3)).toString();
}

// The numbers behind the words, folded away: people who want them open "Details".
function detailsOf(s) {
  const details = document.createElement("details");
  details.className = "style-details";
  const summary = document.createElement("summary");
  summary.textContent = "Details";
  details.append(summary);
  const rows = s.figures.length
    ? s.figures.map((f) => [f.name, f.value, f.meaning])
    : Object.entries(s.metrics).map(([k, v]) => [k, v, ""]);
  if (!rows.length) {
    const none = document.createElement("p");
    none.className = "muted";
    none.textContent = "No measurements recorded for this version.";
    details.append(none);
    return details;
  }
  const list = document.createElement("dl");
  for (const [name, value, meaning] of rows) {
    const term = document.createElement("dt");
    term.textContent = name.replace(/_/g, " ");
    const data = document.createElement("dd");
    data.textContent = typeof value === "number" ? formatFigure(value) : String(value);
    if (meaning) {
      const note = document.createElement("small");
      note.className = "muted";
      note.textContent = ` ${meaning}`;
      data.append(note);
    }
    list.append(term, data);
  }
  details.append(list);
  return details;
}

function styleCard(s) {
  const card = document.createElement("div");
  card.className = "style-card";
  const pick = document.createElement("label");
  pick.className = "style-pick";
  const input = document.createElement("input");
  input.type = "radio";
  input.name = "style";
  input.value = s.style;
  const pictures = document.createElement("span");
  pictures.className = "style-pictures";
  pictures.append(
    thumbnail(s.style, s.paintingUrl, "style-painting", "The painting"),
    thumbnail(s.style, s.previewUrl, "style-sample", "A photo in this style"),
  );
  const name = document.createElement("span");
  name.className = "style-name";
  name.textContent = s.style;
  const meta = document.createElement("span");
  meta.className = "style-meta muted";
  meta.textContent = s.version != null ? `version ${s.version}` : "";
  pick.append(input, pictures, name, meta);
  const traits = document.createElement("ul");
  traits.className = "style-traits";
  for (const t of s.traits) {
    const item = document.createElement("li");
    item.dataset.aspect = t.aspect;
    item.textContent = t.words;
    traits.append(item);
  }
  card.append(pick, traits, detailsOf(s));
  return card;
}

function renderStyles() {
  const list = $("style-list");
  const previous = (document.querySelector('input[name="style"]:checked') || {}).value;
  list.replaceChildren(...state.styles.map(styleCard));
  const wanted = state.styles.find((s) => s.style === previous) || state.styles[0];
  if (wanted) list.querySelector(`input[value="${CSS.escape(wanted.style)}"]`).checked = true;
}

async function loadStyles() {
  const status = $("styles-status");
  for (const url of state.previewUrls) URL.revokeObjectURL(url);
  state.previewUrls = [];
  status.textContent = "Loading styles…";
  try {
    const body = await getJson(apiUrl("v1/models"), "models");
    const entries = Array.isArray(body) ? body : body.models || body.styles || [];
    state.styles = entries.map(normalizeStyle).filter((s) => s.style);
    renderStyles();
    status.textContent = state.styles.length
      ? ""
      : "No styles are registered on this server yet. Train or register a model first.";
  } catch (err) {
    state.styles = [];
    renderStyles();
    status.textContent = err.message;
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) $("token-panel").open = true;
  }
}

function selectedStyle() {
  const checked = document.querySelector('input[name="style"]:checked');
  return checked ? checked.value : "";
}

// ---------- File choice ----------

function looksLikeMode(file) {
  const t = file.type || "";
  if (!t) return true;
  return state.mode === "image" ? t.startsWith("image/") : t.startsWith("video/");
}

function setFile(file) {
  state.file = file || null;
  $("file-name").textContent = file ? `${file.name} · ${formatBytes(file.size)}` : "";
  $("drop-zone").classList.toggle("has-file", Boolean(file));
  clearError();
  if (file && state.mode === "image") scheduleImagePreview();
}

function initDropZone() {
  const zone = $("drop-zone");
  const input = $("file");
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      input.click();
    }
  });
  input.addEventListener("change", () => setFile(input.files[0]));
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => {
      e.preventDefault();
      zone.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) setFile(file);
  });
}

function setMode(mode) {
  state.mode = mode;
  const image = mode === "image";
  $("file").accept = image ? "image/*" : "video/*";
  $("drop-title").textContent = image ? "Drop an image here" : "Drop a video here";
  $("stabilize-option").hidden = image;
  $("submit").textContent = image ? "Stylize image" : "Stylize video";
  if (state.file && !looksLikeMode(state.file)) {
    $("file").value = "";
    setFile(null);
  }
}

// ---------- Progress ----------

function showUpload(loaded, total) {
  const bar = $("upload-bar");
  if (total > 0) {
    bar.value = Math.round((100 * loaded) / total);
    $("upload-text").textContent = `${bar.value}% · ${formatBytes(loaded)} of ${formatBytes(total)}`;
  } else {
    bar.removeAttribute("value");
    $("upload-text").textContent = formatBytes(loaded);
  }
}

function finishUpload() {
  $("upload-bar").value = 100;
  $("upload-text").textContent = state.file ? `Sent ${formatBytes(state.file.size)}` : "Sent";
}

function resetProgress() {
  $("progress").hidden = false;
  $("upload-bar").value = 0;
  $("upload-text").textContent = "";
  $("job-meter").hidden = true;
  $("job-bar").removeAttribute("value");
  $("job-text").textContent = "";
  $("status-text").textContent = "";
}

function queueWords(position) {
  if (position == null || position < 0) return "Waiting for a worker…";
  if (position === 0) return "Waiting for a worker: yours is next in the queue.";
  return `Waiting for a worker: ${position} ${position === 1 ? "job is" : "jobs are"} ahead of yours in the queue.`;
}

// `unit`: what one step of progress is: a video's frame, or one network pass over a large image (a tile).
function showJob(job, unit = "frame") {
  const p = job.progress || {};
  const bar = $("job-bar");
  $("job-meter").hidden = false;
  const done = Number(p.done ?? p.frames_done ?? 0);
  const total = Number(p.total ?? p.frames_total ?? 0);
  setMeter(bar, done, total);
  const parts = [];
  if (total > 0) parts.push(`${unit} ${done} of ${total}`);
  else if (done > 0) parts.push(`${unit} ${done}`);
  if (unit === "frame" && Number(p.fps) > 0) parts.push(`${Number(p.fps).toFixed(1)} frames/s`);
  const eta = Number(p.eta_seconds);
  if (job.status === "running" && Number.isFinite(eta) && p.eta_seconds != null) parts.push(`about ${formatDuration(eta)} left`);
  $("job-text").textContent = parts.join(" · ");
  const words = {
    queued: queueWords(job.queue_position),
    started: "Stylizing…",
    running: "Stylizing…",
    finished: "Done. Loading the result…",
    failed: "The job failed.",
    cancelled: "Cancelled.",
    canceled: "Cancelled.",
  };
  $("status-text").textContent = words[job.status] || `Status: ${job.status}`;
}

// ---------- Queued jobs (videos, and images too large to stylize in the request) ----------

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Polls a job the server accepted (202) until it ends, showing its queue place and progress.
// -> the finished job, or null when this run was superseded or cancelled from the page;
// throws with a sentence when the job failed or was cancelled on the server.
async function followJob(run, created, what, unit) {
  const statusUrl = apiUrl(created.status_url || `v1/jobs/${created.id}`);
  state.statusUrl = statusUrl;
  let job = created;
  let misses = 0;
  while (run === state.run) {
    try {
      job = await getJson(statusUrl, "job");
      misses = 0;
    } catch (err) {
      // The job goes on while the server restarts or the network drops; keep asking for a while.
      const transient = err instanceof ApiError && (err.status === 0 || err.status >= 500);
      misses += 1;
      if (!transient || misses > POLL_MISSES_ALLOWED) throw err;
      $("status-text").textContent = "Lost contact with the server; still trying…";
      await sleep(POLL_MS * misses);
      continue;
    }
    if (run !== state.run) return null;
    showJob(job, unit);
    if (TERMINAL.has(job.status)) break;
    await sleep(POLL_MS);
  }
  if (run !== state.run) return null;
  state.statusUrl = null; // ended: nothing left to cancel
  if (job.status === "failed") {
    const reason = detailText(job.error) || "no reason given";
    throw new Error(`The server couldn't stylize this ${what}: ${reason}`);
  }
  if (job.status !== "finished") {
    throw new Error(`The job was cancelled on the server before it finished. Submit the ${what} again to try once more.`);
  }
  return job;
}

// A finished job's result; `created`: the 202 answer, whose result_url older job listings may lack.
function resultUrlOf(job, created = {}) {
  return apiUrl(job.result_url || created.result_url || `v1/jobs/${job.id}/result`);
}

async function submitVideo(run) {
  const form = new FormData();
  form.append("file", state.file, state.file.name);
  form.append("style", selectedStyle());
  form.append("max_side", $("max-side").value);
  form.append("strength", $("strength").value);
  form.append("stabilize", $("stabilize").checked ? "true" : "false");
  $("status-text").textContent = "Uploading…";
  const xhr = await postForm(apiUrl("v1/jobs"), form, { onProgress: showUpload });
  if (xhr.status < 200 || xhr.status >= 300) throw await xhrError(xhr, "upload");
  finishUpload();
  const job = await followJob(run, JSON.parse(xhr.responseText), "video", "frame");
  if (!job) return;
  if (job.stream_url) {
    // A plain URL (signed when the server has a token): the players stream it with Range requests,
    // so playback starts before the whole file has arrived.
    showVideoResult(apiUrl(job.stream_url), job, null);
  } else {
    const blob = await getBlob(resultUrlOf(job), "result");
    if (run !== state.run) return;
    showVideoResult(trackUrl(blob), job, blob);
  }
  $("status-text").textContent = "Done.";
}

function modelLabel(job) {
  const m = job.model || {};
  const name = (typeof m === "string" ? m : m.name || m.style || job.model_name || job.style || selectedStyle()).replace(
    /^clipmorph-/,
    "",
  );
  const version = m.version ?? job.model_version;
  return version != null ? `${name} v${version}` : name;
}

// `blob`: the result when it was downloaded whole (older servers without stream_url), else null.
function showVideoResult(styledUrl, job, blob) {
  const originalUrl = trackUrl(state.file);
  $("result-image").hidden = true;
  $("compare-original-image").hidden = true;
  $("compare-styled-image").hidden = true;
  for (const id of ["result-video", "compare-original", "compare-styled"]) $(id).hidden = false;
  $("result-video").src = styledUrl;
  $("compare-styled").src = styledUrl;
  $("compare-original").src = originalUrl;
  $("compare-play").hidden = false;
  const style = selectedStyle();
  const link = $("download");
  link.href = styledUrl;
  link.download = `${fileStem(state.file.name)}-${style}.${blob ? extensionFor(blob, "mp4") : "mp4"}`;
  link.textContent = blob ? `Download ${link.download} (${formatBytes(blob.size)})` : `Download ${link.download}`;
  $("result-meta").textContent = `Style ${modelLabel(job)}`;
  $("result").hidden = false;
}

// ---------- Still images ----------

async function submitImage(run) {
  const form = new FormData();
  form.append("file", state.file, state.file.name);
  form.append("style", selectedStyle());
  form.append("strength", $("strength").value);
  form.append("max_side", $("max-side").value);
  $("status-text").textContent = "Stylizing the image…";
  const xhr = await postForm(apiUrl("v1/images"), form, { onProgress: showUpload, responseType: "blob" });
  if (run !== state.run) return;
  if (xhr.status < 200 || xhr.status >= 300) throw await xhrError(xhr, "upload");
  finishUpload();
  if (xhr.status === 202) {
    // Too large to stylize in the request: the server queued it as a job, followed like a video's.
    const created = JSON.parse(await xhr.response.text());
    if (run !== state.run) return;
    const input = created.input || {};
    const size = input.width && input.height ? `${input.width}×${input.height} pixels, ` : "";
    $("upload-text").textContent += ` · ${size}too large to stylize at once, so it waits its turn in the queue`;
    const job = await followJob(run, created, "image", "step");
    if (!job) return;
    const blob = await getBlob(resultUrlOf(job, created), "result");
    if (run !== state.run) return;
    showImageResult(blob, modelLabel(job));
    return;
  }
  const version = xhr.getResponseHeader("X-Model-Version");
  showImageResult(xhr.response, `${selectedStyle()}${version ? ` v${version}` : ""}`);
}

// `blob`: the stylized image; `model`: the style (and version) that made it, in words.
function showImageResult(blob, model) {
  const styledUrl = trackUrl(blob);
  const originalUrl = trackUrl(state.file);
  for (const id of ["result-video", "compare-original", "compare-styled"]) {
    $(id).removeAttribute("src");
    $(id).hidden = true;
  }
  $("compare-play").hidden = true;
  $("result-image").src = styledUrl;
  $("result-image").hidden = false;
  $("compare-styled-image").src = styledUrl;
  $("compare-styled-image").hidden = false;
  $("compare-original-image").src = originalUrl;
  $("compare-original-image").hidden = false;
  const link = $("download");
  link.href = styledUrl;
  link.download = `${fileStem(state.file.name)}-${selectedStyle()}.${extensionFor(blob, "png")}`;
  link.textContent = `Download ${link.download} (${formatBytes(blob.size)})`;
  $("result-meta").textContent = `Style ${model}`;
  $("result").hidden = false;
  $("status-text").textContent = "Done.";
}

// Still images are quick, so changing the style or strength re-renders the preview by itself
// (a large image is queued again; the job it replaces is cancelled).
function scheduleImagePreview() {
  if (state.mode !== "image" || !state.file || !selectedStyle()) return;
  clearTimeout(state.imageTimer);
  state.imageTimer = setTimeout(() => start(), IMAGE_PREVIEW_DELAY_MS);
}

// ---------- Submission ----------

function validate() {
  if (!state.file) return `Choose ${state.mode === "image" ? "an image" : "a video"} first.`;
  if (!selectedStyle()) return "Pick a style first.";
  const raw = $("max-side").value.trim();
  const side = Number(raw);
  if (raw && (!Number.isInteger(side) || side < 16 || side > 4096)) {
    return "The processing size must be a whole number of pixels between 16 and 4096, or empty for full size.";
  }
  return "";
}

async function start() {
  clearError();
  const problem = validate();
  if (problem) {
    showError(new Error(problem));
    return;
  }
  if (state.xhr) state.xhr.abort();
  state.run += 1;
  const run = state.run;
  forgetJob();
  releaseUrls();
  resetProgress();
  $("result").hidden = true;
  setBusy(true);
  try {
    if (state.mode === "image") await submitImage(run);
    else await submitVideo(run);
  } catch (err) {
    if (run === state.run) {
      showError(err);
      $("status-text").textContent = "";
    }
  } finally {
    if (run === state.run) setBusy(false);
  }
}

// Stops the job the page was following, if any: nobody would see its result.
async function forgetJob() {
  const statusUrl = state.statusUrl;
  state.statusUrl = null;
  if (!statusUrl) return;
  try {
    await fetch(statusUrl, { method: "DELETE", headers: authHeaders() });
  } catch {
    // the server may not support cancelling; the page has stopped following the job either way
  }
}

async function cancel() {
  state.run += 1;
  if (state.xhr) state.xhr.abort();
  setBusy(false);
  $("status-text").textContent = "Cancelled.";
  await forgetJob();
}

// ---------- Comparison ----------

function initCompare() {
  const slider = $("compare-slider");
  const update = () => {
    $("compare-top").style.clipPath = `inset(0 0 0 ${slider.value}%)`;
    $("compare-line").style.left = `${slider.value}%`;
  };
  slider.addEventListener("input", update);
  update();
  const original = $("compare-original");
  const styled = $("compare-styled");
  $("compare-play").addEventListener("click", () => {
    if (styled.paused) {
      original.currentTime = styled.currentTime;
      styled.play();
      original.play();
      $("compare-play").textContent = "Pause both";
    } else {
      styled.pause();
      original.pause();
      $("compare-play").textContent = "Play both";
    }
  });
  // The two clips play on separate clocks; nudge the original back in step when they drift apart.
  styled.addEventListener("timeupdate", () => {
    if (Math.abs(original.currentTime - styled.currentTime) > 0.15) original.currentTime = styled.currentTime;
  });
  styled.addEventListener("ended", () => {
    original.pause();
    $("compare-play").textContent = "Play both";
  });
}

// ---------- Training a new style (POST /v1/styles) ----------

// Its own error box and polling loop: a training job runs for minutes to an hour, beside any stylizing.
const training = { run: 0, statusUrl: null };

function trainExplain(status, detail) {
  const d = detailText(detail);
  if (status === 401 || status === 403) {
    return "Training a style needs a trainer or admin token. Paste one in the “API token” panel at the top and try again.";
  }
  if ([400, 409, 413, 422].includes(status) && d) return `The server can't train this style: ${d}`;
  return explain(status, detail, "train");
}

function showTrainError(message) {
  const box = $("train-error");
  box.textContent = message;
  box.hidden = !message;
}

// A <progress> at done/total, or indeterminate while the total is unknown.
function setMeter(bar, done, total) {
  if (total > 0) {
    bar.max = total;
    bar.value = Math.min(done, total);
  } else {
    bar.removeAttribute("value");
  }
}

function showTraining(job) {
  const p = job.progress || {};
  const done = Number(p.done || 0);
  const total = Number(p.total || 0);
  const bar = $("train-bar");
  setMeter(bar, done, total);
  const parts = [];
  if (total > 0) parts.push(`step ${done} of ${total}`);
  if (Number(p.fps) > 0) parts.push(`${Number(p.fps).toFixed(2)} steps/s`);
  if (job.status === "running" && p.eta_seconds != null) parts.push(`about ${formatDuration(Number(p.eta_seconds))} left`);
  $("train-text").textContent = parts.join(" · ");
  const losses = job.losses || {};
  $("train-losses").textContent = Object.keys(losses).length
    ? "Losses: " + Object.entries(losses).map(([k, v]) => `${k} ${Number(v).toPrecision(3)}`).join(", ")
    : "";
  const preview = $("train-preview");
  // Only a JPEG data URL from the server is shown (the page never loads a URL a job's meta names).
  if (typeof job.preview === "string" && job.preview.startsWith("data:image/jpeg;base64,")) {
    if (preview.src !== job.preview) preview.src = job.preview;
    preview.hidden = false;
    preview.title = `Validation photos at step ${job.preview_step}`;
  }
  const finishing = total > 0 && done >= total && job.status === "running";
  const words = {
    queued: queueWords(job.queue_position).replace("worker", "training worker"),
    running: finishing ? "Trained. Grading the new style and running the quality gate…" : "Training…",
  };
  $("train-status").textContent = words[job.status] || "";
}

async function followTraining(run, created) {
  const statusUrl = apiUrl(created.status_url || `v1/jobs/${created.id}`);
  let misses = 0;
  while (run === training.run) {
    let job;
    try {
      job = await getJson(statusUrl, "job");
      misses = 0;
    } catch (err) {
      const transient = err instanceof ApiError && (err.status === 0 || err.status >= 500);
      misses += 1;
      if (!transient || misses > POLL_MISSES_ALLOWED) throw err;
      await sleep(POLL_MS * misses);
      continue;
    }
    showTraining(job);
    if (TERMINAL.has(job.status)) return job;
    await sleep(POLL_MS);
  }
  return null;
}

async function startTraining() {
  showTrainError("");
  const file = $("train-file").files[0];
  const name = $("train-name").value.trim();
  if (!file) return showTrainError("Choose a painting to train on.");
  if (!name) return showTrainError("Give the new style a name.");
  const form = new FormData();
  form.append("name", name);
  form.append("preset", $("train-preset").value);
  form.append("iterations", $("train-iterations").value);
  form.append("blend", $("train-blend").value.trim());
  form.append("file", file, file.name);
  const run = ++training.run;
  $("train-submit").disabled = true;
  $("train-status").textContent = "Uploading the painting…";
  try {
    let res;
    try {
      res = await fetch(apiUrl("v1/styles"), { method: "POST", body: form, headers: authHeaders() });
    } catch {
      throw new Error(explain(0, null, "upload"));
    }
    if (!res.ok) {
      const err = await errorFromResponse(res, "train");
      throw new Error(trainExplain(err.status, err.detail));
    }
    const created = await res.json();
    $("train-progress").hidden = false;
    $("train-preview").hidden = true;
    training.statusUrl = apiUrl(created.status_url || `v1/jobs/${created.id}`);
    $("train-cancel").hidden = false;
    const job = await followTraining(run, created);
    if (!job) return;
    if (job.status === "failed") throw new Error(`Training failed: ${detailText(job.error) || "no reason given"}`);
    if (job.status !== "finished") throw new Error("The training was cancelled; the name can be used again.");
    $("train-status").textContent = job.champion
      ? `The style “${created.name}” is ready: pick it in the list above.`
      : `The style “${created.name}” was trained (version ${job.model_version}) but did not pass the quality gate.`;
    await loadStyles();
  } catch (err) {
    $("train-status").textContent = "";
    showTrainError(err.message);
  } finally {
    if (run === training.run) {
      $("train-submit").disabled = false;
      $("train-cancel").hidden = true;
      training.statusUrl = null;
    }
  }
}

// DELETE stops the job between two steps; the polling loop then sees it cancelled and says so.
async function cancelTraining() {
  if (!training.statusUrl) return;
  $("train-cancel").disabled = true;
  try {
    const res = await fetch(training.statusUrl, { method: "DELETE", headers: authHeaders() });
    if (!res.ok && res.status !== 409) throw await errorFromResponse(res, "job");
    $("train-status").textContent = "Stopping the training…";
  } catch (err) {
    showTrainError(err.message);
  } finally {
    $("train-cancel").disabled = false;
  }
}

// ---------- Wiring ----------

function init() {
  initToken();
  initDropZone();
  initCompare();
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", () => setMode(radio.value));
  }
  setMode(document.querySelector('input[name="mode"]:checked').value);
  const strength = $("strength");
  const showStrength = () => {
    $("strength-value").textContent = `${Math.round(Number(strength.value) * 100)}%`;
  };
  strength.addEventListener("input", showStrength);
  strength.addEventListener("change", scheduleImagePreview);
  $("style-list").addEventListener("change", scheduleImagePreview);
  showStrength();
  $("job-form").addEventListener("submit", (e) => {
    e.preventDefault();
    start();
  });
  $("cancel").addEventListener("click", cancel);
  $("train-form").addEventListener("submit", (e) => {
    e.preventDefault();
    startTraining();
  });
  $("train-cancel").addEventListener("click", cancelTraining);
  loadStyles();
}

document.addEventListener("DOMContentLoaded", init);
