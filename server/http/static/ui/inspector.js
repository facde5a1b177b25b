// The chatdock inspector (docs/inspector.md): ES modules, no framework, no build step. This one wires the page;
// each of the others holds one part: state.js (what is open and loaded), text.js (the DOM, as text), feedback.js
// (what the page tells), api.js (the REST calls), session.js (signing in and out), contacts.js (the list and the
// address), search.js, contact.js (a contact's timeline), channels.js (its channel filter), live.js (its event
// stream), writes.js.
//
// Rules every module keeps:
// - The key lives in `state.key` only: never in a URL, a cookie, localStorage or sessionStorage. A reload
//   or a closed tab signs out.
// - Stored text reaches the page through textContent and text nodes only (never innerHTML): a message
//   holding markup shows as that markup, literally. The server's Content-Security-Policy backs this up.
// - Every write asks first in an accessible dialog; with a read-only server the write controls are removed.

import { ApiError } from "./api.js";
import { shown } from "./channels.js";
import { download, loadOlder, open, reload, scrolled, serially, toNewest } from "./contact.js";
import { go, goHome, moreContacts, refreshContacts, steppedBack } from "./contacts.js";
import { complain, guarded, say, show, submitted, withoutWrites } from "./feedback.js";
import { moreHits, searchForm } from "./search.js";
import { signIn, signOut } from "./session.js";
import { $, state } from "./state.js";
import { spellings } from "./text.js";
import { forget, link } from "./writes.js";

async function start() {
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut());
  $("search").addEventListener("submit", submitted(searchForm));
  $("more-hits").addEventListener("click", guarded(moreHits));
  $("open-form").addEventListener(
    "submit",
    submitted(async () => {
      const identifier = $("open-id").value.trim();
      try {
        await open(identifier);
      } catch (error) {
        if (error.status !== 404) throw error;
        for (const spelling of spellings(identifier)) {
          try {
            await open(spelling);
          } catch (again) {
            if (again.status === 404) continue;
            throw again;
          }
          say(`Opened ${spelling}: no contact has “${identifier}” as typed, identifiers are matched exactly.`);
          $("open-id").value = "";
          return;
        }
        // support pastes a number as it was written to them: say how identifiers are matched
        const how = "Identifiers are matched exactly as stored: a phone number as +31612345678 (no spaces, no 00), an email or a session id as the channel gave it.";
        throw new ApiError(error.status, error.error, `${error.message.replace(/\.?$/, ".")} ${how}`);
      }
      $("open-id").value = "";
    }),
  );
  $("refresh-contacts").addEventListener("click", guarded(refreshContacts));
  $("more-contacts").addEventListener("click", guarded(moreContacts));
  $("back").addEventListener("click", guarded(() => goHome()));
  const arrived = guarded(() => go({ arrived: true }));
  window.addEventListener("hashchange", (event) => steppedBack() || arrived(event));
  $("older").addEventListener(
    "click",
    guarded(async () => {
      let added = 0;
      await serially(async () => {
        const before = state.messages.length;
        await loadOlder();
        added = state.messages.length - before;
      });
      // reading goes on upwards from the newest of them (the button may be gone: the focus is not left on nothing)
      const loaded = state.messages.slice(0, added);
      const newest = loaded.findLast(shown); // of them, the newest the timeline shows
      if (newest) document.getElementById(`m-${newest.id}`)?.focus();
      else if (added) $("timeline-title").focus(); // every one of a hidden channel (the button may be gone)
      const hidden = added - loaded.filter(shown).length;
      say(`${added} older message(s) loaded${hidden ? `, ${hidden} of them on hidden channels` : ""}${state.cursor ? "" : "; that is the first one"}.`);
    }),
  );
  $("reload").addEventListener("click", guarded(reload));
  $("newest").addEventListener("click", toNewest);
  $("new-below").addEventListener("click", toNewest);
  window.addEventListener("scroll", scrolled, { passive: true }); // the new messages scrolled to: their notice goes
  $("export").addEventListener("click", guarded(download));
  $("link-form").addEventListener("submit", guarded(link));
  $("forget").addEventListener("click", guarded(forget));
  show("sign-in");
  try {
    const config = await (await fetch("/ui/config.json", { cache: "no-store", credentials: "omit" })).json();
    state.readOnly = state.serverReadOnly = config.read_only !== false;
  } catch (error) {
    complain(`The page could not read its settings (${error.message}); writes are not offered.`);
  }
  if (state.readOnly) withoutWrites();
  document.body.dataset.ready = "true";
  $("api-key").focus();
}

start();
