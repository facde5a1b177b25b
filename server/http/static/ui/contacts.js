// The organization's contacts, and the address: the open contact (and a search hit's message) as a link, never the key.
// (The rules every module keeps: inspector.js.)

import { call, enc, signedIn, Stale } from "./api.js";
import { open } from "./contact.js";
import { say, show } from "./feedback.js";
import { stopStream } from "./live.js";
import { clearResults, search } from "./search.js";
import { $, PAGE, state } from "./state.js";
import { el, shortWhen } from "./text.js";

/** Show a page of contacts: the first in place of those shown, a further one after them. */
export function renderContacts(listed, further = false) {
  const shown = new Set(further ? [...$("contacts").children].map((item) => item.dataset.key) : []);
  const items = listed.contacts
    .filter((contact) => !shown.has(contact.contact_id))
    .map(contactItem);
  if (further) $("contacts").append(...items);
  else $("contacts").replaceChildren(...items);
  state.contactsCursor = listed.next_cursor;
  $("more-contacts").hidden = !listed.next_cursor;
  $("no-contacts").hidden = $("contacts").children.length > 0;
  return items;
}

/** A contact of the list: its id to open it, and when it was last active (the list's order). */
function contactItem(contact) {
  return el(
    "li",
    { "data-key": contact.contact_id },
    el("button", { type: "button", onclick: () => open(contact.contact_id) }, contact.contact_id),
    el("span", { class: "meta" }, "active ", shortWhen(contact.last_active_at)),
  );
}

/** A page of the organization's contacts, the most recently active first: the first, or the one `cursor` names. */
export async function contactsPage(cursor) {
  return call("GET", "/contacts", { query: { limit: PAGE, cursor } });
}

export async function refreshContacts() {
  renderContacts(await contactsPage(null));
}

export async function moreContacts() {
  const items = renderContacts(await contactsPage(state.contactsCursor), true);
  // the first of them has the focus (the button may be gone: the focus is not left on nothing)
  if (items.length) items[0].querySelector("button").focus();
  if (state.contactsCursor) {
    say(`${items.length} more contact(s).`);
    return;
  }
  // A contact that became active while the list was paged moved to the first page, before the cursor: it was
  // on none of the pages read. The first page again shows it, at the top.
  const shown = new Set([...$("contacts").children].map((item) => item.dataset.key));
  const moved = (await contactsPage(null)).contacts.filter((contact) => !shown.has(contact.contact_id));
  $("contacts").prepend(...moved.map(contactItem));
  const news = moved.length ? `; ${moved.length} contact(s) that became active meanwhile are at the top of the list` : "";
  say(`${items.length} more contact(s); that is all of them${news}.`);
}

export async function goHome({ fromAddress = false } = {}) {
  state.moves += 1;
  stopStream();
  state.contact = null;
  state.generation += 1;
  clearResults();
  if (!fromAddress) address(null);
  show("home");
  $("home-title").focus();
  await refreshContacts();
}

/** What the address's fragment names: a contact and a message (`#contact=ID&message=ID`), or a search
 * (`#q=WORDS&in=ID`); any may be null. */
function addressed() {
  const found = { contact: null, message: null, q: null, in: null };
  for (const field of location.hash.slice(1).split("&")) {
    const [name, value] = field.split("=", 2);
    if (Object.hasOwn(found, name) && value) {
      try {
        found[name] = decodeURIComponent(value); // a typed "+31..." stays a plus (a form's decoding makes it a space)
      } catch {
        // not percent-encoding: as typed
        found[name] = value;
      }
    }
  }
  return found;
}

/** Put `wanted` in the address: a step for the browser's Back, or (`replace`) in place of the step it is at. */
function put(wanted, replace) {
  if ((location.hash || location.pathname) === wanted) return;
  if (replace) history.replaceState(null, "", wanted);
  else history.pushState(null, "", wanted);
}

/** Name the open contact (and message) in the address: a link to share, and a step for the browser's Back.
 * `replace`: in place of the step the address is at (a link's alias, named by its contact_id). */
export function address(contactId, messageId = null, replace = false) {
  const message = messageId ? `&message=${enc(messageId)}` : "";
  put(contactId ? `#contact=${enc(contactId)}${message}` : location.pathname, replace);
}

/** Name a search (and the contact it is narrowed to) in the address. */
export function addressSearch(q, contactId, replace = false) {
  put(`#q=${enc(q)}${contactId ? `&in=${enc(contactId)}` : ""}`, replace);
}

let steppingBack = false; // the page steps back over a link it refused: the address's change that follows is not asked

/** Whether this change of the address is the page's own step back over a refused link (`go`), once. */
export function steppedBack() {
  const was = steppingBack;
  steppingBack = false;
  return was;
}

/** Go where the address says: once signed in, and when it changes (`arrived`: a link pasted, Back, Forward). */
export async function go({ arrived = false } = {}) {
  if (!signedIn()) return; // signing in goes there
  state.moves += 1; // whatever was asked before this address is not where the page goes now
  const { contact, message, q, in: scope } = addressed();
  if (q) {
    const shown = state.search;
    if (!state.contact && shown?.q === q && (shown.contact_id ?? null) === scope) return;
    await search({ q, contact_id: scope }, { fromAddress: true });
    return;
  }
  if (!contact) {
    if (state.contact) await goHome({ fromAddress: true });
    else {
      clearResults();
      show("home"); // the tab's title no longer names the search (a review of the diff)
    }
    return;
  }
  if (contact === state.contact?.contact_id && !message) return;
  try {
    await open(contact, message, { fromAddress: true });
  } catch (error) {
    if (error instanceof Stale) throw error; // signed out meanwhile: not the link's refusal, and no step to take back
    // the address names what is shown, not the link refused: a link that arrived made a step of its own, which the
    // page steps back over (Forward still has it); written over, it left two steps alike, and Back seemed to do
    // nothing. A link followed at sign-in is written over.
    if (arrived) {
      steppingBack = true;
      history.back();
    } else {
      address(state.contact?.contact_id ?? null, null, true);
    }
    throw error;
  }
}
