// The JMAP client against a small in-process fake of the RFC 8620 API (a fetch function, no network).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Client, JMAPError, NotLoggedIn, expandTemplate } from '../src/jmap.js';

const SESSION = {
  capabilities: { 'urn:ietf:params:jmap:core': { maxCallsInRequest: 4 }, 'urn:ietf:params:jmap:mail': {}, 'urn:ietf:params:jmap:submission': {} },
  accounts: { A1: { name: 'alice@example.org' } },
  primaryAccounts: { 'urn:ietf:params:jmap:mail': 'A1' },
  apiUrl: '/jmap/api', downloadUrl: '/jmap/download/{accountId}/{blobId}/{name}?type={type}',
  uploadUrl: '/jmap/upload/{accountId}/', eventSourceUrl: '/jmap/eventsource?types={types}&closeafter={closeafter}&ping={ping}',
  state: 's1',
};

function fakeServer({ loggedIn = true, methods = {} } = {}) {
  const requests = [];
  const fetch = async (url, init = {}) => {
    const path = new URL(url).pathname;
    const json = (status, body) => ({ ok: status < 300, status, json: async () => body });
    if (path === '/auth/session') return loggedIn ? json(200, { account: 'alice@example.org', csrf: 'tok' }) : json(401, {});
    if (path === '/.well-known/jmap') return json(200, SESSION);
    if (path === '/jmap/api') {
      const body = JSON.parse(init.body);
      requests.push({ headers: init.headers, body });
      const results = new Map();
      const out = [];
      for (const [name, args, id] of body.methodCalls) {
        // RFC 8620 §3.7 back-references, enough of JSON Pointer for the client's use.
        const resolved = {};
        let bad = null;
        for (const [k, v] of Object.entries(args)) {
          if (k.startsWith('#')) {
            const prev = results.get(v.resultOf);
            if (!prev || prev[0] !== v.name) { bad = 'invalidResultReference'; break; }
            const parts = v.path.split('/').slice(1);
            let cur = [prev[1]];
            for (const p of parts) cur = p === '*' ? cur.flatMap((x) => x) : cur.map((x) => x[p]);
            resolved[k.slice(1)] = cur.flat();
          } else resolved[k] = v;
        }
        const handler = methods[name];
        const res = bad ? ['error', { type: bad }, id] : handler ? [name, handler(resolved), id] : ['error', { type: 'unknownMethod' }, id];
        results.set(id, res);
        out.push(res);
      }
      return json(200, { methodResponses: out, sessionState: 's1' });
    }
    if (path.startsWith('/jmap/upload/')) return json(201, { accountId: 'A1', blobId: 'B9', type: init.headers['Content-Type'], size: 3 });
    return json(404, {});
  };
  return { fetch, requests };
}

test('connect reads the login, the CSRF token and the mail account', async () => {
  const { fetch } = fakeServer();
  const c = new Client({ base: 'https://mail.example.org/mail/', fetch });
  await c.connect();
  assert.equal(c.login, 'alice@example.org');
  assert.equal(c.csrf, 'tok');
  assert.equal(c.accountId, 'A1');
  assert.equal(c.maxCallsInRequest, 4);
});

test('not logged in is its own error, so the app can go to /login', async () => {
  const { fetch } = fakeServer({ loggedIn: false });
  const c = new Client({ base: 'https://mail.example.org/', fetch });
  await assert.rejects(c.connect(), NotLoggedIn);
});

test('calls in one tick go in one request, with the CSRF header and back-references', async () => {
  const { fetch, requests } = fakeServer({ methods: {
    'Email/query': () => ({ ids: ['e1', 'e2'], position: 0, total: 2, queryState: 'q1' }),
    'Email/get': (a) => ({ state: 'x', list: a.ids.map((id) => ({ id, threadId: `t${id}` })), notFound: [] }),
    'Thread/get': (a) => ({ state: 'y', list: a.ids.map((id) => ({ id, emailIds: [id] })) }),
  } });
  const c = new Client({ base: 'https://h/', fetch });
  await c.connect();
  const [q, g, t] = await c.batch([
    ['Email/query', { filter: { inMailbox: 'm1' } }, 'q'],
    ['Email/get', { '#ids': { resultOf: 'q', name: 'Email/query', path: '/ids' } }, 'g'],
    ['Thread/get', { '#ids': { resultOf: 'g', name: 'Email/get', path: '/list/*/threadId' } }, 't'],
  ]);
  assert.equal(requests.length, 1);
  assert.equal(requests[0].headers['X-CSRF-Token'], 'tok');
  assert.deepEqual(requests[0].body.methodCalls[0][1].accountId, 'A1');
  assert.ok(requests[0].body.using.includes('urn:ietf:params:jmap:mail'));
  assert.ok(!requests[0].body.using.includes('urn:ietf:params:jmap:vacationresponse'), 'only capabilities the server has');
  assert.deepEqual(q.ids, ['e1', 'e2']);
  assert.deepEqual(g.list.map((e) => e.id), ['e1', 'e2']);
  assert.deepEqual(t.list.map((x) => x.id), ['te1', 'te2']);
});

test('more calls than maxCallsInRequest are split into several requests', async () => {
  const { fetch, requests } = fakeServer({ methods: { 'Mailbox/get': () => ({ list: [] }) } });
  const c = new Client({ base: 'https://h/', fetch });
  await c.connect();
  await Promise.all(Array.from({ length: 9 }, () => c.call('Mailbox/get', {})));
  assert.deepEqual(requests.map((r) => r.body.methodCalls.length), [4, 4, 1]);
});

test('an error response rejects only its own call, with the RFC 8620 type', async () => {
  const { fetch } = fakeServer({ methods: { 'Mailbox/get': () => ({ list: [1] }) } });
  const c = new Client({ base: 'https://h/', fetch });
  await c.connect();
  const good = c.call('Mailbox/get', {});
  const bad = c.call('Nope/get', {});
  assert.deepEqual((await good).list, [1]);
  await assert.rejects(bad, (err) => err instanceof JMAPError && err.type === 'unknownMethod');
});

test('a request-level problem (RFC 8620 §3.6.1) rejects every call in it', async () => {
  const fetch = async (url) => {
    const path = new URL(url).pathname;
    if (path === '/auth/session') return { ok: true, status: 200, json: async () => ({ account: 'a@b', csrf: 't' }) };
    if (path === '/.well-known/jmap') return { ok: true, status: 200, json: async () => SESSION };
    return { ok: false, status: 400, json: async () => ({ type: 'urn:ietf:params:jmap:error:limit', limit: 'maxSizeRequest', status: 400, detail: 'too big' }) };
  };
  const c = new Client({ base: 'https://h/', fetch });
  await c.connect();
  await assert.rejects(c.call('Mailbox/get', {}), (err) => err.type === 'urn:ietf:params:jmap:error:limit');
});

test('a 401 from the API ends the session in the app', async () => {
  let loggedOut = false;
  const fetch = async (url) => {
    const path = new URL(url).pathname;
    if (path === '/auth/session') return { ok: true, status: 200, json: async () => ({ account: 'a@b', csrf: 't' }) };
    if (path === '/.well-known/jmap') return { ok: true, status: 200, json: async () => SESSION };
    return { ok: false, status: 401, json: async () => ({}) };
  };
  const c = new Client({ base: 'https://h/', fetch });
  c.onLoggedOut = () => { loggedOut = true; };
  await c.connect();
  await assert.rejects(c.call('Mailbox/get', {}), NotLoggedIn);
  assert.ok(loggedOut);
});

test('URL templates: download, upload and the event source', async () => {
  const { fetch } = fakeServer();
  const c = new Client({ base: 'https://h/', fetch });
  await c.connect();
  assert.equal(c.downloadUrl('B 1', 'a b.pdf', 'application/pdf'), 'https://h/jmap/download/A1/B%201/a%20b.pdf?type=application%2Fpdf');
  assert.equal(expandTemplate(SESSION.eventSourceUrl, { types: '*', closeafter: 'no', ping: '30' }), '/jmap/eventsource?types=*&closeafter=no&ping=30'.replace('*', '*'));
  const up = await c.upload({ type: 'text/plain' }, 'text/plain');
  assert.equal(up.blobId, 'B9');
});

test('push: StateChange events for our account reach the handler', async () => {
  const listeners = {};
  class FakeES {
    constructor(url) { this.url = url; this.readyState = 1; FakeES.last = this; }
    addEventListener(type, fn) { listeners[type] = fn; }
    close() { this.closed = true; }
  }
  const { fetch } = fakeServer();
  const c = new Client({ base: 'https://h/', fetch, EventSource: FakeES });
  await c.connect();
  const seen = [];
  const stop = c.listen((changed) => seen.push(changed));
  assert.match(FakeES.last.url, /types=\*&closeafter=no&ping=30$/);
  listeners.state({ data: JSON.stringify({ '@type': 'StateChange', changed: { A1: { Email: 's2' }, OTHER: { Email: 'z' } } }) });
  listeners.state({ data: 'not json' });
  assert.deepEqual(seen, [{ Email: 's2' }]);
  stop();
  assert.ok(FakeES.last.closed);
});
