// The waveform: the job's peaks (computed by the server) drawn by wavesurfer.js on the
// player's own media element, so it follows playback; one region per cue in and near the
// visible window (a 2-hour job has thousands), whose edges drag to new times through the
// model, snapping to neighbouring cue edges and speech boundaries (hold Alt not to snap).

import * as apiModule from "./api.js";
import { el } from "./store.js";
import WaveSurfer from "./vendor/wavesurfer/wavesurfer.esm.js";
import RegionsPlugin from "./vendor/wavesurfer/plugins/regions.esm.js";

/** The waveform's height in px. wavesurfer writes it into the <style> of its shadow root,
 * whose hash security.py allows: change both together (tests/test_player_ui.py checks). */
export const WAVE_HEIGHT = 96;
export const MIN_PX_PER_SEC = 10;
export const MAX_PX_PER_SEC = 400;
const SNAP = 0.08; // seconds
const MARGIN = 0.5; // render regions this many visible widths beyond each side
const COLOR = "rgba(74, 128, 232, 0.20)";
const COLOR_MODIFIED = "rgba(46, 160, 110, 0.22)";
const COLOR_ACTIVE = "rgba(245, 166, 35, 0.40)";

/** audiowaveform's binary format (version 1): a 20-byte header, then min/max pairs of int8
 * (flags bit 0) or int16. Returns one channel of max(|min|, |max|) scaled to 0..1. */
export function decodePeaks(buffer) {
  const view = new DataView(buffer);
  const version = view.getInt32(0, true);
  if (version !== 1 && version !== 2) throw new Error(`unknown peaks version ${version}`);
  const eightBit = (view.getUint32(4, true) & 1) === 1;
  const sampleRate = view.getInt32(8, true);
  const samplesPerPixel = view.getInt32(12, true);
  const length = view.getUint32(16, true);
  const header = version === 1 ? 20 : 24;
  const channels = version === 2 ? view.getInt32(20, true) : 1;
  const data = eightBit ? new Int8Array(buffer, header) : new Int16Array(buffer.slice(header));
  const scale = eightBit ? 128 : 32768;
  const stride = 2 * channels;
  const n = Math.min(length, Math.floor(data.length / stride));
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const lo = data[i * stride];
    const hi = data[i * stride + 1];
    out[i] = Math.min(1, Math.max(Math.abs(lo), Math.abs(hi)) / scale);
  }
  return { peaks: out, duration: (n * samplesPerPixel) / sampleRate, sampleRate, samplesPerPixel };
}

/** The edge time nearest to `t` within SNAP among `edges` (sorted), or t. */
export function snapTime(t, edges) {
  let lo = 0;
  let hi = edges.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (edges[mid] < t) lo = mid + 1;
    else hi = mid;
  }
  let best = t;
  let dist = SNAP;
  for (const i of [lo - 1, lo]) {
    if (i < 0 || i >= edges.length) continue;
    const d = Math.abs(edges[i] - t);
    if (d <= dist) {
      dist = d;
      best = edges[i];
    }
  }
  return best;
}

export class Waveform {
  /** `pane` holds the toolbar and the waveform; `player` is a Player (its media element
   * and its "media" event); `model` the CueModel. */
  constructor(pane, player, model) {
    this.pane = pane;
    this.player = player;
    this.model = model;
    this.ws = null;
    this.regions = null;
    this.drawn = new Map(); // cue id -> [model cue object, region]
    this.activeDrawn = null;
    this.speech = []; // [[start, end], ...] from the job's document
    this.pxPerSec = 50;
    this.alt = false;
    this.loadToken = 0;
    this.pending = 0;
    this.toggle = el("button", { type: "button", class: "btn btn-quiet wave-toggle", "aria-expanded": "false", "aria-controls": "wave-body", text: "Waveform" });
    this.zoomOut = el("button", { type: "button", class: "btn btn-quiet", "aria-label": "Zoom out", text: "−" });
    this.zoomIn = el("button", { type: "button", class: "btn btn-quiet", "aria-label": "Zoom in", text: "+" });
    this.status = el("span", { class: "hint wave-status", "aria-live": "polite" });
    this.box = el("div", { class: "wave", id: "wave-box" });
    this.body = el("div", { class: "wave-body", id: "wave-body", hidden: true }, this.box);
    this.bar = el("div", { class: "wave-bar" }, this.toggle, el("span", { class: "wave-zoom", role: "group", "aria-label": "Zoom" }, this.zoomOut, this.zoomIn), this.status);
    pane.append(this.bar, this.body);
    const phone = window.matchMedia("(max-width: 700px)").matches;
    this.expanded = !phone;
    this.zoomGroup = this.bar.querySelector(".wave-zoom");
    this.zoomGroup.hidden = !this.expanded;
    this.toggle.addEventListener("click", () => this.setExpanded(!this.expanded));
    this.zoomIn.addEventListener("click", () => this.zoom(this.pxPerSec * 1.5));
    this.zoomOut.addEventListener("click", () => this.zoom(this.pxPerSec / 1.5));
    this.box.addEventListener("wheel", (e) => {
      if (!e.ctrlKey) return;
      e.preventDefault();
      this.zoom(this.pxPerSec * (e.deltaY < 0 ? 1.25 : 0.8));
    }, { passive: false });
    const alt = (e) => (this.alt = e.altKey);
    for (const type of ["pointerdown", "pointermove"]) window.addEventListener(type, alt, { capture: true, passive: true });
    this.onModel = (e) => this.modelChanged(e.detail.reason);
    model.addEventListener("change", this.onModel);
    player.addEventListener("media", (e) => this.attach(e.detail.media));
    this.schedule = this.schedule.bind(this);
  }

  setExpanded(on) {
    this.expanded = on;
    this.toggle.setAttribute("aria-expanded", String(on));
    this.body.hidden = !on;
    this.zoomGroup.hidden = !on;
    if (on && !this.ws && this.player.media) this.attach(this.player.media);
  }

  /** Start on the player's element (again after it changed to the audio copy). */
  async attach(media) {
    this.body.hidden = !this.expanded;
    this.toggle.setAttribute("aria-expanded", String(this.expanded));
    if (!this.expanded) return;
    if (this.ws && this.ws.getMediaElement() !== media) {
      this.ws.setMediaElement(media);
      return;
    }
    if (this.ws) return;
    const jobId = this.player.jobId;
    const mine = ++this.loadToken;
    this.status.textContent = "Loading the waveform…";
    let decoded;
    try {
      const blob = await apiModule.fetchBlob(`jobs/${encodeURIComponent(jobId)}/peaks`);
      decoded = decodePeaks(await blob.arrayBuffer());
    } catch (err) {
      if (mine === this.loadToken) this.status.textContent = `No waveform: ${err.message}`;
      return;
    }
    if (mine !== this.loadToken || this.player.jobId !== jobId) return;
    const duration = (this.player.info && this.player.info.duration) || decoded.duration;
    this.status.textContent = "";
    this.regions = RegionsPlugin.create();
    this.ws = WaveSurfer.create({
      container: this.box,
      media: this.player.media,
      peaks: [decoded.peaks],
      duration,
      height: WAVE_HEIGHT,
      waveColor: "#8aa4c8",
      progressColor: "#4a6fa5",
      cursorColor: "#d9480f",
      cursorWidth: 2,
      minPxPerSec: this.pxPerSec,
      autoScroll: true,
      autoCenter: true,
      normalize: true,
      interact: true,
      plugins: [this.regions],
    });
    this.regions.on("region-updated", (region) => this.dragged(region));
    this.regions.on("region-clicked", (region, e) => {
      e.stopPropagation();
      this.model.select([region.id], { active: region.id });
    });
    this.ws.on("scroll", this.schedule);
    this.ws.on("zoom", this.schedule);
    this.ws.on("redraw", this.schedule);
    this.ws.once("ready", () => this.render());
    this.loadSpeech(jobId);
    this.render();
  }

  async loadSpeech(jobId) {
    try {
      const doc = await apiModule.api(`jobs/${encodeURIComponent(jobId)}/subtitles?format=json`);
      if (this.player.jobId === jobId) this.speech = doc.speech || [];
    } catch {
      /* before completion there is no document: snapping uses the cue edges only */
    }
  }

  /** Follow another job's model (each open job has its own); call close() first. */
  setModel(model) {
    if (model === this.model) return;
    this.model.removeEventListener("change", this.onModel);
    this.model = model;
    model.addEventListener("change", this.onModel);
  }

  close() {
    this.loadToken += 1;
    if (this.ws) this.ws.destroy();
    this.ws = null;
    this.regions = null;
    this.drawn = new Map();
    this.activeDrawn = null;
    this.speech = [];
    this.status.textContent = "";
  }

  zoom(pxPerSec) {
    this.pxPerSec = Math.max(MIN_PX_PER_SEC, Math.min(MAX_PX_PER_SEC, pxPerSec));
    if (this.ws && this.ws.getDuration()) this.ws.zoom(this.pxPerSec);
    this.zoomIn.disabled = this.pxPerSec >= MAX_PX_PER_SEC;
    this.zoomOut.disabled = this.pxPerSec <= MIN_PX_PER_SEC;
  }

  modelChanged(reason) {
    if (!this.ws) return;
    if (reason === "active" || reason === "select") this.highlight();
    else this.render();
  }

  schedule() {
    if (this.pending) return;
    this.pending = requestAnimationFrame(() => {
      this.pending = 0;
      this.render();
    });
  }

  /** The time span on screen, widened by MARGIN on each side. */
  window() {
    const ws = this.ws;
    const duration = ws.getDuration() || 0;
    const scroller = ws.getWrapper().parentElement;
    const total = ws.getWrapper().scrollWidth || 1;
    const perSec = total / Math.max(duration, 1e-6);
    const from = scroller.scrollLeft / perSec;
    const width = scroller.clientWidth / perSec;
    return [from - width * MARGIN, from + width * (1 + MARGIN)];
  }

  /** Regions for the cues in the window: add, move or drop only what changed. */
  render() {
    const ws = this.ws;
    if (!ws || !ws.getDuration()) return;
    const [from, to] = this.window();
    const want = new Map();
    for (const cue of this.model.cues) {
      if (cue.start > to) break;
      if (cue.end >= from) want.set(cue.id, cue);
    }
    for (const [id, [cue, region]] of this.drawn) {
      const now = want.get(id);
      if (!now) {
        region.remove();
        this.drawn.delete(id);
      } else if (now !== cue) {
        region.setOptions({ start: now.start, end: now.end, color: this.color(now) });
        this.drawn.set(id, [now, region]);
      }
    }
    for (const [id, cue] of want) {
      if (this.drawn.has(id)) continue;
      const region = this.regions.addRegion({ id, start: cue.start, end: cue.end, color: this.color(cue), drag: true, resize: true, minLength: 0.05 });
      this.drawn.set(id, [cue, region]);
    }
    this.highlight();
  }

  color(cue) {
    if (cue.id === this.model.active) return COLOR_ACTIVE;
    return cue.modified ? COLOR_MODIFIED : COLOR;
  }

  highlight() {
    const active = this.model.active;
    if (this.activeDrawn === active) return;
    for (const id of [this.activeDrawn, active]) {
      const entry = id && this.drawn.get(id);
      if (entry) {
        entry[1].setOptions({ color: this.color(entry[0]) });
        entry[1].element?.classList.toggle("active", id === active);
      }
    }
    this.activeDrawn = active && this.drawn.has(active) ? active : null;
  }

  /** A region's edge or body was dragged: the model gets the snapped times (Alt: as is). */
  dragged(region) {
    const entry = this.drawn.get(region.id);
    const cue = this.model.get(region.id);
    if (!entry || !cue) return;
    let start = region.start;
    let end = region.end;
    if (!this.alt) {
      const edges = this.edges(cue.id);
      const movedStart = Math.abs(start - cue.start) > 1e-6;
      const movedEnd = Math.abs(end - cue.end) > 1e-6;
      if (movedStart && movedEnd) {
        const length = end - start;
        const s = snapTime(start, edges);
        const e = snapTime(end, edges);
        if (Math.abs(s - start) <= Math.abs(e - end) && s !== start) start = s;
        else if (e !== end) start = e - length;
        end = start + length;
      } else if (movedStart) start = Math.min(snapTime(start, edges), end - 0.05);
      else if (movedEnd) end = Math.max(snapTime(end, edges), start + 0.05);
    }
    start = Math.round(start * 1000) / 1000;
    end = Math.round(end * 1000) / 1000;
    if (!this.model.setTimes(cue.id, start, end, "drag")) {
      region.setOptions({ start: cue.start, end: cue.end }); // refused: back where it was
    }
  }

  /** Snap targets: the edges of the cues next to `id`, and the speech regions' edges. */
  edges(id) {
    const i = this.model.index(id);
    const out = [];
    for (const j of [i - 2, i - 1, i + 1, i + 2]) {
      const c = this.model.cues[j];
      if (c) out.push(c.start, c.end);
    }
    for (const [s, e] of this.speech) out.push(s, e);
    return out.sort((a, b) => a - b);
  }
}
