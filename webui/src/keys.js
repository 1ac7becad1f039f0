// Keyboard shortcuts, in the shape Gmail, Roundcube and Mox users know. A pure function of the key event
// and the screen's state, so it is unit-tested without a browser.

export const SHORTCUTS = [
  ['j ↓', 'Next conversation'],
  ['k ↑', 'Previous conversation'],
  ['o Enter', 'Open'],
  ['Esc', 'Close the message or dialog'],
  ['c', 'Compose'],
  ['r', 'Reply'],
  ['a', 'Reply all'],
  ['f', 'Forward'],
  ['e', 'Archive'],
  ['m', 'Move to folder'],
  ['# Del', 'Delete'],
  ['s', 'Flag / unflag'],
  ['u', 'Mark read / unread'],
  ['x', 'Select'],
  ['/', 'Search'],
  ['g i', 'Go to Inbox'],
  ['g s', 'Go to Sent'],
  ['g d', 'Go to Drafts'],
  ['g t', 'Go to Trash'],
  ['g a', 'Go to Archive'],
  ['Ctrl+Enter', 'Send (while composing)'],
  ['?', 'This help'],
];

const SINGLE = {
  j: 'next', ArrowDown: 'next', k: 'prev', ArrowUp: 'prev', o: 'open', Enter: 'open', Escape: 'close',
  c: 'compose', r: 'reply', a: 'replyAll', f: 'forward', e: 'archive', m: 'move', '#': 'delete', Delete: 'delete',
  s: 'flag', u: 'seen', x: 'check', '/': 'search', '?': 'help',
};
const AFTER_G = { i: 'goInbox', s: 'goSent', d: 'goDrafts', t: 'goTrash', a: 'goArchive' };

let pendingG = 0;

export function keyAction(ev, { composing = false, modal = false, now = Date.now() } = {}) {
  const t = ev.target;
  const tag = (t?.tagName || '').toLowerCase();
  const typing = tag === 'input' || tag === 'textarea' || tag === 'select' || t?.isContentEditable;
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return null;
  if (typing || composing) return null; // the compose form handles its own Esc and Ctrl+Enter
  if (modal) return ev.key === 'Escape' ? 'close' : null;
  if (pendingG && now - pendingG < 1500) {
    pendingG = 0;
    return AFTER_G[ev.key] || null;
  }
  pendingG = 0;
  if (ev.key === 'g') {
    pendingG = now;
    return null;
  }
  return SINGLE[ev.key] || null;
}
