// The peerage webmail: a single-page JMAP client served at /mail/ behind the one web login.

import { render } from 'preact';
import { useEffect, useLayoutEffect, useReducer, useRef, useState } from 'preact/hooks';
import { Client, NotLoggedIn } from './jmap.js';
import {
  QueryWindow, bodyText, displayName, draftToEmail, envelopeFor, findRole, formatAddresses, formatDate,
  formatFullDate, formatSize, mailboxTree, makeDraft, parseAddresses, validAddress,
} from './mail.js';
// Loaded after the inbox is drawn (or when first needed): the reader's HTML cleaning and the compose
// editor, both with DOMPurify. The inbox does not wait for them.
let FRAME = null;
let ED = null;
const loadFrame = () => import('./sanitize.js').then((m) => { if (!FRAME) { FRAME = m; changed(); } return m; });
const loadEditor = () => import('./editor.js').then((m) => { ED = m; return m; });
import { keyAction, SHORTCUTS } from './keys.js';
import './style.css';

const ROW_HEIGHT = 68;
const PAGE = 100;
const LIST_PROPS = ['id', 'threadId', 'mailboxIds', 'keywords', 'from', 'to', 'subject', 'receivedAt', 'preview', 'hasAttachment', 'size'];
const READ_PROPS = [...LIST_PROPS, 'cc', 'bcc', 'replyTo', 'sentAt', 'messageId', 'inReplyTo', 'references', 'blobId',
  'bodyValues', 'textBody', 'htmlBody', 'attachments'];
const LOGIN_PATH = '/login';
const LOGOUT_PATH = '/logout';

const client = new Client();

// One store for the whole app; components re-render when `changed()` bumps the version.
const S = {
  ready: false, error: '', live: 'connecting', login: '',
  mailboxes: [], identities: [], mailboxId: null, search: '', searchAll: false, searchPhase: 'done',
  win: new QueryWindow(PAGE), emails: new Map(), threads: new Map(), emailState: null,
  selectedId: null, checked: new Set(), reader: null, compose: null, settings: null,
  toast: null, allowRemote: new Set(), moveMenu: false, help: false, attached: null,
};
let bump = () => {};
const changed = () => bump();

function toast(text, kind = 'info') {
  S.toast = { text, kind, at: Date.now() };
  changed();
  const at = S.toast.at;
  setTimeout(() => { if (S.toast?.at === at) { S.toast = null; changed(); } }, kind === 'error' ? 8000 : 4000);
}

function fail(err) {
  if (err instanceof NotLoggedIn) return toLogin();
  console.error(err);
  toast(err.message || String(err), 'error');
}

function toLogin() {
  location.href = `${LOGIN_PATH}?next=${encodeURIComponent(location.pathname + location.hash)}`;
}

const mailboxById = (id) => S.mailboxes.find((m) => m.id === id);
// IMAP's INBOX is spelt in capitals (RFC 9051 §5.1); people expect "Inbox".
const shownName = (m) => (m?.role === 'inbox' && m.name.toUpperCase() === 'INBOX' ? 'Inbox' : m?.name || '');
const role = (r) => findRole(S.mailboxes, r);
const currentMailbox = () => mailboxById(S.mailboxId);

// ---------- loading ----------

async function loadMailboxes() {
  const res = await client.call('Mailbox/get', { ids: null });
  S.mailboxes = res.list;
  S.mailboxState = res.state;
  if (!S.mailboxId || !mailboxById(S.mailboxId)) S.mailboxId = (role('inbox') || S.mailboxes[0] || {}).id || null;
  updateTitle();
  changed();
}

function updateTitle() {
  const inbox = role('inbox');
  const unread = inbox?.unreadEmails || 0;
  const m = currentMailbox();
  document.title = `${unread ? `(${unread}) ` : ''}${m ? shownName(m) : 'Mail'} — peerage`;
}

// A search runs twice: first over the header fields (subject, from, to), which a server answers from its
// index at once, then over the whole text (RFC 8621 §4.4.1 `text`, bodies included), whose results then
// replace the first. The list is useful while the bodies are searched.
function listFilter() {
  const text = S.search.trim();
  if (!text) return { inMailbox: S.mailboxId };
  const match = S.searchPhase === 'headers'
    ? { operator: 'OR', conditions: [{ subject: text }, { from: text }, { to: text }] }
    : { text };
  return S.searchAll ? match : { operator: 'AND', conditions: [{ inMailbox: S.mailboxId }, match] };
}

function startSearch(text) {
  S.search = text;
  S.searchPhase = text.trim() ? 'headers' : 'done';
  S.selectedId = null;
  S.reader = null;
  resetList();
  ensureRows(0, 30);
}

let listGeneration = 0;

function resetList() {
  listGeneration++;
  S.win.reset();
  S.checked.clear();
  changed();
}

async function loadPage(page) {
  const gen = listGeneration;
  const win = S.win;
  win.pages.set(page, 'loading');
  try {
    const [q, g, t] = await client.batch([
      ['Email/query', { filter: listFilter(), sort: [{ property: 'receivedAt', isAscending: false }], collapseThreads: true,
        position: page * PAGE, limit: PAGE, calculateTotal: true }, 'q'],
      ['Email/get', { '#ids': { resultOf: 'q', name: 'Email/query', path: '/ids' }, properties: LIST_PROPS }, 'g'],
      ['Thread/get', { '#ids': { resultOf: 'g', name: 'Email/get', path: '/list/*/threadId' } }, 't'],
    ]);
    if (gen !== listGeneration) return;
    for (const e of g.list) S.emails.set(e.id, e);
    for (const th of t.list) S.threads.set(th.id, th.emailIds);
    if (!S.emailState) S.emailState = g.state;
    win.store(q.position ?? page * PAGE, q.ids, q.total, q.queryState);
    if (S.searchPhase === 'headers') {
      S.searchPhase = 'full';
      reloadVisible();
    } else if (S.searchPhase === 'full') {
      S.searchPhase = 'done';
    }
    changed();
  } catch (err) {
    if (gen === listGeneration) win.pages.delete(page);
    fail(err);
  }
}

function ensureRows(first, last) {
  for (const p of S.win.pagesFor(Math.max(0, first - 20), last + 20)) loadPage(p);
}

async function refreshEmails(ids) {
  if (!ids.length) return;
  const res = await client.call('Email/get', { ids, properties: LIST_PROPS });
  for (const e of res.list) {
    S.emails.set(e.id, e);
    const full = S.reader?.emails.find((x) => x.id === e.id);
    if (full) Object.assign(full, { keywords: e.keywords, mailboxIds: e.mailboxIds });
  }
  changed();
}

// RFC 8620 §5.2 Email/changes after a push; a new or removed email re-runs the visible window.
async function onEmailChange() {
  if (!S.emailState) return reloadVisible();
  try {
    const res = await client.call('Email/changes', { sinceState: S.emailState, maxChanges: 500 });
    S.emailState = res.newState;
    const known = res.updated.filter((id) => S.emails.has(id));
    await refreshEmails(known);
    if (res.created.length || res.destroyed.length || res.hasMoreChanges) {
      for (const id of res.destroyed) S.emails.delete(id);
      if (res.created.length && S.ready) {
        const fresh = await client.call('Email/get', { ids: res.created.slice(0, 5), properties: LIST_PROPS });
        const inbox = role('inbox');
        for (const e of fresh.list) {
          if (inbox && e.mailboxIds[inbox.id] && !e.keywords.$seen) toast(`New mail from ${displayName(e.from?.[0])}: ${e.subject || '(no subject)'}`);
        }
      }
      reloadVisible();
    }
  } catch (err) {
    if (err.type === 'cannotCalculateChanges') { S.emailState = null; reloadVisible(); } else fail(err);
  }
}

let visibleRange = [0, 30];
function reloadVisible() {
  listGeneration++;
  const keep = S.win;
  S.win = new QueryWindow(PAGE);
  S.win.total = keep.total;
  S.win.ids = keep.ids.slice();
  // The visible range may lie past the end of a list that just got shorter (a search): start over then.
  const [first, last] = visibleRange;
  if (keep.total !== null && first >= keep.total) ensureRows(0, 30);
  else ensureRows(first, Math.max(last, first + 30));
  if (S.reader) refreshThread();
}

function startPush() {
  client.listen((changes) => {
    if (changes.Mailbox) loadMailboxes().catch(fail);
    if (changes.Email) onEmailChange();
    if (changes.Identity) loadIdentities().catch(fail);
  }, (status) => { S.live = status; changed(); });
}

async function loadIdentities() {
  if (!client.capabilities['urn:ietf:params:jmap:submission']) return;
  const res = await client.call('Identity/get', { ids: null });
  S.identities = res.list;
  changed();
}

// ---------- navigation ----------

function selectMailbox(id) {
  if (S.mailboxId === id && !S.search) return;
  S.mailboxId = id;
  S.search = '';
  S.searchPhase = 'done';
  S.selectedId = null;
  S.reader = null;
  resetList();
  writeHash();
  updateTitle();
  ensureRows(0, 30);
  listScrollTo?.(0);
}

function writeHash() {
  const parts = [S.mailboxId || ''];
  if (S.reader) parts.push(S.reader.id);
  const hash = `#/${parts.map(encodeURIComponent).join('/')}`;
  if (location.hash !== hash) history.replaceState(null, '', hash);
}

async function openEmail(id) {
  S.selectedId = id;
  const row = S.emails.get(id);
  const threadIds = (row && S.threads.get(row.threadId)) || [id];
  S.reader = { id, threadId: row?.threadId, emails: [], loading: true, expanded: new Set([id]) };
  writeHash();
  changed();
  try {
    const res = await client.call('Email/get', { ids: threadIds, properties: READ_PROPS, fetchHTMLBodyValues: true,
      fetchTextBodyValues: true, maxBodyValueBytes: 2 * 1024 * 1024 });
    if (S.reader?.id !== id) return;
    const list = res.list.sort((a, b) => String(a.receivedAt).localeCompare(String(b.receivedAt)));
    const drafts = role('drafts');
    // A thread shows its messages oldest first; trashed copies only when reading the trash.
    const trash = role('trash');
    S.reader.emails = list.filter((e) => e.id === id || !trash || !e.mailboxIds[trash.id] || S.mailboxId === trash.id);
    S.reader.loading = false;
    for (const e of S.reader.emails) if (!e.keywords?.$seen) S.reader.expanded.add(e.id);
    changed();
    const unseen = S.reader.emails.filter((e) => !e.keywords.$seen && !(drafts && e.mailboxIds[drafts.id]));
    if (unseen.length) setKeyword(unseen.map((e) => e.id), '$seen', true, { quiet: true });
  } catch (err) {
    S.reader = null;
    fail(err);
  }
}

async function refreshThread() {
  if (!S.reader) return;
  const ids = S.reader.emails.map((e) => e.id);
  if (!ids.length) return;
  const res = await client.call('Email/get', { ids, properties: ['id', 'keywords', 'mailboxIds'] });
  if (!S.reader) return;
  for (const e of res.list) {
    const full = S.reader.emails.find((x) => x.id === e.id);
    if (full) Object.assign(full, e);
  }
  changed();
}

function closeReader() {
  S.reader = null;
  writeHash();
  changed();
}

function rowIds() {
  const out = [];
  for (let i = 0; i < (S.win.total || 0); i++) out.push(S.win.idAt(i));
  return out;
}

function moveSelection(delta) {
  const total = S.win.total || 0;
  if (!total) return;
  let i = S.selectedId ? S.win.indexOf(S.selectedId) : -1;
  i = Math.max(0, Math.min(total - 1, i + delta));
  const id = S.win.idAt(i);
  if (!id) { ensureRows(i, i); return; }
  S.selectedId = id;
  listScrollIntoView?.(i);
  if (S.reader) openEmail(id);
  changed();
}

// ---------- actions ----------

// The emails an action applies to: the checked rows, else the open/selected one. A row stands for its
// thread, so the action reaches every email of the thread in the current mailbox.
async function targets({ wholeThread = true } = {}) {
  const rows = S.checked.size ? [...S.checked] : S.selectedId ? [S.selectedId] : [];
  if (!wholeThread || S.search) return rows;
  const ids = new Set(rows);
  const more = [];
  for (const id of rows) {
    const e = S.emails.get(id);
    for (const t of (e && S.threads.get(e.threadId)) || []) if (!ids.has(t)) { ids.add(t); more.push(t); }
  }
  if (!more.length) return rows;
  const res = await client.call('Email/get', { ids: more, properties: ['mailboxIds'] });
  return [...rows, ...res.list.filter((e) => e.mailboxIds[S.mailboxId]).map((e) => e.id)];
}

async function setKeyword(ids, keyword, value, { quiet = false } = {}) {
  if (!ids.length) return;
  const update = {};
  for (const id of ids) update[id] = { [`keywords/${keyword}`]: value ? true : null };
  for (const id of ids) {
    for (const e of [S.emails.get(id), S.reader?.emails.find((x) => x.id === id)]) {
      if (!e) continue;
      e.keywords = { ...e.keywords };
      if (value) e.keywords[keyword] = true; else delete e.keywords[keyword];
    }
  }
  changed();
  try {
    const res = await client.call('Email/set', { update });
    reportNotUpdated(res);
  } catch (err) {
    if (!quiet) fail(err);
  }
}

function reportNotUpdated(res) {
  const bad = Object.values(res.notUpdated || {})[0] || Object.values(res.notCreated || {})[0] || Object.values(res.notDestroyed || {})[0];
  if (bad) toast(`The server refused: ${bad.type}${bad.description ? ` (${bad.description})` : ''}`, 'error');
}

async function toggleFlag() {
  const ids = await targets({ wholeThread: false });
  if (!ids.length) return;
  const first = S.emails.get(ids[0]) || S.reader?.emails.find((e) => e.id === ids[0]);
  await setKeyword(ids, '$flagged', !first?.keywords?.$flagged);
}

async function toggleSeen() {
  const ids = await targets();
  if (!ids.length) return;
  const first = S.emails.get(ids[0]) || S.reader?.emails.find((e) => e.id === ids[0]);
  await setKeyword(ids, '$seen', !first?.keywords?.$seen);
}

async function moveTo(mailboxId, ids) {
  ids = ids || await targets();
  if (!ids.length || !mailboxId) return;
  const from = S.mailboxId;
  const update = {};
  for (const id of ids) {
    const e = S.emails.get(id);
    // Keep other mailboxes the email is in (RFC 8621 allows several); swap only the current one.
    if (e?.mailboxIds && from && e.mailboxIds[from]) update[id] = { [`mailboxIds/${from}`]: null, [`mailboxIds/${mailboxId}`]: true };
    else update[id] = { mailboxIds: { [mailboxId]: true } };
  }
  const next = neighbour(ids);
  try {
    const res = await client.call('Email/set', { update });
    reportNotUpdated(res);
    const target = mailboxById(mailboxId);
    toast(`${ids.length === 1 ? 'Message' : `${ids.length} messages`} moved to ${shownName(target) || 'folder'}`);
    afterRemoval(ids, next);
  } catch (err) {
    fail(err);
  }
}

async function destroy() {
  const ids = await targets();
  if (!ids.length) return;
  const trash = role('trash');
  if (trash && S.mailboxId !== trash.id) return moveTo(trash.id, ids);
  if (!confirm(`Delete ${ids.length === 1 ? 'this message' : `${ids.length} messages`} for good?`)) return;
  const next = neighbour(ids);
  try {
    const res = await client.call('Email/set', { destroy: ids });
    reportNotUpdated(res);
    toast(`${ids.length === 1 ? 'Message' : `${ids.length} messages`} deleted`);
    afterRemoval(ids, next);
  } catch (err) {
    fail(err);
  }
}

function archive() {
  const a = role('archive');
  if (!a) return toast('There is no Archive folder', 'error');
  if (S.mailboxId !== a.id) moveTo(a.id);
}

function neighbour(ids) {
  const i = S.win.indexOf(S.selectedId);
  if (i < 0) return null;
  const skip = new Set(ids);
  for (let j = i + 1; j < (S.win.total || 0); j++) { const id = S.win.idAt(j); if (id && !skip.has(id)) return id; }
  for (let j = i - 1; j >= 0; j--) { const id = S.win.idAt(j); if (id && !skip.has(id)) return id; }
  return null;
}

function afterRemoval(ids, next) {
  const gone = new Set(ids);
  S.checked.clear();
  const readerGone = S.reader && gone.has(S.reader.id);
  S.selectedId = next;
  if (readerGone) { if (next) openEmail(next); else closeReader(); }
  reloadVisible();
  changed();
}

// ---------- compose ----------

async function compose(kind, email) {
  if (!S.identities.length) return toast('No identity to send from', 'error');
  try { await loadEditor(); } catch (err) { return fail(err); }
  const draft = makeDraft(kind, email, S.identities);
  const identity = S.identities.find((i) => i.id === draft.identityId) || S.identities[0];
  draft.html = ED.startHTML(kind, email, identity, { intro: draft.intro, header: draft.forwardHeader });
  draft.kind = kind;
  draft.showCc = !!draft.cc;
  S.compose = draft;
  changed();
}

function composeFromSelection(kind) {
  const e = S.reader?.emails.find((x) => x.id === S.reader.id) || S.reader?.emails.at(-1);
  if (!e) return;
  compose(kind, e);
}

async function editDraft(email) {
  await loadEditor();
  const res = await client.call('Email/get', { ids: [email.id], properties: READ_PROPS, fetchTextBodyValues: true, fetchHTMLBodyValues: true });
  const e = res.list[0];
  if (!e) return;
  const identity = S.identities.find((i) => i.email === e.from?.[0]?.email) || S.identities[0];
  S.compose = {
    kind: 'draft', draftId: e.id, identityId: identity?.id || '', to: formatAddresses(e.to), cc: formatAddresses(e.cc),
    bcc: formatAddresses(e.bcc), subject: e.subject || '', body: bodyText(e), html: draftHTML(e),
    plain: !(e.htmlBody || []).some((p) => p.type === 'text/html'), inReplyTo: e.inReplyTo, references: e.references,
    attachments: (e.attachments || []).map((a) => ({ blobId: a.blobId, name: a.name, type: a.type, size: a.size })),
    showCc: !!(e.cc?.length || e.bcc?.length),
  };
  changed();
}

// A saved draft's text as editor HTML: its HTML part when it has one (cleaned), else its text.
function draftHTML(e) {
  const values = e.bodyValues || {};
  const part = (e.htmlBody || []).find((p) => p.type === 'text/html' && values[p.partId]);
  return part ? ED.cleanHTML(values[part.partId].value) : ED.textToEditorHTML(bodyText(e));
}

// The editor's HTML is cleaned here, once more, whatever it holds: the text/html part is that cleaned
// HTML, the text/plain alternative is made from it.
function composeEmail(draft) {
  const identity = S.identities.find((i) => i.id === draft.identityId) || S.identities[0];
  const drafts = role('drafts');
  if (!drafts) throw new Error('There is no Drafts folder');
  const fields = { ...draft };
  if (!draft.plain && draft.html != null) {
    if (!ED) throw new Error('The editor is not loaded');
    const html = ED.cleanHTML(draft.html);
    fields.body = ED.htmlToPlain(html);
    fields.htmlBody = ED.messageHTML(html);
  }
  return { identity, email: draftToEmail(fields, identity, { draftsId: drafts.id }) };
}

async function saveDraft(draft, { quiet = false } = {}) {
  const { email } = composeEmail(draft);
  const args = { create: { draft: email } };
  if (draft.draftId) args.destroy = [draft.draftId];
  const res = await client.call('Email/set', args);
  if (res.notCreated?.draft) throw new Error(`Draft not saved: ${res.notCreated.draft.type} ${res.notCreated.draft.description || ''}`);
  draft.draftId = res.created.draft.id;
  draft.dirty = false;
  if (!quiet) toast('Draft saved');
  return draft.draftId;
}

async function send(draft) {
  const { identity, email } = composeEmail(draft);
  const all = [...email.to, ...(email.cc || []), ...(email.bcc || [])];
  if (!all.length) throw new Error('Add at least one recipient');
  const bad = all.find((a) => !validAddress(a.email));
  if (bad) throw new Error(`Not an email address: ${bad.email}`);
  const drafts = role('drafts');
  const sent = role('sent');
  const onSuccess = { 'keywords/$draft': null, [`mailboxIds/${drafts.id}`]: null };
  if (sent) onSuccess[`mailboxIds/${sent.id}`] = true;
  const calls = [
    ['Email/set', { create: { draft: email }, ...(draft.draftId ? { destroy: [draft.draftId] } : {}) }, 'e'],
    ['EmailSubmission/set', {
      create: { sub: { identityId: identity.id, emailId: '#draft', envelope: envelopeFor(email, identity) } },
      onSuccessUpdateEmail: { '#sub': onSuccess },
    }, 's'],
  ];
  const original = draft.replyToEmailId || draft.forwardOfEmailId;
  if (original) {
    calls.push(['Email/set', { update: { [original]: { [`keywords/${draft.replyToEmailId ? '$answered' : '$forwarded'}`]: true } } }, 'k']);
  }
  const [e, s] = await client.batch(calls);
  if (e.notCreated?.draft) throw new Error(`Not sent: ${e.notCreated.draft.type} ${e.notCreated.draft.description || ''}`);
  if (s.notCreated?.sub) throw new Error(`Not sent: ${s.notCreated.sub.type} ${s.notCreated.sub.description || ''}`);
}

// ---------- components ----------

function Icon({ name }) {
  const paths = {
    inbox: 'M3 13h4l2 3h6l2-3h4M5 5h14l2 8v6H3v-6z', drafts: 'M4 20h4L19 9l-4-4L4 16zM13 7l4 4', sent: 'M3 11l18-8-8 18-2-8z',
    archive: 'M3 4h18v4H3zM5 8v12h14V8M10 12h4', junk: 'M12 3l9 16H3zM12 10v4M12 17v.5', trash: 'M4 7h16M9 7V4h6v3M6 7l1 13h10l1-13',
    folder: 'M3 6h6l2 2h10v11H3z', star: 'M12 3l2.8 5.9 6.2.8-4.6 4.3 1.2 6.1L12 17l-5.6 3.1 1.2-6.1L3 9.7l6.2-.8z',
    reply: 'M10 8L4 13l6 5M4 13h11a5 5 0 015 5', replyAll: 'M11 8l-6 5 6 5M7 8l-6 5 6 5M5 13h10a5 5 0 015 5', forward: 'M14 8l6 5-6 5M20 13H9a5 5 0 00-5 5',
    clip: 'M8 12l6-6a3 3 0 014 4l-8 8a5 5 0 01-7-7l7-7', search: 'M11 4a7 7 0 110 14 7 7 0 010-14zM16 16l5 5', close: 'M6 6l12 12M18 6L6 18',
    pen: 'M4 20h4L19 9l-4-4L4 16z', gear: 'M12 8a4 4 0 110 8 4 4 0 010-8zM12 2v3M12 19v3M2 12h3M19 12h3M5 5l2 2M17 17l2 2M5 19l2-2M17 7l2-2',
    mail: 'M3 6h18v12H3zM3 6l9 7 9-7', move: 'M3 6h6l2 2h10v11H3zM10 13h6M13 10l3 3-3 3', dot: 'M12 9a3 3 0 110 6 3 3 0 010-6z',
    out: 'M15 4h4v16h-4M10 8l-4 4 4 4M6 12h10', back: 'M15 6l-6 6 6 6',
  };
  return (
    <svg class="icon" viewBox="0 0 24 24" aria-hidden="true" fill="none" stroke="currentColor" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round">
      <path d={paths[name] || paths.folder} />
    </svg>
  );
}

function Sidebar() {
  const tree = mailboxTree(S.mailboxes);
  const [dragOver, setDragOver] = useState(null);
  const onDrop = (ev, id) => {
    ev.preventDefault();
    setDragOver(null);
    const ids = (ev.dataTransfer.getData('application/x-peerage-emails') || '').split(',').filter(Boolean);
    if (ids.length && id !== S.mailboxId) moveTo(id, ids);
  };
  const newFolder = () => { S.settings = { tab: 'folders', focusNew: true }; changed(); };
  return (
    <nav class="sidebar" aria-label="Folders">
      <button class="compose-button" onClick={() => compose('new')} title="Compose (c)"><Icon name="pen" /> Compose</button>
      <ul class="folders">
        {tree.map((m) => (
          <li key={m.id}>
            <a href={`#/${m.id}`} class={`folder${m.id === S.mailboxId && !(S.search && S.searchAll) ? ' active' : ''}${dragOver === m.id ? ' drop' : ''}`}
              style={{ paddingLeft: `${12 + m.depth * 14}px` }} data-role={m.role || ''} data-mailbox={m.name}
              onClick={(ev) => { ev.preventDefault(); selectMailbox(m.id); }}
              onDragOver={(ev) => { ev.preventDefault(); setDragOver(m.id); }} onDragLeave={() => setDragOver(null)}
              onDrop={(ev) => onDrop(ev, m.id)}>
              <Icon name={m.role || 'folder'} />
              <span class="name">{shownName(m)}</span>
              {m.unreadEmails > 0 && <span class="count" title={`${m.unreadEmails} unread of ${m.totalEmails}`}>{m.unreadEmails}</span>}
            </a>
          </li>
        ))}
      </ul>
      <button class="link-button" id="new-folder" onClick={newFolder}>+ New folder</button>
      <button class="link-button" id="manage-folders" onClick={() => { S.settings = { tab: 'folders' }; changed(); }}>Manage folders</button>
      <div class="sidebar-foot">
        <button class="link-button" onClick={() => { S.settings = { tab: 'identity' }; changed(); }}><Icon name="gear" /> Settings</button>
        <span class={`live ${S.live}`} title={S.live === 'live' ? 'Updates arrive as they happen' : 'Reconnecting for updates'}>
          <Icon name="dot" /> {S.live === 'live' ? 'Live' : S.live === 'offline' ? 'Offline' : 'Connecting'}
        </span>
      </div>
    </nav>
  );
}

function Topbar() {
  const [text, setText] = useState(S.search);
  useEffect(() => { setText(S.search); }, [S.search]);
  const submit = (ev) => {
    ev.preventDefault();
    startSearch(text);
    listScrollTo?.(0);
  };
  const logout = async () => {
    try {
      await fetch(LOGOUT_PATH, { method: 'POST', credentials: 'same-origin', headers: { 'X-CSRF-Token': client.csrf } });
    } finally {
      location.href = LOGIN_PATH;
    }
  };
  return (
    <header class="topbar">
      <div class="brand"><Icon name="mail" /> <span>peerage</span> mail</div>
      <form class="search" role="search" onSubmit={submit}>
        <Icon name="search" />
        <input id="search" type="search" placeholder="Search mail (/)" value={text} onInput={(ev) => {
            const value = ev.currentTarget.value;
            setText(value);
            if (!value && S.search) { startSearch(''); listScrollTo?.(0); } // the field's clear button ends the search
          }}
          onKeyDown={(ev) => { if (ev.key === 'Escape') { ev.currentTarget.blur(); } }} aria-label="Search mail" />
        <label class="search-all" title="Search every folder">
          <input type="checkbox" checked={S.searchAll} onChange={(ev) => { S.searchAll = ev.currentTarget.checked; if (S.search) submit(ev); else changed(); }} /> all folders
        </label>
      </form>
      <div class="account">
        <span class="who" title="Signed in">{S.login}</span>
        <button class="ghost narrow-only" id="settings-narrow" onClick={() => { S.settings = { tab: 'identity' }; changed(); }} title="Settings" aria-label="Settings"><Icon name="gear" /></button>
        <button class="ghost" id="logout" onClick={logout} title="Log out"><Icon name="out" /><span class="label"> Log out</span></button>
      </div>
    </header>
  );
}

let listScrollTo = null;
let marked = false;
let listScrollIntoView = null;

function MessageList() {
  const ref = useRef(null);
  const [, force] = useReducer((x) => x + 1, 0);
  const [height, setHeight] = useState(600);
  const lastChecked = useRef(null);
  useLayoutEffect(() => {
    const el = ref.current;
    const measure = () => { setHeight(el.clientHeight || 600); };
    measure();
    const ro = new ResizeObserver(measure);
    ro.observe(el);
    listScrollTo = (top) => { el.scrollTop = top; };
    listScrollIntoView = (i) => {
      const top = i * ROW_HEIGHT;
      if (top < el.scrollTop) el.scrollTop = top;
      else if (top + ROW_HEIGHT > el.scrollTop + el.clientHeight) el.scrollTop = top + ROW_HEIGHT - el.clientHeight;
    };
    return () => ro.disconnect();
  }, []);
  const scrollTop = ref.current?.scrollTop || 0;
  const total = S.win.total;
  const first = Math.max(0, Math.floor(scrollTop / ROW_HEIGHT) - 5);
  const last = Math.min((total ?? 0) - 1, Math.ceil((scrollTop + height) / ROW_HEIGHT) + 5);
  visibleRange = [first, last];
  useEffect(() => { if (S.mailboxId) ensureRows(first, Math.max(last, first + 30)); });
  // For measuring start-up (bench/webmail): when the first rows of a list were drawn.
  useEffect(() => { if (!marked && rows.some((r) => r.type === Row)) { marked = true; performance.mark('peerage:inbox-drawn'); } });
  const rows = [];
  for (let i = first; i <= last; i++) {
    const id = S.win.idAt(i);
    const e = id && S.emails.get(id);
    rows.push(e ? <Row key={id} e={e} i={i} lastChecked={lastChecked} /> : <div key={`p${i}`} class="row placeholder" style={{ top: `${i * ROW_HEIGHT}px` }}><span /><span /></div>);
  }
  const mailbox = currentMailbox();
  const heading = S.search ? `Search: “${S.search}”${S.searchAll ? ' in all folders' : ` in ${shownName(mailbox)}`}` : shownName(mailbox);
  return (
    <section class={`list-pane${S.reader ? ' has-reader' : ''}`} aria-label="Messages">
      <div class="list-head">
        <select class="narrow-only folder-select" aria-label="Folder" value={S.mailboxId || ''} onChange={(ev) => selectMailbox(ev.currentTarget.value)}>
          {mailboxTree(S.mailboxes).map((m) => (
            <option key={m.id} value={m.id}>{'\u00a0'.repeat(m.depth * 2)}{shownName(m)}{m.unreadEmails ? ` (${m.unreadEmails})` : ''}</option>
          ))}
        </select>
        <h1>{heading}</h1>
        <span class="total" data-search={S.search ? S.searchPhase : ''}>
          {total === null ? 'Loading…' : total === 0 && S.searchPhase !== 'done' ? '' : `${total.toLocaleString()} ${S.search ? 'found' : total === 1 ? 'conversation' : 'conversations'}`}
          {S.search && S.searchPhase !== 'done' ? ' · searching message text…' : ''}
        </span>
        {S.checked.size > 0 && (
          <div class="bulk">
            <span>{S.checked.size} selected</span>
            <button class="ghost" onClick={toggleSeen}>Read/unread</button>
            <button class="ghost" onClick={() => { S.moveMenu = true; changed(); }}>Move</button>
            <button class="ghost" onClick={destroy}>Delete</button>
            <button class="ghost" onClick={() => { S.checked.clear(); changed(); }}>Clear</button>
          </div>
        )}
      </div>
      <div class="list" ref={ref} onScroll={force} tabIndex={0} role="listbox" aria-label="Message list" data-total={total ?? ''}>
        {total === 0 && <div class="empty">{S.search ? (S.searchPhase === 'done' ? 'No messages match your search.' : 'Searching…') : 'No messages here.'}</div>}
        <div class="list-inner" style={{ height: `${(total || 0) * ROW_HEIGHT}px` }}>{rows}</div>
      </div>
      <button class="narrow-only fab" onClick={() => compose('new')} title="Compose (c)" aria-label="Compose"><Icon name="pen" /></button>
    </section>
  );
}

function Row({ e, i, lastChecked }) {
  const unread = !e.keywords?.$seen;
  const flagged = !!e.keywords?.$flagged;
  const count = S.threads.get(e.threadId)?.length || 1;
  const mailbox = currentMailbox();
  const sentLike = mailbox && (mailbox.role === 'sent' || mailbox.role === 'drafts');
  const who = sentLike ? `To: ${(e.to || []).map(displayName).join(', ')}` : (e.from || []).map(displayName).join(', ');
  const checked = S.checked.has(e.id);
  const drafts = role('drafts');
  const onClick = (ev) => {
    if (ev.ctrlKey || ev.metaKey) { toggleCheck(e.id); return; }
    if (ev.shiftKey && lastChecked.current !== null) {
      const [a, b] = [Math.min(lastChecked.current, i), Math.max(lastChecked.current, i)];
      for (let j = a; j <= b; j++) { const id = S.win.idAt(j); if (id) S.checked.add(id); }
      changed();
      return;
    }
    if (drafts && e.mailboxIds[drafts.id]) { S.selectedId = e.id; editDraft(e).catch(fail); return; }
    openEmail(e.id);
  };
  const toggleCheck = (id) => {
    if (S.checked.has(id)) S.checked.delete(id); else S.checked.add(id);
    lastChecked.current = i;
    changed();
  };
  const onDragStart = (ev) => {
    const ids = S.checked.has(e.id) ? [...S.checked] : [e.id];
    ev.dataTransfer.setData('application/x-peerage-emails', ids.join(','));
    ev.dataTransfer.effectAllowed = 'move';
  };
  return (
    <div class={`row${unread ? ' unread' : ''}${S.selectedId === e.id ? ' selected' : ''}${checked ? ' checked' : ''}`}
      style={{ top: `${i * ROW_HEIGHT}px` }} data-id={e.id} data-subject={e.subject || ''} role="option" aria-selected={S.selectedId === e.id}
      onClick={onClick} draggable onDragStart={onDragStart}>
      <input type="checkbox" class="check" checked={checked} aria-label="Select" onClick={(ev) => { ev.stopPropagation(); toggleCheck(e.id); }} />
      <div class="row-main">
        <div class="row-top">
          <span class="from">{who || '(nobody)'}</span>
          {count > 1 && <span class="thread-count" title={`${count} messages in this conversation`}>{count}</span>}
          {e.hasAttachment && <span class="attach" title="Has attachments"><Icon name="clip" /></span>}
          <time class="date" dateTime={e.receivedAt} title={formatFullDate(e.receivedAt)}>{formatDate(e.receivedAt)}</time>
        </div>
        <div class="row-bottom">
          <span class="subject">{e.subject || '(no subject)'}</span>
          <span class="preview">{e.preview ? ` — ${e.preview}` : ''}</span>
        </div>
      </div>
      <button class={`flag${flagged ? ' on' : ''}`} title={flagged ? 'Unflag (s)' : 'Flag (s)'} aria-pressed={flagged}
        onClick={(ev) => { ev.stopPropagation(); setKeyword([e.id], '$flagged', !flagged); }}><Icon name="star" /></button>
    </div>
  );
}

function MessageFrame({ email }) {
  const ref = useRef(null);
  const allowed = S.allowRemote.has(email.id);
  const values = email.bodyValues || {};
  const htmlPart = (email.htmlBody || []).find((p) => p.type === 'text/html' && values[p.partId]);
  const [cidMap, setCidMap] = useState(null);
  // Inline cid: images become data: URLs, fetched once through the download endpoint.
  const inline = (email.attachments || []).filter((a) => a.cid && /^image\//.test(a.type || '') && (a.size || 0) < 5 * 1024 * 1024);
  useEffect(() => {
    if (!htmlPart || !inline.length) { setCidMap({}); return; }
    let live = true;
    Promise.all(inline.map(async (a) => {
      const res = await client.download(a.blobId, a.name || 'image', a.type);
      const buf = new Uint8Array(await res.arrayBuffer());
      let bin = '';
      for (let i = 0; i < buf.length; i += 0x8000) bin += String.fromCharCode(...buf.subarray(i, i + 0x8000));
      return [a.cid.replace(/^<|>$/g, ''), `data:${a.type};base64,${btoa(bin)}`];
    })).then((pairs) => { if (live) setCidMap(Object.fromEntries(pairs)); }).catch(() => { if (live) setCidMap({}); });
    return () => { live = false; };
  }, [email.id]);
  const source = htmlPart ? { html: values[htmlPart.partId].value } : { text: bodyText(email) };
  useEffect(() => { if (!FRAME) loadFrame().catch(fail); }, []);
  const { doc, blocked } = cidMap === null || !FRAME ? { doc: '', blocked: 0 } : FRAME.buildFrame(source, { allowRemote: allowed, cid: (id) => cidMap[id.replace(/^<|>$/g, '')] || null });
  useEffect(() => {
    const frame = ref.current;
    if (!frame) return;
    let ro = null;
    const fit = () => {
      try {
        const d = frame.contentDocument;
        if (!d?.documentElement) return;
        const b = d.body;
        frame.style.height = `${Math.max(60, b ? Math.max(b.scrollHeight, b.offsetHeight) + 4 : d.documentElement.scrollHeight)}px`;
        if (!ro && d.body) { ro = new ResizeObserver(fit); ro.observe(d.body); }
      } catch { /* no access: keep the fixed height */ }
    };
    frame.addEventListener('load', fit);
    if (frame.contentDocument?.readyState === 'complete' && frame.contentDocument.URL === 'about:srcdoc') fit();
    return () => { frame.removeEventListener('load', fit); ro?.disconnect(); };
  }, [doc]);
  return (
    <div class="body">
      {blocked > 0 && !allowed && (
        <div class="remote-banner" role="status">
          <span>Remote content was blocked to protect your privacy ({blocked} {blocked === 1 ? 'item' : 'items'}).</span>
          <button class="ghost" id="allow-remote" onClick={() => { S.allowRemote.add(email.id); changed(); }}>Show remote images</button>
        </div>
      )}
      {/* No allow-scripts: nothing in the message runs. allow-same-origin only lets this page size the frame. */}
      <iframe ref={ref} class="message-frame" title={`Message: ${email.subject || ''}`} sandbox="allow-same-origin allow-popups allow-popups-to-escape-sandbox"
        referrerpolicy="no-referrer" srcdoc={doc} />
    </div>
  );
}

// RFC 8621 §4.9: a message attached to a message is read with Email/parse of its blob.
const PARSE_PROPS = ['from', 'to', 'cc', 'replyTo', 'subject', 'sentAt', 'messageId', 'inReplyTo', 'references',
  'bodyValues', 'textBody', 'htmlBody', 'attachments', 'preview', 'hasAttachment', 'size'];

async function openAttached(a) {
  try {
    const res = await client.call('Email/parse', { blobIds: [a.blobId], properties: PARSE_PROPS,
      fetchHTMLBodyValues: true, fetchTextBodyValues: true, maxBodyValueBytes: 2 * 1024 * 1024 });
    const parsed = res.parsed?.[a.blobId];
    if (!parsed) return toast('This attached message cannot be read', 'error');
    S.attached = { ...parsed, id: `parsed-${a.blobId}`, blobId: a.blobId, receivedAt: parsed.sentAt };
    changed();
  } catch (err) { fail(err); }
}

function AttachedMessage() {
  const e = S.attached;
  const close = () => { S.attached = null; changed(); };
  return (
    <div class="modal-back" onClick={close}>
      <div class="modal attached-message" role="dialog" aria-label="Attached message" onClick={(ev) => ev.stopPropagation()}>
        <div class="modal-head"><h3>{e.subject || '(no subject)'}</h3><button class="ghost" onClick={close}><Icon name="close" /></button></div>
        <div class="to-line">From {formatAddresses(e.from)} · to {formatAddresses(e.to)} · {formatFullDate(e.sentAt)}</div>
        <MessageFrame email={e} />
        <Attachments email={e} />
      </div>
    </div>
  );
}

function Attachments({ email }) {
  const list = (email.attachments || []).filter((a) => !(a.cid && a.disposition === 'inline'));
  if (!list.length) return null;
  return (
    <ul class="attachments" aria-label="Attachments">
      {list.map((a) => (
        <li key={a.partId || a.blobId} class="attachment-item">
          <a href={client.downloadUrl(a.blobId, a.name || 'attachment', a.type || 'application/octet-stream')} download={a.name || 'attachment'} class="attachment">
            <Icon name="clip" />
            <span class="att-name">{a.name || (a.type === 'message/rfc822' ? 'message.eml' : '(unnamed)')}</span>
            <span class="att-size">{formatSize(a.size)}</span>
          </a>
          {a.type === 'message/rfc822' && <button class="ghost view-attached" onClick={() => openAttached(a)}>View</button>}
        </li>
      ))}
    </ul>
  );
}

function MailboxBadges({ email }) {
  return Object.keys(email.mailboxIds || {}).filter((id) => id !== S.mailboxId).map((id) => mailboxById(id)).filter(Boolean)
    .map((m) => <span key={m.id} class="badge">{shownName(m)}</span>);
}

function ThreadMessage({ email, expanded, onToggle, last }) {
  const flagged = !!email.keywords?.$flagged;
  if (!expanded) {
    return (
      <article class="message collapsed" onClick={onToggle} data-id={email.id}>
        <span class="from">{displayName(email.from?.[0])}</span>
        <span class="preview">{email.preview}</span>
        <time title={formatFullDate(email.receivedAt)}>{formatDate(email.receivedAt)}</time>
      </article>
    );
  }
  return (
    <article class="message" data-id={email.id}>
      <header class="message-head" onClick={last ? undefined : onToggle}>
        <div class="avatar" aria-hidden="true">{(displayName(email.from?.[0]) || '?').slice(0, 1).toUpperCase()}</div>
        <div class="who">
          <div class="from-line"><strong>{displayName(email.from?.[0])}</strong> <span class="addr">&lt;{email.from?.[0]?.email}&gt;</span></div>
          <div class="to-line">to {formatAddresses(email.to) || '(nobody)'}{email.cc?.length ? `, cc ${formatAddresses(email.cc)}` : ''}</div>
        </div>
        <div class="when">
          <time title={formatFullDate(email.sentAt || email.receivedAt)}>{formatDate(email.receivedAt)}</time>
          <button class={`flag${flagged ? ' on' : ''}`} title="Flag" aria-pressed={flagged}
            onClick={(ev) => { ev.stopPropagation(); setKeyword([email.id], '$flagged', !flagged); }}><Icon name="star" /></button>
        </div>
      </header>
      <MessageFrame email={email} />
      <Attachments email={email} />
      <div class="message-actions">
        <button class="ghost" onClick={() => compose('reply', email)}><Icon name="reply" /> Reply</button>
        <button class="ghost" onClick={() => compose('replyAll', email)}><Icon name="replyAll" /> Reply all</button>
        <button class="ghost" onClick={() => compose('forward', email)}><Icon name="forward" /> Forward</button>
        <a class="ghost button" href={client.downloadUrl(email.blobId, 'message.eml', 'message/rfc822')} download="message.eml">Download</a>
      </div>
    </article>
  );
}

function Reader() {
  const r = S.reader;
  if (!r) {
    return <section class="reader empty-reader" aria-label="Message"><div><Icon name="mail" /><p>Select a message to read it.</p><p class="hint">Press <kbd>?</kbd> for keyboard shortcuts.</p></div></section>;
  }
  const main = r.emails.find((e) => e.id === r.id) || r.emails.at(-1);
  const flagged = !!main?.keywords?.$flagged;
  return (
    <section class="reader" aria-label="Message">
      <div class="toolbar">
        <button class="ghost narrow-only" onClick={closeReader} title="Back (Esc)"><Icon name="back" /></button>
        <button class="ghost" id="reply" onClick={() => composeFromSelection('reply')} title="Reply (r)"><Icon name="reply" /> Reply</button>
        <button class="ghost" id="reply-all" onClick={() => composeFromSelection('replyAll')} title="Reply all (a)"><Icon name="replyAll" /> Reply all</button>
        <button class="ghost" id="forward" onClick={() => composeFromSelection('forward')} title="Forward (f)"><Icon name="forward" /> Forward</button>
        <span class="sep" />
        {role('archive') && <button class="ghost" id="archive" onClick={archive} title="Archive (e)"><Icon name="archive" /></button>}
        <button class="ghost" id="move" onClick={() => { S.moveMenu = true; changed(); }} title="Move (m)"><Icon name="move" /> Move</button>
        <button class="ghost" id="delete" onClick={destroy} title="Delete (#)"><Icon name="trash" /> Delete</button>
        <button class={`ghost flag${flagged ? ' on' : ''}`} id="flag" onClick={toggleFlag} title="Flag (s)" aria-pressed={flagged}><Icon name="star" /></button>
        <button class="ghost" id="unread" onClick={toggleSeen} title="Mark unread (u)">Mark unread</button>
      </div>
      {r.loading ? <div class="loading">Loading…</div> : (
        <div class="thread">
          <h2 class="subject" id="reader-subject">{main?.subject || '(no subject)'} <MailboxBadges email={main || {}} /></h2>
          {r.emails.map((e, i) => (
            <ThreadMessage key={e.id} email={e} last={i === r.emails.length - 1} expanded={r.expanded.has(e.id) || i === r.emails.length - 1}
              onToggle={() => { if (r.expanded.has(e.id)) r.expanded.delete(e.id); else r.expanded.add(e.id); changed(); }} />
          ))}
        </div>
      )}
    </section>
  );
}

function MoveMenu() {
  const [filter, setFilter] = useState('');
  const inputRef = useRef(null);
  useEffect(() => { inputRef.current?.focus(); }, []);
  const close = () => { S.moveMenu = false; changed(); };
  const choices = mailboxTree(S.mailboxes).filter((m) => m.id !== S.mailboxId && shownName(m).toLowerCase().includes(filter.toLowerCase()));
  return (
    <div class="modal-back" onClick={close}>
      <div class="modal move-menu" role="dialog" aria-label="Move to folder" onClick={(ev) => ev.stopPropagation()}>
        <h3>Move to…</h3>
        <input ref={inputRef} placeholder="Folder" value={filter} onInput={(ev) => setFilter(ev.currentTarget.value)}
          onKeyDown={(ev) => { if (ev.key === 'Enter' && choices[0]) { close(); moveTo(choices[0].id); } if (ev.key === 'Escape') close(); }} />
        <ul>
          {choices.map((m) => (
            <li key={m.id}><button class="ghost wide" data-mailbox={m.name} onClick={() => { close(); moveTo(m.id); }} style={{ paddingLeft: `${10 + m.depth * 14}px` }}>
              <Icon name={m.role || 'folder'} /> {shownName(m)}</button></li>
          ))}
        </ul>
      </div>
    </div>
  );
}

function Compose() {
  const d = S.compose;
  const [busy, setBusy] = useState('');
  const [, force] = useReducer((x) => x + 1, 0);
  const fileRef = useRef(null);
  useEffect(() => {
    if (d.kind === 'new' || d.kind === 'forward') document.getElementById('compose-to')?.focus();
    else focusEditorStart();
  }, []);
  // Saved as a draft every 20 s while it changes.
  useEffect(() => {
    const t = setInterval(() => { if (d.dirty && !busy && S.compose === d) saveDraft(d, { quiet: true }).catch(() => {}); }, 20000);
    return () => clearInterval(t);
  }, []);
  const set = (key) => (ev) => { d[key] = ev.currentTarget.value; d.dirty = true; force(); };
  const close = async (save) => {
    if (save && d.dirty && ((d.plain ? d.body : ED.htmlToPlain(d.html || '')).trim() || d.subject || d.to)) {
      try { await saveDraft(d); } catch (err) { fail(err); return; }
    }
    S.compose = null;
    changed();
  };
  const doSend = async () => {
    setBusy('Sending…');
    try {
      await send(d);
      S.compose = null;
      toast('Message sent');
      changed();
    } catch (err) {
      fail(err);
    } finally {
      setBusy('');
    }
  };
  const attach = async (files) => {
    for (const file of files) {
      const item = { name: file.name, type: file.type || 'application/octet-stream', size: file.size, uploading: true };
      d.attachments = [...d.attachments, item];
      force();
      try {
        const res = await client.upload(file, item.type);
        item.blobId = res.blobId;
        item.uploading = false;
        d.dirty = true;
      } catch (err) {
        d.attachments = d.attachments.filter((a) => a !== item);
        fail(err);
      }
      force();
    }
  };
  const title = { new: 'New message', reply: 'Reply', replyAll: 'Reply all', forward: 'Forward', draft: 'Draft' }[d.kind] || 'Message';
  return (
    <div class="compose" role="dialog" aria-label={title}
      onKeyDown={(ev) => { if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); doSend(); } if (ev.key === 'Escape') close(true); }}
      onDragOver={(ev) => ev.preventDefault()} onDrop={(ev) => { ev.preventDefault(); attach([...ev.dataTransfer.files]); }}>
      <div class="compose-head">
        <span>{title}</span>
        <button class="ghost" onClick={() => close(true)} title="Close and keep as draft (Esc)"><Icon name="close" /></button>
      </div>
      <div class="compose-fields">
        <label><span>From</span>
          <select id="compose-from" value={d.identityId} onChange={set('identityId')}>
            {S.identities.map((i) => <option key={i.id} value={i.id}>{i.name ? `${i.name} <${i.email}>` : i.email}</option>)}
          </select>
        </label>
        <label><span>To</span><input id="compose-to" value={d.to} onInput={set('to')} autocomplete="email" multiple />
          {!d.showCc && <button class="link-button" onClick={() => { d.showCc = true; force(); }}>Cc/Bcc</button>}</label>
        {d.showCc && <label><span>Cc</span><input id="compose-cc" value={d.cc} onInput={set('cc')} /></label>}
        {d.showCc && <label><span>Bcc</span><input id="compose-bcc" value={d.bcc} onInput={set('bcc')} /></label>}
        <label><span>Subject</span><input id="compose-subject" value={d.subject} onInput={set('subject')} /></label>
      </div>
      {d.plain
        ? <textarea id="compose-body" class="plain" value={d.body} onInput={set('body')} spellcheck aria-label="Message text" />
        : <Editor d={d} onChange={(html) => { d.html = html; d.dirty = true; }} />}
      {d.attachments.length > 0 && (
        <ul class="attachments compose-attachments">
          {d.attachments.map((a, i) => (
            <li key={i} class="attachment"><Icon name="clip" /><span class="att-name">{a.name}</span>
              <span class="att-size">{a.uploading ? 'uploading…' : formatSize(a.size)}</span>
              <button class="ghost" title="Remove" onClick={() => { d.attachments = d.attachments.filter((x) => x !== a); d.dirty = true; force(); }}><Icon name="close" /></button></li>
          ))}
        </ul>
      )}
      <div class="compose-actions">
        <button class="primary" id="send" onClick={doSend} disabled={!!busy || d.attachments.some((a) => a.uploading)} title="Send (Ctrl+Enter)">{busy || 'Send'}</button>
        <button class="ghost" onClick={() => fileRef.current.click()}><Icon name="clip" /> Attach</button>
        <input type="file" multiple hidden ref={fileRef} onChange={(ev) => { attach([...ev.currentTarget.files]); ev.currentTarget.value = ''; }} />
        <button class="ghost" id="toggle-format" aria-pressed={!!d.plain} title="Send as plain text only, or with formatting"
          onClick={() => {
            // Plain text keeps the words and drops the formatting; back again, the text becomes simple HTML.
            if (d.plain) { d.html = ED.textToEditorHTML(d.body); d.plain = false; } else { d.body = ED.htmlToPlain(d.html || ''); d.plain = true; }
            d.dirty = true;
            force();
          }}>{d.plain ? 'Formatting' : 'Plain text'}</button>
        <button class="ghost" id="save-draft" onClick={() => saveDraft(d).then(force).catch(fail)}>Save draft</button>
        <span class="grow" />
        <button class="ghost danger" onClick={async () => {
          if (d.draftId) { try { await client.call('Email/set', { destroy: [d.draftId] }); } catch (err) { fail(err); } }
          S.compose = null; changed();
        }}>Discard</button>
      </div>
    </div>
  );
}

function focusEditorStart() {
  const el = document.getElementById('compose-body');
  if (!el) return;
  el.focus();
  const range = document.createRange();
  range.setStart(el.firstChild || el, 0);
  range.collapse(true);
  const sel = getSelection();
  sel.removeAllRanges();
  sel.addRange(range);
}

// The formatting toolbar and the editable text. Chromium's editing commands do the formatting; whatever
// comes in from outside (paste, drop) is cleaned first, and what is sent is cleaned again (editor.js).
const FORMATS = [['bold', 'B', 'Bold (Ctrl+B)'], ['italic', 'I', 'Italic (Ctrl+I)'], ['underline', 'U', 'Underline (Ctrl+U)'],
  ['strikeThrough', 'S', 'Strikethrough'], ['insertUnorderedList', '• List', 'Bulleted list'],
  ['insertOrderedList', '1. List', 'Numbered list'], ['quote', '❝ Quote', 'Quote'], ['removeFormat', 'Tx', 'Clear formatting']];

function Editor({ d, onChange }) {
  const ref = useRef(null);
  const range = useRef(null);
  const [link, setLink] = useState(null);
  useEffect(() => {
    ref.current.innerHTML = ED.cleanHTML(d.html || '');
    document.execCommand('styleWithCSS', false, false);
    document.execCommand('defaultParagraphSeparator', false, 'div');
  }, []);
  const update = () => onChange(ref.current.innerHTML);
  const exec = (cmd, value) => {
    ref.current.focus();
    if (cmd === 'quote') {
      const inQuote = getSelection().anchorNode?.parentElement?.closest?.('#compose-body blockquote');
      document.execCommand('formatBlock', false, inQuote ? 'div' : 'blockquote');
    } else {
      document.execCommand(cmd, false, value);
    }
    update();
  };
  const insertClean = (html) => {
    ref.current.focus();
    document.execCommand('insertHTML', false, html);
    update();
  };
  const onPaste = (ev) => {
    const data = ev.clipboardData;
    if (!data) return;
    ev.preventDefault();
    const html = data.getData('text/html');
    insertClean(html ? ED.cleanHTML(html) : ED.textToEditorHTML(data.getData('text/plain')));
  };
  const onDrop = (ev) => {
    const data = ev.dataTransfer;
    if (!data || data.files.length) return; // files: the compose window attaches them
    ev.preventDefault();
    ev.stopPropagation();
    const html = data.getData('text/html');
    insertClean(html ? ED.cleanHTML(html) : ED.textToEditorHTML(data.getData('text/plain')));
  };
  const startLink = () => {
    const sel = getSelection();
    range.current = sel.rangeCount && ref.current.contains(sel.anchorNode) ? sel.getRangeAt(0).cloneRange() : null;
    setLink('https://');
  };
  const finishLink = (url) => {
    setLink(null);
    ref.current.focus();
    if (range.current) { const sel = getSelection(); sel.removeAllRanges(); sel.addRange(range.current); }
    url = url.trim();
    if (!url || url === 'https://') return;
    if (!/^(https?:\/\/|mailto:)/i.test(url)) { toast('A link must start with https://, http:// or mailto:', 'error'); return; }
    if (range.current && !range.current.collapsed) document.execCommand('createLink', false, url);
    else document.execCommand('insertHTML', false, ED.cleanHTML(`<a href="${escapeAttr(url)}">${escapeAttr(url)}</a>`));
    update();
  };
  return (
    <>
      <div class="editor-toolbar" role="toolbar" aria-label="Formatting">
        {FORMATS.map(([cmd, label, title]) => (
          <button key={cmd} type="button" class={`ghost fmt fmt-${cmd}`} data-cmd={cmd} title={title} aria-label={title}
            onMouseDown={(ev) => ev.preventDefault()} onClick={() => exec(cmd)}>{label}</button>
        ))}
        <button type="button" class="ghost fmt" data-cmd="link" title="Link" aria-label="Link" onMouseDown={(ev) => ev.preventDefault()} onClick={startLink}>Link</button>
        {link !== null && (
          <input class="link-input" aria-label="Link address" value={link} autoFocus onInput={(ev) => setLink(ev.currentTarget.value)}
            onKeyDown={(ev) => {
              if (ev.key === 'Enter') { ev.preventDefault(); finishLink(ev.currentTarget.value); }
              if (ev.key === 'Escape') { ev.preventDefault(); ev.stopPropagation(); setLink(null); ref.current.focus(); }
            }} />
        )}
      </div>
      <div id="compose-body" class="editor" ref={ref} contentEditable="true" role="textbox" aria-multiline="true"
        aria-label="Message text" spellcheck onInput={update} onPaste={onPaste} onDrop={onDrop} />
    </>
  );
}

function escapeAttr(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

function Settings() {
  const st = S.settings;
  const [, force] = useReducer((x) => x + 1, 0);
  const [vacation, setVacation] = useState(null);
  const [identities, setIdentities] = useState(() => S.identities.map((i) => ({ ...i })));
  const hasVacation = !!client.capabilities['urn:ietf:params:jmap:vacationresponse'];
  useEffect(() => {
    if (st.tab === 'vacation' && hasVacation && !vacation) {
      client.call('VacationResponse/get', { ids: ['singleton'] }).then((r) => setVacation({ ...r.list[0] })).catch(fail);
    }
  }, [st.tab]);
  const close = () => { S.settings = null; changed(); };
  const saveIdentities = async () => {
    const update = {};
    for (const i of identities) {
      const orig = S.identities.find((x) => x.id === i.id);
      if (orig && (orig.name !== i.name || orig.textSignature !== i.textSignature)) update[i.id] = { name: i.name, textSignature: i.textSignature };
    }
    if (!Object.keys(update).length) return close();
    try {
      const res = await client.call('Identity/set', { update });
      reportNotUpdated(res);
      await loadIdentities();
      toast('Identities saved');
      close();
    } catch (err) { fail(err); }
  };
  const saveVacation = async () => {
    const v = vacation;
    try {
      const res = await client.call('VacationResponse/set', { update: { singleton: {
        isEnabled: !!v.isEnabled, fromDate: v.fromDate || null, toDate: v.toDate || null, subject: v.subject || null, textBody: v.textBody || null,
      } } });
      reportNotUpdated(res);
      toast(v.isEnabled ? 'Vacation response on' : 'Vacation response off');
      close();
    } catch (err) { fail(err); }
  };
  const toLocal = (iso) => (iso ? new Date(iso).toISOString().slice(0, 16) : '');
  const fromLocal = (s) => (s ? new Date(`${s}Z`).toISOString().replace(/\.\d+Z$/, 'Z') : null);
  const tabs = [['identity', 'Identities & signature'], ['folders', 'Folders'], ...(hasVacation ? [['vacation', 'Vacation response']] : []), ['keys', 'Keyboard shortcuts']];
  return (
    <div class="modal-back" onClick={close}>
      <div class="modal settings" role="dialog" aria-label="Settings" onClick={(ev) => ev.stopPropagation()}>
        <div class="modal-head"><h3>Settings</h3><button class="ghost" onClick={close}><Icon name="close" /></button></div>
        <div class="tabs">{tabs.map(([k, label]) => <button key={k} class={`tab${st.tab === k ? ' active' : ''}`} onClick={() => { st.tab = k; force(); changed(); }}>{label}</button>)}</div>
        {st.tab === 'identity' && (
          <div class="tab-body">
            {identities.map((i) => (
              <fieldset key={i.id} class="identity">
                <legend>{i.email}</legend>
                <label>Name <input value={i.name || ''} onInput={(ev) => { i.name = ev.currentTarget.value; force(); }} /></label>
                <label>Signature <textarea rows={4} class="signature" value={i.textSignature || ''} onInput={(ev) => { i.textSignature = ev.currentTarget.value; force(); }} /></label>
              </fieldset>
            ))}
            {!identities.length && <p>No identities.</p>}
            <div class="modal-actions"><button class="primary" onClick={saveIdentities}>Save</button></div>
          </div>
        )}
        {st.tab === 'vacation' && (
          <div class="tab-body">
            {!vacation ? <p>Loading…</p> : (
              <>
                <label class="inline"><input type="checkbox" id="vacation-enabled" checked={!!vacation.isEnabled} onChange={(ev) => setVacation({ ...vacation, isEnabled: ev.currentTarget.checked })} /> Send an automatic reply</label>
                <div class="two">
                  <label>From (UTC) <input type="datetime-local" value={toLocal(vacation.fromDate)} onInput={(ev) => setVacation({ ...vacation, fromDate: fromLocal(ev.currentTarget.value) })} /></label>
                  <label>Until (UTC) <input type="datetime-local" value={toLocal(vacation.toDate)} onInput={(ev) => setVacation({ ...vacation, toDate: fromLocal(ev.currentTarget.value) })} /></label>
                </div>
                <label>Subject <input id="vacation-subject" value={vacation.subject || ''} onInput={(ev) => setVacation({ ...vacation, subject: ev.currentTarget.value })} /></label>
                <label>Message <textarea id="vacation-body" rows={6} value={vacation.textBody || ''} onInput={(ev) => setVacation({ ...vacation, textBody: ev.currentTarget.value })} /></label>
                <div class="modal-actions"><button class="primary" id="vacation-save" onClick={saveVacation}>Save</button></div>
              </>
            )}
          </div>
        )}
        {st.tab === 'folders' && <FolderSettings focusNew={!!st.focusNew} />}
        {st.tab === 'keys' && <ShortcutTable />}
      </div>
    </div>
  );
}

// ---------- folders (RFC 8621 §2.5 Mailbox/set) ----------

const plural = (n, one, many) => `${n.toLocaleString()} ${n === 1 ? one : many}`;

// A folder name the server will take: IMAP names nest with "/" (RFC 9051 §5.1), so it cannot be in one.
function folderNameProblem(name) {
  if (!name.trim()) return 'Give the folder a name.';
  if (name.includes('/')) return 'A folder name cannot contain “/” (it separates a folder from its subfolders).';
  return '';
}

// What a SetError (RFC 8620 §5.3, RFC 8621 §2.5) means for the folder `name`, in words.
function folderErrorText(error, name, mailbox) {
  const desc = error.description ? ` (${error.description})` : '';
  switch (error.type) {
    case 'mailboxHasEmail': {
      const n = mailbox?.totalEmails || 0;
      return `“${name}” still holds ${n ? plural(n, 'message', 'messages') : 'messages'}. Move them to another folder first, or tick “Also delete the messages in it”.`;
    }
    case 'mailboxHasChild':
      return `“${name}” has subfolders. Delete or move them first.`;
    case 'invalidProperties':
      if ((error.properties || []).includes('name') && /exist/i.test(error.description || '')) return `There is already a folder named “${name}” there.`;
      if ((error.properties || []).includes('parentId')) return `The folder to put “${name}” in is gone${desc}.`;
      return `The server did not accept “${name}”${desc}.`;
    case 'forbidden':
      return `The server does not allow that for “${name}”${desc}.`;
    case 'notFound':
      return `“${name}” no longer exists; it was changed elsewhere.`;
    case 'overQuota':
      return `The account is over its quota${desc}.`;
    default:
      return `The server refused: ${error.type}${desc}.`;
  }
}

// Mailbox/set with one change; resolves to null on success or the error text to show.
async function folderChange(args, key, name, mailbox) {
  const res = await client.call('Mailbox/set', args);
  const bad = res.notCreated?.[key] || res.notUpdated?.[key] || res.notDestroyed?.[key];
  await loadMailboxes();
  return bad ? folderErrorText(bad, name, mailbox) : null;
}

function descendants(id) {
  const out = new Set([id]);
  let grew = true;
  while (grew) {
    grew = false;
    for (const m of S.mailboxes) if (m.parentId && out.has(m.parentId) && !out.has(m.id)) { out.add(m.id); grew = true; }
  }
  return out;
}

function ParentSelect({ value, onChange, exclude, id }) {
  const tree = mailboxTree(S.mailboxes).filter((m) => !exclude?.has(m.id));
  return (
    <select id={id} value={value || ''} onChange={(ev) => onChange(ev.currentTarget.value || null)} aria-label="Inside folder">
      <option value="">Top level</option>
      {tree.map((m) => <option key={m.id} value={m.id}>{'\u00a0'.repeat(m.depth * 2 + 2)}{shownName(m)}</option>)}
    </select>
  );
}

function FolderSettings({ focusNew }) {
  const [name, setName] = useState('');
  const [parent, setParent] = useState(null);
  const [error, setError] = useState('');
  const [busy, setBusy] = useState(false);
  const [editing, setEditing] = useState(null); // { id, mode: 'rename' | 'delete', name, parentId, removeEmails, error }
  const newRef = useRef(null);
  useEffect(() => { if (focusNew) newRef.current?.focus(); }, []);
  const create = async (ev) => {
    ev.preventDefault();
    const problem = folderNameProblem(name);
    if (problem) { setError(problem); return; }
    setBusy(true);
    try {
      const text = await folderChange({ create: { f: { name: name.trim(), parentId: parent } } }, 'f', name.trim());
      setError(text || '');
      if (!text) { toast(`Folder “${name.trim()}” created`); setName(''); }
    } catch (err) { fail(err); } finally { setBusy(false); }
  };
  const apply = async () => {
    const m = mailboxById(editing.id);
    if (!m) { setEditing(null); return; }
    let text = null;
    setBusy(true);
    try {
      if (editing.mode === 'rename') {
        const problem = folderNameProblem(editing.name);
        if (problem) { setEditing({ ...editing, error: problem }); return; }
        const patch = {};
        if (editing.name.trim() !== m.name) patch.name = editing.name.trim();
        if ((editing.parentId || null) !== (m.parentId || null)) patch.parentId = editing.parentId || null;
        if (Object.keys(patch).length) text = await folderChange({ update: { [m.id]: patch } }, m.id, editing.name.trim(), m);
        if (!text) toast(`Folder renamed to “${editing.name.trim()}”`);
      } else {
        text = await folderChange({ destroy: [m.id], onDestroyRemoveEmails: !!editing.removeEmails }, m.id, shownName(m), m);
        if (!text) {
          toast(`Folder “${shownName(m)}” deleted`);
          if (S.mailboxId === m.id) selectMailbox(role('inbox')?.id || S.mailboxes[0]?.id);
        }
      }
      setEditing(text ? { ...editing, error: text } : null);
    } catch (err) { fail(err); } finally { setBusy(false); }
  };
  const tree = mailboxTree(S.mailboxes);
  return (
    <div class="tab-body folders-settings">
      <form class="folder-create" onSubmit={create}>
        <label>New folder <input id="folder-new-name" ref={newRef} value={name} maxLength={200}
          onInput={(ev) => { setName(ev.currentTarget.value); setError(''); }} placeholder="Name" /></label>
        <label>Inside <ParentSelect id="folder-new-parent" value={parent} onChange={setParent} /></label>
        <button class="primary" id="folder-create" disabled={busy}>Create</button>
      </form>
      {error && <p class="folder-error" role="alert">{error}</p>}
      <ul class="folder-list">
        {tree.map((m) => {
          const e = editing?.id === m.id ? editing : null;
          return (
            <li key={m.id} class="folder-item" data-mailbox={m.name} style={{ paddingLeft: `${6 + m.depth * 16}px` }}>
              <div class="folder-line">
                <Icon name={m.role || 'folder'} />
                <span class="name">{shownName(m)}</span>
                <span class="folder-counts">{plural(m.totalEmails || 0, 'message', 'messages')}{m.unreadEmails ? `, ${m.unreadEmails} unread` : ''}</span>
                {!m.role && !e && (
                  <span class="folder-actions">
                    <button class="ghost rename" onClick={() => setEditing({ id: m.id, mode: 'rename', name: m.name, parentId: m.parentId || null })}>Rename</button>
                    <button class="ghost danger delete" onClick={() => setEditing({ id: m.id, mode: 'delete', removeEmails: false })}>Delete</button>
                  </span>
                )}
              </div>
              {e?.mode === 'rename' && (
                <form class="folder-edit" onSubmit={(ev) => { ev.preventDefault(); apply(); }}>
                  <input class="rename-name" aria-label="New name" value={e.name} autoFocus maxLength={200}
                    onInput={(ev) => setEditing({ ...e, name: ev.currentTarget.value, error: '' })} />
                  <ParentSelect value={e.parentId} exclude={descendants(m.id)} onChange={(v) => setEditing({ ...e, parentId: v, error: '' })} />
                  <button class="primary save" disabled={busy}>Save</button>
                  <button type="button" class="ghost cancel" onClick={() => setEditing(null)}>Cancel</button>
                </form>
              )}
              {e?.mode === 'delete' && (
                <div class="folder-edit">
                  <span>Delete “{shownName(m)}”?</span>
                  {(m.totalEmails || 0) > 0 && (
                    <label class="inline"><input type="checkbox" class="remove-emails" checked={!!e.removeEmails}
                      onChange={(ev) => setEditing({ ...e, removeEmails: ev.currentTarget.checked, error: '' })} /> Also delete the messages in it ({plural(m.totalEmails, 'message', 'messages')})</label>
                  )}
                  <button class="primary danger-bg confirm-delete" disabled={busy} onClick={apply}>Delete</button>
                  <button type="button" class="ghost cancel" onClick={() => setEditing(null)}>Cancel</button>
                </div>
              )}
              {e?.error && <p class="folder-error" role="alert">{e.error}</p>}
            </li>
          );
        })}
      </ul>
      <p class="hint">Inbox, Drafts, Sent, Archive, Junk and Trash have special jobs and keep their names.</p>
    </div>
  );
}

function ShortcutTable() {
  return (
    <table class="shortcuts">
      <tbody>{SHORTCUTS.map(([keys, what]) => <tr key={keys}><td>{keys.split(' ').map((k) => <kbd key={k}>{k}</kbd>)}</td><td>{what}</td></tr>)}</tbody>
    </table>
  );
}

function Help() {
  const close = () => { S.help = false; changed(); };
  return (
    <div class="modal-back" onClick={close}>
      <div class="modal" role="dialog" aria-label="Keyboard shortcuts" onClick={(ev) => ev.stopPropagation()}>
        <div class="modal-head"><h3>Keyboard shortcuts</h3><button class="ghost" onClick={close}><Icon name="close" /></button></div>
        <ShortcutTable />
      </div>
    </div>
  );
}

function App() {
  const [, setVersion] = useReducer((x) => x + 1, 0);
  bump = setVersion;
  useEffect(() => {
    const onKey = (ev) => {
      const action = keyAction(ev, { composing: !!S.compose, modal: !!(S.settings || S.moveMenu || S.help || S.attached) });
      if (!action) return;
      ev.preventDefault();
      runAction(action);
    };
    document.addEventListener('keydown', onKey);
    return () => document.removeEventListener('keydown', onKey);
  }, []);
  if (S.error) return <div class="fatal"><h1>Mail is unavailable</h1><p>{S.error}</p><button class="primary" onClick={() => location.reload()}>Try again</button></div>;
  if (!S.ready) return <div class="splash">Loading mail…</div>;
  return (
    <div class={`app${S.reader ? ' reading' : ''}`}>
      <Topbar />
      <Sidebar />
      <MessageList />
      <Reader />
      {S.compose && <Compose />}
      {S.settings && <Settings />}
      {S.moveMenu && <MoveMenu />}
      {S.help && <Help />}
      {S.attached && <AttachedMessage />}
      {S.toast && <div class={`toast ${S.toast.kind}`} role="status">{S.toast.text}</div>}
    </div>
  );
}

function runAction(action) {
  const byRole = (r) => { const m = role(r); if (m) selectMailbox(m.id); };
  switch (action) {
    case 'next': return moveSelection(1);
    case 'prev': return moveSelection(-1);
    case 'open': if (S.selectedId) openEmail(S.selectedId); else moveSelection(0); return;
    case 'close': if (S.moveMenu || S.settings || S.help || S.attached) { S.moveMenu = false; S.settings = null; S.help = false; S.attached = null; changed(); } else closeReader(); return;
    case 'reply': return composeFromSelection('reply');
    case 'replyAll': return composeFromSelection('replyAll');
    case 'forward': return composeFromSelection('forward');
    case 'compose': return compose('new');
    case 'delete': return destroy();
    case 'archive': return archive();
    case 'flag': return toggleFlag();
    case 'seen': return toggleSeen();
    case 'move': if (S.selectedId || S.checked.size) { S.moveMenu = true; changed(); } return;
    case 'check': if (S.selectedId) { if (S.checked.has(S.selectedId)) S.checked.delete(S.selectedId); else S.checked.add(S.selectedId); changed(); } return;
    case 'search': document.getElementById('search')?.focus(); return;
    case 'help': S.help = true; changed(); return;
    case 'goInbox': return byRole('inbox');
    case 'goSent': return byRole('sent');
    case 'goDrafts': return byRole('drafts');
    case 'goTrash': return byRole('trash');
    case 'goArchive': return byRole('archive');
    default:
  }
}

// Per account, in this browser: the inbox's id (not a secret: a server-made name), so the next start
// costs one request less.
const memoryKey = () => `peerage-mail:${client.login}`;
function recall() {
  try { return JSON.parse(localStorage.getItem(memoryKey()) || '{}') || {}; } catch { return {}; }
}
function remember(values) {
  try { localStorage.setItem(memoryKey(), JSON.stringify({ ...recall(), ...values })); } catch { /* storage off */ }
}

async function start() {
  render(<App />, document.getElementById('app'));
  client.onLoggedOut = toLogin;
  try {
    await client.connect();
    S.login = client.login;
    const hash = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
    const remembered = recall();
    S.mailboxId = hash[0] || remembered.inbox || null;
    // With a mailbox id known (the address, or this account's inbox from an earlier visit), the
    // mailboxes, identities and the first window of the list go in one request; otherwise the list
    // waits for the mailboxes to say which one is the inbox.
    const guessed = S.mailboxId;
    if (guessed) ensureRows(0, 30);
    await Promise.all([loadMailboxes(), loadIdentities()]);
    if (S.mailboxId !== guessed) {
      resetList();
      ensureRows(0, 30);
    }
    remember({ inbox: role('inbox')?.id });
    S.ready = true;
    changed();
    startPush();
    if (hash[1]) openEmail(hash[1]);
    // What the inbox did not wait for, fetched while the user looks at it.
    setTimeout(() => { loadFrame().catch(() => {}); loadEditor().catch(() => {}); }, 0);
  } catch (err) {
    if (err instanceof NotLoggedIn) return toLogin();
    S.error = err.message || String(err);
    changed();
  }
}

start();
