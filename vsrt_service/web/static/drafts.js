// Nothing lost: the model's unsaved cues, kept in localStorage per job until they are saved
// or reverted, so a reload or a closed tab brings them back.

const PREFIX = "vsrt.draft.";
const EVERY_MS = 400;

export function readDraft(jobId) {
  try {
    const draft = JSON.parse(localStorage.getItem(PREFIX + jobId) || "null");
    return draft && Array.isArray(draft.cues) ? draft : null;
  } catch {
    return null; // unreadable: as if there were none
  }
}

export function clearDraft(jobId) {
  try {
    localStorage.removeItem(PREFIX + jobId);
  } catch {
    /* storage unavailable */
  }
}

function writeDraft(jobId, model) {
  const cues = model.cues.map(({ start, end, text, modified, source, speaker, speakers }) => ({ start, end, text, modified, source, speaker, speakers }));
  try {
    localStorage.setItem(PREFIX + jobId, JSON.stringify({ base: model.version, cues, at: Date.now() }));
  } catch {
    /* full or unavailable: the beforeunload prompt still guards the edits */
  }
}

/** Keeps job `jobId`'s draft in step with the model: written (throttled) while it is dirty,
 * cleared when it is clean (saved, reverted, or edits undone back to the saved cues). */
export class DraftKeeper {
  constructor(jobId, model) {
    this.jobId = jobId;
    this.model = model;
    this.timer = null;
    this.onChange = (e) => {
      const reason = e.detail.reason;
      if (reason === "select" || reason === "active") return;
      this.schedule();
    };
    model.addEventListener("change", this.onChange);
  }

  schedule() {
    if (this.timer) return;
    this.timer = setTimeout(() => this.flush(), EVERY_MS);
  }

  /** Write (or clear) now: before the page goes away, or after a save. */
  flush() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.model.dirty) writeDraft(this.jobId, this.model);
    else clearDraft(this.jobId);
  }

  stop() {
    this.flush();
    this.model.removeEventListener("change", this.onChange);
  }
}
