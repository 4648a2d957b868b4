// Model state for the whole app: one store, fed by one event stream opened at start-up
// (not by the dialog), so the manager shows live progress whenever it is opened.

import { api, ApiError } from "./api.js";
import { openStream } from "./sse.js";
import { createStore, el, formatBytes, formatEta, rafThrottle } from "./store.js";

const EVENTS = ["initial_state", "model_progress", "model_complete", "model_error", "model_incomplete", "model_deleted", "heartbeat", "resync"];

export const modelStore = createStore({
  available: null, // null: not known yet; false: this server has no model management
  types: [], // the catalog's model types (GET /api/meta); each has its list under its name
  whisper: [],
  pending: new Set(), // "type/id" of downloads clicked and not yet answered
  nodes: [], // every live node sharing the job store (GET /api/health `nodes`), each with its models
  nodeId: null, // this server's own node among them (its models' states come live, by events)
  stream: "connecting",
});

const busy = (m) => m.status === "downloading" || m.status === "waiting";

/** 0..100 from bytes when known, else from `progress` (a fraction or a percent). */
export function percentOf(m) {
  if (m.status === "ready") return 100;
  if (m.total_bytes > 0) return Math.min(100, (100 * (m.downloaded_bytes || 0)) / m.total_bytes);
  const p = Number(m.progress) || 0;
  return p <= 1 ? p * 100 : Math.min(100, p);
}

function patchModel(type, id, patch) {
  modelStore.set((s) => {
    const list = s[type] || [];
    const found = list.some((m) => m.id === id);
    const next = found ? list.map((m) => (m.id === id ? { ...m, ...patch } : m)) : [...list, { id, type, ...patch }];
    return { [type]: next };
  });
}

/** Fetch the catalogs, and the nodes from /api/health (several when they share PostgreSQL);
 * marks model management unavailable on 404. */
export async function refreshModels() {
  const { types } = modelStore.get();
  try {
    const [health, ...lists] = await Promise.all([api("health").catch(() => null), ...types.map((t) => api(`models/${t}`))]);
    modelStore.set({
      available: true,
      nodes: (health && health.nodes) || [],
      nodeId: health && health.node ? health.node.id : null,
      ...Object.fromEntries(types.map((t, i) => [t, listOf(lists[i])])),
    });
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) modelStore.set({ available: false });
    else throw err;
  }
}

const listOf = (body) => (Array.isArray(body) ? body : body.models || []);

const handlers = {
  initial_state: (d) => modelStore.set((s) => ({ available: true, ...Object.fromEntries(s.types.map((t) => [t, d[t] || []])) })),
  model_progress: (d) => patchModel(d.type, d.model_id, pick(d)),
  model_complete: (d) => patchModel(d.type, d.model_id, { status: "ready", progress: 100, eta_s: 0, error: null, ...pick(d) }),
  model_error: (d) => patchModel(d.type, d.model_id, { status: "error", error: d.error, ...pick(d) }),
  model_incomplete: (d) => patchModel(d.type, d.model_id, { status: "incomplete", ...pick(d) }),
  model_deleted: (d) => patchModel(d.type, d.model_id, { status: "not_downloaded", progress: 0, downloaded_bytes: 0, path: null }),
};

function pick(d) {
  const out = {};
  for (const k of ["status", "progress", "downloaded_bytes", "total_bytes", "speed_mbps", "eta_s", "message", "error"]) {
    if (d[k] !== undefined) out[k] = d[k];
  }
  return out;
}

/** Start the app-wide model store for the catalog's types: a snapshot, then the one event stream. */
export async function startModels(types) {
  modelStore.set({ types });
  try {
    await refreshModels();
  } catch {
    /* offline at start-up: the stream below brings the state once it connects */
  }
  if (modelStore.get().available === false) return;
  openStream("models/events/progress", EVENTS, {
    onEvent: (name, data) => handlers[name]?.(data),
    onState: (state) => modelStore.set({ stream: state }),
  });
}

export async function download(type, id) {
  const key = `${type}/${id}`;
  const pending = modelStore.get().pending;
  if (pending.has(key)) return; // a double click: the first request is still out
  modelStore.set({ pending: new Set(pending).add(key) });
  try {
    const r = await api(`models/${type}/${encodeURIComponent(id)}/download`, { method: "POST" });
    const status = { started: "downloading", already_downloading: "downloading", queued: "waiting", ready: "ready" }[r.status];
    const current = (modelStore.get()[type] || []).find((m) => m.id === id);
    // Events may already have moved the model further than this answer says.
    if (status && !(current && (busy(current) || current.status === "ready") && status !== "ready")) {
      patchModel(type, id, { status, error: null });
    }
  } finally {
    const now = new Set(modelStore.get().pending);
    now.delete(key);
    modelStore.set({ pending: now });
  }
}

export async function remove(type, id) {
  await api(`models/${type}/${encodeURIComponent(id)}`, { method: "DELETE" });
  patchModel(type, id, { status: "not_downloaded", progress: 0, downloaded_bytes: 0, path: null });
}

// --- the dialog ----------------------------------------------------------------------------

/** GET /api/models/preload/status ({model, running, runners: {name: {status, error, ...}}}) in words. */
function preloadView(p) {
  const runners = Object.entries(p.runners || {});
  const says = (name, r) => {
    if (r.status === "loaded") return `${name}: loaded${r.seconds != null ? ` in ${r.seconds} s` : ""}`;
    if (r.status === "failed") return `${name}: failed${r.error ? ` — ${r.error}` : ""}${r.failures > 1 ? ` (${r.failures} failures)` : ""}`;
    return `${name}: ${r.status === "loading" ? "loading…" : r.status || "not preloaded"}`;
  };
  return el("section", { id: "preload", class: "preload" },
    el("h3", { text: `Preload of ${p.model}${p.running ? " (running)" : ""}` }),
    runners.length
      ? el("ul", {}, ...runners.map(([name, r]) => el("li", { "data-runner": name, "data-status": r.status || "", text: says(name, r) })))
      : el("p", { class: "hint", text: p.running ? "starting…" : "not preloaded yet" }));
}

const title = (name) => name.charAt(0).toUpperCase() + name.slice(1);

const NODE_WORDS = { not_downloaded: "absent", waiting: "queued" };

/** With several nodes: the model's state on each (this node's live, the others' as of their
 * last heartbeat), named by host, or by node id where two share a host. One node: nothing. */
function nodesView(type, m) {
  const { nodes, nodeId } = modelStore.get();
  if (nodes.length < 2) return null;
  const hosts = nodes.map((n) => n.host);
  return el("ul", { class: "model-nodes", "aria-label": `${m.id} on each node` },
    ...nodes.map((n) => {
      const mine = n.id === nodeId;
      const status = mine ? m.status : ((n.models || []).find((x) => x.type === type && x.id === m.id) || {}).status || "not_downloaded";
      const name = hosts.filter((h) => h === n.host).length > 1 ? n.id : n.host;
      return el("li", { class: "model-node", "data-node": n.id, "data-status": status, title: n.id },
        el("span", { class: "node-name", text: mine ? `${name} (this server)` : name }),
        el("span", { class: `badge badge-${status}`, text: NODE_WORDS[status] || status }));
    }));
}

/** The manager: one tab per catalog type (from the server), then the runners' cache. */
export function setupModelDialog(dialog, openButton, types) {
  const panel = dialog.querySelector("#panel");
  const queue = dialog.querySelector("#queue");
  const errorBox = dialog.querySelector("#models-error");
  const tabs = [...types, "cache"].map((name, i) =>
    el("button", { type: "button", role: "tab", id: `tab-${name}`, "aria-controls": "panel", "data-tab": name,
      "aria-selected": String(i === 0), tabindex: i === 0 ? "0" : "-1", text: title(name) }));
  dialog.querySelector("#model-tabs").replaceChildren(...tabs);
  let tab = types[0];
  let cache = null;
  let preload = null;

  const showError = (msg) => {
    errorBox.textContent = msg || "";
    errorBox.hidden = !msg;
  };
  const act = async (fn) => {
    showError("");
    try {
      await fn();
    } catch (err) {
      showError(err.message);
    }
  };

  let preloadPoll = null;
  async function loadCache() {
    const [c, p] = await Promise.allSettled([api("models/cache/status"), api("models/preload/status")]);
    cache = c.status === "fulfilled" ? c.value : { error: c.reason.message };
    preload = p.status === "fulfilled" ? p.value : null;
    render();
    // While a preload runs, follow it (it has no events of its own).
    clearTimeout(preloadPoll);
    if (preload && preload.running && dialog.open && tab === "cache") preloadPoll = setTimeout(() => act(loadCache), 1000);
  }

  function selectTab(name, focus = false) {
    tab = name;
    for (const t of tabs) {
      const on = t.dataset.tab === name;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;
      if (on && focus) t.focus();
    }
    panel.setAttribute("aria-labelledby", `tab-${name}`);
    if (name === "cache") act(loadCache);
    render();
  }

  for (const t of tabs) {
    t.addEventListener("click", () => selectTab(t.dataset.tab));
    // Arrow keys move between tabs (the WAI-ARIA tabs pattern).
    t.addEventListener("keydown", (e) => {
      const i = tabs.indexOf(t);
      const j = e.key === "ArrowRight" ? i + 1 : e.key === "ArrowLeft" ? i - 1 : null;
      if (j !== null) selectTab(tabs[(j + tabs.length) % tabs.length].dataset.tab, true);
    });
  }

  function modelRow(type, m) {
    const key = `${type}/${m.id}`;
    const pct = percentOf(m);
    const pending = modelStore.get().pending.has(key);
    const stats = [];
    if (m.status === "downloading") {
      stats.push(`${pct.toFixed(0)}%`);
      if (m.speed_mbps) stats.push(`${Number(m.speed_mbps).toFixed(1)} MB/s`);
      if (m.eta_s) stats.push(`ETA ${formatEta(m.eta_s)}`);
    }
    const showBar = busy(m) || m.status === "incomplete";
    return el("li", { class: `model model-${m.status}`, "data-model": m.id, "data-status": m.status },
      el("div", { class: "model-main" },
        el("strong", { class: "model-name", text: m.id }),
        el("span", { class: `badge badge-${m.status}`, text: (m.status || "unknown").replace("_", " ") }),
        el("span", { class: "model-size", text: formatBytes(m.size_bytes || m.total_bytes) })),
      m.description ? el("p", { class: "hint model-desc", text: m.description }) : null,
      nodesView(type, m),
      showBar ? el("div", { class: "bar bar-small", role: "progressbar", "aria-label": `${m.id} download`, "aria-valuenow": String(Math.round(pct)), "aria-valuemin": "0", "aria-valuemax": "100" },
        el("div", { class: "bar-fill", style: `width:${pct}%` })) : null,
      stats.length ? el("p", { class: "model-stats", text: stats.join(" · ") }) : null,
      m.status === "waiting" ? el("p", { class: "model-stats", text: "waiting in the download queue" }) : null,
      m.error ? el("p", { class: "error", text: m.error }) : null,
      el("div", { class: "model-actions" },
        m.status !== "ready" ? el("button", {
          type: "button", class: "btn btn-primary btn-small dl", disabled: pending || busy(m),
          "aria-label": `Download ${m.id}`, text: pending ? "Starting…" : busy(m) ? "Downloading…" : m.status === "incomplete" || m.status === "error" ? "Retry download" : "Download",
          onclick: () => act(() => download(type, m.id)),
        }) : null,
        (m.status === "ready" && !m.bundled) || m.status === "incomplete" || m.status === "error" ? el("button", {
          type: "button", class: "btn btn-danger btn-small del", "aria-label": `Delete ${m.id}`, text: "Delete",
          onclick: () => confirm(`Delete the model ${m.id}? Its files are removed from the server.`) && act(() => remove(type, m.id)),
        }) : null));
  }

  function cacheView() {
    if (!cache) return el("p", { class: "hint", text: "Loading…" });
    const runners = cache.runners || [];
    return el("div", { class: "cache" },
      cache.error ? el("p", { class: "error", text: cache.error }) : null,
      ...runners.map((r) => el("section", { class: "runner" },
        el("h3", { text: `Runner ${r.name}` }),
        (r.loaded || []).length
          ? el("ul", {}, ...(r.loaded || []).map((m) => el("li", { text: m.key })))
          : el("p", { class: "hint", text: "no models loaded" }))),
      preload ? preloadView(preload) : null,
      el("div", { class: "job-actions" },
        el("button", { type: "button", class: "btn", id: "preload-start", text: "Preload default model", onclick: () => act(async () => { await api("models/preload/start", { method: "POST" }); await loadCache(); }) }),
        el("button", { type: "button", class: "btn", text: "Reset preload", onclick: () => act(async () => { await api("models/preload/reset", { method: "POST" }); await loadCache(); }) }),
        el("button", { type: "button", class: "btn btn-danger", text: "Clear cache", onclick: () => confirm("Unload all models from every runner?") && act(async () => { await api("models/cache/clear", { method: "POST" }); await loadCache(); }) })));
  }

  function render() {
    if (!dialog.open) return;
    const s = modelStore.get();
    // Keep focus on the same control across re-renders (progress events re-render often).
    const focused = document.activeElement;
    const focusKey = panel.contains(focused) ? [focused.closest("[data-model]")?.dataset.model, focused.className] : null;
    if (s.available === false) {
      queue.replaceChildren();
      panel.replaceChildren(el("p", { class: "hint", text: "Model management is unavailable on this server. Jobs use the models it already has (tiny.en is built in)." }));
      return;
    }
    const waiting = s.types.flatMap((t) => s[t] || []).filter(busy);
    queue.replaceChildren(...(waiting.length ? [el("strong", { text: "Download queue: " }),
      el("span", { text: waiting.map((m) => `${m.id} (${m.status === "waiting" ? "waiting" : `${percentOf(m).toFixed(0)}%`})`).join(", ") })] : []));
    panel.replaceChildren(tab === "cache" ? cacheView() : el("ul", { class: "models" }, ...(s[tab] || []).map((m) => modelRow(tab, m))));
    if (focusKey) {
      const again = [...panel.querySelectorAll(`[data-model="${CSS.escape(focusKey[0] || "")}"] button`)].find((b) => b.className === focusKey[1] && !b.disabled);
      again?.focus();
    }
  }

  modelStore.subscribe(rafThrottle(render));
  openButton.addEventListener("click", () => {
    dialog.showModal();
    render();
    act(refreshModels); // a fresh snapshot every time it opens
    if (tab === "cache") act(loadCache);
  });
  dialog.querySelector("#models-close").addEventListener("click", () => dialog.close());
}
