// The cue list: a virtualised view of one CueModel (only the visible rows exist in the DOM,
// keyed by cue id, so thousands of cues stay smooth), with inline editing, per-cue rule
// indicators, the editing actions, and one keyboard-shortcut registry that the shortcut sheet
// lists (the player and waveform add their playhead keys to it with `addShortcut`).

import { checkCue, checkCues, previousEnds } from "./cuecheck.js";
import { speakersOf } from "./cues.js";
import { el, formatTime, parseTime } from "./store.js";

const OVERSCAN = 6;
/** As the server's formats.MAX_SPEAKER_CHARS. */
const MAX_SPEAKER_CHARS = 64;
const $id = (id) => document.getElementById(id);
const NUDGE = 0.1;

// --- shortcuts -------------------------------------------------------------------------------

/** Every key the editor answers, in the order the sheet lists them: {key, label, run, match}. */
export const shortcuts = [];

/** "Ctrl+Shift+Z" → the parts an event must have. Ctrl also matches ⌘ on a Mac. */
function parseKey(key) {
  const parts = key.split("+");
  const main = parts.pop() || "+";
  const mods = new Set(parts.map((p) => p.toLowerCase()));
  return { main: main.length === 1 ? main.toUpperCase() : main, ctrl: mods.has("ctrl"), alt: mods.has("alt"), shift: mods.has("shift") };
}

/** The key an event names: letters and digits by their physical key (Alt+letter types other
 * characters on a Mac), the rest by e.key. */
function eventMain(e) {
  if (e.code === "Space") return "Space";
  if (/^Key[A-Z]$/.test(e.code)) return e.code.slice(3);
  if (/^Digit\d$/.test(e.code)) return e.code.slice(5);
  const codes = { BracketLeft: "[", BracketRight: "]", Comma: ",", Period: "." };
  if (e.altKey && codes[e.code]) return codes[e.code];
  return e.key.length === 1 ? e.key.toUpperCase() : e.key;
}

function matches(spec, e) {
  const shiftMatters = !(spec.main.length === 1 && /[^A-Z0-9[\],.]/.test(spec.main)); // "?" is typed with Shift
  return eventMain(e) === spec.main && spec.ctrl === (e.ctrlKey || e.metaKey) && spec.alt === e.altKey && (!shiftMatters || spec.shift === e.shiftKey);
}

/** Register a key: `key` like "Alt+M" or "Ctrl+Shift+Z" (several keys: "Ctrl+Y / Ctrl+Shift+Z"),
 * `label` for the sheet, `run(event)` does it. `typing: true` lets it fire while a field outside
 * the cue list has focus (default: only in the list, or when no field has focus). */
export function addShortcut({ key, label, run, typing = false }) {
  const specs = key.split(" / ").map(parseKey);
  shortcuts.push({ key, label, run, typing, specs });
}

const editable = (t) => t instanceof HTMLElement && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName));

document.addEventListener("keydown", (e) => {
  if (e.defaultPrevented || e.isComposing) return;
  const inList = e.target instanceof Element && !!e.target.closest("#cues");
  for (const s of shortcuts) {
    if (!s.specs.some((spec) => matches(spec, e))) continue;
    const plain = !e.ctrlKey && !e.metaKey && !e.altKey;
    if (editable(e.target) && !inList && !s.typing) return; // the sidebar's and the bars' fields keep their keys
    if (editable(e.target) && plain) return; // a plain key in a field is typing
    if (document.querySelector("dialog[open]")) return;
    e.preventDefault();
    s.run(e);
    return;
  }
});

// --- the list --------------------------------------------------------------------------------

function indicatorText(info, rules) {
  const cps = info.cps === null ? "–" : info.cps.toFixed(1);
  const gap = info.gap === null ? "" : info.gap < 0 ? `overlap ${(-info.gap).toFixed(2)} s` : `gap ${info.gap.toFixed(2)} s`;
  return [
    `${info.longest}/${rules ? rules.max_line_chars : "–"} ch`,
    `${cps} cps`,
    `${info.seconds.toFixed(2)} s`,
    gap,
  ];
}

/** A speaker's colour: a hue from its name, so a chip costs no look-up over the job's cues. */
export function speakerHue(name) {
  let h = 0;
  for (let k = 0; k < name.length; k++) h = (h * 31 + name.charCodeAt(k)) >>> 0;
  return (h * 137) % 360;
}

/** The speaker chip's content for a cue: one name, or a dialogue cue's two (or more). */
function fillChip(chip, cue, any) {
  const names = cue.speakers || (cue.speaker != null ? [cue.speaker] : []);
  const key = any ? names.join("\u0000") || "-" : "";
  if (chip._key === key) return; // nothing to write: a keystroke's bind touches no chip
  chip._key = key;
  chip.hidden = !any;
  chip.title = names.join(" / "); // the whole names where the chip cuts them short
  chip.classList.toggle("none", any && !names.length);
  chip.replaceChildren(
    ...(names.length ? names : any ? ["+ speaker"] : []).map((n, k) => {
      const span = el("span", { class: "spk-name", text: n });
      if (names.length) span.style.setProperty("--hue", String(speakerHue(n)));
      return k ? [el("span", { class: "spk-sep", text: "/" }), span] : [span];
    }).flat(),
  );
}

const IND_CODES = [["line_too_long", "too_many_lines", "empty"], ["too_fast"], ["too_short", "too_long"], ["overlap", "gap_too_small"]];

export class CueEditor extends EventTarget {
  constructor(root) {
    super();
    this.root = root;
    this.model = null;
    this.rows = new Map(); // cue id -> row element currently rendered
    this.follow = true; // keep the newest cue in view while the user is at the bottom
    this.anchor = null; // the cue a Shift-click selects from
    this.ends = { cues: null, ends: [] };
    this.speakers = []; // the job's speakers, recounted on loads and edits but never per keystroke
    this.spacer = el("div", { class: "cue-spacer" });
    this.empty = el("p", { class: "cue-empty", text: "Subtitles appear here line by line as the job runs." });
    root.append(this.spacer, this.empty);
    root.addEventListener("scroll", () => {
      this.follow = root.scrollTop + root.clientHeight >= root.scrollHeight - this.rowHeight();
      this.render();
    });
    new ResizeObserver(() => this.render()).observe(root);
    this.onChange = (e) => this.changed(e.detail);
    // The counters check every cue (~2 ms for 2,000): at most every 150 ms, not every frame,
    // so a keystroke's frame holds only its own row.
    let pending = null;
    this.counters = () => {
      pending ??= setTimeout(() => {
        pending = null;
        this.updateCounters();
      }, 150);
    };
  }

  /** Show another job's model (one model per open job). */
  setModel(model) {
    if (this.model) this.model.removeEventListener("change", this.onChange);
    this.model = model;
    for (const id of [...this.rows.keys()]) this.dropRow(id);
    model.addEventListener("change", this.onChange);
    this.countSpeakers();
    this.follow = true;
    this.root.scrollTop = 0;
    this.render();
    this.counters();
  }

  get cues() {
    return this.model ? this.model.cues : [];
  }

  changed({ reason, label, id }) {
    if (reason === "select" || reason === "active") {
      for (const [cid, row] of this.rows) this.markRow(row, cid);
      if (reason === "active" && id && !this.rows.get(id)?.contains(document.activeElement)) this.reveal(id);
      return;
    }
    if (!(reason === "edit" && label === "typing")) this.countSpeakers(); // typing never changes who speaks
    if (reason === "edit" && label === "typing" && this.rows.has(id)) {
      // One keystroke: only that row (its times and so its neighbours are unchanged).
      const i = this.model.index(id);
      this.bind(this.rows.get(id), i, this.rowHeight(), false);
    } else {
      this.render(reason !== "edit" || label !== "typing");
    }
    this.counters();
  }

  countSpeakers() {
    this.speakers = speakersOf(this.cues);
    this.root.classList.toggle("has-speakers", this.speakers.length > 0);
    this.dispatchEvent(new CustomEvent("speakers", { detail: { speakers: this.speakers } }));
  }

  updateCounters() {
    const cues = this.cues;
    const rules = this.model && this.model.rules;
    const warned = rules ? new Set(checkCues(cues, rules).map((w) => w.index)).size : 0;
    this.dispatchEvent(new CustomEvent("counters", { detail: { count: cues.length, warned } }));
  }

  rowHeight() {
    return parseFloat(getComputedStyle(this.root).getPropertyValue("--row-h")) || 84;
  }

  /** The latest end before each cue, recomputed only when the times may have changed. */
  previousEnd(i) {
    const cues = this.cues;
    if (this.ends.cues !== cues) {
      const old = this.ends.cues;
      const sameTimes = old && old.length === cues.length && this.model.lastEdit?.label === "typing";
      this.ends = { cues, ends: sameTimes ? this.ends.ends : previousEnds(cues) };
    }
    return this.ends.ends[i] ?? null;
  }

  render(force = false) {
    const h = this.rowHeight();
    const cues = this.cues;
    const n = cues.length;
    this.empty.hidden = n > 0;
    this.spacer.style.height = `${n * h}px`;
    if (this.follow && n && !this.root.contains(document.activeElement)) this.root.scrollTop = this.root.scrollHeight;
    const first = Math.max(0, Math.floor(this.root.scrollTop / h) - OVERSCAN);
    const last = Math.min(n - 1, Math.ceil((this.root.scrollTop + this.root.clientHeight) / h) + OVERSCAN);
    const want = new Map();
    for (let i = first; i <= last; i++) want.set(cues[i].id, i);
    for (const [id, row] of this.rows) {
      if (want.has(id)) continue;
      if (row.contains(document.activeElement)) {
        const i = this.model.index(id);
        if (i >= 0) {
          want.set(id, i); // keep the focused row (and its caret), wherever it scrolled to
          continue;
        }
      }
      this.dropRow(id);
    }
    for (const [id, i] of want) {
      let row = this.rows.get(id);
      if (!row) {
        row = this.makeRow();
        this.rows.set(id, row);
        this.root.append(row);
      }
      this.bind(row, i, h, force);
    }
  }

  dropRow(id) {
    this.rows.get(id)?.remove();
    this.rows.delete(id);
  }

  makeRow() {
    const num = el("button", { type: "button", class: "cue-num" });
    const start = el("input", { class: "cue-start", inputmode: "decimal", autocomplete: "off", spellcheck: "false" });
    const end = el("input", { class: "cue-end", inputmode: "decimal", autocomplete: "off", spellcheck: "false" });
    const text = el("textarea", { class: "cue-text", rows: "2" });
    const ind = el("div", { class: "cue-ind" }, ...[0, 1, 2, 3].map(() => el("span")));
    // Who speaks: a tap (or click) opens the speaker picker for this cue.
    const spk = el("button", { type: "button", class: "cue-spk", hidden: true });
    const row = el("div", { class: "cue-row", role: "listitem" }, num, start, end, text, ind, spk);
    spk.addEventListener("click", () => {
      this.model.activate(row._id);
      this.openSpeakerPicker(this.model.selected.has(row._id) ? null : [row._id]);
    });
    // On a touch screen (no Shift or Ctrl) a tap on the number adds or removes the cue.
    num.addEventListener("pointerdown", (e) => (num._touch = e.pointerType === "touch"));
    num.addEventListener("click", (e) => this.clickNumber(row._id, e, num._touch));
    start.addEventListener("change", () => this.commitTime(row, "start", start));
    end.addEventListener("change", () => this.commitTime(row, "end", end));
    text.addEventListener("input", () => this.model.setText(row._id, text.value));
    row.addEventListener("focusin", () => this.model.activate(row._id));
    row.addEventListener("keydown", (e) => this.onKey(e, row));
    return row;
  }

  markRow(row, id) {
    row.classList.toggle("selected", this.model.selected.has(id));
    row.classList.toggle("active", this.model.active === id);
    row.children[0].setAttribute("aria-pressed", String(this.model.selected.has(id)));
  }

  /** Fill a row with cue i. `force`: also the fields that have focus (an undo, a split). */
  bind(row, i, h, force) {
    const cue = this.cues[i];
    row._id = cue.id;
    row.dataset.key = cue.id;
    row.dataset.index = String(i);
    row.style.transform = `translateY(${i * h}px)`;
    row.classList.toggle("modified", !!cue.modified);
    this.markRow(row, cue.id);
    const [num, start, end, text, ind, spk] = row.children;
    fillChip(spk, cue, this.speakers.length > 0);
    if (spk._label !== `${i}:${spk._key}`) {
      spk._label = `${i}:${spk._key}`;
      spk.setAttribute("aria-label", `Speaker of cue ${i + 1}: ${spk.textContent}`);
    }
    num.textContent = String(i + 1);
    num.setAttribute("aria-label", `Select cue ${i + 1}`);
    start.setAttribute("aria-label", `Start of cue ${i + 1}`);
    end.setAttribute("aria-label", `End of cue ${i + 1}`);
    text.setAttribute("aria-label", `Text of cue ${i + 1}`);
    for (const [input, field] of [[start, "start"], [end, "end"]]) {
      const editing = document.activeElement === input && (input.getAttribute("aria-invalid") || !force);
      if (!editing) {
        input.value = formatTime(cue[field]);
        input.removeAttribute("aria-invalid");
      }
    }
    // What the user types is the model's text already; undo, split or a load replace it.
    if (text.value !== cue.text && (force || document.activeElement !== text)) text.value = cue.text;
    this.indicate(row, ind, i);
  }

  indicate(row, ind, i) {
    const rules = this.model.rules;
    const cue = this.cues[i];
    let info;
    try {
      info = checkCue(cue, rules || { max_lines: 99, max_line_chars: 1e9, max_chars_per_second: 1e9, min_cue_seconds: 0, max_cue_seconds: 1e9, min_gap_seconds: 0 }, this.previousEnd(i));
    } catch {
      return;
    }
    const texts = indicatorText(info, rules);
    const codes = new Set(rules ? info.problems.map((p) => p.code) : []);
    IND_CODES.forEach((group, k) => {
      const span = ind.children[k];
      span.textContent = texts[k];
      span.classList.toggle("bad", group.some((c) => codes.has(c)));
    });
    const messages = rules ? info.problems.map((p) => p.message) : [];
    ind.title = messages.join("; ");
    row.classList.toggle("warn", messages.length > 0);
  }

  clickNumber(id, e, touch = false) {
    const m = this.model;
    if (e.shiftKey && this.anchor && m.get(this.anchor)) {
      const a = m.index(this.anchor);
      const b = m.index(id);
      const ids = m.cues.slice(Math.min(a, b), Math.max(a, b) + 1).map((c) => c.id);
      m.select(ids, { active: id });
    } else if (e.ctrlKey || e.metaKey || touch) {
      const ids = new Set(m.selected);
      if (ids.has(id)) ids.delete(id);
      else ids.add(id);
      m.select(ids, { active: id });
      this.anchor = id;
    } else {
      m.select(m.selected.size === 1 && m.selected.has(id) ? [] : [id], { active: id });
      this.anchor = id;
    }
  }

  commitTime(row, field, input) {
    const cue = this.model.get(row._id);
    if (!cue) return;
    const value = parseTime(input.value);
    const other = field === "start" ? cue.end : cue.start;
    const ok = Number.isFinite(value) && (field === "start" ? value < other : value > other);
    if (!ok) {
      input.setAttribute("aria-invalid", "true");
      row.querySelector(".cue-ind").title = Number.isFinite(value) ? "end must be after start" : "use a time like 01:02.500";
      return;
    }
    input.removeAttribute("aria-invalid");
    // Enter re-commits the field: an unchanged time is not an edit (it would pin the cue).
    if (Math.abs(value - cue[field]) < 5e-4) return this.render();
    const start = field === "start" ? value : cue.start;
    const end = field === "end" ? value : cue.end;
    if (!this.model.setTimes(cue.id, start, end)) input.setAttribute("aria-invalid", "true");
    this.focusCue(cue.id, input.className);
  }

  /** Enter: next cue's text; arrows move between cues; Tab keeps going past the rendered rows. */
  onKey(e, row) {
    if (e.ctrlKey || e.metaKey || e.altKey) return; // the shortcuts' keys
    const target = e.target;
    const i = this.model.index(row._id);
    const column = target.classList.contains("cue-text") ? "cue-text" : target.classList.contains("cue-end") ? "cue-end" : target.classList.contains("cue-start") ? "cue-start" : null;
    if (!column) return;
    const atStart = target.selectionStart === 0 && target.selectionEnd === 0;
    const atEnd = target.selectionStart === target.value.length;
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      target.dispatchEvent(new Event("change"));
      this.focus(i + 1, column);
    } else if (e.key === "ArrowDown" && (column !== "cue-text" || atEnd)) {
      e.preventDefault();
      this.focus(i + 1, column);
    } else if (e.key === "ArrowUp" && (column !== "cue-text" || atStart)) {
      e.preventDefault();
      this.focus(i - 1, column);
    } else if (e.key === "Tab" && !e.shiftKey && column === "cue-text" && i + 1 < this.cues.length) {
      e.preventDefault();
      this.focus(i + 1, "cue-start");
    } else if (e.key === "Tab" && e.shiftKey && column === "cue-start" && i > 0) {
      e.preventDefault();
      this.focus(i - 1, "cue-text");
    } else if (e.key === "Escape") {
      target.blur();
    }
  }

  /** Scroll cue i into view (without focusing). */
  reveal(id) {
    const i = this.model.index(id);
    if (i < 0) return;
    const h = this.rowHeight();
    const top = i * h;
    if (top < this.root.scrollTop) this.root.scrollTop = top;
    else if (top + h > this.root.scrollTop + this.root.clientHeight) this.root.scrollTop = top + h - this.root.clientHeight;
    this.follow = false;
    this.render();
  }

  /** Scroll cue i into view and focus one of its fields. */
  focus(i, column = "cue-text") {
    if (i < 0 || i >= this.cues.length) return;
    this.focusCue(this.cues[i].id, column);
  }

  focusCue(id, column = "cue-text", caret = null) {
    this.reveal(id);
    const field = this.rows.get(id)?.querySelector(`.${column}`);
    if (!field) return;
    field.focus();
    if (caret !== null) field.setSelectionRange(caret, caret);
  }

  /** The cue the actions work on, and the caret when its text has focus. */
  target() {
    const a = document.activeElement;
    const row = a && a.closest && a.closest(".cue-row");
    const id = row && this.rows.get(row._id) === row ? row._id : this.model.active;
    const caret = row && a.classList.contains("cue-text") ? a.selectionStart : null;
    return { id: this.model.get(id) ? id : null, caret };
  }

  /** The selected cues, else the one worked on. */
  selection() {
    const ids = this.model.cues.filter((c) => this.model.selected.has(c.id)).map((c) => c.id);
    if (ids.length) return ids;
    const { id } = this.target();
    return id ? [id] : [];
  }

  // --- actions (keys and buttons both call these) ---------------------------------------------

  splitAtCaret() {
    const { id, caret } = this.target();
    if (!id) return;
    const second = this.model.split(id, { caret });
    if (second) this.focusCue(second, "cue-text", 0);
  }

  mergeNext() {
    const { id } = this.target();
    if (id && this.model.mergeNext(id)) this.focusCue(id);
  }

  insertAfter() {
    const { id } = this.target();
    const created = this.model.insert({ afterId: id });
    this.model.activate(created);
    this.focusCue(created);
  }

  removeSelection() {
    const ids = this.selection();
    if (!ids.length) return;
    const i = this.model.index(ids[0]);
    this.model.remove(ids);
    const next = this.model.cues[Math.min(i, this.model.cues.length - 1)];
    if (next) this.focusCue(next.id);
  }

  nudge(field, delta) {
    const ids = this.selection();
    if (ids.length) this.model.shift(ids, delta, field, `nudge-${field}`);
  }

  undo() {
    this.model.undo();
  }

  /** The speaker picker (`#speaker-dialog`) for these cues (default: the selection, else the
   * cue worked on): a tap on a speaker, or a new name typed and Enter, assigns it. */
  openSpeakerPicker(ids = null) {
    const dialog = document.getElementById("speaker-dialog");
    const chosen = ids || this.selection();
    if (!dialog || !chosen.length) return;
    const m = this.model;
    const names = speakersOf(m.cues);
    const first = m.get(chosen[0]);
    $id("speaker-h").textContent = chosen.length === 1 ? `Speaker of cue ${m.index(chosen[0]) + 1}` : `Speaker of ${chosen.length} cues`;
    $id("speaker-picks").replaceChildren(
      ...names.map((n, k) => {
        const b = el("button", { class: "btn spk-pick", value: n, "aria-pressed": String(!!first && first.speaker === n) }, el("kbd", { text: String(k + 1) }), el("span", { class: "spk-name", text: n }));
        b.querySelector(".spk-name").style.setProperty("--hue", String(speakerHue(n)));
        return b;
      }),
    );
    $id("speaker-names").replaceChildren(...names.map((n) => el("option", { value: n })));
    const input = $id("speaker-new");
    input.value = "";
    $id("speaker-error").textContent = "";
    dialog._ids = chosen;
    dialog.returnValue = "";
    dialog.showModal();
    input.focus();
  }

  /** Assign from the picker: a pick's name, else the typed one. */
  pickSpeaker(e) {
    const dialog = document.getElementById("speaker-dialog");
    const value = e.submitter && e.submitter.classList.contains("spk-pick") ? e.submitter.value : $id("speaker-new").value.trim();
    if (e.submitter && e.submitter.value === "cancel") return;
    if (!value) {
      e.preventDefault();
      $id("speaker-error").textContent = "Pick a speaker or type a name";
      return;
    }
    if (value.length > MAX_SPEAKER_CHARS) {
      e.preventDefault();
      $id("speaker-error").textContent = `A name of at most ${MAX_SPEAKER_CHARS} characters`;
      return;
    }
    this.model.assignSpeaker(dialog._ids || [], value);
  }

  /** The rename dialog (`#rename-dialog`): one field per speaker of the job. */
  openRename() {
    const dialog = document.getElementById("rename-dialog");
    const names = speakersOf(this.model.cues);
    if (!dialog) return;
    $id("rename-list").replaceChildren(
      ...names.map((n) => {
        const tag = el("span", { class: "spk-name", text: n });
        tag.style.setProperty("--hue", String(speakerHue(n)));
        return el("label", { class: "rename-row" }, tag, el("input", { type: "text", value: n, "data-from": n, maxlength: String(MAX_SPEAKER_CHARS), autocomplete: "off", "aria-label": `New name for ${n}` }));
      }),
    );
    $id("rename-empty").hidden = names.length > 0;
    dialog.returnValue = "";
    dialog.showModal();
    const field = $id("rename-list").querySelector("input");
    if (field) field.select();
  }

  /** Apply the rename dialog: every changed name at once, one undo step. */
  applyRename(e) {
    if (e.submitter && e.submitter.value === "cancel") return;
    const renames = new Map();
    for (const input of $id("rename-list").querySelectorAll("input")) {
      const to = input.value.trim();
      if (to && to !== input.dataset.from) renames.set(input.dataset.from, to);
    }
    this.model.renameSpeakers(renames);
  }

  redo() {
    this.model.redo();
  }
}
