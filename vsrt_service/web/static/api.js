// HTTP helpers. All URLs are relative ("api/...") so the UI works when mounted under a prefix.

const TOKEN_KEY = "vsrt.token";

export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

export const token = {
  // sessionStorage: the token is pasted once per tab session and never put in a URL.
  get: () => sessionStorage.getItem(TOKEN_KEY) || "",
  set: (value) => (value ? sessionStorage.setItem(TOKEN_KEY, value) : sessionStorage.removeItem(TOKEN_KEY)),
};

function authHeaders(extra = {}) {
  const t = token.get();
  return t ? { ...extra, Authorization: `Bearer ${t}` } : extra;
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null; // not JSON: a proxy's error page
  }
}

/** The one reading of an error answer: the server's {"error": {code, message, field}}, or for
 * any other body a sentence for the status. */
function apiError(status, body) {
  const e = body && body.error;
  return new ApiError(status, e ? e.code : `http_${status}`, e ? e.message : describeStatus(status), e && e.field);
}

async function errorFrom(resp) {
  return apiError(resp.status, parseJson(await resp.text()));
}

export function describeStatus(status) {
  if (status === 0) return "the server could not be reached";
  if (status === 401) return "the server wants an access token (use the key button)";
  if (status === 413) return "the file is larger than the server accepts";
  if (status === 429) return "too many requests; try again in a moment";
  if (status >= 500) return `the server failed (HTTP ${status})`;
  return `HTTP ${status}`;
}

/** fetch JSON from "api/<path>"; throws ApiError with the server's code/message/field. */
export async function api(path, { method = "GET", json, signal } = {}) {
  const init = { method, headers: authHeaders(), signal };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  let resp;
  try {
    resp = await fetch(`api/${path}`, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "offline", describeStatus(0));
  }
  if (!resp.ok) throw await errorFrom(resp);
  return resp.status === 204 ? null : resp.json();
}

/** fetch a file as a Blob (downloads need the auth header too, so no plain links). */
export async function fetchBlob(path) {
  const resp = await fetch(`api/${path}`, { headers: authHeaders() });
  if (!resp.ok) throw await errorFrom(resp);
  return resp.blob();
}

/** Upload with progress: fetch has no upload progress events, XMLHttpRequest does. */
export function uploadJob(file, settings, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "api/jobs");
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onload = () => {
      const body = parseJson(xhr.responseText);
      if (xhr.status >= 200 && xhr.status < 300) return resolve(body);
      reject(apiError(xhr.status, body));
    };
    // A server refusing a too-large body may close the connection before answering.
    xhr.onerror = () =>
      reject(new ApiError(0, "upload_failed", "the upload was interrupted (the server closed the connection; the file may be over its size limit)"));
    const form = new FormData();
    form.append("settings", JSON.stringify(settings));
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

/** The URL for an EventSource: with a token, a one-use ticket (tokens never go into URLs). */
export async function streamUrl(path, lastEventId) {
  const params = new URLSearchParams();
  if (token.get()) {
    const { ticket } = await api("auth/ticket", { method: "POST" });
    params.set("ticket", ticket);
  }
  // A fresh EventSource does not send Last-Event-ID; the server also reads it from the query.
  if (lastEventId) params.set("lastEventId", lastEventId);
  const q = params.toString();
  return `api/${path}${q ? `?${q}` : ""}`;
}

/** The query ("grant=...") that lets <video src> and <audio src> fetch a job's media, media
 * info and peaks: media elements cannot send the Authorization header and make a new Range
 * request on every seek, so they get a reusable grant for that one job. "" without a token. */
export async function mediaQuery(jobId) {
  if (!token.get()) return "";
  const { query } = await api(`jobs/${encodeURIComponent(jobId)}/media/grant`, { method: "POST" });
  return query;
}
