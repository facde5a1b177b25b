// Search: the organization's messages, or the last contact's; a search is a step in the address (`#q=...`), so Back
// returns to its results and a link or a reload shows them again. (The rules every module keeps: inspector.js.)

import { call } from "./api.js";
import { open } from "./contact.js";
import { addressSearch } from "./contacts.js";
import { show } from "./feedback.js";
import { stopStream } from "./live.js";
import { $, state } from "./state.js";
import { el, marked, when } from "./text.js";

/** The search form: its words, in the organization or (ticked) in the last contact opened. */
export async function searchForm() {
  const q = $("search-q").value.trim();
  if (!q) return;
  await search({ q, contact_id: $("search-scope").checked ? state.scope : null });
}

/** The first page of a search's results, in place of what the page showed. */
export async function search({ q, contact_id }, { fromAddress = false } = {}) {
  const move = ++state.moves;
  let page;
  try {
    page = await call("GET", "/chats/search", { query: { q, contact_id, limit: 20 } });
  } catch (error) {
    if (move === state.moves) $("results").hidden = true; // the results of the search before are not this one's
    throw error;
  }
  if (move !== state.moves) return; // the page was asked to go elsewhere meanwhile
  stopStream();
  state.contact = null;
  state.generation += 1;
  if (contact_id) state.scope = contact_id;
  addressSearch(q, contact_id, fromAddress);
  state.search = { q, contact_id, cursor: null };
  show("home");
  $("search-q").value = q;
  $("search-scope").checked = Boolean(contact_id);
  $("hits").replaceChildren();
  showPage(page);
  $("results-title").focus();
}

/** "More results": the next page, after those shown. */
export async function moreHits() {
  const query = state.search;
  if (!query?.cursor) return;
  const page = await call("GET", "/chats/search", {
    query: { q: query.q, contact_id: query.contact_id, limit: 20, cursor: query.cursor },
  });
  if (state.search !== query) return; // another search was asked meanwhile, or the results went
  showPage(page);
}

/** No results shown (the address names no search any more). */
export function clearResults() {
  state.search = null;
  $("results").hidden = true;
  $("hits").replaceChildren();
}

function showPage(page) {
  const query = state.search;
  state.search = { ...query, cursor: page.next_cursor };
  $("hits").append(...page.hits.map(renderHit));
  const shown = $("hits").children.length;
  const where = query.contact_id ? ` in ${query.contact_id}'s messages` : " in the organization";
  $("results-summary").textContent = `${shown} message${shown === 1 ? "" : "s"} found for “${query.q}”${where}${page.next_cursor ? " (more below)" : ""}.`;
  $("results").hidden = false;
  $("more-hits").hidden = !page.next_cursor;
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
