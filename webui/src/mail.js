// Pure mail logic: addresses, reply/forward drafts, dates, sizes. No DOM, no network: unit-tested in node.

export function formatAddress(a) {
  if (!a) return '';
  return a.name ? `${a.name} <${a.email}>` : a.email;
}

export function displayName(a) {
  if (!a) return '';
  return a.name || a.email || '';
}

export function formatAddresses(list) {
  return (list || []).map(formatAddress).join(', ');
}

// Parse "Name <a@b>, c@d, "Last, First" <e@f>" into JMAP EmailAddress objects.
export function parseAddresses(text) {
  const out = [];
  let current = '';
  let quoted = false;
  let angle = false;
  for (const ch of String(text || '')) {
    if (ch === '"') quoted = !quoted;
    else if (ch === '<' && !quoted) angle = true;
    else if (ch === '>' && !quoted) angle = false;
    if ((ch === ',' || ch === ';') && !quoted && !angle) {
      out.push(current);
      current = '';
    } else {
      current += ch;
    }
  }
  out.push(current);
  const result = [];
  for (const part of out) {
    const item = part.trim();
    if (!item) continue;
    const m = item.match(/^(.*?)<\s*([^<>\s]+)\s*>\s*$/);
    if (m) {
      const name = m[1].trim().replace(/^"(.*)"$/, '$1').trim();
      result.push(name ? { name, email: m[2] } : { email: m[2] });
    } else {
      result.push({ email: item });
    }
  }
  return result;
}

export function validAddress(email) {
  return /^[^\s@<>",;]+@[^\s@<>",;]+$/.test(email || '');
}

const lower = (s) => String(s || '').toLowerCase();

export function subjectWithPrefix(prefix, subject) {
  const s = String(subject || '').trim();
  const re = new RegExp(`^${prefix}:`, 'i');
  return re.test(s) ? s : `${prefix}: ${s}`.trim();
}

function quote(text) {
  return String(text || '').replace(/\r\n/g, '\n').replace(/\n+$/, '').split('\n').map((l) => (l.startsWith('>') ? `>${l}` : `> ${l}`)).join('\n');
}

export function formatDate(iso, now = new Date()) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const sameDay = d.toDateString() === now.toDateString();
  if (sameDay) return d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
  const sameYear = d.getFullYear() === now.getFullYear();
  return d.toLocaleDateString(undefined, sameYear ? { month: 'short', day: 'numeric' } : { year: 'numeric', month: 'short', day: 'numeric' });
}

export function formatFullDate(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? '' : d.toLocaleString(undefined, { dateStyle: 'full', timeStyle: 'short' });
}

export function formatSize(n) {
  if (!Number.isFinite(n)) return '';
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(n < 10240 ? 1 : 0)} kB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

// The plain text of an email as fetched with fetchTextBodyValues / fetchHTMLBodyValues.
export function bodyText(email) {
  const values = email.bodyValues || {};
  const parts = (email.textBody || []).filter((p) => values[p.partId]);
  if (parts.length && parts.some((p) => p.type === 'text/plain')) {
    return parts.filter((p) => p.type === 'text/plain').map((p) => values[p.partId].value).join('\n');
  }
  const html = (email.htmlBody || []).map((p) => values[p.partId]?.value || '').join('\n');
  if (html) return htmlToText(html);
  return email.preview || '';
}

export function htmlToText(html) {
  return String(html)
    .replace(/<(style|script|head)[^>]*>[\s\S]*?<\/\1>/gi, '')
    .replace(/<br\s*\/?>/gi, '\n')
    .replace(/<\/(p|div|tr|li|h[1-6]|blockquote)>/gi, '\n')
    .replace(/<[^>]+>/g, '')
    .replace(/&nbsp;/g, ' ')
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&quot;/g, '"')
    .replace(/&#39;/g, "'")
    .replace(/&amp;/g, '&')
    .replace(/\n{3,}/g, '\n\n')
    .trim();
}

// The identity a reply should come from: the one addressed by the original, else the first.
export function pickIdentity(identities, email) {
  const addressed = [...(email?.to || []), ...(email?.cc || []), ...(email?.bcc || [])].map((a) => lower(a.email));
  for (const address of addressed) {
    const found = identities.find((i) => lower(i.email) === address);
    if (found) return found;
  }
  return identities[0] || null;
}

function withSignature(body, identity) {
  const sig = identity?.textSignature;
  return sig ? `${body}\n\n-- \n${sig}` : body;
}

// A draft for reply / reply-all / forward of `email`, as the compose form's fields.
export function makeDraft(kind, email, identities) {
  const identity = kind === 'new' ? identities[0] || null : pickIdentity(identities, email);
  const draft = {
    identityId: identity?.id || '',
    to: '', cc: '', bcc: '', subject: '', body: '',
    inReplyTo: null, references: null, attachments: [], replyToEmailId: null, forwardOfEmailId: null,
  };
  if (kind === 'new' || !email) {
    draft.body = withSignature('', identity);
    return draft;
  }
  const mine = new Set(identities.map((i) => lower(i.email)));
  const text = bodyText(email);
  const from = email.from || [];
  if (kind === 'forward') {
    draft.subject = subjectWithPrefix('Fwd', email.subject);
    const header = [
      '---------- Forwarded message ----------',
      `From: ${formatAddresses(email.from)}`,
      `Date: ${email.sentAt || email.receivedAt || ''}`,
      `Subject: ${email.subject || ''}`,
      `To: ${formatAddresses(email.to)}`,
      email.cc?.length ? `Cc: ${formatAddresses(email.cc)}` : null,
    ].filter((l) => l !== null);
    draft.forwardHeader = header.slice(1);
    draft.body = `${withSignature('', identity) || '\n'}\n\n${header.join('\n')}\n\n${text}`;
    draft.attachments = (email.attachments || []).map((a) => ({ blobId: a.blobId, name: a.name, type: a.type, size: a.size, disposition: 'attachment' }));
    draft.forwardOfEmailId = email.id;
    return draft;
  }
  draft.subject = subjectWithPrefix('Re', email.subject);
  const replyTo = email.replyTo?.length ? email.replyTo : from;
  let to = replyTo;
  // Replying to a message we sent goes back to its recipients.
  if (from.length && mine.has(lower(from[0].email)) && !email.replyTo?.length) to = email.to || [];
  let cc = [];
  if (kind === 'replyAll') {
    const seen = new Set(to.map((a) => lower(a.email)));
    for (const a of [...(email.to || []), ...(email.cc || [])]) {
      const key = lower(a.email);
      if (seen.has(key) || mine.has(key)) continue;
      seen.add(key);
      cc.push(a);
    }
  }
  draft.to = formatAddresses(to);
  draft.cc = formatAddresses(cc);
  const msgId = email.messageId?.[0];
  if (msgId) {
    draft.inReplyTo = [msgId];
    draft.references = [...(email.references || email.inReplyTo || []), msgId].filter((v, i, a) => a.indexOf(v) === i);
  }
  const who = displayName(from[0]) || 'someone';
  const when = email.sentAt || email.receivedAt;
  const intro = when ? `On ${new Date(when).toUTCString()}, ${who} wrote:` : `${who} wrote:`;
  draft.body = `${withSignature('', identity) || '\n'}\n\n${intro}\n${quote(text)}\n`;
  draft.intro = intro;
  draft.replyToEmailId = email.id;
  return draft;
}

// The JMAP Email object (RFC 8621 §4.6 create) for a compose form's fields.
export function draftToEmail(draft, identity, { draftsId, keywords = { $draft: true, $seen: true } }) {
  const email = {
    mailboxIds: { [draftsId]: true },
    keywords,
    from: identity ? [{ name: identity.name || '', email: identity.email }].map((a) => (a.name ? a : { email: a.email })) : [],
    to: parseAddresses(draft.to),
    cc: parseAddresses(draft.cc),
    bcc: parseAddresses(draft.bcc),
    subject: draft.subject || '',
    bodyValues: { body: { value: draft.body || '', charset: 'utf-8' } },
    textBody: [{ partId: 'body', type: 'text/plain' }],
    // With both, the server builds multipart/alternative (RFC 8621 §4.6): text first, HTML preferred.
    ...(draft.htmlBody ? { htmlBody: [{ partId: 'html', type: 'text/html' }] } : {}),
    attachments: (draft.attachments || []).map((a) => ({ blobId: a.blobId, type: a.type || 'application/octet-stream', name: a.name, disposition: 'attachment' })),
  };
  if (draft.htmlBody) email.bodyValues.html = { value: draft.htmlBody, charset: 'utf-8' };
  if (identity?.replyTo?.length) email.replyTo = identity.replyTo;
  if (draft.inReplyTo) email.inReplyTo = draft.inReplyTo;
  if (draft.references) email.references = draft.references;
  for (const key of ['cc', 'bcc', 'attachments']) if (!email[key].length) delete email[key];
  return email;
}

// The recipients an EmailSubmission's envelope needs.
export function envelopeFor(email, identity) {
  const rcpt = [...(email.to || []), ...(email.cc || []), ...(email.bcc || [])].map((a) => ({ email: a.email }));
  return { mailFrom: { email: identity.email }, rcptTo: rcpt };
}

// Mailboxes as a tree, ordered as RFC 8621 §2 suggests (role first, then sortOrder, then name).
const ROLE_ORDER = ['inbox', 'drafts', 'sent', 'archive', 'junk', 'trash'];
export function mailboxTree(mailboxes) {
  const byParent = new Map();
  for (const m of mailboxes) {
    const key = m.parentId || '';
    if (!byParent.has(key)) byParent.set(key, []);
    byParent.get(key).push(m);
  }
  const rank = (m) => {
    const i = ROLE_ORDER.indexOf(m.role);
    return i === -1 ? ROLE_ORDER.length : i;
  };
  const out = [];
  const walk = (parent, depth) => {
    const children = (byParent.get(parent) || []).slice().sort((a, b) =>
      (parent === '' ? rank(a) - rank(b) : 0) || (a.sortOrder || 0) - (b.sortOrder || 0) || a.name.localeCompare(b.name));
    for (const m of children) {
      out.push({ ...m, depth });
      walk(m.id, depth + 1);
    }
  };
  walk('', 0);
  return out;
}

export function findRole(mailboxes, role) {
  return mailboxes.find((m) => m.role === role) || null;
}

// A sparse, windowed view of an Email/query result (RFC 8620 §5.5 position/limit). Rows are fetched in
// pages of `pageSize` as the virtual list scrolls; the view never holds more than the pages it was asked for.
export class QueryWindow {
  constructor(pageSize = 100) {
    this.pageSize = pageSize;
    this.ids = [];
    this.total = null;
    this.queryState = null;
    this.pages = new Map(); // page number -> 'loading' | 'loaded'
  }

  reset() {
    this.ids = [];
    this.total = null;
    this.queryState = null;
    this.pages.clear();
  }

  pagesFor(first, last) {
    const want = [];
    const lo = Math.max(0, Math.floor(first / this.pageSize));
    const hi = Math.floor(Math.max(first, last) / this.pageSize);
    for (let p = lo; p <= hi; p++) {
      if (p > 0 && this.total !== null && p * this.pageSize >= this.total) break; // page 0 always: it finds the total
      if (!this.pages.has(p)) want.push(p);
    }
    return want;
  }

  store(position, ids, total, queryState) {
    if (this.queryState && queryState && queryState !== this.queryState) {
      // The result changed under us: keep only this answer.
      this.ids = [];
      this.pages.clear();
    }
    this.queryState = queryState || this.queryState;
    if (Number.isFinite(total)) this.total = total;
    for (let i = 0; i < ids.length; i++) this.ids[position + i] = ids[i];
    this.pages.set(Math.floor(position / this.pageSize), 'loaded');
  }

  idAt(i) {
    return this.ids[i];
  }

  indexOf(id) {
    return this.ids.indexOf(id);
  }
}
