// The cue rules, checked in the browser as the user types: a mirror of
// vsrt_service/core/cue_rules.py `check_cues` (same codes, same counting, times compared in
// whole milliseconds), so the row colours and the server's warnings never disagree.
// tests/test_cuecheck.py runs this file under node against check_cues on random cues.

// Python's str.isspace() set: what str.strip() removes (JS trim() differs on \x1c-\x1f, \x85, \ufeff).
const SPACE = new Set([..."\t\n\v\f\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"]);
for (let c = 0x2000; c <= 0x200a; c++) SPACE.add(String.fromCharCode(c));

const PLAIN = /^[\x20-\x7e]*$/; // printable ASCII: JS's trim() and length agree with Python's

/** Python's str.strip(), on code points. */
export function pyStrip(text) {
  if (PLAIN.test(text)) return text.trim();
  const chars = [...text];
  let a = 0;
  let b = chars.length;
  while (a < b && SPACE.has(chars[a])) a++;
  while (b > a && SPACE.has(chars[b - 1])) b--;
  return chars.slice(a, b).join("");
}

/** Length in code points, as Python's len(). */
export const pyLen = (s) => {
  if (PLAIN.test(s)) return s.length;
  let n = 0;
  for (const _ of s) n++;
  return n;
};

/** Seconds to whole milliseconds, half up on the decimal value, as core/cues.py round_ms
 * (the shortest decimal of the float, as Python's repr and JS's String both give it). */
export function roundMs(seconds) {
  if (!Number.isFinite(seconds)) throw new Error(`not a finite time: ${seconds}`);
  // Away from a half, the float product rounds as the decimal does (its error is ~1e-8 ms).
  const v = seconds * 1000;
  if (v >= 0 && Math.abs(v - Math.floor(v) - 0.5) > 1e-6) return Math.round(v);
  const m = /^(-?)(\d+)(?:\.(\d+))?(?:e([+-]\d+))?$/.exec(String(seconds));
  if (!m) throw new Error(`not a finite time: ${seconds}`);
  const [, sign, int, frac = "", exp = "0"] = m;
  // The digits and where the point sits, then move it 3 places right.
  const digits = (int + frac).replace(/^0+(?=\d)/, "");
  let point = int.replace(/^0+(?=\d)/, "").length + Number(exp) + 3;
  let all = digits;
  if (int.replace(/^0+/, "") === "") {
    // 0.xxx: leading zeros of the fraction carry no integer digits
    all = frac;
    point = Number(exp) + 3;
  }
  while (point > all.length) all += "0";
  let whole = point <= 0 ? 0 : Number(all.slice(0, point) || "0");
  const next = point < 0 ? 0 : Number(all[point] ?? "0");
  if (point >= 0 && next >= 5) whole += 1;
  return sign ? -whole : whole;
}

/** Characters a viewer reads: line breaks and the spaces around them do not count. */
export function readingChars(text) {
  return text.split("\n").reduce((n, line) => n + pyLen(pyStrip(line)), 0);
}

const fmt = (x, d) => x.toFixed(d);

// What a cue breaks on its own (all but overlap and gap), per frozen cue object and rules:
// an edit replaces the cue, so a cached answer is never stale.
const own = new WeakMap();

/** The facts one cue's indicators show, and the rules it breaks (the codes of check_cues).
 * `previousEnd`: the latest end (ms) of all cues before it, or null for the first. */
export function checkCue(cue, rules, previousEnd) {
  let base = own.get(cue);
  if (!base || base.rules !== rules) {
    base = checkOwn(cue, rules);
    if (Object.isFrozen(cue)) own.set(cue, base);
  }
  const problems = base.problems.slice();
  const { start, seconds } = base;
  let gap = null;
  if (previousEnd !== null) {
    gap = (start - previousEnd) / 1000;
    if (start < previousEnd) problems.push({ code: "overlap", message: "starts before the previous cue ends" });
    else if (start - previousEnd < roundMs(rules.min_gap_seconds))
      problems.push({ code: "gap_too_small", message: `${fmt(gap, 3)} s after the previous cue, at least ${rules.min_gap_seconds} s` });
  }
  return { lines: base.lines, longest: base.longest, cps: base.cps, seconds, gap, problems };
}

function checkOwn(cue, rules) {
  const problems = [];
  const warn = (code, message) => problems.push({ code, message });
  const start = roundMs(cue.start);
  const end = roundMs(cue.end);
  const lines = cue.text.split("\n").map(pyStrip).filter((l) => l);
  if (!lines.length) warn("empty", "the cue has no text");
  if (lines.length > rules.max_lines) warn("too_many_lines", `${lines.length} lines, at most ${rules.max_lines}`);
  const longest = lines.reduce((m, l) => Math.max(m, pyLen(l)), 0);
  if (longest > rules.max_line_chars) warn("line_too_long", `a line of ${longest} characters, at most ${rules.max_line_chars}`);
  const seconds = (end - start) / 1000;
  let cps = null;
  if (seconds > 0 && lines.length) {
    cps = readingChars(cue.text) / seconds;
    if (cps > rules.max_chars_per_second + 1e-9) warn("too_fast", `${fmt(cps, 1)} characters per second, at most ${rules.max_chars_per_second}`);
  }
  if (end - start < roundMs(rules.min_cue_seconds)) warn("too_short", `${fmt(seconds, 3)} s on screen, at least ${rules.min_cue_seconds} s`);
  if (end - start > roundMs(rules.max_cue_seconds)) warn("too_long", `${fmt(seconds, 3)} s on screen, at most ${rules.max_cue_seconds} s`);
  const mixed = mixedSpeakers(cue, lines, rules.dialogue_dash ?? "- ");
  if (mixed) warn("mixed_speakers", `${mixed} speakers in one cue: only a two-line dialogue cue, each line starting with '${rules.dialogue_dash ?? "- "}'`);
  return { rules, start, seconds, lines: lines.length, longest, cps, problems };
}

/** How many people a cue holds when that is more than one and the cue is not the dialogue
 * form (two lines, one speaker each, each starting with the dash); else 0. As cue_rules.py. */
export function mixedSpeakers(cue, lines, dash) {
  const speakers = cue.speakers ?? [];
  const who = speakers.length ? speakers : cue.speaker != null ? [cue.speaker] : [];
  const count = new Set(who).size;
  const dialogue = lines.length === 2 && speakers.length === 2 && lines.every((l) => l.startsWith(dash));
  return count > 1 && !dialogue ? count : 0;
}

/** The latest end (ms) before each cue: previousEnds(cues)[i] is what checkCue(cues[i]) takes. */
export function previousEnds(cues) {
  const out = new Array(cues.length);
  let prev = null;
  for (let i = 0; i < cues.length; i++) {
    out[i] = prev;
    const end = roundMs(cues[i].end);
    prev = prev === null ? end : Math.max(prev, end);
  }
  return out;
}

/** Every rule each cue breaks, in cue order: [{index (0-based), code, message}], as check_cues. */
export function checkCues(cues, rules) {
  const ends = previousEnds(cues);
  const out = [];
  cues.forEach((cue, index) => {
    for (const p of checkCue(cue, rules, ends[index]).problems) out.push({ index, ...p });
  });
  return out;
}
