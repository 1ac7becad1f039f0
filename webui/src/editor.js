// What the compose editor sends: its HTML cut down by DOMPurify to a small set of formatting tags,
// the plain-text alternative made from that same cleaned HTML, and the HTML a reply or forward starts
// with (the original, cleaned the same way, inside a quote).
//
// The editor is part of the webmail page itself (not a sandboxed frame), so whatever enters it (typed,
// pasted, or quoted from a received message) goes through `cleanHTML` first: no scripts, handlers,
// styles, forms or frames, links only to http(s)/mailto, images only as data: URLs (a remote image
// would be fetched by this page, which is what the reader's privacy rules forbid). What is sent is
// cleaned once more at send time, so the message never carries more than this list allows.

import DOMPurify from 'dompurify';

const ALLOWED_TAGS = ['p', 'br', 'div', 'span', 'b', 'strong', 'i', 'em', 'u', 's', 'strike', 'del', 'sub', 'sup',
  'a', 'ul', 'ol', 'li', 'blockquote', 'pre', 'code', 'h1', 'h2', 'h3', 'h4', 'hr',
  'table', 'thead', 'tbody', 'tr', 'td', 'th', 'img'];
const ALLOWED_ATTR = ['href', 'title', 'alt', 'src', 'colspan', 'rowspan', 'type', 'dir'];
const CONFIG = {
  ALLOWED_TAGS,
  ALLOWED_ATTR,
  ALLOW_DATA_ATTR: false,
  ALLOW_ARIA_ATTR: false,
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|data:image\/(?:png|gif|jpeg|webp);)/i,
  KEEP_CONTENT: true,
};

let cleaning = false;
let hooked = false;

function installHooks() {
  if (hooked) return;
  hooked = true;
  DOMPurify.addHook('afterSanitizeAttributes', (node) => {
    if (!cleaning) return;
    // A remote (or cid:) image: keep its description, never its address (removed below).
    if (node.tagName === 'IMG' && !/^data:image\//i.test(node.getAttribute('src') || '')) node.removeAttribute('src');
    if (node.tagName === 'A' && /^data:/i.test(node.getAttribute('href') || '')) node.removeAttribute('href');
    if (node.tagName === 'BLOCKQUOTE' && node.getAttribute('type') !== 'cite') node.removeAttribute('type');
    if (node.hasAttribute?.('type') && node.tagName !== 'BLOCKQUOTE' && node.tagName !== 'OL') node.removeAttribute('type');
  });
}

// A fragment of HTML reduced to the formatting the editor allows, as HTML text.
export function cleanHTML(html) {
  installHooks();
  cleaning = true;
  let fragment;
  try {
    fragment = DOMPurify.sanitize(String(html ?? ''), { ...CONFIG, RETURN_DOM_FRAGMENT: true });
  } finally {
    cleaning = false;
  }
  for (const img of fragment.querySelectorAll('img:not([src])')) {
    const alt = img.getAttribute('alt');
    img.replaceWith(img.ownerDocument.createTextNode(alt ? `[${alt}]` : ''));
  }
  const box = fragment.ownerDocument.createElement('div');
  box.append(fragment);
  return box.innerHTML;
}

export function escapeHTML(s) {
  return String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

// Plain text as editor HTML: one <div> per line (what Chromium's contenteditable makes), "> " lines
// as nested quotes.
export function textToEditorHTML(text) {
  const lines = String(text ?? '').replace(/\r\n/g, '\n').split('\n');
  const out = [];
  let i = 0;
  while (i < lines.length) {
    if (/^>/.test(lines[i])) {
      const quoted = [];
      while (i < lines.length && /^>/.test(lines[i])) quoted.push(lines[i++].replace(/^> ?/, ''));
      out.push(`<blockquote type="cite">${textToEditorHTML(quoted.join('\n'))}</blockquote>`);
    } else {
      const line = lines[i++];
      out.push(line ? `<div>${escapeHTML(line)}</div>` : '<div><br></div>');
    }
  }
  return out.join('');
}

const BLOCK = new Set(['P', 'DIV', 'H1', 'H2', 'H3', 'H4', 'UL', 'OL', 'LI', 'BLOCKQUOTE', 'PRE', 'TABLE', 'TR', 'HR']);

// The text/plain alternative of editor HTML (RFC 2046 §5.1.4: the same content, less rich): quotes
// as "> " lines (RFC 3676 style), list items with "- " or "1. ", links as "text <url>".
export function htmlToPlain(html) {
  const doc = new DOMParser().parseFromString(`<!doctype html><body>${cleanHTML(html)}`, 'text/html');
  const lines = [];
  let line = '';
  const flush = (force = false) => {
    if (line || force) lines.push(line);
    line = '';
  };
  const walk = (node, pre) => {
    if (node.nodeType === 3) {
      let t = node.nodeValue;
      t = t.replace(/\u00a0/g, ' ');
      if (!pre) t = t.replace(/[\t\n\r ]+/g, ' ');
      if (pre) {
        const parts = t.split('\n');
        parts.forEach((p, j) => { if (j) flush(true); line += p; });
      } else {
        line += line === '' ? t.replace(/^ /, '') : t;
      }
      return;
    }
    if (node.nodeType !== 1) return;
    const tag = node.tagName;
    if (tag === 'BR') { flush(true); return; }
    if (tag === 'HR') { flush(); lines.push('----'); return; }
    if (tag === 'IMG') { if (node.alt) line += `[${node.alt}]`; return; }
    if (tag === 'BLOCKQUOTE') {
      flush();
      const inner = htmlToPlain(node.innerHTML);
      for (const l of inner.split('\n')) lines.push(l.startsWith('>') ? `>${l}` : l ? `> ${l}` : '>');
      return;
    }
    const block = BLOCK.has(tag);
    if (block) flush();
    if (tag === 'LI') {
      const parent = node.parentElement;
      if (parent?.tagName === 'OL') line += `${[...parent.children].indexOf(node) + 1}. `;
      else line += '- ';
    }
    for (const child of node.childNodes) walk(child, pre || tag === 'PRE');
    if (tag === 'A') {
      const href = node.getAttribute('href');
      const text = node.textContent.trim();
      if (href && href !== text && `mailto:${text}` !== href) line += ` <${href}>`;
    }
    if (tag === 'TD' || tag === 'TH') line += '\t';
    if (block) {
      flush();
      if (tag === 'P') lines.push('');
    }
  };
  for (const child of doc.body.childNodes) walk(child, false);
  flush();
  // Trailing spaces go, except on the "-- " signature separator (RFC 3676 §4.3).
  const text = lines.map((l) => (l === '-- ' ? l : l.replace(/[ \t]+$/, ''))).join('\n');
  return text.replace(/\n{3,}/g, '\n\n').replace(/^\n+/, '').replace(/\n+$/, '');
}

// The HTML of a received message, as it may be quoted: the HTML body when there is one, else the
// text; cleaned either way.
export function quotableHTML(email) {
  const values = email?.bodyValues || {};
  const htmlPart = (email?.htmlBody || []).find((p) => p.type === 'text/html' && values[p.partId]);
  if (htmlPart) {
    const doc = new DOMParser().parseFromString(cleanHTML(values[htmlPart.partId].value), 'text/html');
    return doc.body.innerHTML;
  }
  const textParts = (email?.textBody || []).filter((p) => p.type === 'text/plain' && values[p.partId]);
  const text = textParts.length ? textParts.map((p) => values[p.partId].value).join('\n') : email?.preview || '';
  return textToEditorHTML(text.replace(/\n+$/, ''));
}

export function signatureHTML(identity) {
  if (identity?.htmlSignature) return `<div>-- </div>${cleanHTML(identity.htmlSignature)}`;
  if (identity?.textSignature) return `<div>${['-- ', ...identity.textSignature.split('\n')].map((l) => (l ? `<div>${escapeHTML(l)}</div>` : '<div><br></div>')).join('')}</div>`;
  return '';
}

// Where the editor starts: an empty line for the cursor, the signature, then (for a reply or forward)
// the original.
export function startHTML(kind, email, identity, { intro = '', header = [] } = {}) {
  const signature = signatureHTML(identity);
  const top = `<div><br></div>${signature ? `<div><br></div>${signature}` : ''}`;
  if (kind === 'reply' || kind === 'replyAll') {
    return `${top}<div><br></div><div>${escapeHTML(intro)}</div><blockquote type="cite">${quotableHTML(email)}</blockquote>`;
  }
  if (kind === 'forward') {
    const head = ['---------- Forwarded message ----------', ...header].map((l) => `<div>${escapeHTML(l)}</div>`).join('');
    return `${top}<div><br></div>${head}<div><br></div>${quotableHTML(email)}`;
  }
  return top;
}

// The text/html body part sent: the cleaned editor HTML in a small document, every quote marked
// type="cite" and drawn as mail programs draw it.
export function messageHTML(editorHTML) {
  const doc = new DOMParser().parseFromString(`<!doctype html><body>${cleanHTML(editorHTML)}`, 'text/html');
  for (const q of doc.querySelectorAll('blockquote')) {
    q.setAttribute('type', 'cite');
    q.setAttribute('style', 'margin:0 0 0 .8ex;border-left:2px solid #c9d2e0;padding-left:1ex');
  }
  return `<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>${doc.body.innerHTML}</body></html>`;
}
