// The player: the job's upload (or its audio copy when the browser cannot play it) in
// #media-pane, with the editor's live cues drawn over it, the cue under the playhead made the
// model's active cue, and seeks asked for by the list (the model's "seek" event, or a select
// that moves the active cue). A view of the CueModel: it never changes cues except through
// the model's methods (the set-start/set-end/split keys).

import * as apiModule from "./api.js";
import { el } from "./store.js";

const STEP = 2; // seconds, for the back/forward keys

/** The query that lets a <video> (which sends no headers) fetch the job's media when the
 * server wants a token: api.js's mediaQuery once the media routes land, else a grant asked
 * for here. */
async function mediaQuery(jobId) {
  if (typeof apiModule.mediaQuery === "function") return (await apiModule.mediaQuery(jobId)) || "";
  if (!apiModule.token.get()) return "";
  const { query } = await apiModule.api(`jobs/${encodeURIComponent(jobId)}/media/grant`, { method: "POST" });
  return query || "";
}

/** The keys the player adds to the editor's shortcut registry (and so to its sheet). */
export const PLAYER_KEYS = [
  { keys: "Ctrl+Space / Alt+K", label: "Play / pause", action: "toggle" },
  { keys: "Alt+J", label: "Back 2 s", action: "back" },
  { keys: "Alt+L", label: "Forward 2 s", action: "forward" },
  { keys: "Alt+I", label: "Set the active cue's start at the playhead", action: "setStart" },
  { keys: "Alt+O", label: "Set the active cue's end at the playhead", action: "setEnd" },
  { keys: "Alt+S", label: "Split the active cue at the playhead", action: "split" },
];

export class Player extends EventTarget {
  /** `pane` is #media-pane; `model` the editor's CueModel. */
  constructor(pane, model) {
    super();
    this.pane = pane;
    this.model = model;
    this.jobId = null;
    this.info = null;
    this.mode = null; // "video" (the upload) | "audio" (the proxy, cues in the caption box)
    this.media = null; // the <video> or <audio> element playing now
    this.track = null; // the TextTrack with the cues (video mode)
    this.shown = new Map(); // cue id -> [model cue object, VTTCue] on the track
    this.openToken = 0;
    this.stage = el("div", { class: "media-stage" });
    this.caption = el("div", { class: "media-caption", "aria-live": "off", hidden: true });
    this.note = el("p", { class: "media-note hint", "aria-live": "polite" });
    this.pane.append(this.stage, this.note);
    this.onModel = (e) => this.modelChanged(e.detail.reason);
    this.onSeekRequest = (e) => this.seek(e.detail.time);
    model.addEventListener("change", this.onModel);
    model.addEventListener("seek", this.onSeekRequest);
    this.tick = this.tick.bind(this);
    this.raf = 0;
  }

  /** Load job `jobId`'s media: the original if this browser says it can play it, else the
   * audio copy; the original falls back to the copy on an error or a picture it cannot
   * decode. */
  async open(jobId) {
    this.close();
    this.jobId = jobId;
    const mine = ++this.openToken;
    this.pane.hidden = false;
    this.note.textContent = "Loading the media…";
    let info;
    try {
      info = await apiModule.api(`jobs/${encodeURIComponent(jobId)}/media/info`);
    } catch (err) {
      if (mine === this.openToken) this.note.textContent = `The media cannot be played here: ${err.message}`;
      return;
    }
    if (mine !== this.openToken) return;
    this.info = info;
    const probe = document.createElement(info.has_video ? "video" : "audio");
    const type = info.codecs ? `${info.mime}; codecs="${info.codecs}"` : info.mime;
    const playable = !!info.mime && probe.canPlayType(type) !== "";
    if (playable) await this.play("video", info.has_video ? "" : "This file has no picture: its sound plays, the lines show above it.");
    else await this.play("audio", `Playing an audio copy: this browser cannot play ${describe(info)}.`);
  }

  async play(mode, message) {
    const mine = this.openToken;
    const query = await mediaQuery(this.jobId).catch(() => "");
    if (mine !== this.openToken) return;
    const base = `api/jobs/${encodeURIComponent(this.jobId)}/media`;
    const params = new URLSearchParams(query);
    if (mode === "audio") params.set("variant", "audio");
    const q = params.toString();
    this.mode = mode;
    const video = mode === "video" && this.info.has_video;
    const media = el(video ? "video" : "audio", {
      class: video ? "media-video" : "media-audio",
      controls: true,
      preload: "metadata",
      playsInline: true,
    });
    media.setAttribute("playsinline", "");
    media.dataset.mode = mode;
    this.detachMedia();
    this.media = media;
    this.track = null;
    this.shown = new Map();
    if (video) {
      this.track = media.addTextTrack("subtitles", "Subtitles", "und");
      this.track.mode = "showing";
    }
    this.caption.hidden = video;
    this.stage.replaceChildren(...(video ? [media] : [this.caption, media]));
    this.stage.dataset.mode = video ? "video" : "audio";
    this.note.textContent = message;
    this.note.hidden = !message;
    media.addEventListener("timeupdate", () => this.follow());
    media.addEventListener("seeked", () => this.follow(true));
    media.addEventListener("play", () => (this.raf = requestAnimationFrame(this.tick)));
    media.addEventListener("error", () => this.failed(media));
    media.addEventListener("loadedmetadata", () => {
      // Chromium plays the sound of a video it cannot decode and reports a 0x0 picture.
      if (mode === "video" && this.info.has_video && media.videoWidth === 0) this.fallBack(media, "its video codec");
    });
    media.src = `${base}${q ? `?${q}` : ""}`;
    this.syncCues();
    this.dispatchEvent(new CustomEvent("media", { detail: { media, mode } }));
  }

  failed(media) {
    if (media !== this.media) return;
    if (this.mode === "video") this.fallBack(media, describe(this.info));
    else this.note.textContent = "The media cannot be played in this browser.";
  }

  fallBack(media, what) {
    if (media !== this.media || this.mode !== "video") return;
    const at = media.currentTime || 0;
    this.play("audio", `Playing an audio copy: this browser cannot play ${what}.`).then(() => {
      if (at && this.media) this.media.currentTime = at;
    });
  }

  detachMedia() {
    cancelAnimationFrame(this.raf);
    if (this.media) {
      this.media.pause();
      this.media.removeAttribute("src");
      this.media.load();
    }
  }

  close() {
    this.openToken += 1;
    this.detachMedia();
    this.media = null;
    this.track = null;
    this.shown = new Map();
    this.info = null;
    this.jobId = null;
    this.stage.replaceChildren();
    this.note.textContent = "";
  }

  destroy() {
    this.close();
    this.model.removeEventListener("change", this.onModel);
    this.model.removeEventListener("seek", this.onSeekRequest);
  }

  /** Follow another job's model (each open job has its own). */
  setModel(model) {
    if (model === this.model) return;
    this.model.removeEventListener("change", this.onModel);
    this.model.removeEventListener("seek", this.onSeekRequest);
    this.model = model;
    model.addEventListener("change", this.onModel);
    model.addEventListener("seek", this.onSeekRequest);
    this.syncCues();
  }

  get currentTime() {
    return this.media ? this.media.currentTime : 0;
  }

  seek(t) {
    if (!this.media || !Number.isFinite(t)) return;
    this.media.currentTime = Math.max(0, t);
    this.showCaption();
  }

  // --- the model -> the picture ------------------------------------------------------------

  modelChanged(reason) {
    if (reason === "select") {
      // The list moved the active cue (a click, a key): bring the playhead to it, unless
      // it is already the cue being played.
      const cue = this.model.active && this.model.get(this.model.active);
      const here = this.media && this.model.at(this.media.currentTime);
      if (cue && (!here || here.id !== cue.id)) this.seek(cue.start);
      return;
    }
    if (reason === "active") return;
    this.syncCues();
  }

  /** Put the model's cues on the text track: only the cues whose object changed are removed
   * and added (cues are frozen and replaced on change, so identity is the test). */
  syncCues() {
    this.showCaption();
    const track = this.track;
    if (!track) return;
    const next = new Map();
    for (const cue of this.model.cues) next.set(cue.id, cue);
    for (const [id, [cue, vtt]] of this.shown) {
      if (next.get(id) !== cue) {
        track.removeCue(vtt);
        this.shown.delete(id);
      }
    }
    for (const [id, cue] of next) {
      if (this.shown.has(id)) continue;
      if (!(cue.end > cue.start)) continue;
      const vtt = new VTTCue(cue.start, cue.end, cue.text);
      vtt.id = id;
      track.addCue(vtt);
      this.shown.set(id, [cue, vtt]);
    }
  }

  showCaption() {
    if (this.mode === "video" && this.track) return;
    const cue = this.media ? this.model.at(this.media.currentTime) : null;
    const text = cue ? cue.text : "";
    if (this.caption.textContent !== text) this.caption.textContent = text;
    this.caption.classList.toggle("empty", !text);
  }

  // --- the playhead -> the model -------------------------------------------------------------

  /** Make the cue under the playhead the active one while playing (or just after a seek). */
  follow(seeked = false) {
    if (!this.media) return;
    this.showCaption();
    if (this.media.paused && !seeked) return;
    const cue = this.model.at(this.media.currentTime);
    if (cue && cue.id !== this.model.active) this.model.activate(cue.id);
  }

  tick() {
    if (!this.media || this.media.paused) return;
    this.follow();
    this.raf = requestAnimationFrame(this.tick);
  }

  // --- keys ----------------------------------------------------------------------------------

  /** One of PLAYER_KEYS' actions (also for buttons and the list helper's shortcut registry). */
  run(action) {
    const media = this.media;
    if (!media) return false;
    const t = media.currentTime;
    const id = this.model.active;
    const cue = id && this.model.get(id);
    switch (action) {
      case "toggle":
        if (media.paused) media.play().catch(() => {});
        else media.pause();
        return true;
      case "back":
        this.seek(t - STEP);
        return true;
      case "forward":
        this.seek(Math.min(media.duration || Infinity, t + STEP));
        return true;
      case "setStart":
        return !!cue && this.model.setTimes(id, t, Math.max(cue.end, t + 0.05), "set start");
      case "setEnd":
        return !!cue && this.model.setTimes(id, Math.min(cue.start, t - 0.05), t, "set end");
      case "split":
        return !!cue && !!this.model.split(id, { time: t });
      default:
        return false;
    }
  }
}

function describe(info) {
  if (!info) return "this file";
  const codec = (info.codecs || "").toLowerCase();
  if (/hev1|hvc1|hevc|h265/.test(codec)) return "HEVC video";
  if (info.codecs) return `${info.codecs} in ${info.mime || "this container"}`;
  return info.mime || "this file";
}
