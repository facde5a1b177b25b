// Signing in and out: the key lives in `state.key` only. (The rules every module keeps: inspector.js.)

import { ApiError, call } from "./api.js";
import { address, contactsPage, go, renderContacts } from "./contacts.js";
import { failed, say, show, writesFor } from "./feedback.js";
import { stopStream } from "./live.js";
import { $, state } from "./state.js";

export async function signIn(event) {
  event.preventDefault();
  const field = $("api-key");
  const key = field.value.trim();
  $("sign-in-problem").textContent = "";
  if (!key) return;
  state.key = key;
  state.generation += 1;
  try {
    const [listed, who] = await Promise.all([contactsPage(null), call("GET", "/whoami")]);
    field.value = "";
    const bearer = who.key_prefix ? `key ${who.key_prefix}` : "an access token";
    const readOnlyKey = !who.can_write && !state.serverReadOnly; // (on a --read-only server every key reads only)
    const signedInAs = `Organization ${who.org} · ${bearer}${readOnlyKey ? " (read-only)" : ""}`;
    writesFor(who.can_write);
    $("who").textContent = signedInAs;
    $("who").title = signedInAs;
    show("home");
    renderContacts(listed);
    const reading = who.key_prefix ? "a read-only key" : "a token that may only read";
    say(readOnlyKey ? `Signed in with ${reading}: the page offers no write.` : "Signed in.");
    $("home-title").focus();
    go().catch(failed); // a link followed before signing in: its contact
  } catch (error) {
    state.key = null;
    $("sign-in-problem").textContent =
      error.status === 401
        ? `That key was refused: ${error.message}`
        : error instanceof ApiError
          ? error.describe()
          : String(error);
    field.focus();
  }
}

export function signOut(why) {
  state.key = null;
  state.generation += 1;
  stopStream();
  address(null, null, true); // whose contact was open leaves the address bar with the key
  state.contact = null;
  state.scope = null;
  state.messages = [];
  state.cursor = null;
  state.contactsCursor = null;
  state.search = null;
  $("more-contacts").hidden = true;
  for (const id of ["contacts", "hits", "timeline", "identifiers", "chats"]) {
    $(id).replaceChildren();
    delete $(id).dataset.shown;
  }
  for (const id of ["contact-title", "contact-summary", "live", "results-summary", "status", "problem", "who", "chats-note"]) {
    $(id).textContent = "";
  }
  $("results").hidden = true;
  $("search-q").value = "";
  show("sign-in");
  $("sign-in-problem").textContent = why ?? "";
  if (!why) say("Signed out: the key is forgotten.");
  $("api-key").focus();
}
