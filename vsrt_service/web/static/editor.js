// The subtitle editor: a virtualised list (only visible rows exist in the DOM, so thousands
// of lines stay smooth) with inline editing of start, end and text.

import { el, formatTime, parseTime } from "./store.js";

const OVERSCAN = 6;

export class CueEditor {
  /** onEdit(line) after the user changes a line. */
  constructor(root, { onEdit }) {
    this.root = root;
    this.onEdit = onEdit;
    this.lines = [];
    this.rows = new Map(); // index -> row element currently rendered
    this.follow = true; // keep the newest line in view while the user is at the bottom
    this.spacer = el("div", { class: "cue-spacer" });
    this.empty = el("p", { class: "cue-empty", text: "Subtitles appear here line by line as the job runs." });
    root.append(this.spacer, this.empty);
    root.addEventListener("scroll", () => {
      this.follow = root.scrollTop + root.clientHeight >= root.scrollHeight - this.rowHeight();
      this.render();
    });
    new ResizeObserver(() => this.render()).observe(root);
  }

  rowHeight() {
    return parseFloat(getComputedStyle(this.root).getPropertyValue("--row-h")) || 64;
  }

  setLines(lines) {
    this.lines = lines;
    // Rows are rebound by index, so drop them all when the list is replaced wholesale.
    for (const [i, row] of this.rows) if (!row.contains(document.activeElement)) this.dropRow(i);
    this.render();
  }

  render() {
    const h = this.rowHeight();
    const n = this.lines.length;
    this.empty.hidden = n > 0;
    this.spacer.style.height = `${n * h}px`;
    if (this.follow && !this.root.contains(document.activeElement)) {
      this.root.scrollTop = this.root.scrollHeight;
    }
    const first = Math.max(0, Math.floor(this.root.scrollTop / h) - OVERSCAN);
    const last = Math.min(n - 1, Math.ceil((this.root.scrollTop + this.root.clientHeight) / h) + OVERSCAN);
    for (const [i, row] of this.rows) {
      const focused = row.contains(document.activeElement);
      if (i >= n || ((i < first || i > last) && !focused)) this.dropRow(i);
    }
    for (let i = first; i <= last; i++) {
      let row = this.rows.get(i);
      if (!row) {
        row = this.makeRow(i);
        this.rows.set(i, row);
        this.root.append(row);
      }
      this.bind(row, i, h);
    }
  }

  dropRow(i) {
    this.rows.get(i)?.remove();
    this.rows.delete(i);
  }

  makeRow(i) {
    const start = el("input", { class: "cue-start", inputmode: "decimal", autocomplete: "off", spellcheck: "false" });
    const end = el("input", { class: "cue-end", inputmode: "decimal", autocomplete: "off", spellcheck: "false" });
    const text = el("textarea", { class: "cue-text", rows: "2" });
    const num = el("span", { class: "cue-num", "aria-hidden": "true" });
    const note = el("span", { class: "cue-note", role: "status" });
    const row = el("div", { class: "cue-row", role: "listitem" }, num, start, end, text, note);
    row._index = i;
    start.addEventListener("change", () => this.commitTime(row, "start", start));
    end.addEventListener("change", () => this.commitTime(row, "end", end));
    text.addEventListener("input", () => {
      const line = this.lines[row._index];
      line.text = text.value;
      line.modified = true;
      row.classList.add("modified");
      this.onEdit(line);
    });
    row.addEventListener("keydown", (e) => this.onKey(e, row));
    return row;
  }

  bind(row, i, h) {
    const line = this.lines[i];
    row._index = i;
    row.dataset.key = line.key;
    row.style.transform = `translateY(${i * h}px)`;
    row.classList.toggle("modified", !!line.modified);
    const [num, start, end, text, note] = row.children;
    num.textContent = String(i + 1);
    start.setAttribute("aria-label", `Start of line ${i + 1}`);
    end.setAttribute("aria-label", `End of line ${i + 1}`);
    text.setAttribute("aria-label", `Text of line ${i + 1}`);
    // Never overwrite what the user is typing in.
    if (document.activeElement !== start && !start.getAttribute("aria-invalid")) start.value = formatTime(line.start);
    if (document.activeElement !== end && !end.getAttribute("aria-invalid")) end.value = formatTime(line.end);
    if (document.activeElement !== text) text.value = line.text;
    const problem = this.problem(i);
    note.textContent = problem;
    row.classList.toggle("warn", !!problem);
  }

  /** A warning for line i: bad order or overlap with its neighbours (not blocking). */
  problem(i) {
    const line = this.lines[i];
    if (!(line.end > line.start)) return "end must be after start";
    const prev = this.lines[i - 1];
    const next = this.lines[i + 1];
    if (prev && prev.end > line.start + 1e-3) return "overlaps the previous line";
    if (next && line.end > next.start + 1e-3) return "overlaps the next line";
    return "";
  }

  commitTime(row, field, input) {
    const line = this.lines[row._index];
    const value = parseTime(input.value);
    const other = field === "start" ? line.end : line.start;
    const ok = Number.isFinite(value) && (field === "start" ? value < other : value > other);
    if (!ok) {
      input.setAttribute("aria-invalid", "true");
      row.children[4].textContent = Number.isFinite(value) ? "end must be after start" : "use a time like 01:02.500";
      return;
    }
    input.removeAttribute("aria-invalid");
    // Enter re-commits the field: an unchanged time is not an edit (it would pin the line).
    if (Math.abs(value - line[field]) < 5e-4) return this.render();
    line[field] = value;
    line.modified = true;
    this.onEdit(line);
    this.render();
  }

  /** Enter: next line's text; arrows move between lines; Tab keeps going past the rendered rows. */
  onKey(e, row) {
    const target = e.target;
    const i = row._index;
    const column = target.classList.contains("cue-text") ? "cue-text" : target.classList.contains("cue-end") ? "cue-end" : "cue-start";
    const atStart = target.selectionStart === 0 && target.selectionEnd === 0;
    const atEnd = target.selectionStart === target.value.length;
    if (e.key === "Enter" && !e.shiftKey && !e.altKey) {
      e.preventDefault();
      target.dispatchEvent(new Event("change"));
      this.focus(i + 1, column === "cue-text" ? "cue-text" : column);
    } else if (e.key === "ArrowDown" && (column !== "cue-text" || atEnd)) {
      e.preventDefault();
      this.focus(i + 1, column);
    } else if (e.key === "ArrowUp" && (column !== "cue-text" || atStart)) {
      e.preventDefault();
      this.focus(i - 1, column);
    } else if (e.key === "Tab" && !e.shiftKey && column === "cue-text" && i + 1 < this.lines.length) {
      e.preventDefault();
      this.focus(i + 1, "cue-start");
    } else if (e.key === "Tab" && e.shiftKey && column === "cue-start" && i > 0) {
      e.preventDefault();
      this.focus(i - 1, "cue-text");
    } else if (e.key === "Escape") {
      target.blur();
    }
  }

  /** Scroll line i into view and focus one of its fields. */
  focus(i, column = "cue-text") {
    if (i < 0 || i >= this.lines.length) return;
    const h = this.rowHeight();
    const top = i * h;
    if (top < this.root.scrollTop) this.root.scrollTop = top;
    else if (top + h > this.root.scrollTop + this.root.clientHeight) this.root.scrollTop = top + h - this.root.clientHeight;
    this.follow = false;
    this.render();
    this.rows.get(i)?.querySelector(`.${column}`)?.focus();
  }
}
