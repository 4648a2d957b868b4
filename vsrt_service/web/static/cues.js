// The editor's state: the job's cues, what is selected, undo and redo. The list, the player
// and the waveform are views of one CueModel; each change goes through `apply`, which keeps
// the previous cue array for undo (cues are never mutated in place, so an array is a cheap,
// exact snapshot) and tells every view with one "change" event.

/** A cue as the editor holds it: `id` is stable for the page's life (rows and regions bind
 * to it); `modified` marks what the user changed; `source` says where the cue came from.
 * `speaker` says who says a one-speaker cue; a dialogue cue has `speakers`, one per line,
 * and no `speaker` (as the server's JSON); neither when nobody is known. */
export function makeCue(start, end, text, extra = {}) {
  const speakers = Array.isArray(extra.speakers) && extra.speakers.length > 1 ? Object.freeze([...extra.speakers]) : null;
  const speaker = speakers ? null : (extra.speaker ?? (extra.speakers && extra.speakers[0]) ?? null);
  return Object.freeze({ id: extra.id ?? nextId(), start, end, text, modified: !!extra.modified, source: extra.source ?? "machine", speaker, speakers });
}

/** The same cue with new times and text, changed by the user: who speaks it stays. */
function edited(cue, start, end, text, extra = {}) {
  return makeCue(start, end, text, { id: cue.id, modified: true, source: cue.source, speaker: cue.speaker, speakers: cue.speakers, ...extra });
}

/** Who says each of a cue's lines (a dialogue cue: its line's speaker; else the cue's). */
export function lineSpeakers(cue, lines = cue.text.split("\n")) {
  if (!cue.speakers) return lines.map(() => cue.speaker);
  return lines.map((_, k) => cue.speakers[Math.min(k, cue.speakers.length - 1)]);
}

/** A cue's speaker fields for its lines' speakers: one name is a one-speaker cue, a change of
 * speaker from line to line a dialogue cue (one name per line). */
function voices(names) {
  const known = names.filter((n) => n != null);
  if (!known.length) return { speaker: null, speakers: null };
  if (known.every((n) => n === known[0])) return { speaker: known[0], speakers: null };
  return { speaker: null, speakers: names.map((n, k) => n ?? known[Math.min(k, known.length - 1)]) };
}

/** The job's speakers, in the order they first speak. */
export function speakersOf(cues) {
  const seen = new Set();
  for (const c of cues) {
    if (c.speaker != null) seen.add(c.speaker);
    if (c.speakers) for (const n of c.speakers) seen.add(n);
  }
  return [...seen];
}

let counter = 0;
function nextId() {
  counter += 1;
  return `q${counter}`;
}

const byStart = (a, b) => a.start - b.start || a.end - b.end;
/** Typing in one cue within this long is one undo step. */
const COALESCE_MS = 1200;
const HISTORY = 500;
/** The shortest cue an edit may leave (seconds). */
export const MIN_CUE = 0.05;

export class CueModel extends EventTarget {
  constructor() {
    super();
    this.cues = []; // sorted by start; frozen objects, replaced on change
    this.rules = null; // the server's cue rules (max_line_chars, ...), for the indicators
    this.version = 0; // the edits version the cues were loaded or saved at
    this.edited = false; // the server holds the user's cues (else the machine's)
    this.selected = new Set(); // ids
    this.active = null; // the id of the cue the user works on (focus, click, playhead)
    this.undoStack = [];
    this.redoStack = [];
    this.savedCues = this.cues; // the array last loaded or saved: dirty = cues !== savedCues
    this.lastEdit = null; // {label, id, at} of the newest undo step, for coalescing typing
  }

  get dirty() {
    return this.cues !== this.savedCues;
  }

  get canUndo() {
    return this.undoStack.length > 0;
  }

  get canRedo() {
    return this.redoStack.length > 0;
  }

  index(id) {
    return this.cues.findIndex((c) => c.id === id);
  }

  get(id) {
    return this.cues.find((c) => c.id === id);
  }

  /** The cue shown at time t (the last one starting at or before it that has not ended). */
  at(t) {
    let lo = 0;
    let hi = this.cues.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.cues[mid].start <= t) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    for (let i = found; i >= 0 && i > found - 4; i--) if (this.cues[i].end > t) return this.cues[i];
    return null;
  }

  emit(reason, detail = {}) {
    this.dispatchEvent(new CustomEvent("change", { detail: { reason, ...detail } }));
  }

  /** Replace everything (a load from the server or a restored draft): history starts over
   * unless `keepHistory` (a save keeps it, so undo reaches back across a save). */
  load(cues, { version = this.version, edited = this.edited, rules = this.rules, saved = true, keepHistory = false } = {}) {
    this.cues = [...cues].sort(byStart);
    this.version = version;
    this.edited = edited;
    this.rules = rules;
    if (saved) this.savedCues = this.cues;
    if (!keepHistory) {
      this.undoStack = [];
      this.redoStack = [];
    }
    this.lastEdit = null;
    this.selected = new Set([...this.selected].filter((id) => this.get(id)));
    if (this.active && !this.get(this.active)) this.active = null;
    this.emit("load");
  }

  /** After a save: these cues are what the server holds now, at this version. */
  markSaved(version, edited = true) {
    this.version = version;
    this.edited = edited;
    this.savedCues = this.cues;
    this.lastEdit = null;
    this.emit("saved");
  }

  /** The one way to change cues: `fn(cues)` returns the new array (cues replaced, not
   * mutated); the old one becomes an undo step. Returns false when nothing changed. */
  apply(label, fn, { id = null, coalesce = false } = {}) {
    const before = this.cues;
    const after = fn(before);
    if (!after || after === before) return false;
    after.sort(byStart);
    const now = performance.now();
    const last = this.lastEdit;
    const merge = coalesce && last && last.label === label && last.id === id && now - last.at < COALESCE_MS && this.undoStack.length;
    if (!merge) {
      this.undoStack.push(before);
      if (this.undoStack.length > HISTORY) this.undoStack.shift();
    }
    this.redoStack = [];
    this.cues = after;
    this.lastEdit = { label, id, at: now };
    this.emit("edit", { label, id });
    return true;
  }

  undo() {
    if (!this.undoStack.length) return false;
    this.redoStack.push(this.cues);
    this.cues = this.undoStack.pop();
    this.lastEdit = null;
    this.emit("undo");
    return true;
  }

  redo() {
    if (!this.redoStack.length) return false;
    this.undoStack.push(this.cues);
    this.cues = this.redoStack.pop();
    this.lastEdit = null;
    this.emit("redo");
    return true;
  }

  /** Change one cue's fields; it becomes the user's (modified). */
  update(id, patch, label = "edit") {
    const coalesce = Object.keys(patch).length === 1 && "text" in patch;
    return this.apply(label, (cues) => {
      const i = cues.findIndex((c) => c.id === id);
      if (i < 0) return null;
      const old = cues[i];
      const next = { ...old, ...patch };
      if (next.start === old.start && next.end === old.end && next.text === old.text) return null;
      if (!(next.end - next.start >= MIN_CUE - 1e-9) || next.start < 0) return null;
      const out = cues.slice();
      out[i] = edited(old, next.start, next.end, next.text);
      return out;
    }, { id, coalesce });
  }

  setText(id, text) {
    return this.update(id, { text }, "typing");
  }

  setTimes(id, start, end, label = "timing") {
    return this.update(id, { start, end }, label);
  }

  /** Split a cue in two: at a time inside it, and/or at a caret position in its text
   * (the text before the caret goes to the first cue). Without a time, the split time
   * is proportional to the text before the caret. Returns the new second cue's id. */
  split(id, { time = null, caret = null } = {}) {
    const cue = this.get(id);
    if (!cue) return null;
    const text = cue.text;
    let at = caret;
    if (at === null || at <= 0 || at >= text.length) {
      // No usable caret: the word boundary nearest to the time's share of the text.
      const share = time !== null ? (time - cue.start) / (cue.end - cue.start) : 0.5;
      at = nearestSpace(text, Math.round(text.length * share));
    }
    const first = text.slice(0, at).trim();
    const second = text.slice(at).trim();
    let t = time;
    if (t === null || t <= cue.start + MIN_CUE || t >= cue.end - MIN_CUE) {
      t = cue.start + (cue.end - cue.start) * (first.length / Math.max(1, first.length + second.length));
    }
    if (t <= cue.start + MIN_CUE / 2 || t >= cue.end - MIN_CUE / 2) return null;
    // Each half keeps the speakers of its own lines (a dialogue cue split between its lines
    // becomes two one-speaker cues).
    const names = lineSpeakers(cue);
    let from = at;
    while (from < text.length && /\s/.test(text[from])) from += 1;
    const secondLine = text.slice(0, from).split("\n").length - 1; // the line the second half starts on
    const whoA = voices(names.slice(0, first.split("\n").length));
    const whoB = voices(names.slice(secondLine, secondLine + second.split("\n").length));
    // A dialogue line that is now a one-speaker cue loses its dash.
    const undash = (part, who) => (cue.speakers && !who.speakers ? this.undash(part) : part);
    const a = edited(cue, cue.start, t, undash(first, whoA), whoA);
    const b = edited(cue, t, cue.end, undash(second, whoB), { id: nextId(), ...whoB });
    const ok = this.apply("split", (cues) => {
      const i = cues.findIndex((c) => c.id === id);
      const out = cues.slice();
      out.splice(i, 1, a, b);
      return out;
    });
    return ok ? b.id : null;
  }

  /** A text without the dialogue dash at the start of its lines. */
  undash(text) {
    const dash = ((this.rules && this.rules.dialogue_dash) || "- ").trim();
    return text.split("\n").map((l) => (l.startsWith(dash) ? l.slice(dash.length).trimStart() : l)).join("\n");
  }

  /** Merge a cue with the next one: one cue over both spans, texts joined by a line break
   * when that keeps two lines, else by a space. Two lines of two speakers make a dialogue
   * cue (each line starting with the dialogue dash). */
  mergeNext(id) {
    const i = this.index(id);
    if (i < 0 || i + 1 >= this.cues.length) return false;
    const a = this.cues[i];
    const b = this.cues[i + 1];
    const said = [a, b].flatMap((c) => {
      const lines = c.text.split("\n");
      const names = lineSpeakers(c, lines);
      return lines.map((l, k) => [l.trim(), names[k]]).filter(([l]) => l);
    });
    let lines = said.map(([l]) => l);
    let who = voices(said.map(([, n]) => n));
    if (lines.length <= 2 && who.speakers) {
      const dash = (this.rules && this.rules.dialogue_dash) || "- ";
      lines = lines.map((l) => (l.startsWith(dash.trim()) ? l : dash + l));
    } else if (lines.length > 2 && who.speakers) {
      who = { speaker: null, speakers: [...new Set(who.speakers)].slice(0, 5) }; // the cue says it mixes speakers
    }
    const text = lines.length <= 2 ? lines.join("\n") : lines.join(" ");
    this.selected.delete(b.id);
    return this.apply("merge", (cues) => {
      const out = cues.slice();
      out.splice(i, 2, edited(a, a.start, Math.max(a.end, b.end), text, who));
      return out;
    });
  }

  /** A new empty cue: at `time` if given (else after the cue `afterId`), in the free room. */
  insert({ time = null, afterId = null, text = "", duration = 2 } = {}) {
    let start = time;
    if (start === null) {
      const prev = afterId ? this.get(afterId) : this.cues.at(-1);
      start = prev ? prev.end + 0.1 : 0;
    }
    const next = this.cues.find((c) => c.start >= start);
    const end = next ? Math.max(start + MIN_CUE, Math.min(start + duration, next.start - 0.1)) : start + duration;
    const cue = makeCue(start, end, text, { modified: true, source: "user" });
    this.apply("insert", (cues) => [...cues, cue]);
    return cue.id;
  }

  remove(ids) {
    const gone = new Set(ids);
    for (const id of gone) this.selected.delete(id);
    return this.apply("delete", (cues) => {
      const out = cues.filter((c) => !gone.has(c.id));
      return out.length === cues.length ? null : out;
    });
  }

  /** Move the given cues' starts, ends or both by delta seconds (nudge ±0.1 s, shift all). */
  shift(ids, delta, field = "both", label = "shift") {
    const moved = new Set(ids);
    return this.apply(label, (cues) => {
      let changed = false;
      const out = cues.map((c) => {
        if (!moved.has(c.id)) return c;
        const start = field === "end" ? c.start : Math.max(0, c.start + delta);
        const end = field === "start" ? c.end : Math.max(0, c.end + delta);
        if (end - start < MIN_CUE - 1e-9 || (start === c.start && end === c.end)) return c;
        changed = true;
        return edited(c, start, end, c.text);
      });
      return changed ? out : null;
    });
  }

  /** Replace `find` (a string, or a RegExp with the g flag) in the given cues (all when
   * null); one undo step. Returns how many cues changed. */
  replaceAll(find, replacement, ids = null) {
    const within = ids ? new Set(ids) : null;
    let count = 0;
    this.apply("replace", (cues) => {
      const out = cues.map((c) => {
        if (within && !within.has(c.id)) return c;
        const text = typeof find === "string" ? c.text.split(find).join(replacement) : c.text.replace(find, replacement);
        if (text === c.text) return c;
        count += 1;
        return edited(c, c.start, c.end, text);
      });
      return count ? out : null;
    });
    return count;
  }

  /** Replace a run of cues by others (the server's reflow of a selection): one undo step. */
  replaceRun(ids, replacement) {
    const gone = new Set(ids);
    for (const id of gone) this.selected.delete(id);
    return this.apply("reflow", (cues) => [
      ...cues.filter((c) => !gone.has(c.id)),
      ...replacement.map((r) => makeCue(r.start, r.end, r.text, { modified: true, source: "user", speaker: r.speaker, speakers: r.speakers })),
    ]);
  }

  /** Rename speakers for the whole job (`renames`: a Map old name -> new name, applied at
   * once, so two names can swap): every cue and dialogue line with that name; one undo step.
   * Renaming onto another speaker's name merges the two. Returns how many cues changed. */
  renameSpeakers(renames) {
    const to = new Map([...renames].map(([a, b]) => [a, (b || "").trim()]).filter(([a, b]) => b && b !== a));
    if (!to.size) return 0;
    const name = (n) => (to.has(n) ? to.get(n) : n);
    let count = 0;
    this.apply("rename-speaker", (cues) => {
      const out = cues.map((c) => {
        if (c.speaker != null && to.has(c.speaker)) {
          count += 1;
          return edited(c, c.start, c.end, c.text, { speaker: name(c.speaker) });
        }
        if (!c.speakers || !c.speakers.some((n) => to.has(n))) return c;
        count += 1;
        return edited(c, c.start, c.end, c.text, voices(c.speakers.map(name)));
      });
      return count ? out : null;
    });
    return count;
  }

  renameSpeaker(from, to) {
    return this.renameSpeakers(new Map([[from, to]]));
  }

  /** Give cues to one speaker (an existing one or a new name); a dialogue cue becomes that
   * speaker's alone. One undo step; false when nothing changed. */
  assignSpeaker(ids, to) {
    const name = (to || "").trim();
    const within = new Set(ids);
    if (!name || !within.size) return false;
    return this.apply("assign-speaker", (cues) => {
      let changed = false;
      const out = cues.map((c) => {
        if (!within.has(c.id) || (c.speaker === name && !c.speakers)) return c;
        changed = true;
        return edited(c, c.start, c.end, c.text, { speaker: name, speakers: null });
      });
      return changed ? out : null;
    });
  }

  select(ids, { active = null } = {}) {
    this.selected = new Set(ids);
    if (active !== null) this.active = active;
    this.emit("select");
  }

  activate(id) {
    if (this.active === id) return;
    this.active = id;
    this.emit("active", { id });
  }

  /** Ask the player to move the playhead to `time` (seconds): views that want a seek (the
   * list on a click, the waveform) dispatch a "seek" event, `detail: {time}`, which the
   * player listens for; nothing in the model changes. */
  seek(time) {
    this.dispatchEvent(new CustomEvent("seek", { detail: { time } }));
  }

  /** The cues as the server takes them (speakers only where known). */
  toJSON() {
    return this.cues.map(cueJSON);
  }
}

/** One cue as the server takes it. */
export function cueJSON({ start, end, text, speaker, speakers }) {
  const out = { start, end, text };
  if (speakers) out.speakers = [...speakers];
  else if (speaker != null) out.speaker = speaker;
  return out;
}

function nearestSpace(text, at) {
  for (let d = 0; d < text.length; d++) {
    if (text[at - d] === " " || text[at - d] === "\n") return at - d;
    if (text[at + d] === " " || text[at + d] === "\n") return at + d;
  }
  return at;
}
