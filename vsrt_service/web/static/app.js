// The app: new-job form, job list, job view (progress, live lines, editor), connection state.

import { api, ApiError, fetchBlob, token, uploadJob } from "./api.js";
import { cueJSON, CueModel, makeCue } from "./cues.js";
import { clearDraft, DraftKeeper, readDraft } from "./drafts.js";
import { addShortcut, CueEditor, shortcuts } from "./editor.js";
import { modelStore, setupModelDialog, startModels } from "./models.js";
import { Player, PLAYER_KEYS } from "./player.js";
import { openStream } from "./sse.js";
import { el, parseTime, rafThrottle } from "./store.js";
import { Waveform } from "./waveform.js";

const $ = (sel) => document.querySelector(sel);
const JOB_EVENTS = ["connected", "progress", "fragment", "signal", "error", "ping", "resync"];
const FINAL = new Set(["completed", "failed", "canceled"]);

// --- state ---------------------------------------------------------------------------------

let jobs = []; // the list, newest first
let current = null; // { id, job, model (CueModel), doc (the job's cues are loaded), stream, keeper (drafts), ... }
let listOnline = true;
let phases = []; // the server's phase names, in order (GET /api/meta)

const editor = new CueEditor($("#cues"));

// --- player and waveform: views of the open job's CueModel (player.js, waveform.js) --------

const player = new Player($("#media-pane"), new CueModel());
const waveform = new Waveform($("#media-pane"), player, player.model);

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
    if ($("#diarize").checked) {
      settings.diarize = true;
      const speakers = $("#num-speakers").value.trim();
      if (speakers) settings.num_speakers = Number(speakers); // the server checks the range
    }
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

const isDirty = () => !!(current && current.model.dirty);
/** Saving is for a job that no longer writes cues: final, or paused. */
const canSave = () => !!current && (FINAL.has(current.job.status) || current.job.status === "paused");

function liveCue(seg, prefix) {
  return makeCue(seg.start, seg.end, (seg.text || "").trim(), { id: `${prefix}${seg.id}`, source: "live" });
}

/** The machine's cues with the user's modified ones in: a machine cue overlapping one of
 * the user's is dropped (the user's text and times win). */
function withMine(machine, mine) {
  const covered = (c) => mine.some((m) => c.start < m.end && c.end > m.start);
  return [...machine.filter((c) => !covered(c)), ...mine];
}

/** Live lines (a `fragment` event, or the transcript so far) into the model, while the job
 * runs and before its cues exist; the user's lines keep their text and times. */
function addLive(segments, { aligned = false } = {}) {
  const m = current.model;
  if (current.doc) return;
  const mine = m.cues.filter((c) => c.modified);
  let machine;
  if (aligned) machine = segments.map((s) => liveCue(s, "a"));
  else {
    const byId = new Map(m.cues.filter((c) => !c.modified).map((c) => [c.id, c]));
    let changed = false;
    for (const seg of segments) {
      const cue = liveCue(seg, "c");
      const old = byId.get(cue.id);
      if (old && old.text === cue.text && old.start === cue.start && old.end === cue.end) continue;
      byId.set(cue.id, cue);
      changed = true;
    }
    if (!changed) return;
    machine = [...byId.values()];
  }
  m.load(withMine(machine, mine), { saved: !m.dirty, keepHistory: true });
}

/** The job's cues from the server (as the SRT has them). `keep`: the user's modified cues
 * stay (edits made while the job ran); else the server's replace everything. */
async function loadDoc(keep) {
  const mine = current;
  const doc = await api(`jobs/${encodeURIComponent(mine.id)}/subtitles?format=json`);
  if (current !== mine) return null;
  const m = mine.model;
  const cues = doc.cues.map((c) => makeCue(c.start, c.end, c.text, { source: doc.edited ? "saved" : "machine", speaker: c.speaker, speakers: c.speakers }));
  const kept = keep ? m.cues.filter((c) => c.modified) : [];
  mine.doc = true;
  mine.serverWarnings = doc.warnings.length;
  m.load(cues, { version: doc.version, edited: doc.edited, rules: doc.rules });
  if (kept.length) m.load(withMine(cues, kept), { saved: false, keepHistory: true });
  updateEditorHead();
  return doc;
}

/** The transcript so far, while the job runs (its cues do not exist yet). */
async function loadText() {
  const mine = current;
  if (!mine || mine.doc) return;
  try {
    const body = await api(`transcription-text/${mine.id}`);
    if (current !== mine || mine.doc) return;
    if (body.edited_cues) return void (await loadDoc(true)); // the user saved cues: those are the document
    addLive(body.segments, { aligned: body.source === "aligned" });
  } catch (err) {
    showJobError(err.message);
  }
}

/** Whatever the server has: the cues when they exist, else the live transcript. One load at
 * a time per job: a second caller (the stream's snapshot, the open) waits for the first. */
function loadAny(keep = true) {
  const mine = current;
  // What was in flight may have asked before the cues existed: ask again after it, if need be.
  if (mine.loading) return mine.loading.then(() => (current === mine && !mine.doc ? loadAny(keep) : null));
  mine.loading = (async () => {
    try {
      await loadDoc(keep);
    } catch (err) {
      if (err.code !== "not_ready") return showJobError(err.message);
      await loadText();
    } finally {
      mine.loading = null;
    }
  })();
  return mine.loading;
}

const when = (at) => new Date(at).toLocaleString();

/** A draft left by a reload or a closed tab: restored (the same base), or the user picks
 * (the server's cues changed since). */
function restoreDraft(mine, draft) {
  const m = mine.model;
  if (!draft || !draft.cues.length) return;
  const cues = draft.cues.map((c) => makeCue(c.start, c.end, c.text, { modified: c.modified, source: c.source, speaker: c.speaker, speakers: c.speakers }));
  if (!mine.doc) {
    const kept = cues.filter((c) => c.modified);
    if (!kept.length) return;
    m.load(withMine(m.cues.filter((c) => !c.modified), kept), { saved: false, keepHistory: true });
  } else if (draft.base === m.version) {
    m.load(cues, { saved: false });
  } else if (confirm(`These subtitles were saved elsewhere after your unsaved edits of ${when(draft.at)}.\n\nOK: keep your edits (a save replaces the other ones).\nCancel: load the saved subtitles and drop your edits.`)) {
    m.load(cues, { saved: false });
  } else {
    clearDraft(mine.id);
    return;
  }
  $("#draft-text").textContent = `Restored unsaved edits from ${when(draft.at)}.`;
  $("#draft-note").hidden = false;
}

$("#draft-discard").addEventListener("click", async () => {
  $("#draft-note").hidden = true;
  if (!current) return;
  clearDraft(current.id);
  const m = current.model;
  m.load(m.savedCues, { saved: true }); // the server's cues, as loaded before the draft
});

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
    // Speaker diarization is a phase only of jobs that asked for it.
    li.hidden = li.dataset.phase === "diarize" && !(job.settings && job.settings.diarize);
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
  showLanguage(job);
  updateEditorHead();
  updateListEntry({ job_id: current.id, status: job.status, percent: job.percent, phase: job.phase });
}

const languageNames = new Intl.DisplayNames(["en"], { type: "language" });

/** The job's language; "detected" when the settings left it to Whisper, so the user sees what
 * detection chose before reading a word. */
function showLanguage(job) {
  const asked = job.settings ? job.settings.language : undefined;
  const label = $("#job-language");
  const code = job.language || asked;
  label.hidden = !code && asked !== null;
  if (label.hidden) return;
  let name = code || "";
  try {
    if (code) name = languageNames.of(code) || code;
  } catch {
    // a code the browser does not know: show it as it is
  }
  label.textContent = !code ? "Language: detecting…" : asked === null ? `Language: ${name} (detected)` : `Language: ${name}`;
}

function updateEditorHead() {
  if (!current) return;
  const m = current.model;
  const dirty = m.dirty;
  const save = $("#save");
  save.disabled = !dirty || !canSave() || current.saving;
  save.textContent = dirty && !canSave() ? "Save waits for the job to finish" : "Save edits";
  save.title = dirty && !canSave() ? "Edits are kept in this browser; saving opens when the job completes or is paused." : "";
  $("#dl-srt").disabled = $("#dl-vtt").disabled = !(current.doc || (dirty && canSave()));
  $("#revert").disabled = !(m.edited || dirty) || !canSave();
  $("#undo-btn").disabled = !m.canUndo;
  $("#redo-btn").disabled = !m.canRedo;
  $("#save-state").textContent = dirty ? "Unsaved edits" : m.edited && current.savedHere ? "Edits saved" : m.edited ? "Your saved edits" : "";
  const w = current.serverWarnings;
  $("#server-warnings").textContent = current.doc && w ? `server: ${w} warning${w === 1 ? "" : "s"}` : "";
}

editor.addEventListener("counters", (e) => {
  const { count, warned } = e.detail;
  $("#line-count").textContent = count ? `(${count})` : "";
  $("#warn-count").textContent = warned ? `${warned} cue${warned === 1 ? "" : "s"} break${warned === 1 ? "s" : ""} a rule` : "";
});

const jobHandlers = {
  connected: (d) => {
    applyStatus(d);
    if (!current.doc && FINAL.has(d.status)) loadAny();
    else loadText(); // a fresh snapshot: catch up on everything missed while away
  },
  progress: (d) => applyStatus({ ...d, status: current.job.status === "queued" ? "processing" : current.job.status }),
  fragment: (d) => {
    if (d.language && !current.job.language) applyStatus({ language: d.language });
    addLive(d.segments);
  },
  signal: (d) => {
    if (d.code === "alignment_ready") loadText();
    const status = { job_complete: "completed", paused: "paused", canceled: "canceled" }[d.code];
    if (status) applyStatus({ status, ...(status === "completed" ? { percent: 100, phase: "srt" } : {}), message: d.message });
    if (d.code === "job_complete" && !current.doc) loadAny(true);
  },
  error: (d) => {
    showJobError(d.message);
    refreshStatus();
  },
  resync: () => {},
};

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
  if (!current.doc) loadAny();
}

async function openJob(id) {
  if (current && current.id === id) return; // already open: rebuilding it would drop unsaved edits
  if (isDirty() && !confirm("Leave this job with unsaved edits? They stay in this browser until you come back.")) return;
  if (current) leaveJob();
  const job = jobs.find((j) => j.job_id === id) || { job_id: id, status: "queued", percent: 0 };
  const draft = readDraft(id); // before anything loads: a clean load clears it
  const model = new CueModel();
  model.addEventListener("change", headSoon);
  current = { id, job, model, doc: false, savedHere: false, serverWarnings: 0, saving: false, keeper: null, stream: { close() {} } };
  history.replaceState(null, "", `#job=${encodeURIComponent(id)}`);
  $("#placeholder").hidden = true;
  $("#job-view").hidden = false;
  $("#draft-note").hidden = true;
  $("#job-title").textContent = job.source_name || id;
  $("#resume-panel").hidden = true;
  showJobError("");
  editor.setModel(model);
  waveform.close();
  player.setModel(model);
  waveform.setModel(model);
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
    if (current !== mine) return;
    $("#job-title").textContent = full.source_name || id;
    applyStatus(full);
  } catch (err) {
    if (err.status === 404) return closeJob("That job no longer exists.");
  }
  // A running job's list follows its newest line; a finished one opens at its first cue.
  editor.follow = mine.job.status === "queued" || mine.job.status === "processing";
  await loadAny(false);
  if (current !== mine) return;
  restoreDraft(mine, draft);
  mine.keeper = new DraftKeeper(id, model);
}

const headSoon = rafThrottle(updateEditorHead);

function leaveJob() {
  current.stream.close();
  current.keeper?.stop();
}

function closeJob(message) {
  if (current) leaveJob();
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
    current.keeper?.stop();
    current.keeper = null;
    clearDraft(id);
    current.model.load([], { saved: true });
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
    // The transcript starts over; the user's own lines stay.
    const m = current.model;
    current.doc = false;
    m.load(m.cues.filter((c) => c.modified), { saved: !m.dirty, keepHistory: true });
  }
  return r;
});
rPanel.addEventListener("submit", (e) => {
  e.preventDefault();
  start(false);
});
$("#r-restart").addEventListener("click", () => confirm("Restart from scratch? The transcript so far is discarded.") && start(true));

// --- save, revert, download -------------------------------------------------------------------

const conflictDialog = $("#conflict-dialog");
/** "theirs" | "mine" | "cancel": what to do about a save made elsewhere since the load. */
function askConflict() {
  return new Promise((resolve) => {
    conflictDialog.returnValue = "cancel";
    conflictDialog.addEventListener("close", () => resolve(conflictDialog.returnValue || "cancel"), { once: true });
    conflictDialog.showModal();
  });
}

/** PUT the model's cues at `version`; the server's answer marks them saved. Edits made while
 * the request was out stay unsaved (dirty). */
async function putCues(mine, version) {
  const m = mine.model;
  const sent = m.cues;
  const r = await api(`jobs/${encodeURIComponent(mine.id)}/subtitles`, { method: "PUT", json: { cues: m.toJSON(), version } });
  const now = m.cues;
  m.markSaved(r.version);
  if (now !== sent) {
    m.savedCues = sent;
    m.emit("edit", { label: "unsaved" });
  }
  mine.savedHere = true;
  mine.serverWarnings = r.warnings.length;
  mine.keeper?.flush();
  return r;
}

/** Save; true when the server holds the editor's cues afterwards. */
async function save() {
  const mine = current;
  const bad = mine.model.cues.findIndex((c) => !(c.end > c.start));
  if (bad >= 0) {
    editor.focus(bad, "cue-end");
    throw new Error(`cue ${bad + 1}: the end must be after the start`);
  }
  mine.saving = true;
  updateEditorHead();
  try {
    await putCues(mine, mine.model.version);
    return true;
  } catch (err) {
    if (err.code !== "version_conflict") throw err;
    const choice = await askConflict();
    if (current !== mine) return false;
    if (choice === "theirs") {
      clearDraft(mine.id);
      await loadDoc(false);
      return true;
    }
    if (choice !== "mine") {
      showJobError("Not saved: these subtitles were saved elsewhere since you loaded them. Your edits are kept here.");
      return false;
    }
    // Overwrite, knowingly: at the version the server holds now.
    const doc = await api(`jobs/${encodeURIComponent(mine.id)}/subtitles?format=json`);
    await putCues(mine, doc.version);
    return true;
  } finally {
    mine.saving = false;
    updateEditorHead();
  }
}

$("#save").addEventListener("click", async () => {
  showJobError("");
  try {
    await save();
  } catch (err) {
    showJobError(`Save failed: ${err.message}`);
  }
});

$("#revert").addEventListener("click", async () => {
  const mine = current;
  if (!mine || !confirm("Revert to the machine subtitles? Your saved and unsaved edits of this job are dropped.")) return;
  showJobError("");
  try {
    const m = mine.model;
    const r = m.edited ? await api(`jobs/${encodeURIComponent(mine.id)}/subtitles?version=${m.version}`, { method: "DELETE" }) : null;
    clearDraft(mine.id);
    mine.savedHere = false;
    $("#draft-note").hidden = true;
    try {
      await loadDoc(false);
    } catch (err) {
      if (err.code !== "not_ready") throw err;
      // No machine cues yet (the job has not completed): back to its live transcript.
      mine.doc = false;
      m.load([], { version: r ? r.version : m.version, edited: false });
      await loadText();
    }
  } catch (err) {
    showJobError(err.code === "version_conflict" ? "Not reverted: saved elsewhere since you loaded. Reload the job first." : `Revert failed: ${err.message}`);
  }
});

async function downloadAs(format) {
  showJobError("");
  try {
    if (isDirty() && !(await save())) return; // the download is of what the user sees
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
  current?.keeper?.flush();
  if (isDirty()) e.preventDefault();
});

// --- editing actions: the action bar, the find bar, the shift dialog, the shortcut sheet ---------

async function reflowSelection() {
  const mine = current;
  const ids = editor.selection();
  if (!mine || !ids.length) return;
  const cues = ids.map((id) => cueJSON(mine.model.get(id)));
  try {
    const r = await api(`jobs/${encodeURIComponent(mine.id)}/reflow`, { method: "POST", json: { cues } });
    if (current === mine) mine.model.replaceRun(ids, r.cues);
  } catch (err) {
    showJobError(`Reflow failed: ${err.message}`);
  }
}

const escapeRe = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
function findRe(global) {
  const text = $("#find-text").value;
  if (!text) return null;
  return new RegExp(escapeRe(text), (global ? "g" : "") + ($("#find-case").checked ? "" : "i"));
}
const findStatus = (text) => ($("#find-status").textContent = text);

/** The next match after the caret (or the cue worked on), wrapping; selects it in its cue. */
function findNext() {
  const re = findRe(false);
  const m = current && current.model;
  if (!re || !m || !m.cues.length) return;
  const { id } = editor.target();
  const a = document.activeElement;
  let i = id ? m.index(id) : 0;
  let from = id && a && a.classList.contains("cue-text") ? a.selectionEnd : 0;
  if (i < 0) [i, from] = [0, 0];
  for (let k = 0; k <= m.cues.length; k++) {
    const j = (i + k) % m.cues.length;
    const offset = k === 0 ? from : 0;
    const found = re.exec(m.cues[j].text.slice(offset));
    if (!found) continue;
    const at = offset + found.index;
    editor.focusCue(m.cues[j].id, "cue-text");
    document.activeElement.setSelectionRange(at, at + found[0].length);
    findStatus(`cue ${j + 1}`);
    return;
  }
  findStatus("not found");
}

function replaceOne() {
  const re = findRe(false);
  const a = document.activeElement;
  const { id } = editor.target();
  if (re && id && a && a.classList.contains("cue-text")) {
    const picked = a.value.slice(a.selectionStart, a.selectionEnd);
    const whole = re.exec(picked);
    if (whole && whole[0] === picked && picked) {
      const text = a.value.slice(0, a.selectionStart) + $("#replace-text").value + a.value.slice(a.selectionEnd);
      const caret = a.selectionStart + $("#replace-text").value.length;
      current.model.update(id, { text }, "replace");
      a.setSelectionRange(caret, caret);
    }
  }
  findNext();
}

function replaceAll() {
  const re = findRe(true);
  if (!re || !current) return;
  const n = current.model.replaceAll(re, $("#replace-text").value.replace(/\$/g, "$$$$"));
  findStatus(`replaced in ${n} cue${n === 1 ? "" : "s"}`);
}

function openFind() {
  $("#find-bar").hidden = false;
  $("#find-text").focus();
  $("#find-text").select();
}
$("#find-bar").addEventListener("submit", (e) => {
  e.preventDefault();
  findNext();
});
$("#find-replace").addEventListener("click", replaceOne);
$("#find-all").addEventListener("click", replaceAll);
$("#find-close").addEventListener("click", () => ($("#find-bar").hidden = true));
$("#find-bar").addEventListener("keydown", (e) => {
  if (e.key === "Escape") $("#find-bar").hidden = true;
});

const shiftDialog = $("#shift-dialog");
function openShift() {
  if (!current) return;
  const selected = editor.selection().length;
  $("#shift-sel").disabled = !current.model.selected.size;
  $("#shift-sel-label").textContent = `Selected cues (${current.model.selected.size})`;
  (current.model.selected.size ? $("#shift-sel") : $("#shift-all")).checked = true;
  $("#shift-error").textContent = "";
  shiftDialog.returnValue = "";
  shiftDialog.dataset.selected = String(selected);
  shiftDialog.showModal();
  $("#shift-amount").select();
}
$("#shift-form").addEventListener("submit", (e) => {
  if (e.submitter && e.submitter.value === "cancel") return;
  const raw = $("#shift-amount").value.trim();
  const sign = raw.startsWith("-") ? -1 : 1;
  const seconds = parseTime(raw.replace(/^[+-]/, ""));
  if (!Number.isFinite(seconds) || seconds === 0) {
    e.preventDefault();
    $("#shift-error").textContent = "Give an amount like 1.5, -0.250 or +00:02.000";
    return;
  }
  const m = current.model;
  const ids = $("#shift-sel").checked ? m.cues.filter((c) => m.selected.has(c.id)).map((c) => c.id) : m.cues.map((c) => c.id);
  m.shift(ids, sign * seconds, "both", "shift");
});

// Speakers: the picker assigns, the rename dialog renames for the whole job (editor.js).
$("#speaker-form").addEventListener("submit", (e) => editor.pickSpeaker(e));
$("#speaker-dialog").addEventListener("keydown", (e) => {
  // A number key picks that speaker, unless it is part of a name being typed.
  if (!/^[1-9]$/.test(e.key) || e.ctrlKey || e.altKey || e.metaKey || (e.target.id === "speaker-new" && e.target.value)) return;
  const pick = $("#speaker-picks").children[Number(e.key) - 1];
  if (!pick) return;
  e.preventDefault();
  $("#speaker-form").requestSubmit(pick);
});
$("#rename-form").addEventListener("submit", (e) => editor.applyRename(e));
editor.addEventListener("speakers", (e) => $("#action-bar").classList.toggle("has-speakers", e.detail.speakers.length > 0));

// Navigation keys the list handles itself, listed in the sheet after the registry's.
const LIST_KEYS = [
  ["Enter", "Next cue (same field)"],
  ["↑ / ↓", "Previous / next cue (in text: at its first / last character)"],
  ["Tab / Shift+Tab", "Next / previous field, across cues"],
  ["Shift+Enter", "Line break in the text"],
  ["Click / Shift+click / Ctrl+click on #", "Select a cue / a range / one more (touch: a tap on # adds or removes)"],
  ["Click or tap a speaker chip", "Pick that cue's (or the selection's) speaker"],
  ["Esc", "Leave the field; close a bar or dialog"],
];
function openSheet() {
  const rows = [...shortcuts.map((s) => [s.key, s.label]), ...LIST_KEYS];
  $("#keys-list").replaceChildren(...rows.flatMap(([k, label]) => [el("dt", {}, el("kbd", { text: k })), el("dd", { text: label })]));
  $("#keys-dialog").showModal();
}

const acts = {
  undo: () => editor.undo(),
  redo: () => editor.redo(),
  split: () => editor.splitAtCaret(),
  merge: () => editor.mergeNext(),
  insert: () => editor.insertAfter(),
  delete: () => editor.removeSelection(),
  "start-": () => editor.nudge("start", -NUDGE_S),
  "start+": () => editor.nudge("start", NUDGE_S),
  "end-": () => editor.nudge("end", -NUDGE_S),
  "end+": () => editor.nudge("end", NUDGE_S),
  shift: openShift,
  find: openFind,
  reflow: reflowSelection,
  speaker: () => editor.openSpeakerPicker(),
  speakers: () => editor.openRename(),
  keys: openSheet,
  save: () => $("#save").click(),
};
const NUDGE_S = 0.1;
const onJob = (fn) => () => current && fn();
for (const [key, label, act] of [
  ["Ctrl+Z", "Undo", "undo"],
  ["Ctrl+Y / Ctrl+Shift+Z", "Redo", "redo"],
  ["Ctrl+Enter", "Split the cue at the caret", "split"],
  ["Alt+M", "Merge the cue with the next", "merge"],
  ["Alt+N", "Insert a new cue after this one", "insert"],
  ["Alt+Delete", "Delete the selected cues (or this one)", "delete"],
  ["Alt+[", "Start 100 ms earlier (selection or this cue)", "start-"],
  ["Alt+]", "Start 100 ms later", "start+"],
  ["Alt+,", "End 100 ms earlier", "end-"],
  ["Alt+.", "End 100 ms later", "end+"],
  ["Alt+T", "Shift the selection or all cues by an amount…", "shift"],
  ["Alt+R", "Find and replace", "find"],
  ["Alt+W", "Reflow (re-wrap) the selection with the server's cue builder", "reflow"],
  ["Alt+P", "Speaker of the selection or this cue (pick or type a new one)…", "speaker"],
  ["Alt+Shift+P", "Rename speakers for the whole job…", "speakers"],
  ["Ctrl+S", "Save", "save"],
  ["?", "This sheet of keys", "keys"],
]) addShortcut({ key, label, run: onJob(acts[act]) });
// The player's keys act at the playhead, from anywhere on the page (player.js PLAYER_KEYS).
for (const k of PLAYER_KEYS) addShortcut({ key: k.keys, label: k.label, run: onJob(() => player.run(k.action)), typing: true });

// The buttons keep the focus (and the caret) where it was, so "split" splits where you typed.
$("#action-bar").addEventListener("mousedown", (e) => e.target.closest("button") && e.preventDefault());
$("#action-bar").addEventListener("click", (e) => {
  const b = e.target.closest("button[data-act]");
  if (b && current) acts[b.dataset.act]();
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
// For the console and the browser tests: the cues as the editor holds them, the open job's
// model and its views.
const cuesNow = () => (current ? current.model.cues.map((c) => ({ ...c })) : []);
window.vsrt = {
  cues: cuesNow,
  lines: cuesNow,
  get model() {
    return current && current.model;
  },
  editor,
  player,
  waveform,
  open: (id) => openJob(id),
};
const fromHash = new URLSearchParams(location.hash.slice(1)).get("job");
if (fromHash) openJob(fromHash);
