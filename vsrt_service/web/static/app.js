// The app: new-job form, job list, job view (progress, live lines, editor), connection state.

import { api, ApiError, fetchBlob, token, uploadJob } from "./api.js";
import { CueEditor } from "./editor.js";
import { modelStore, setupModelDialog, startModels } from "./models.js";
import { CueModel, makeCue } from "./cues.js";
import { Player } from "./player.js";
import { openStream } from "./sse.js";
import { Waveform } from "./waveform.js";
import { el, rafThrottle } from "./store.js";

const $ = (sel) => document.querySelector(sel);
const JOB_EVENTS = ["connected", "progress", "fragment", "signal", "error", "ping", "resync"];
const FINAL = new Set(["completed", "failed", "canceled"]);

// --- state ---------------------------------------------------------------------------------

let jobs = []; // the list, newest first
let current = null; // { id, job, lines, stream, dirty, aligned }
let listOnline = true;
let phases = []; // the server's phase names, in order (GET /api/meta)

const editor = new CueEditor($("#cues"), {
  onEdit: () => {
    if (!current) return;
    current.dirty = true;
    updateEditorHead();
  },
});

// --- player and waveform: views of the editor's CueModel (player.js, waveform.js) -----------

const cueModel = new CueModel();
const player = new Player($("#media-pane"), cueModel);
const waveform = new Waveform($("#media-pane"), player, cueModel);

/** Until the cue list works on the CueModel (branch ed-ui), the model holds the job's built
 * cues once the document exists; the list's own model replaces this bridge. */
async function loadModelCues(id) {
  try {
    const doc = await api(`jobs/${encodeURIComponent(id)}/subtitles?format=json`);
    if (current && current.id === id && !cueModel.dirty) {
      cueModel.load(doc.cues.map((c) => makeCue(c.start, c.end, c.text)), { version: doc.version, edited: doc.edited, rules: doc.rules });
    }
  } catch {
    /* not ready yet: job_complete brings it */
  }
}

// --- connection state ----------------------------------------------------------------------

let jobStreamState = "open";
function showConnection() {
  const models = modelStore.get();
  const modelsDown = models.available && models.stream !== "open";
  const down = !listOnline || (current && jobStreamState !== "open") || modelsDown;
  const conn = $("#conn");
  const state = !down ? "open" : listOnline ? "connecting" : "offline";
  conn.dataset.state = state;
  conn.textContent = state === "open" ? "Live" : state === "offline" ? "Offline — reconnecting…" : "Reconnecting…";
}
modelStore.subscribe(rafThrottle(showConnection));

// --- new job form --------------------------------------------------------------------------

const form = $("#job-form");
const fileInput = $("#file");
let chosen = null;

function chooseFile(file) {
  chosen = file || null;
  $("#drop-text").textContent = chosen ? chosen.name : "Choose a video or audio file";
  $("#drop").classList.toggle("has-file", !!chosen);
  $("#submit").disabled = !chosen;
  showFormError("");
}

fileInput.addEventListener("change", () => chooseFile(fileInput.files[0]));
const drop = $("#drop");
for (const type of ["dragenter", "dragover"]) {
  drop.addEventListener(type, (e) => {
    e.preventDefault();
    drop.classList.add("dragging");
  });
}
for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("dragging"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  if (e.dataTransfer.files.length) chooseFile(e.dataTransfer.files[0]);
});

function showFormError(message) {
  $("#form-error").textContent = message;
  $("#form-error").hidden = !message;
}

function formSettings(prefix = "") {
  const language = $(`#${prefix}language`).value;
  const settings = { language: language === "auto" ? null : language, task: $(`#${prefix}task`).value };
  const model = $(`#${prefix}model`).value;
  if (model) settings.model = model;
  if (!prefix) {
    settings.align = $("#align").checked;
    // Advanced: only what the user filled in, so the server's defaults hold otherwise.
    const text = { hotwords: "#hotwords", initial_prompt: "#initial-prompt", audio_track: "#audio-track", vad_method: "#vad-method" };
    for (const [key, sel] of Object.entries(text)) {
      const value = $(sel).value.trim();
      if (value) settings[key] = value;
    }
  }
  return settings;
}

/** Explain a refused upload in words a user can act on. */
function uploadMessage(err) {
  if (err.status === 413) return `Refused: ${err.message || "the file is too large for this server"}.`;
  if (err.status === 400 && err.field === "file") return `Refused: ${err.message}. Pick a video or audio file.`;
  if (err.status === 400) return `Refused: ${err.message}${err.field ? ` (${err.field})` : ""}.`;
  if (err.status === 401) return "This server needs an access token: use the Token button.";
  return err.message;
}

form.addEventListener("submit", async (e) => {
  e.preventDefault();
  if (!chosen) return;
  showFormError("");
  $("#submit").disabled = true;
  $("#upload").hidden = false;
  const bar = $("#upload-bar");
  const text = $("#upload-text");
  bar.value = 0;
  text.textContent = "Uploading…";
  try {
    const created = await uploadJob(chosen, formSettings(), (f) => {
      bar.value = f;
      text.textContent = f < 1 ? `Uploading ${Math.round(f * 100)}%` : "Checking the file…";
    });
    text.textContent = "Uploaded";
    chooseFile(null);
    fileInput.value = "";
    jobs = [created, ...jobs.filter((j) => j.job_id !== created.job_id)];
    renderJobs();
    openJob(created.job_id);
  } catch (err) {
    showFormError(uploadMessage(err));
    $("#submit").disabled = !chosen;
    if (err.status === 401) openToken();
  } finally {
    setTimeout(() => ($("#upload").hidden = true), 800);
  }
});

/** Model choices from the model store: only ready ones can be picked. */
function fillModelSelect(select, selected) {
  const s = modelStore.get();
  const keep = selected ?? select.value;
  if (s.available) {
    const opts = s.whisper.map((m) =>
      el("option", { value: m.id, disabled: m.status !== "ready", text: m.status === "ready" ? m.id : `${m.id} (${m.status === "downloading" ? `downloading` : "not downloaded"})` }));
    select.replaceChildren(el("option", { value: "", text: "Server default" }), ...opts);
  } else {
    select.replaceChildren(el("option", { value: "", text: "Server default" }), el("option", { value: "tiny.en", text: "tiny.en" }));
  }
  if ([...select.options].some((o) => o.value === keep && !o.disabled)) select.value = keep;
  const note = $("#model-note");
  note.hidden = s.available !== false;
  note.textContent = "Model management is unavailable here; the server's installed models are used.";
}
modelStore.subscribe(rafThrottle(() => fillModelSelect($("#model"))));
fillModelSelect($("#model"));

// --- job list ------------------------------------------------------------------------------

function renderJobs() {
  const list = $("#job-list");
  $("#jobs-empty").hidden = jobs.length > 0;
  list.replaceChildren(...jobs.map((j) => {
    const pct = Math.round(j.percent || 0);
    return el("li", { class: `job-item${current && current.id === j.job_id ? " current" : ""}`, "data-job": j.job_id },
      el("button", { type: "button", class: "job-link", onclick: () => openJob(j.job_id), "aria-label": `Open ${j.source_name || j.job_id}, ${j.status} ${pct}%` },
        el("span", { class: "job-name", text: j.source_name || j.job_id }),
        el("span", { class: `badge badge-${j.status}`, text: j.status }),
        el("span", { class: "bar bar-small", "aria-hidden": "true", "data-status": j.status }, el("span", { class: "bar-fill", style: `width:${pct}%` }))));
  }));
}

async function refreshJobs() {
  try {
    const body = await api("jobs?limit=50");
    jobs = body.jobs;
    if (!listOnline) {
      listOnline = true;
      if (current) catchUp(); // back online: the job stream may have missed a restart
    }
    renderJobs();
  } catch (err) {
    if (err.status === 0) listOnline = false;
    if (err.status === 401) openToken();
  }
  showConnection();
}

// The list has no event channel of its own: poll it, faster while something runs.
async function pollJobs() {
  if (!document.hidden) await refreshJobs();
  const running = jobs.some((j) => !FINAL.has(j.status) && j.status !== "paused");
  setTimeout(pollJobs, running || !listOnline ? 2000 : 6000);
}

function updateListEntry(job) {
  const i = jobs.findIndex((j) => j.job_id === job.job_id);
  if (i >= 0) jobs[i] = { ...jobs[i], ...job };
  renderJobs();
}

// --- job view ------------------------------------------------------------------------------

function lineFrom(seg, source) {
  return { key: `${source[0]}${seg.id}`, id: seg.id, start: seg.start, end: seg.end, text: (seg.text || "").trim(), source, modified: false };
}

/** Merge the server's text into the lines: edited lines keep the user's text and times. */
function mergeText(body) {
  if (!current || body.job_id !== current.id) return;
  const mine = current.lines.filter((l) => l.modified);
  if (body.edited_cues && !mine.length && !current.aligned) {
    // Saved edits are the user's version: show them as they were saved.
    current.lines = body.edited_cues.map((c, i) => ({ key: `e${i}`, id: i, start: c.start, end: c.end, text: c.text, source: "edited", modified: true }));
    current.aligned = body.source === "aligned";
  } else if (body.source === "aligned") {
    // Aligned lines replace the machine lines, except where the user edited a line:
    // an aligned line centred inside an edited line's span is covered by that edit.
    const covered = (seg) => mine.some((m) => {
      const mid = (seg.start + seg.end) / 2;
      return mid >= m.start && mid <= m.end;
    });
    const aligned = body.segments.filter((s) => !covered(s)).map((s) => lineFrom(s, "aligned"));
    current.lines = [...aligned, ...mine].sort((a, b) => a.start - b.start);
    current.aligned = true;
  } else if (!current.aligned) {
    addFragments(body.segments);
  }
  editor.setLines(current.lines);
  updateEditorHead();
}

/** Unaligned lines (a `fragment` event, or the checkpoint's text) into the lines, in time
 * order; a line the user edited keeps the user's text and times. */
function addFragments(segments) {
  for (const seg of segments) {
    const key = `c${seg.id}`;
    const found = current.lines.find((l) => l.key === key);
    if (found) {
      if (!found.modified) Object.assign(found, lineFrom(seg, "checkpoint"));
    } else {
      current.lines.push(lineFrom(seg, "checkpoint"));
    }
  }
  current.lines.sort((a, b) => a.start - b.start);
}

async function loadText() {
  const id = current && current.id;
  if (!id) return;
  try {
    mergeText(await api(`transcription-text/${id}`));
    loadModelCues(id);
  } catch (err) {
    showJobError(err.message);
  }
}

function showJobError(message) {
  $("#job-error").textContent = message || "";
  $("#job-error").hidden = !message;
}

function applyStatus(patch) {
  if (!current) return;
  const job = (current.job = { ...current.job, ...patch });
  const pct = Math.max(0, Math.min(100, job.percent || 0));
  const bar = $("#job-bar");
  bar.querySelector(".bar-fill").style.width = `${pct}%`;
  bar.setAttribute("aria-valuenow", String(Math.round(pct)));
  bar.dataset.status = job.status;
  $("#job-percent").textContent = `${pct.toFixed(0)}%`;
  $("#job-message").textContent = job.message || "";
  const status = $("#job-status");
  status.textContent = job.status || "";
  status.className = `badge badge-${job.status}`;
  const at = phases.indexOf(job.phase);
  for (const li of $("#phases").children) {
    const i = phases.indexOf(li.dataset.phase);
    const done = job.status === "completed" || i < at;
    li.className = done ? "done" : i === at ? "active" : "";
    li.setAttribute("aria-current", i === at && !done ? "step" : "false");
  }
  if (job.status === "failed" && job.error) showJobError(typeof job.error === "string" ? job.error : job.error.message);
  const running = job.status === "queued" || job.status === "processing";
  $("#pause").disabled = !running;
  $("#cancel").disabled = !running && job.status !== "paused";
  $("#resume").disabled = !(job.status === "paused" || job.status === "failed" || job.status === "canceled");
  if (job.status !== "paused" && job.status !== "failed" && job.status !== "canceled") $("#resume-panel").hidden = true;
  updateEditorHead();
  updateListEntry({ job_id: current.id, status: job.status, percent: job.percent, phase: job.phase });
}

function updateEditorHead() {
  if (!current) return;
  $("#line-count").textContent = current.lines.length ? `(${current.lines.length})` : "";
  $("#save").disabled = !current.dirty;
  const ready = current.job.status === "completed" || current.saved;
  $("#dl-srt").disabled = $("#dl-vtt").disabled = !(ready || current.dirty);
  $("#save-state").textContent = current.dirty ? "Unsaved edits" : current.saved ? "Edits saved" : "";
}

const jobHandlers = {
  connected: (d) => {
    applyStatus(d);
    loadText(); // a fresh snapshot: catch up on everything missed while away
  },
  progress: (d) => applyStatus({ ...d, status: current.job.status === "queued" ? "processing" : current.job.status }),
  fragment: (d) => {
    if (current.aligned) return;
    addFragments(d.segments);
    renderLines();
  },
  signal: (d) => {
    if (d.code === "alignment_ready") loadText();
    const status = { job_complete: "completed", paused: "paused", canceled: "canceled" }[d.code];
    if (status) applyStatus({ status, ...(status === "completed" ? { percent: 100, phase: "srt" } : {}), message: d.message });
    if (d.code === "job_complete") loadText();
  },
  error: (d) => {
    showJobError(d.message);
    refreshStatus();
  },
  resync: () => {},
};
const renderLines = rafThrottle(() => {
  editor.setLines(current ? current.lines : []);
  updateEditorHead();
});

async function refreshStatus() {
  if (!current) return;
  try {
    applyStatus(await api(`status/${current.id}`));
  } catch {
    /* offline: the stream's reconnect will bring it */
  }
}

/** After a reconnect: the status and the text, whatever the stream replays. */
function catchUp() {
  refreshStatus();
  loadText();
}

async function openJob(id) {
  if (current && current.id === id) return; // already open: rebuilding it would drop unsaved edits
  if (current && current.dirty && current.id !== id && !confirm("Leave this job with unsaved edits?")) return;
  if (current) current.stream.close();
  const job = jobs.find((j) => j.job_id === id) || { job_id: id, status: "queued", percent: 0 };
  current = { id, job, lines: [], dirty: false, saved: false, aligned: false, stream: { close() {} } };
  history.replaceState(null, "", `#job=${encodeURIComponent(id)}`);
  $("#placeholder").hidden = true;
  $("#job-view").hidden = false;
  $("#job-title").textContent = job.source_name || id;
  $("#resume-panel").hidden = true;
  showJobError("");
  editor.follow = true;
  editor.setLines(current.lines);
  cueModel.load([]);
  waveform.close();
  player.open(id);
  applyStatus(job);
  renderJobs();
  const mine = current;
  mine.stream = openStream(`stream/${encodeURIComponent(id)}`, JOB_EVENTS, {
    onEvent: (name, data) => current === mine && jobHandlers[name]?.(data),
    onState: (state, { reconnected }) => {
      if (current !== mine) return;
      jobStreamState = state;
      showConnection();
      if (state === "open" && reconnected) catchUp();
    },
  });
  try {
    const full = await api(`jobs/${encodeURIComponent(id)}`);
    if (current === mine) {
      $("#job-title").textContent = full.source_name || id;
      current.saved = false;
      applyStatus(full);
    }
  } catch (err) {
    if (err.status === 404) closeJob("That job no longer exists.");
  }
}

function closeJob(message) {
  if (current) current.stream.close();
  current = null;
  waveform.close();
  player.close();
  $("#media-pane").hidden = true;
  jobStreamState = "open";
  history.replaceState(null, "", location.pathname + location.search);
  $("#job-view").hidden = true;
  $("#placeholder").hidden = false;
  if (message) $("#placeholder").querySelector("p").textContent = message;
  renderJobs();
  showConnection();
}

async function control(action, fn) {
  showJobError("");
  try {
    const r = await fn();
    if (r && r.status) applyStatus(r);
  } catch (err) {
    showJobError(`${action} failed: ${err.message}`);
  }
}

$("#pause").addEventListener("click", () => control("Pause", () => api(`pause/${current.id}`, { method: "POST" })));
$("#cancel").addEventListener("click", () => confirm("Cancel this job? What is transcribed so far is kept.") && control("Cancel", () => api(`cancel/${current.id}`, { method: "POST" })));
$("#delete").addEventListener("click", async () => {
  if (!confirm("Delete this job, its uploaded file and its subtitles?")) return;
  const id = current.id;
  try {
    await api(`jobs/${id}`, { method: "DELETE" });
    current.dirty = false;
    jobs = jobs.filter((j) => j.job_id !== id);
    closeJob("The job was deleted.");
  } catch (err) {
    showJobError(`Delete failed: ${err.message}`);
  }
});

// --- resume with locked settings ------------------------------------------------------------

const rPanel = $("#resume-panel");
function copyOptions(from, to, value) {
  to.replaceChildren(...[...from.options].map((o) => el("option", { value: o.value, disabled: o.disabled, text: o.textContent })));
  if (value !== undefined) to.value = value;
}

async function validateResume() {
  const list = $("#conflicts");
  try {
    const r = await api("validate-resume-settings", { method: "POST", json: { job_id: current.id, settings: formSettings("r-") } });
    list.replaceChildren(...r.conflicts.map((c) =>
      el("li", { text: `${c.field}: the checkpoint used ${JSON.stringify(c.checkpoint)}, not ${JSON.stringify(c.requested)}. Resume keeps ${JSON.stringify(c.checkpoint)}; restart to use the new value.` })));
  } catch (err) {
    list.replaceChildren(el("li", { text: err.message }));
  }
}

$("#resume").addEventListener("click", async () => {
  const s = current.job.settings || {};
  copyOptions($("#model"), $("#r-model"), s.model || "");
  copyOptions($("#language"), $("#r-language"), s.language === null ? "auto" : s.language || "en");
  copyOptions($("#task"), $("#r-task"), s.task || "transcribe");
  rPanel.hidden = false;
  const locked = $("#locked");
  try {
    const cp = await api(`checkpoint-settings/${current.id}`);
    locked.replaceChildren(...(cp.has_checkpoint
      ? Object.entries(cp.settings).flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: JSON.stringify(v) })])
      : [el("dt", { text: "No checkpoint yet" }), el("dd", { text: "any settings can be used" })]));
  } catch (err) {
    locked.replaceChildren(el("dt", { text: "error" }), el("dd", { text: err.message }));
  }
  await validateResume();
  $("#r-resume").focus();
});
for (const id of ["#r-model", "#r-language", "#r-task"]) $(id).addEventListener("change", validateResume);
$("#r-close").addEventListener("click", () => (rPanel.hidden = true));
const start = (restart) => control(restart ? "Restart" : "Resume", async () => {
  const r = await api("start", { method: "POST", json: { job_id: current.id, settings: formSettings("r-"), restart } });
  rPanel.hidden = true;
  if (restart) {
    current.lines = current.lines.filter((l) => l.modified);
    current.aligned = false;
    renderLines();
  }
  return r;
});
rPanel.addEventListener("submit", (e) => {
  e.preventDefault();
  start(false);
});
$("#r-restart").addEventListener("click", () => confirm("Restart from scratch? The transcript so far is discarded.") && start(true));

// --- save and download -----------------------------------------------------------------------

async function save() {
  const bad = current.lines.findIndex((l) => !(l.end > l.start));
  if (bad >= 0) {
    editor.focus(bad, "cue-end");
    throw new Error(`line ${bad + 1}: the end must be after the start`);
  }
  const cues = [...current.lines].sort((a, b) => a.start - b.start).map(({ start, end, text }) => ({ start, end, text }));
  await api(`jobs/${current.id}/subtitles`, { method: "PUT", json: { cues } });
  current.dirty = false;
  current.saved = true;
  updateEditorHead();
}

$("#save").addEventListener("click", async () => {
  showJobError("");
  try {
    await save();
  } catch (err) {
    showJobError(`Save failed: ${err.message}`);
  }
});

async function downloadAs(format) {
  showJobError("");
  try {
    if (current.dirty) await save(); // the download is of what the user sees
    const blob = await fetchBlob(`jobs/${current.id}/subtitles?format=${format}`);
    const stem = (current.job.source_name || "subtitles").replace(/\.[^.]+$/, "");
    const a = el("a", { href: URL.createObjectURL(blob), download: `${stem}.${format}` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  } catch (err) {
    showJobError(`Download failed: ${err.message}`);
  }
}
$("#dl-srt").addEventListener("click", () => downloadAs("srt"));
$("#dl-vtt").addEventListener("click", () => downloadAs("vtt"));

window.addEventListener("beforeunload", (e) => {
  if (current && current.dirty) e.preventDefault();
});

// --- token -----------------------------------------------------------------------------------

const tokenDialog = $("#token-dialog");
function openToken() {
  if (tokenDialog.open) return;
  $("#token-input").value = token.get();
  tokenDialog.showModal();
}
$("#open-token").addEventListener("click", openToken);
tokenDialog.addEventListener("close", () => {
  const v = tokenDialog.returnValue;
  if (v === "save") token.set($("#token-input").value.trim());
  if (v === "clear") token.set("");
  if (v === "save" || v === "clear") location.reload(); // reopen every stream with the new credentials
});

// --- start -----------------------------------------------------------------------------------

/** The server's vocabularies (phases, model types): the page keeps no copy of its own. */
async function loadMeta() {
  for (let wait = 1000; ; wait = Math.min(wait * 2, 10000)) {
    try {
      return await api("meta");
    } catch (err) {
      if (err.status === 401) openToken();
      await new Promise((r) => setTimeout(r, wait));
    }
  }
}

loadMeta().then((meta) => {
  phases = meta.phases.map((p) => p.name);
  $("#phases").replaceChildren(...meta.phases.map((p) => el("li", { "data-phase": p.name, text: p.label })));
  if (current) applyStatus({});
  setupModelDialog($("#models-dialog"), $("#open-models"), meta.model_types);
  startModels(meta.model_types);
});
pollJobs();
// For the console and the browser tests: the lines as the editor holds them.
window.vsrt = { lines: () => (current ? current.lines.map((l) => ({ ...l })) : []), model: cueModel, player, waveform };
const fromHash = new URLSearchParams(location.hash.slice(1)).get("job");
if (fromHash) openJob(fromHash);
