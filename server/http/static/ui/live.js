// Live: the contact's server-sent events, read through fetch (EventSource cannot send the key). (The rules every module
// keeps: inspector.js.)

import { answersAgain, enc, NO_ANSWER } from "./api.js";
import { noteFurther, refresh } from "./contact.js";
import { failed } from "./feedback.js";
import { signOut } from "./session.js";
import { $, state } from "./state.js";

/** The open contact's live view ends: its event stream, and what was said of it. */
export function stopStream() {
  state.stream?.abort();
  state.stream = null;
  state.stale = false;
  $("live").textContent = "";
  $("offline").textContent = "";
  noteFurther(0);
}

class StreamRefused extends Error {} // the event stream answered, but not with a stream

/** The banner that stays at the top while the contact's event stream is down, saying why; it is announced
 * again only when the reason changes, not at each attempt to reconnect. */
function offline(reason) {
  const text = `Offline: ${reason}. Live updates have stopped, and what this page shows may be out of date; it keeps trying to reconnect.`;
  if ($("offline").textContent !== text) $("offline").textContent = text;
}

// ms of silence after which the stream counts as down: the server writes at least every 15 s (a comment line when
// nothing happened), so a stream silent for longer is a server hung or a network dropped without a word
export const SILENCE = 35000;

export function listen(contactId) {
  const controller = new AbortController();
  state.stream = controller;
  const url = `/contacts/${enc(contactId)}/events`;
  (async () => {
    let wait = 1000;
    let dropped = false; // the stream was down: what changed meanwhile may be anywhere in the loaded range
    while (!controller.signal.aborted) {
      const attempt = new AbortController(); // this connection: ended with the view, or by its silence
      const giveUp = () => attempt.abort();
      controller.signal.addEventListener("abort", giveUp);
      let quiet = null;
      const heard = () => {
        clearTimeout(quiet);
        quiet = setTimeout(giveUp, SILENCE);
      };
      heard();
      try {
        const response = await fetch(url, {
          headers: { Authorization: `Bearer ${state.key}`, Accept: "text/event-stream" },
          signal: attempt.signal,
          cache: "no-store",
          credentials: "omit",
        });
        if (response.status === 401) {
          signOut("The key was refused while listening for changes; sign in again.");
          return;
        }
        if (!response.ok) {
          const said = await response.json().catch(() => null); // a 503's error body says what is down
          const why = said?.message ? `: ${said.message}` : "";
          throw new StreamRefused(`the event stream answered ${response.status} ${said?.error ?? response.statusText}${why}`);
        }
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          heard();
          buffer = (buffer + value).replace(/\r\n?/g, "\n");
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const name = eventName(buffer.slice(0, end));
            buffer = buffer.slice(end + 2);
            if (name === "ready") {
              $("live").textContent = "Live: changes appear as they happen.";
              $("offline").textContent = "";
              answersAgain();
              wait = 1000;
              // what happened before the stream listened: while it was down (the whole loaded range is read
              // again), or (the first time) between the timeline's first read and now
              if (dropped) state.stale = true;
              changed();
            } else if (name === "changed") {
              changed();
            }
          }
        }
      } catch (error) {
        if (controller.signal.aborted) return;
        if (attempt.signal.aborted) offline(`${NO_ANSWER}: the event stream was silent for ${SILENCE / 1000} s`);
        else offline(error instanceof StreamRefused ? error.message : `${NO_ANSWER} (${error.message})`);
      } finally {
        clearTimeout(quiet);
        controller.signal.removeEventListener("abort", giveUp);
      }
      dropped = true;
      $("live").textContent = "Live updates paused; reconnecting…";
      await new Promise((resolve) => setTimeout(resolve, wait));
      wait = Math.min(wait * 2, 15000);
    }
  })();
}

function eventName(block) {
  let name = "message";
  for (const line of block.split("\n")) if (line.startsWith("event:")) name = line.slice(6).trim();
  return block.split("\n").every((line) => line.startsWith(":")) ? null : name;
}

let refreshing = null;

let again = false;

/** A change was announced: read again (changes that come while reading are read once more after). */
function changed() {
  if (refreshing) {
    again = true;
    return;
  }
  refreshing = (async () => {
    do {
      again = false;
      try {
        await refresh();
      } catch (error) {
        failed(error);
      }
    } while (again && state.contact);
    refreshing = null;
  })();
}
