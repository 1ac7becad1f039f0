// Message HTML for display: DOMPurify, then remote references held back until the user allows them,
// then one document for a sandboxed iframe (no allow-scripts) under its own Content-Security-Policy.
//
// Three layers, each enough on its own for scripts: DOMPurify removes scripts, handlers and
// javascript: URLs; the iframe sandbox runs no script at all; the frame's CSP has no script-src.
// For remote fetches: this module rewrites every remote URL it finds (img src/srcset, background,
// CSS url() and @import), and the frame's CSP allows images only from data: until the user says yes.

import DOMPurify from 'dompurify';

const REMOTE = /^\s*(https?:)?\/\//i;
const URL_ATTRS = ['src', 'srcset', 'background', 'poster', 'lowsrc', 'dynsrc', 'longdesc', 'data', 'xlink:href'];

export function isRemote(url) {
  return REMOTE.test(String(url || ''));
}

// Rewrite url(...) and @import in CSS text: remote ones become blocked (or stay, when allowed);
// cid: ones become the inline part's data: URL.
export function rewriteCSS(css, { allowRemote, cid, onBlocked }) {
  let out = String(css).replace(/@import\s+[^;]+;?/gi, () => { onBlocked(); return ''; });
  out = out.replace(/url\(\s*(['"]?)(.*?)\1\s*\)/gi, (whole, _q, target) => {
    const t = target.trim();
    if (/^cid:/i.test(t)) {
      const data = cid(t.slice(4));
      return data ? `url("${data}")` : 'none';
    }
    if (/^data:image\//i.test(t)) return whole;
    if (isRemote(t)) {
      if (allowRemote && /^\s*https?:/i.test(t)) return whole;
      onBlocked();
      return 'none';
    }
    return 'none';
  });
  // Old IE expression() and behaviours: never.
  out = out.replace(/expression\s*\(|behavior\s*:|-moz-binding/gi, 'x-blocked(');
  return out;
}

function frameCSP(allowRemote) {
  const img = allowRemote ? "data: https: http:" : 'data:';
  return `default-src 'none'; style-src 'unsafe-inline'; img-src ${img}; font-src data:; media-src 'none'; form-action 'none'; base-uri 'none'`;
}

const FRAME_STYLE = `
  :root { color-scheme: light; }
  html, body { margin: 0; padding: 0; }
  body { padding: 16px 20px; font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif; color: #1d2430; word-wrap: break-word; overflow-wrap: anywhere; }
  pre.peerage-text { white-space: pre-wrap; font: 13.5px/1.5 ui-monospace, "DejaVu Sans Mono", Menlo, monospace; margin: 0; }
  blockquote, .peerage-quote { margin: 0 0 0 .4em; padding-left: .8em; border-left: 3px solid #c9d2e0; color: #4a5568; }
  img { max-width: 100%; height: auto; }
  a { color: #1a5fd0; }
  table { max-width: 100%; }
`;

function escapeHTML(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

// Plain text as HTML: escaped, links made clickable, quoted lines marked.
export function textToHTML(text) {
  const lines = String(text || '').replace(/\r\n/g, '\n').split('\n');
  const out = [];
  let inQuote = false;
  for (const line of lines) {
    const quoted = /^>/.test(line);
    if (quoted && !inQuote) out.push('<div class="peerage-quote">');
    if (!quoted && inQuote) out.push('</div>');
    inQuote = quoted;
    const shown = quoted ? line.replace(/^>\s?/, '') : line;
    out.push(escapeHTML(shown).replace(/\b(https?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]])/g, '<a href="$1">$1</a>') + '\n');
  }
  if (inQuote) out.push('</div>');
  return `<pre class="peerage-text">${out.join('')}</pre>`;
}

let hooked = false;
let current = null; // options of the sanitize() call in progress (DOMPurify hooks are global)

function installHooks() {
  if (hooked) return;
  hooked = true;
  DOMPurify.addHook('uponSanitizeElement', (node, data) => {
    if (data.tagName === 'style' && current) {
      node.textContent = rewriteCSS(node.textContent || '', current);
    }
  });
  DOMPurify.addHook('afterSanitizeAttributes', (node) => {
    if (!current) return;
    if (node.hasAttribute?.('style')) {
      node.setAttribute('style', rewriteCSS(node.getAttribute('style'), current));
    }
    // href fetches on SVG <image>/<use>/<feImage>; on links it is navigation, handled below.
    const attrs = node.tagName === 'A' || node.tagName === 'AREA' ? URL_ATTRS : [...URL_ATTRS, 'href'];
    for (const attr of attrs) {
      if (!node.hasAttribute?.(attr)) continue;
      const value = node.getAttribute(attr);
      if (/^\s*cid:/i.test(value)) {
        const data = current.cid(value.trim().slice(4));
        if (data) node.setAttribute(attr, data);
        else node.removeAttribute(attr);
        continue;
      }
      if (attr === 'srcset' ? value.split(',').some((s) => isRemote(s.trim())) : isRemote(value)) {
        if (current.allowRemote && /^\s*https?:/i.test(value.trim())) continue;
        node.removeAttribute(attr);
        node.setAttribute(`data-blocked-${attr.replace(':', '-')}`, value);
        current.onBlocked();
      } else if (!/^\s*data:image\//i.test(value) && attr !== 'srcset' && !(attr === 'href' && value.trim().startsWith('#'))) {
        node.removeAttribute(attr);
      }
    }
    if (node.tagName === 'A' && node.hasAttribute('href')) {
      node.setAttribute('target', '_blank');
      node.setAttribute('rel', 'noopener noreferrer');
    }
  });
}

const PURIFY_CONFIG = {
  WHOLE_DOCUMENT: true,
  RETURN_DOM: true,
  FORBID_TAGS: ['form', 'input', 'button', 'select', 'option', 'textarea', 'meta', 'base', 'link', 'frame', 'frameset', 'iframe', 'object', 'embed', 'audio', 'video', 'source', 'track', 'portal', 'dialog'],
  FORBID_ATTR: ['action', 'formaction', 'ping', 'autofocus', 'tabindex', 'contenteditable'],
  ALLOW_DATA_ATTR: false,
  ALLOWED_URI_REGEXP: /^(?:(?:https?|mailto|cid|data):|[^a-z]|[a-z+.-]+(?:[^a-z+.\-:]|$))/i,
};

// Returns { doc, blocked }: `doc` is the whole srcdoc for the frame, `blocked` how many remote
// references were held back.
export function buildFrame({ html, text }, { allowRemote = false, cid = () => null } = {}) {
  installHooks();
  let blocked = 0;
  current = { allowRemote, cid, onBlocked: () => { blocked++; } };
  let styles = '';
  let body = '';
  try {
    const source = html != null ? String(html) : textToHTML(text);
    const root = DOMPurify.sanitize(source, PURIFY_CONFIG);
    const doc = root.ownerDocument;
    const htmlEl = root.nodeName === 'HTML' ? root : doc.documentElement;
    const head = htmlEl.querySelector('head');
    if (head) for (const s of head.querySelectorAll('style')) styles += `<style>${s.textContent}</style>`;
    const bodyEl = htmlEl.querySelector('body');
    body = bodyEl ? bodyEl.innerHTML : htmlEl.innerHTML;
  } finally {
    current = null;
  }
  const doc = `<!doctype html><html><head><meta charset="utf-8">`
    + `<meta http-equiv="Content-Security-Policy" content="${frameCSP(allowRemote)}">`
    + `<meta name="referrer" content="no-referrer">`
    + `<style>${FRAME_STYLE}</style>${styles}</head><body>${body}</body></html>`;
  return { doc, blocked };
}
