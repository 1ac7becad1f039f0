import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  QueryWindow, bodyText, draftToEmail, envelopeFor, htmlToText, mailboxTree, makeDraft, parseAddresses, subjectWithPrefix,
} from '../src/mail.js';
import { keyAction } from '../src/keys.js';

const ME = [{ id: 'i1', email: 'alice@example.org', name: 'Alice', textSignature: 'Alice\nexample.org' },
  { id: 'i2', email: 'sales@example.org', name: 'Sales' }];
const ORIGINAL = {
  id: 'e1', subject: 'Lunch?', messageId: ['m1@remote.example'], references: ['m0@remote.example'],
  from: [{ name: 'Bob', email: 'bob@remote.example' }],
  to: [{ email: 'sales@example.org' }, { name: 'Carol', email: 'carol@remote.example' }],
  cc: [{ email: 'alice@example.org' }, { email: 'dave@remote.example' }],
  sentAt: '2026-11-30T10:00:00Z', receivedAt: '2026-11-30T10:00:05Z',
  textBody: [{ partId: '1', type: 'text/plain' }], bodyValues: { 1: { value: 'Noon?\n> earlier' } },
  attachments: [{ blobId: 'b1', name: 'menu.pdf', type: 'application/pdf', size: 10 }],
};

test('addresses: names, quotes, commas inside quotes, bare addresses', () => {
  assert.deepEqual(parseAddresses('Bob <bob@x.org>, "Last, First" <lf@x.org>; carol@x.org ,'), [
    { name: 'Bob', email: 'bob@x.org' }, { name: 'Last, First', email: 'lf@x.org' }, { email: 'carol@x.org' }]);
  assert.deepEqual(parseAddresses(''), []);
});

test('subject prefixes are not doubled', () => {
  assert.equal(subjectWithPrefix('Re', 'Lunch?'), 'Re: Lunch?');
  assert.equal(subjectWithPrefix('Re', 'RE: Lunch?'), 'RE: Lunch?');
  assert.equal(subjectWithPrefix('Fwd', ''), 'Fwd:');
});

test('reply: to the sender, from the addressed identity, threaded, quoted, with signature', () => {
  const d = makeDraft('reply', ORIGINAL, ME);
  assert.equal(d.to, 'Bob <bob@remote.example>');
  assert.equal(d.cc, '');
  assert.equal(d.identityId, 'i2', 'the identity the message was sent to');
  assert.equal(d.subject, 'Re: Lunch?');
  assert.deepEqual(d.inReplyTo, ['m1@remote.example']);
  assert.deepEqual(d.references, ['m0@remote.example', 'm1@remote.example']);
  assert.match(d.body, /Bob wrote:\n> Noon\?\n>> earlier/);
});

test('reply all: everyone but ourselves, nobody twice', () => {
  const d = makeDraft('replyAll', ORIGINAL, ME);
  assert.equal(d.to, 'Bob <bob@remote.example>');
  assert.equal(d.cc, 'Carol <carol@remote.example>, dave@remote.example');
});

test('reply to a message we sent goes to its recipients', () => {
  const d = makeDraft('reply', { ...ORIGINAL, from: [{ email: 'alice@example.org' }], to: [{ email: 'bob@remote.example' }] }, ME);
  assert.equal(d.to, 'bob@remote.example');
});

test('forward: keeps attachments and the original header block', () => {
  const d = makeDraft('forward', ORIGINAL, ME);
  assert.equal(d.subject, 'Fwd: Lunch?');
  assert.equal(d.to, '');
  assert.equal(d.attachments[0].blobId, 'b1');
  assert.match(d.body, /Forwarded message[\s\S]*From: Bob <bob@remote.example>[\s\S]*Noon\?/);
});

test('new message carries the signature after the RFC 3676 delimiter', () => {
  assert.equal(makeDraft('new', null, ME).body, '\n\n-- \nAlice\nexample.org');
});

test('draft to a JMAP Email create, and its envelope', () => {
  const d = { ...makeDraft('replyAll', ORIGINAL, ME), bcc: 'eve@x.org' };
  const e = draftToEmail(d, ME[1], { draftsId: 'D' });
  assert.deepEqual(e.mailboxIds, { D: true });
  assert.deepEqual(e.keywords, { $draft: true, $seen: true });
  assert.deepEqual(e.from, [{ name: 'Sales', email: 'sales@example.org' }]);
  assert.deepEqual(e.textBody, [{ partId: 'body', type: 'text/plain' }]);
  assert.equal(e.bodyValues.body.value, d.body);
  assert.deepEqual(e.inReplyTo, ['m1@remote.example']);
  assert.equal(e.attachments, undefined);
  assert.deepEqual(envelopeFor(e, ME[1]).rcptTo.map((r) => r.email), ['bob@remote.example', 'carol@remote.example', 'dave@remote.example', 'eve@x.org']);
});

test('body text: plain part first, else HTML turned to text', () => {
  assert.equal(bodyText(ORIGINAL), 'Noon?\n> earlier');
  const html = { htmlBody: [{ partId: 'h', type: 'text/html' }], bodyValues: { h: { value: '<p>Hi&nbsp;<b>there</b></p><style>x{}</style><br>bye &amp; more' } } };
  assert.equal(bodyText(html), 'Hi there\n\nbye & more');
  assert.equal(htmlToText('<script>alert(1)</script>ok'), 'ok');
});

test('mailbox tree: roles first, children under parents', () => {
  const tree = mailboxTree([
    { id: 'x', name: 'Projects' }, { id: 't', name: 'Trash', role: 'trash' }, { id: 'i', name: 'Inbox', role: 'inbox' },
    { id: 'c', name: 'Child', parentId: 'x' }, { id: 's', name: 'Sent', role: 'sent' },
  ]);
  assert.deepEqual(tree.map((m) => `${m.depth}${m.name}`), ['0Inbox', '0Sent', '0Trash', '0Projects', '1Child']);
});

test('query window: pages are fetched once, positions are kept, a new queryState drops the old', () => {
  const w = new QueryWindow(100);
  assert.deepEqual(w.pagesFor(0, 40), [0]);
  w.store(0, Array.from({ length: 100 }, (_, i) => `e${i}`), 10000, 'q1');
  assert.deepEqual(w.pagesFor(50, 250), [1, 2]);
  w.pages.set(1, 'loading');
  assert.deepEqual(w.pagesFor(50, 250), [2]);
  w.store(9900, ['z'], 10000, 'q1');
  assert.equal(w.idAt(9900), 'z');
  assert.equal(w.idAt(5), 'e5');
  assert.deepEqual(w.pagesFor(9990, 10500), []);
  const empty = new QueryWindow(100);
  empty.total = 0;
  assert.deepEqual(empty.pagesFor(0, 30), [0], 'a list known to be empty is still asked again');
  w.store(200, ['n'], 10001, 'q2');
  assert.equal(w.idAt(5), undefined);
  assert.equal(w.total, 10001);
});

test('keyboard: single keys, g-sequences, nothing while typing or composing', () => {
  const ev = (key, extra = {}) => ({ key, target: { tagName: 'DIV' }, ...extra });
  assert.equal(keyAction(ev('j')), 'next');
  assert.equal(keyAction(ev('#')), 'delete');
  assert.equal(keyAction(ev('r', { ctrlKey: true })), null);
  assert.equal(keyAction(ev('j', { target: { tagName: 'INPUT' } })), null);
  assert.equal(keyAction(ev('j'), { composing: true }), null);
  assert.equal(keyAction(ev('j'), { modal: true }), null);
  assert.equal(keyAction(ev('Escape'), { modal: true }), 'close');
  assert.equal(keyAction(ev('g'), { now: 1000 }), null);
  assert.equal(keyAction(ev('i'), { now: 1500 }), 'goInbox');
  assert.equal(keyAction(ev('g'), { now: 5000 }), null);
  assert.equal(keyAction(ev('s'), { now: 9000 }), 'flag', 'g then a pause then s is just s');
});
