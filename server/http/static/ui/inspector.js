// The chatdock inspector (docs/inspector.md): one ES module, no framework, no build step.
//
// Rules this file keeps:
// - The key lives in `state.key` only: never in a URL, a cookie, localStorage or sessionStorage. A reload
//   or a closed tab signs out.
// - Stored text reaches the page through textContent and text nodes only (never innerHTML): a message
//   holding markup shows as that markup, literally. The server's Content-Security-Policy backs this up.
// - Every write asks first in an accessible dialog; with a read-only server the write controls are removed.

const PAGE = 50; // messages a page of the timeline, contacts a page of the list
const MOST = 200; // the most a route gives at once (the store's bound on `limit`)
const FIND_PAGES = 25; // how far back a search hit is looked for: 25 pages of MOST (5,000 messages)
const OVERLAP = 10; // loaded messages a change's read asks for again, below the new ones: where the pages meet

const state = {
  key: null, // the API key, in this tab's memory only
  readOnly: true, // until /ui/config.json says otherwise
  contact: null, // the open contact (GET /contacts/{id})
  scope: null, // the contact a search can be narrowed to (the last one opened)
  messages: [], // the open contact's loaded messages, oldest first
  cursor: null, // list_messages' cursor for the page before the oldest loaded message
  timeline: Promise.resolve(), // the end of the open contact's chain of timeline reads (see `serially`)
  known: 0, // the contact's message_count as the reads account for it (see `follow`)
  further: 0, // messages changed further back than a change's read looked: the note offers a reload
  stale: false, // the event stream was down: the next change reads the whole loaded range again
  contactsCursor: null, // GET /contacts' cursor for the page after the contacts shown
  stream: null, // AbortController of the open contact's event stream
  generation: 0, // bumped when the open contact changes or the key goes: late answers are dropped
  search: null, // {q, contact_id, cursor} of the results shown
  forgetting: null, // the contact whose DELETE is on its way
};

const $ = (id) => document.getElementById(id);
const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
const timeFormat = new Intl.DateTimeFormat(undefined, {
  year: "numeric",
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  timeZoneName: "short",
});

// --- the DOM, as text ---

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "onclick") node.addEventListener("click", guarded(value));
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children.filter((child) => child !== null && child !== undefined)); // strings become text nodes
  return node;
}

/** The snippet's [matched] words as <mark> elements, the rest as text: the marks' brackets dropped, and the
 * text's own brackets and backslashes, which the server escapes with a backslash (\[URGENT\]), unescaped. */
function marked(snippet) {
  const pieces = [];
  let text = "";
  let open = false;
  for (let at = 0; at < snippet.length; at += 1) {
    const char = snippet[at];
    if (char === "\\" && at + 1 < snippet.length) {
      at += 1;
      text += snippet[at];
    } else if (char === "[" && !open) {
      pieces.push(...visible(text));
      text = "";
      open = true;
    } else if (char === "]" && open) {
      pieces.push(el("mark", {}, ...visible(text)));
      text = "";
      open = false;
    } else {
      text += char;
    }
  }
  pieces.push(...visible(open ? "[" + text : text)); // a mark left open (not made by the server) stays as sent
  return pieces;
}

function when(timestamp) {
  return el("time", { datetime: timestamp }, timeFormat.format(new Date(timestamp)));
}

function seconds(value) {
  const minutes = Math.floor(value / 60);
  return `${minutes}:${(value - minutes * 60).toFixed(1).padStart(4, "0")}`;
}

/** How a chat is named: the end of its id. Chat ids are UUIDv7, whose first 8 hex digits are the time (every
 * chat opened within about a minute would read the same); the last 8 are random. */
function chatName(id) {
  return `chat …${id.slice(-8)}`;
}

function capitalized(text) {
  return text[0].toUpperCase() + text.slice(1);
}

// Characters that show as nothing, or turn the text around it: bidi controls (U+202E makes "gnp.exe" read
// "exe.png"), zero-width characters, the soft hyphen and the byte-order mark.
const INVISIBLE = /[\u00AD\u061C\u180E\u200B-\u200F\u202A-\u202E\u2060-\u2064\u2066-\u2069\uFEFF]/g;

/** Stored text with each invisible character shown as its code point (⟨U+202E⟩, marked) instead of acting:
 * support sees that the text is not what it looks like. A zero-width joiner inside an emoji sequence (👩‍💻)
 * is left to join. */
function visible(text) {
  const pieces = [];
  let from = 0;
  for (const found of text.matchAll(INVISIBLE)) {
    if (found[0] === "\u200D" && joinsEmoji(text, found.index)) continue;
    const code = found[0].codePointAt(0).toString(16).toUpperCase().padStart(4, "0");
    pieces.push(text.slice(from, found.index), el("span", { class: "invisible" }, `⟨U+${code}⟩`));
    from = found.index + 1;
  }
  pieces.push(text.slice(from));
  return pieces.filter((piece) => piece !== "");
}

function joinsEmoji(text, at) {
  const before = /\p{Extended_Pictographic}[\uFE0F\u{1F3FB}-\u{1F3FF}]?$/u;
  return before.test(text.slice(Math.max(0, at - 4), at)) && /^\p{Extended_Pictographic}/u.test(text.slice(at + 1, at + 3));
}

/** `visible` as a string, for a text that is one string (the delete confirmation quotes the message). */
function visibleString(text) {
  return visible(text)
    .map((piece) => (typeof piece === "string" ? piece : piece.textContent))
    .join("");
}

function show(view) {
  for (const name of ["sign-in", "home", "contact"]) $(name).hidden = name !== view;
  const signedIn = view !== "sign-in";
  $("search").hidden = !signedIn;
  $("sign-out").hidden = !signedIn;
  $("who").hidden = !signedIn;
  $("search-scope-box").hidden = !state.scope;
  $("search-scope-name").textContent = state.scope ?? "";
  $("search-scope-name").title = state.scope ?? "";
  if (!state.scope) $("search-scope").checked = false;
}

function say(message) {
  $("problem").textContent = "";
  $("status").textContent = message;
}

function complain(message) {
  $("status").textContent = "";
  $("problem").textContent = message;
}

function failed(error) {
  if (error instanceof Stale) return;
  if (error instanceof ApiError && error.status === 405 && error.message.startsWith(READ_ONLY)) {
    withoutWrites(); // the server was started again with --read-only since the page read its settings
    complain("The server is read-only now (it was restarted with --read-only): nothing was changed, and the page no longer offers writes.");
    return;
  }
  complain(error instanceof ApiError ? error.describe() : `Something went wrong in the page: ${error.message}`);
}

/** Offer no write: the forms and buttons go, and what shows a contact is drawn again without them. */
function withoutWrites() {
  state.readOnly = true;
  for (const control of document.querySelectorAll(".writes")) control.remove();
  for (const id of ["identifiers", "chats", "timeline"]) {
    $(id).replaceChildren();
    delete $(id).dataset.shown;
  }
  if (state.contact) {
    renderContact();
    renderTimeline();
    loadChats().catch(failed);
  }
}

// --- the REST API ---

class ApiError extends Error {
  constructor(status, error, message) {
    super(message);
    this.status = status;
    this.error = error;
  }

  describe() {
    return this.status ? `${this.error} (${this.status}): ${this.message}` : this.message;
  }
}

class Stale extends Error {} // an answer for a contact or key that is no longer the page's

const enc = encodeURIComponent;
const NO_ANSWER = "chatdock did not answer";
const READ_ONLY = "this server is read-only"; // how a --read-only server's 405 to a write begins

async function call(method, path, { query = {}, body, raw = false } = {}) {
  const dots = path.split("/").find((segment) => segment === "." || segment === "..");
  if (dots !== undefined) {
    // a browser reads such a segment of a URL's path as a folder step (encoded or not) and would ask another route
    throw new ApiError(0, "Cannot open", `a browser cannot send the identifier "${dots}" in a URL; read or change it with chatdock's REST routes (curl) or its MCP tools`);
  }
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(query)) if (value !== null && value !== undefined) url.searchParams.set(name, value);
  const headers = { Authorization: `Bearer ${state.key}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const generation = state.generation;
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
  } catch (error) {
    throw new ApiError(0, "No answer", `${NO_ANSWER} (${error.message}); is the server running?`);
  }
  if (generation !== state.generation) throw new Stale();
  if (raw && response.ok) return response;
  const text = await response.text();
  if (generation !== state.generation) throw new Stale();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    // the server's words, its `command` quotes (written for a terminal) as a page's quotation marks
    const said = String(data?.message ?? text).replace(/`([^`]*)`/g, "“$1”");
    const error = new ApiError(response.status, data?.error ?? response.statusText, said);
    if (response.status === 401 && signedIn()) signOut(`The key was refused: ${error.message}`);
    throw error;
  }
  return data;
}

function signedIn() {
  return !$("sign-out").hidden;
}

// --- signing in and out ---

async function signIn(event) {
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
    const signedInAs = `Organization ${who.org} · ${who.key_prefix ? `key ${who.key_prefix}` : "an access token"}`;
    $("who").textContent = signedInAs;
    $("who").title = signedInAs;
    show("home");
    renderContacts(listed);
    say("Signed in.");
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

function signOut(why) {
  state.key = null;
  state.generation += 1;
  stopStream();
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

// --- contacts ---

/** Show a page of contacts: the first in place of those shown, a further one after them. */
function renderContacts(listed, further = false) {
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

function contactItem(contact) {
  return el(
    "li",
    { "data-key": contact.contact_id },
    el("button", { type: "button", onclick: () => open(contact.contact_id) }, contact.contact_id),
  );
}

/** A page of the organization's contacts, the most recently active first: the first, or the one `cursor` names. */
async function contactsPage(cursor) {
  return call("GET", "/contacts", { query: { limit: PAGE, cursor } });
}

async function refreshContacts() {
  renderContacts(await contactsPage(null));
}

async function moreContacts() {
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

async function goHome({ fromAddress = false } = {}) {
  stopStream();
  state.contact = null;
  state.generation += 1;
  if (!fromAddress) address(null);
  show("home");
  $("home-title").focus();
  await refreshContacts();
}

// --- the address: the open contact (and a search hit's message) as a link, never the key ---

/** The contact and message the address's fragment names: `#contact=ID&message=ID` (either may be null). */
function addressed() {
  const found = { contact: null, message: null };
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

/** Name the open contact (and message) in the address: a link to share, and a step for the browser's Back.
 * `replace`: in place of the step the address is at (a link's alias, named by its contact_id). */
function address(contactId, messageId = null, replace = false) {
  const message = messageId ? `&message=${enc(messageId)}` : "";
  const wanted = contactId ? `#contact=${enc(contactId)}${message}` : location.pathname;
  if ((location.hash || location.pathname) === wanted) return;
  if (replace) history.replaceState(null, "", wanted);
  else history.pushState(null, "", wanted);
}

/** Go where the address says: once signed in, and when it changes (a link pasted, Back, Forward). */
async function go() {
  if (!signedIn()) return; // signing in goes there
  const { contact, message } = addressed();
  if (!contact) {
    if (state.contact) await goHome({ fromAddress: true });
    return;
  }
  if (contact !== state.contact?.contact_id || message) await open(contact, message, { fromAddress: true });
}

// --- search ---

async function search(more = false) {
  let query = state.search;
  if (!more) {
    const q = $("search-q").value.trim();
    if (!q) return;
    const contact = $("search-scope").checked ? state.scope : null;
    query = { q, contact_id: contact, cursor: null };
  }
  let page;
  try {
    page = await call("GET", "/chats/search", {
      query: { q: query.q, contact_id: query.contact_id, limit: 20, cursor: query.cursor },
    });
  } catch (error) {
    if (!more) $("results").hidden = true; // the results of the search before are not this one's
    throw error;
  }
  state.search = { ...query, cursor: page.next_cursor };
  if (!more) {
    stopStream();
    state.contact = null;
    state.generation += 1;
    show("home");
    $("hits").replaceChildren();
  }
  $("hits").append(...page.hits.map(renderHit));
  const shown = $("hits").children.length;
  const where = query.contact_id ? ` in ${query.contact_id}'s messages` : " in the organization";
  $("results-summary").textContent = `${shown} message${shown === 1 ? "" : "s"} found for “${query.q}”${where}${page.next_cursor ? " (more below)" : ""}.`;
  $("results").hidden = false;
  $("more-hits").hidden = !page.next_cursor;
  if (!more) $("results-title").focus();
}

function renderHit(hit) {
  return el(
    "li",
    { "data-contact": hit.contact_id },
    el(
      "button",
      { type: "button", class: "hit", onclick: () => open(hit.contact_id, hit.id) },
      el("span", { class: "meta" }, `${hit.contact_id} · ${hit.channel} · ${hit.role} · `, when(hit.created_at)),
      el("span", { class: "snippet", dir: "auto" }, ...marked(hit.snippet)),
    ),
  );
}

// --- a contact ---

async function open(contactId, messageId = null, { fromAddress = false } = {}) {
  say("");
  stopStream();
  state.generation += 1;
  const contact = await call("GET", `/contacts/${enc(contactId)}`);
  address(contact.contact_id, messageId, fromAddress);
  state.contact = contact;
  state.scope = contact.contact_id;
  state.messages = [];
  state.cursor = null;
  state.timeline = Promise.resolve();
  state.known = contact.message_count;
  $("timeline").replaceChildren();
  renderContact();
  await Promise.all([loadChats(), serially(loadNewest)]);
  show("contact");
  listen(contact.contact_id);
  if (messageId) await reveal(messageId);
  else $("contact-title").focus();
}

function renderContact() {
  const contact = state.contact;
  $("contact-title").textContent = contact.contact_id;
  $("contact-title").title = contact.contact_id; // a long one is cut after two lines
  const channels = contact.channels.length ? contact.channels.join(", ") : "no channel yet";
  $("contact-summary").replaceChildren(
    `${contact.message_count} message${contact.message_count === 1 ? "" : "s"}, ${contact.chat_count} chat${contact.chat_count === 1 ? "" : "s"}, on ${channels}; first seen `,
    when(contact.first_seen_at),
    ", last active ",
    when(contact.last_active_at),
    ".",
  );
  $("zone").textContent = `Oldest to newest; times in your time zone (${zone}).`;
  const identifiers = JSON.stringify([contact.contact_id, ...contact.aliases]);
  if (identifiers === $("identifiers").dataset.shown) return; // unchanged: keep the elements (and the focus)
  $("identifiers").dataset.shown = identifiers;
  const own = el("li", {}, el("span", { class: "id" }, contact.contact_id), " (its contact_id)");
  const aliases = contact.aliases.map((alias, index) => {
    const label = `alias-${index}`;
    return el(
      "li",
      {},
      el("span", { class: "id", id: label }, alias),
      state.readOnly
        ? null
        : el("button", { type: "button", "aria-describedby": label, onclick: guarded(() => unlink(alias)) }, "Unlink identifier"),
    );
  });
  $("identifiers").replaceChildren(own, ...aliases);
}

async function loadChats() {
  const contact = state.contact;
  const listed = await call("GET", `/contacts/${enc(contact.contact_id)}/chats`, { query: { limit: MOST } });
  const all = Math.max(state.contact.chat_count, listed.chats.length);
  $("chats-note").textContent =
    all > listed.chats.length ? `Showing the newest ${listed.chats.length} of ${all} chats (the API lists no more).` : "";
  const shown = JSON.stringify(listed.chats);
  if (shown === $("chats").dataset.shown) return; // unchanged: keep the elements (and the focus)
  $("chats").dataset.shown = shown;
  $("chats").replaceChildren(...listed.chats.map(renderChat));
  $("no-chats").hidden = listed.chats.length > 0;
}

function renderChat(chat) {
  const channels = chat.channels.map((channel) => channel.name).join(", ") || "no channel";
  const label = `chat-${chat.id}`;
  const item = el(
    "li",
    {},
    el("p", { id: label, title: chat.id }, `${capitalized(chatName(chat.id))} on ${channels}`, chat.agent_id ? ` with ${chat.agent_id}` : "", ", opened ", when(chat.created_at), ": ", el("strong", { class: `status-${chat.status.toLowerCase()}` }, chat.status)),
  );
  if (!state.readOnly) {
    const select = el(
      "select",
      { id: `${label}-status` },
      ...["RUNNING", "COMPLETED", "FAILED", "CANCELED"].map((status) =>
        el("option", { value: status, selected: status === chat.status }, status),
      ),
    );
    item.append(
      el(
        "div",
        { class: "row" },
        el("label", { for: `${label}-status` }, `New status of ${chatName(chat.id)}`),
        select,
        el("button", { type: "button", "aria-describedby": label, onclick: guarded(() => setStatus(chat, select.value)) }, "Set chat status"),
      ),
    );
  }
  return item;
}

function renderMessage(message) {
  const head = `m-${message.id}-head`;
  const timed = message.parts.some((part) => part.start_timestamp != null || part.end_timestamp != null);
  const parts =
    timed || message.parts.length > 1
      ? el(
          "ol",
          { class: "parts", "aria-label": "Parts" },
          ...message.parts.map((part) =>
            el(
              "li",
              { dir: "auto" },
              part.start_timestamp != null || part.end_timestamp != null
                ? el("span", { class: "at" }, `${part.start_timestamp != null ? seconds(part.start_timestamp) : "?"}–${part.end_timestamp != null ? seconds(part.end_timestamp) : "?"} `)
                : null,
              ...visible(part.text),
            ),
          ),
        )
      : null;
  const details = { id: message.id, chat_id: message.chat_id, agent_id: message.agent_id, metadata: message.metadata };
  return el(
    "li",
    { class: `message role-${message.role}`, id: `m-${message.id}`, "data-key": message.id, tabindex: "-1" },
    el(
      "p",
      { class: "head", id: head },
      el("span", { class: "role" }, message.role),
      ` · ${message.channel} · `,
      when(message.created_at),
      message.chat_id ? ` · ${chatName(message.chat_id)}` : "",
      message.agent_id ? ` · ${message.agent_id}` : "",
    ),
    parts ? null : el("p", { class: "content", dir: "auto" }, ...visible(message.content)),
    parts,
    el("details", {}, el("summary", {}, "Metadata"), el("pre", {}, JSON.stringify(details, null, 2))),
    state.readOnly
      ? null
      : el("button", { type: "button", class: "danger", "aria-describedby": head, onclick: guarded(() => remove(message)) }, "Delete message"),
  );
}

/** Show `state.messages` in the timeline, keeping the elements already there (and so the focus). */
function renderTimeline() {
  const list = $("timeline");
  const wanted = new Set(state.messages.map((message) => message.id));
  const existing = new Map();
  for (const child of [...list.children]) {
    if (wanted.has(child.dataset.key)) existing.set(child.dataset.key, child);
    else child.remove();
  }
  let next = list.firstElementChild;
  for (const message of state.messages) {
    const node = existing.get(message.id);
    if (node && node === next) {
      next = next.nextElementSibling;
      continue;
    }
    list.insertBefore(node ?? renderMessage(message), next);
  }
  $("older").hidden = !state.cursor;
  $("no-messages").hidden = state.messages.length > 0;
}

async function page(limit, cursor) {
  return call("GET", "/chats", { query: { contact_id: state.contact.contact_id, limit, cursor } });
}

/** Run `task` once the open contact's timeline reads before it are done. A read replaces or extends
 * `state.messages` and `state.cursor` together; two at once would join pages that do not meet (an older page
 * read with the cursor of a timeline since read again would land above it with a gap). A task queued for a
 * contact that is no longer open is dropped. */
function serially(task) {
  const generation = state.generation;
  const run = state.timeline.then(() => {
    if (generation !== state.generation) throw new Stale();
    return task();
  });
  state.timeline = run.catch(() => {}); // the caller hears of a failure; the next task runs all the same
  return run;
}

async function loadNewest() {
  const newest = await page(PAGE, null);
  state.messages = [...newest.messages].reverse();
  state.cursor = newest.next_cursor;
  renderTimeline();
}

/** The page before the oldest loaded message, above it; `state.cursor` is read when the task runs. */
async function loadOlder(limit = PAGE) {
  if (!state.cursor) return;
  const older = await page(limit, state.cursor);
  const known = new Set(state.messages.map((message) => message.id));
  state.messages = [...older.messages.filter((message) => !known.has(message.id)).reverse(), ...state.messages];
  state.cursor = older.next_cursor;
  renderTimeline();
}

/** Read the timeline again from the newest message back, in pages that meet one another, to the oldest loaded
 * message (`whole`) or only until the pages meet the loaded messages. Above the deepest loaded message the
 * read met, the timeline becomes what the server holds now: what arrived (how many messages however), a late
 * message, history linked in, a delete, each in its place. `hint`: how many more messages the contact has
 * than the page knows of, so that one read usually takes them all. Says whether the read `covered` the whole
 * loaded range, and how many messages the contact has as far as the read can tell (`count`). */
async function readBack(whole, hint) {
  const loaded = state.messages;
  const ids = new Set(loaded.map((message) => message.id));
  const oldest = loaded[0];
  const unseen = new Set(ids);
  const read = [];
  let cursor = null;
  for (;;) {
    const first = whole ? Math.max(PAGE, unseen.size + hint) : hint + OVERLAP;
    const then = whole ? Math.max(1, unseen.size) : MOST; // as many as are loaded and not read again yet
    const listed = await page(Math.min(MOST, read.length ? then : first), cursor);
    read.push(...listed.messages);
    for (const message of listed.messages) unseen.delete(message.id);
    cursor = listed.next_cursor;
    const last = listed.messages.at(-1);
    if (!cursor || !oldest || !last || !unseen.has(oldest.id)) break;
    if (!whole && unseen.size < ids.size) break; // it met the loaded messages
    if (Date.parse(last.created_at) < Date.parse(oldest.created_at)) break; // past it: it was deleted
  }
  const deepest = read.findLastIndex((message) => ids.has(message.id));
  const at = deepest < 0 ? 0 : loaded.findIndex((message) => message.id === read[deepest].id);
  // the read reaches the oldest loaded message (or beyond): it replaces the range, and its cursor goes on
  // below it; else it replaces the range above the deepest loaded message it met
  const covered = !cursor || at === 0;
  const above =
    deepest >= 0
      ? read.slice(0, deepest + 1)
      : read.filter((message) => !oldest || Date.parse(message.created_at) >= Date.parse(oldest.created_at));
  const kept = covered ? read : above;
  const now = new Set(kept.map((message) => message.id));
  const added = above.filter((message) => !ids.has(message.id)).length;
  const removed = loaded.slice(at).filter((message) => !now.has(message.id)).length;
  state.messages = [...loaded.slice(0, covered ? 0 : at), ...[...kept].reverse()];
  if (covered) state.cursor = cursor;
  renderTimeline();
  return { covered, count: cursor ? state.known + added - removed : read.length };
}

/** Follow a change of the open contact, whose message_count is now `count`. A long loaded range is not read
 * again whole on each change (a call writing a turn a second would read thousands of messages a second): only
 * the newest messages, down to where they meet the loaded ones. It is read whole when it is small (one
 * request), when asked (`whole`: a link made here, "Reload timeline") or after the event stream was down.
 * What the read cannot explain in the count changed further back: a note says so and offers the reload. */
async function follow(count, whole = false) {
  const stale = state.stale;
  state.stale = false;
  let read;
  try {
    read = await readBack(whole || stale || state.messages.length <= MOST, Math.max(0, count - state.known));
  } catch (error) {
    state.stale ||= stale;
    throw error;
  }
  if (read.covered) noteFurther(0);
  if (read.count === count) {
    state.known = count;
    return;
  }
  // The count was read before the timeline: a message written or deleted at the head meanwhile is in one and
  // not the other, and its own event reads again. Only a count that held still across the read tells.
  const again = await call("GET", `/contacts/${enc(state.contact.contact_id)}`).catch((error) => {
    if (error.status === 404) return null; // forgotten or merged away meanwhile: its event says so
    throw error;
  });
  if (again?.message_count !== count) {
    state.known = read.count;
    return;
  }
  state.known = count;
  // a covered range is as the server has it: the difference is older than it, where "Load older messages" reads
  if (!read.covered) noteFurther(state.further + Math.abs(count - read.count));
}

/** The note that messages changed further back than the reads of changes look, with a button that reads the
 * loaded range again: never a gap that nothing shows. Announced (role status); 0 takes it away. */
function noteFurther(changes) {
  state.further = changes;
  $("further").textContent = changes
    ? `${changes} message${changes === 1 ? "" : "s"} changed further back in the timeline than live updates read (among the older messages loaded, or before them).`
    : "";
  $("reload").hidden = !changes;
}

/** Page back until the message is loaded, then focus it. */
async function reveal(messageId) {
  if (!state.messages.some((m) => m.id === messageId)) say("Looking back for the message…");
  for (let pages = 0; pages < FIND_PAGES && state.cursor && !state.messages.some((m) => m.id === messageId); pages++) {
    await serially(() => loadOlder(MOST));
  }
  const node = $(`m-${messageId}`);
  if (!node) {
    $("contact-title").focus();
    complain("That message is not in the timeline any more (deleted?), or further back than the inspector looks.");
    return;
  }
  say("");
  for (const found of document.querySelectorAll(".message.found")) found.classList.remove("found");
  node.classList.add("found");
  node.focus();
  node.scrollIntoView({ block: "center" });
}

/** What changed since the last look: the contact, its chats, and the timeline (`follow`; `whole`: all of its
 * loaded range). */
async function refresh(whole = false) {
  const before = state.contact;
  if (!before) return;
  let contact;
  try {
    contact = await call("GET", `/contacts/${enc(before.contact_id)}`);
  } catch (error) {
    if (error.status !== 404) throw error;
    if (state.forgetting === before.contact_id) return; // forget() goes home and says what was erased
    if (state.scope === before.contact_id) state.scope = null; // a search cannot be narrowed to it any more
    await goHome();
    complain(`${before.contact_id} is not a contact any more (forgotten, or merged away).`);
    return;
  }
  if (contact.contact_id !== before.contact_id) {
    await open(contact.contact_id); // its identifier was linked into another contact
    say(`${before.contact_id} was linked into ${contact.contact_id} elsewhere: this is that contact's timeline now.`);
    return;
  }
  state.contact = contact;
  renderContact();
  await loadChats();
  await serially(() => follow(contact.message_count, whole));
}

// --- live: the contact's server-sent events, read through fetch (EventSource cannot send the key) ---

/** The open contact's live view ends: its event stream, and what was said of it. */
function stopStream() {
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

function listen(contactId) {
  const controller = new AbortController();
  state.stream = controller;
  const url = `/contacts/${enc(contactId)}/events`;
  (async () => {
    let wait = 1000;
    let dropped = false; // the stream was down: what changed meanwhile may be anywhere in the loaded range
    while (!controller.signal.aborted) {
      try {
        const response = await fetch(url, {
          headers: { Authorization: `Bearer ${state.key}`, Accept: "text/event-stream" },
          signal: controller.signal,
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
          buffer = (buffer + value).replace(/\r\n?/g, "\n");
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const name = eventName(buffer.slice(0, end));
            buffer = buffer.slice(end + 2);
            if (name === "ready") {
              $("live").textContent = "Live: changes appear as they happen.";
              $("offline").textContent = "";
              if ($("problem").textContent.startsWith(NO_ANSWER)) $("problem").textContent = ""; // it answers again
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
        offline(error instanceof StreamRefused ? error.message : `${NO_ANSWER} (${error.message})`);
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

// --- writes, each confirmed first ---

function confirmed(title, text, action) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = action;
  dialog.returnValue = "";
  const opener = document.activeElement;
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        if (opener?.isConnected) opener.focus();
        resolve(dialog.returnValue === "confirm");
      },
      { once: true },
    );
  });
}

async function remove(message) {
  const content = visibleString(message.content);
  const shortened = content.length > 80 ? `${content.slice(0, 80)}…` : content;
  const sure = await confirmed(
    "Delete this message?",
    `The ${message.role} message of ${timeFormat.format(new Date(message.created_at))} on ${message.channel} (“${shortened}”) is deleted for good.`,
    "Delete message",
  );
  if (!sure) return;
  const node = $(`m-${message.id}`);
  const neighbour = node?.nextElementSibling ?? node?.previousElementSibling;
  // The timeline's reads wait for the answer: a read for the delete's own event then finds the message gone
  // from the page and from the contact's count alike (see `follow`).
  let answered;
  const held = new Promise((resolve) => (answered = resolve));
  const removal = serially(async () => {
    if (!(await held) || !state.messages.some((m) => m.id === message.id)) return; // a read took it away already
    state.messages = state.messages.filter((m) => m.id !== message.id);
    state.known -= 1; // the contact's count went down by it, here or elsewhere
    renderTimeline();
  });
  removal.catch(() => {}); // another contact opened meanwhile: there is nothing to take away
  let gone = false;
  let deleted = false;
  try {
    await call("DELETE", `/chats/${enc(message.id)}`);
    deleted = true;
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404)) throw error;
    gone = deleted = true; // deleted elsewhere meanwhile (another tab, a tool, a forget)
  } finally {
    answered(deleted);
  }
  await removal;
  say(gone ? "That message was already deleted elsewhere." : "The message was deleted.");
  // the view stays where it was: the focus goes to the message that took the deleted one's place
  if (neighbour?.isConnected && neighbour.classList.contains("message")) neighbour.focus({ preventScroll: true });
  else $("timeline-title").focus();
}

async function forget() {
  const contact = state.contact;
  const sure = await confirmed(
    `Forget ${contact.contact_id}?`,
    `Every message (${contact.message_count}), chat (${contact.chat_count}) and identifier of ${contact.contact_id} is erased for good.`,
    "Forget contact",
  );
  if (!sure) return;
  // The contact's own event stream announces the erasure, maybe before this answer is read: the refresh it
  // starts must not go home first (that would drop this answer as stale and say nothing of what was erased).
  state.forgetting = contact.contact_id;
  let result;
  try {
    result = await call("DELETE", `/contacts/${enc(contact.contact_id)}`);
  } finally {
    state.forgetting = null;
  }
  for (const hit of [...$("hits").children]) if (hit.dataset.contact === contact.contact_id) hit.remove();
  state.scope = null;
  await goHome();
  say(`Forgot ${result.contact_id}: ${result.deleted_messages} message(s), ${result.deleted_chats} chat(s), ${result.deleted_identifiers} identifier(s) erased.`);
}

async function link(event) {
  event.preventDefault();
  const identifier = $("link-id").value.trim();
  if (!identifier) return;
  const contact = state.contact;
  const sure = await confirmed(
    "Link this identifier?",
    `${identifier} will name ${contact.contact_id}. If it names another contact now, that contact's messages and chats move into ${contact.contact_id}.`,
    "Link identifier",
  );
  if (!sure) return;
  const linked = await call("POST", `/contacts/${enc(contact.contact_id)}/aliases`, { body: { identifier } });
  $("link-id").value = "";
  state.contact = linked;
  renderContact();
  // the history it brought in shows in its place, wherever in the loaded range
  await Promise.all([loadChats(), serially(() => follow(linked.message_count, true))]);
  say(`${identifier} now names ${linked.contact_id} (${linked.merged_messages} message(s) and ${linked.merged_chats} chat(s) merged in).`);
}

async function unlink(identifier) {
  const contact = state.contact;
  const sure = await confirmed(
    "Unlink this identifier?",
    `${identifier} stops naming ${contact.contact_id}; the history stays with ${contact.contact_id}, and the next message under ${identifier} starts a new contact.`,
    "Unlink identifier",
  );
  if (!sure) return;
  state.contact = await call("DELETE", `/contacts/${enc(contact.contact_id)}/aliases/${enc(identifier)}`);
  renderContact();
  say(`${identifier} no longer names ${contact.contact_id}.`);
  $("ids-title").focus();
}

async function setStatus(chat, status) {
  const sure = await confirmed(
    "Set this chat's status?",
    `${capitalized(chatName(chat.id))} (${chat.id}) becomes ${status} (it is ${chat.status} now).`,
    "Set chat status",
  );
  if (!sure) return;
  await call("PATCH", `/contacts/${enc(state.contact.contact_id)}/chats/${enc(chat.id)}`, { body: { status } });
  await loadChats();
  say(`${capitalized(chatName(chat.id))} is ${status}.`);
  $("chats-title").focus();
}

/** "Reload timeline": the loaded range read again whole, which the note of changes further back offers. */
async function reload() {
  const before = state.messages.map((message) => message.id).join();
  const generation = state.generation;
  await refresh(true);
  if (generation !== state.generation) return; // it was forgotten or linked away: refresh said so
  $("timeline-title").focus();
  const same = state.messages.map((message) => message.id).join() === before;
  say(
    same
      ? "The timeline was read again: the loaded messages are unchanged, so the change is older than the oldest one loaded (Load older messages reads it)."
      : `The timeline was read again: ${state.messages.length} message(s), each change in its place.`,
  );
}

async function download() {
  const contact = state.contact;
  const response = await call("GET", `/contacts/${enc(contact.contact_id)}/export`, { raw: true });
  const blob = await response.blob();
  const link = el("a", { href: URL.createObjectURL(blob), download: `chatdock-${contact.contact_id.replace(/[^A-Za-z0-9@._+-]/g, "_")}.jsonl` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  say(`Exported ${contact.contact_id} as JSON Lines.`);
}

// --- wiring ---

function guarded(action) {
  return async (event) => {
    $("problem").textContent = "";
    try {
      await action(event);
    } catch (error) {
      failed(error);
    }
  };
}

function submitted(action) {
  return guarded(async (event) => {
    event.preventDefault();
    await action(event);
  });
}

async function start() {
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut());
  $("search").addEventListener("submit", submitted(() => search(false)));
  $("more-hits").addEventListener("click", guarded(() => search(true)));
  $("open-form").addEventListener(
    "submit",
    submitted(async () => {
      await open($("open-id").value.trim());
      $("open-id").value = "";
    }),
  );
  $("refresh-contacts").addEventListener("click", guarded(refreshContacts));
  $("more-contacts").addEventListener("click", guarded(moreContacts));
  $("back").addEventListener("click", guarded(() => goHome()));
  window.addEventListener("hashchange", guarded(go));
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
      if (added) document.getElementById(`m-${state.messages[added - 1].id}`)?.focus();
      say(`${added} older message(s) loaded${state.cursor ? "" : "; that is the first one"}.`);
    }),
  );
  $("reload").addEventListener("click", guarded(reload));
  $("export").addEventListener("click", guarded(download));
  $("link-form").addEventListener("submit", guarded(link));
  $("forget").addEventListener("click", guarded(forget));
  show("sign-in");
  try {
    const config = await (await fetch("/ui/config.json", { cache: "no-store", credentials: "omit" })).json();
    state.readOnly = config.read_only !== false;
  } catch (error) {
    complain(`The page could not read its settings (${error.message}); writes are not offered.`);
  }
  if (state.readOnly) withoutWrites();
  document.body.dataset.ready = "true";
  $("api-key").focus();
}

start();
