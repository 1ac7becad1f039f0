// The JMAP client (RFC 8620 core, RFC 8621 mail) the webmail speaks, and nothing else.
//
// It authenticates with the web session cookie; every POST carries the X-CSRF-Token from
// GET /auth/session. Method calls made in the same tick are sent as one request, so a screen that
// needs a mailbox list, a query window and the emails in it costs one round trip.

export const CAPS = [
  'urn:ietf:params:jmap:core',
  'urn:ietf:params:jmap:mail',
  'urn:ietf:params:jmap:submission',
  'urn:ietf:params:jmap:vacationresponse',
];

export class JMAPError extends Error {
  constructor(type, description, extra = {}) {
    super(description ? `${type}: ${description}` : type);
    this.type = type;
    this.description = description;
    Object.assign(this, extra);
  }
}

export class NotLoggedIn extends Error {}

// Fill an RFC 6570 level-1 template such as downloadUrl's {accountId}/{blobId}/{name}?type={type}.
export function expandTemplate(template, values) {
  return template.replace(/\{([a-zA-Z]+)\}/g, (_, key) => encodeURIComponent(values[key] ?? ''));
}

export class Client {
  constructor({ base = '', fetch: fetchImpl = globalThis.fetch.bind(globalThis), EventSource: ES } = {}) {
    this.base = base;
    this.fetch = fetchImpl;
    this.EventSource = ES ?? globalThis.EventSource;
    this.session = null;
    this.csrf = '';
    this.login = '';
    this.accountId = '';
    this.pending = [];
    this.flushScheduled = false;
    this.counter = 0;
    this.maxCallsInRequest = 16;
  }

  url(path) {
    return new URL(path, this.base || globalThis.location?.href).toString();
  }

  async connect() {
    // Both at once: they are independent, and this is on the path from login to a drawn inbox. Plain
    // requests (no extra headers), so they match the page's <link rel=preload> and reuse its answers.
    const get = (path) => this.fetch(this.url(path), { credentials: 'same-origin' });
    const [who, res] = await Promise.all([get('/auth/session'), get('/.well-known/jmap')]);
    if (who.status === 401 || who.status === 403) throw new NotLoggedIn('not logged in');
    if (!who.ok) throw new Error(`GET /auth/session: HTTP ${who.status}`);
    const me = await who.json();
    this.csrf = me.csrf || '';
    this.login = me.account || '';
    if (res.status === 401) throw new NotLoggedIn('not logged in');
    if (!res.ok) throw new Error(`JMAP session: HTTP ${res.status}`);
    this.session = await res.json();
    this.accountId = this.session.primaryAccounts?.['urn:ietf:params:jmap:mail']
      ?? Object.keys(this.session.accounts || {})[0];
    const core = this.session.capabilities?.['urn:ietf:params:jmap:core'] || {};
    if (core.maxCallsInRequest) this.maxCallsInRequest = core.maxCallsInRequest;
    return this.session;
  }

  get capabilities() {
    return this.session?.capabilities || {};
  }

  headers(extra = {}) {
    return { 'X-CSRF-Token': this.csrf, ...extra };
  }

  // Queue one method call; resolves with its response arguments, rejects with a JMAPError for an
  // "error" response (RFC 8620 §3.6.2). `id` lets later calls in the same batch back-reference it.
  call(name, args, id) {
    const callId = id || `c${++this.counter}`;
    return new Promise((resolve, reject) => {
      this.pending.push({ name, args: { accountId: this.accountId, ...args }, callId, resolve, reject });
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        queueMicrotask(() => this.flush());
      }
    });
  }

  // Several calls that reference each other, sent in one request. Returns the responses in order.
  batch(calls) {
    return Promise.all(calls.map(([name, args, id]) => this.call(name, args, id)));
  }

  async flush() {
    this.flushScheduled = false;
    while (this.pending.length) {
      const calls = this.pending.splice(0, this.maxCallsInRequest);
      await this.send(calls);
    }
  }

  async send(calls) {
    const body = {
      using: CAPS.filter((c) => !this.session || c in this.capabilities || c === 'urn:ietf:params:jmap:core'),
      methodCalls: calls.map((c) => [c.name, c.args, c.callId]),
    };
    let res;
    try {
      res = await this.fetch(this.url(this.session.apiUrl), {
        method: 'POST',
        credentials: 'same-origin',
        headers: this.headers({ 'Content-Type': 'application/json', Accept: 'application/json' }),
        body: JSON.stringify(body),
      });
    } catch (err) {
      calls.forEach((c) => c.reject(err));
      return;
    }
    if (res.status === 401) {
      const err = new NotLoggedIn('session ended');
      calls.forEach((c) => c.reject(err));
      this.onLoggedOut?.();
      return;
    }
    let data;
    try {
      data = await res.json();
    } catch {
      data = null;
    }
    if (!res.ok || !data || !Array.isArray(data.methodResponses)) {
      const err = new JMAPError(data?.type || `HTTP ${res.status}`, data?.detail || data?.title || '');
      calls.forEach((c) => c.reject(err));
      return;
    }
    if (data.sessionState && this.session && data.sessionState !== this.session.state) this.onSessionChange?.();
    const byId = new Map(calls.map((c) => [c.callId, c]));
    const answered = new Set();
    for (const [name, args, callId] of data.methodResponses) {
      const call = byId.get(callId);
      if (!call || answered.has(callId)) continue; // a method may add responses (e.g. Email/set after EmailSubmission/set)
      if (name !== call.name && name !== 'error') continue;
      answered.add(callId);
      if (name === 'error') call.reject(new JMAPError(args.type, args.description, args));
      else call.resolve(args);
    }
    for (const call of calls) {
      if (!answered.has(call.callId)) call.reject(new JMAPError('noResponse', call.name));
    }
  }

  downloadUrl(blobId, name = 'download', type = 'application/octet-stream') {
    return this.url(expandTemplate(this.session.downloadUrl, { accountId: this.accountId, blobId, name, type }));
  }

  async download(blobId, name, type) {
    const res = await this.fetch(this.downloadUrl(blobId, name, type), { credentials: 'same-origin' });
    if (!res.ok) throw new Error(`download: HTTP ${res.status}`);
    return res;
  }

  async upload(file, type) {
    const url = this.url(expandTemplate(this.session.uploadUrl, { accountId: this.accountId }));
    const res = await this.fetch(url, {
      method: 'POST',
      credentials: 'same-origin',
      headers: this.headers({ 'Content-Type': type || file.type || 'application/octet-stream' }),
      body: file,
    });
    if (!res.ok) {
      let detail = '';
      try { detail = (await res.json()).detail || ''; } catch { /* not JSON */ }
      throw new JMAPError(res.status === 413 ? 'tooLarge' : `HTTP ${res.status}`, detail);
    }
    return res.json();
  }

  // RFC 8620 §7.3: push StateChange objects. `onChange` gets the changed map for our account.
  listen(onChange, onStatus) {
    const template = this.session.eventSourceUrl;
    if (!template || !this.EventSource) return () => {};
    const url = this.url(expandTemplate(template, { types: '*', closeafter: 'no', ping: '30' }));
    let source = null;
    let stopped = false;
    let retry = 1000;
    const open = () => {
      if (stopped) return;
      source = new this.EventSource(url, { withCredentials: true });
      source.addEventListener('open', () => { retry = 1000; onStatus?.('live'); });
      source.addEventListener('state', (ev) => {
        let data;
        try { data = JSON.parse(ev.data); } catch { return; }
        const changed = data.changed?.[this.accountId];
        if (changed) onChange(changed);
      });
      source.addEventListener('error', () => {
        onStatus?.('offline');
        if (source.readyState === 2 /* CLOSED */) {
          source.close();
          setTimeout(open, retry);
          retry = Math.min(retry * 2, 30000);
        }
      });
    };
    open();
    return () => { stopped = true; source?.close(); };
  }
}
