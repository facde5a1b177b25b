// The inspector's shared state: what is open, loaded and signed in (one object, read and changed by every module). (The
// rules every module keeps: inspector.js.)

export const PAGE = 50; // messages a page of the timeline, contacts a page of the list

export const MOST = 200; // the most a route gives at once (the store's bound on `limit`)

export const FIND_PAGES = 25; // how far back a search hit is looked for: 25 pages of MOST (5,000 messages)

export const OVERLAP = 10; // loaded messages a change's read asks for again, below the new ones: where the pages meet

export const state = {
  key: null, // the API key, in this tab's memory only
  readOnly: true, // no write is offered: the server's (until /ui/config.json says otherwise) or the key's
  serverReadOnly: true, // the server was started with --read-only (or its settings could not be read)
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
  moves: 0, // bumped when the page is asked to go elsewhere (a contact, a search, the list): the last asked wins
  search: null, // {q, contact_id, cursor} of the results shown
  forgetting: null, // the contact whose DELETE is on its way
  view: null, // the screen shown: "sign-in", "home" or "contact"
  unseen: 0, // new messages that arrived below the window since the reader last went there
  hiddenChannels: new Set(), // the open contact's channels its timeline does not show (channels.js)
};

export const $ = (id) => document.getElementById(id);
