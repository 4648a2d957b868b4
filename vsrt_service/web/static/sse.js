// EventSource with the gaps filled: tickets when a token is set, a reconnect after the
// browser gives up (an HTTP error closes an EventSource for good), and a stall watchdog.

import { streamUrl, token } from "./api.js";

const STALL_MS = 35000; // the server pings every 10 s; silence this long means a dead link

/**
 * Open "api/<path>" as an event stream.
 * onEvent(name, data, id) for each named event; onState("connecting"|"open"|"offline", {reconnected}).
 * Returns { close() }.
 */
export function openStream(path, names, { onEvent, onState = () => {} }) {
  let es = null;
  let lastId = "";
  let closed = false;
  let opened = false;
  let retryTimer = 0;
  let stallTimer = 0;
  let backoff = 1000;

  const armWatchdog = () => {
    clearTimeout(stallTimer);
    stallTimer = setTimeout(() => restart(), STALL_MS);
  };

  // Doubling backoff with jitter, so many pages do not come back at the same instant.
  const nextDelay = () => {
    backoff = Math.min(backoff * 2, 10000);
    return backoff * (0.5 + Math.random() / 2);
  };

  const restart = (delay = 0) => {
    if (es) es.close();
    es = null;
    clearTimeout(stallTimer);
    if (closed) return;
    onState("offline", {});
    clearTimeout(retryTimer);
    retryTimer = setTimeout(connect, delay);
  };

  async function connect() {
    if (closed) return;
    onState("connecting", {});
    let url;
    try {
      url = await streamUrl(path, lastId);
    } catch {
      return restart(nextDelay());
    }
    if (closed) return;
    es = new EventSource(url);
    es.onopen = () => {
      backoff = 1000;
      onState("open", { reconnected: opened });
      opened = true;
      armWatchdog();
    };
    es.onerror = (e) => {
      if (e.data !== undefined) return; // a server-sent event named "error", not the connection
      // Tickets are one-use, so with a token the browser's own retry would be refused.
      if (es.readyState === EventSource.CLOSED || token.get()) {
        restart(nextDelay());
      } else {
        onState("offline", {}); // the browser retries by itself, sending Last-Event-ID
      }
    };
    for (const name of names) {
      es.addEventListener(name, (e) => {
        if (e.lastEventId) lastId = e.lastEventId;
        armWatchdog();
        let data = null;
        try {
          data = JSON.parse(e.data);
        } catch {
          return;
        }
        onEvent(name, data, e.lastEventId);
        // The server closes after a resync: reconnect at once without our position for a snapshot.
        if (name === "resync") {
          lastId = "";
          restart(0);
        }
      });
    }
  }

  connect();
  return {
    close() {
      closed = true;
      clearTimeout(retryTimer);
      clearTimeout(stallTimer);
      if (es) es.close();
    },
  };
}
