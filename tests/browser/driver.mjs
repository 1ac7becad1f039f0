// Drives Debian's Chromium for the pytest browser tests: one JSON command per line on stdin, one JSON
// answer per line on stdout ({"id", "ok", "result"} or {"id", "ok": false, "error"}).
//
// Every request the browser makes is recorded (URL, method, type, the frame it came from, whether it
// carried a Cookie header); requests to hosts outside `allowHosts` are aborted and recorded as blocked,
// so a test can assert that nothing remote was fetched. Console messages, page errors and dialogs
// (alert/confirm, which hostile mail would use) are recorded too. Host names resolve only through
// --host-resolver-rules: everything not mapped to a loopback address fails, so nothing leaves the machine.

import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const options = JSON.parse(process.argv[2] || '{}');
const allowHosts = new Set(options.allowHosts || []);
const events = { requests: [], blocked: [], console: [], errors: [], dialogs: [] };
const pages = new Map();
let acceptConfirm = true;
// The bound of a command that names none: a page load or a server round trip on a loaded 2-core CI
// machine running three test areas at once; a command whose event comes sooner returns sooner.
const DEFAULT_TIMEOUT_MS = 30000;

const rules = Object.entries(options.hosts || {}).map(([name, ip]) => `MAP ${name} ${ip}`);
rules.push('MAP * ~NOTFOUND');
const context = await chromium.launchPersistentContext(options.userDataDir, {
  executablePath: options.chromium || '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--no-first-run', '--disable-sync', '--disable-default-apps', '--disable-extensions', '--no-default-browser-check',
    '--disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication',
    `--host-resolver-rules=${rules.join(', ')}`,
    ...(options.extraArgs || []), // e.g. fake media devices for the call tests (tests/webchat)
  ],
  ignoreHTTPSErrors: true,
  viewport: { width: options.width || 1400, height: options.height || 860 },
  locale: 'en-US',
  timezoneId: 'UTC',
});

function hostOf(url) {
  try { return new URL(url).host; } catch { return ''; }
}

await context.route('**/*', async (route) => {
  const req = route.request();
  const url = req.url();
  if (/^(data|blob|about):/.test(url) || allowHosts.has(hostOf(url))) return route.continue();
  events.blocked.push({ url, method: req.method(), type: req.resourceType(), frame: req.frame()?.url() ?? '' });
  return route.abort('blockedbyclient');
});

function watch(page, name) {
  page.on('request', async (req) => {
    const entry = { page: name, url: req.url(), method: req.method(), type: req.resourceType(), frame: '' };
    if (req.method() === 'POST') entry.body = (req.postData() || '').slice(0, 4000);
    try { entry.frame = req.frame().url(); } catch { /* a service worker or gone frame */ }
    events.requests.push(entry);
    try {
      const headers = await req.allHeaders();
      entry.cookie = 'cookie' in headers;
      entry.origin = headers.origin ?? null;
      entry.csrf = 'x-csrf-token' in headers;
    } catch { /* the request ended first */ }
  });
  page.on('console', (msg) => events.console.push({ page: name, type: msg.type(), text: msg.text() }));
  page.on('pageerror', (err) => events.errors.push({ page: name, text: String(err && err.message || err) }));
  page.on('dialog', async (dialog) => {
    events.dialogs.push({ page: name, type: dialog.type(), message: dialog.message() });
    if (dialog.type() === 'confirm' && acceptConfirm) await dialog.accept(); else await dialog.dismiss();
  });
}

const first = context.pages()[0] || await context.newPage();
watch(first, 'main');
pages.set('main', first);

function page(cmd) {
  const p = pages.get(cmd.page || 'main');
  if (!p) throw new Error(`no page ${cmd.page}`);
  return p;
}

async function frameOf(cmd) {
  const p = page(cmd);
  if (!cmd.frame) return p;
  const handle = await p.waitForSelector(cmd.frame, { timeout: cmd.timeout ?? DEFAULT_TIMEOUT_MS });
  const frame = await handle.contentFrame();
  if (!frame) throw new Error(`${cmd.frame} is not a frame`);
  return frame;
}

const ops = {
  async goto(cmd) { const res = await page(cmd).goto(cmd.url, { waitUntil: cmd.waitUntil || 'load', timeout: cmd.timeout ?? DEFAULT_TIMEOUT_MS }); return { status: res?.status() ?? null, url: page(cmd).url() }; },
  async open(cmd) {
    const p = await context.newPage();
    watch(p, cmd.name);
    pages.set(cmd.name, p);
    if (cmd.url) await p.goto(cmd.url, { timeout: cmd.timeout ?? DEFAULT_TIMEOUT_MS });
    return { url: p.url() };
  },
  async closePage(cmd) { await page(cmd).close(); pages.delete(cmd.page); return null; },
  async url(cmd) { return page(cmd).url(); },
  async reload(cmd) { await page(cmd).reload({ timeout: cmd.timeout ?? DEFAULT_TIMEOUT_MS }); return null; },
  async click(cmd) { await (await frameOf(cmd)).click(cmd.selector, { timeout: cmd.timeout ?? DEFAULT_TIMEOUT_MS, modifiers: cmd.modifiers }); return null; },
  async fill(cmd) { await (await frameOf(cmd)).fill(cmd.selector, cmd.value, { timeout: cmd.timeout ?? DEFAULT_TIMEOUT_MS }); return null; },
  async press(cmd) {
    if (cmd.selector) await (await frameOf(cmd)).press(cmd.selector, cmd.key, { timeout: cmd.timeout ?? DEFAULT_TIMEOUT_MS });
    else await page(cmd).keyboard.press(cmd.key);
    return null;
  },
  // Key presses for each character at the focused element (or `selector`), as a person types.
  async type(cmd) {
    if (cmd.selector) await (await frameOf(cmd)).locator(cmd.selector).pressSequentially(cmd.text, { timeout: cmd.timeout ?? DEFAULT_TIMEOUT_MS });
    else await page(cmd).keyboard.type(cmd.text);
    return null;
  },
  async waitFor(cmd) {
    const t0 = Date.now();
    await (await frameOf(cmd)).waitForSelector(cmd.selector, { state: cmd.state || 'visible', timeout: cmd.timeout ?? DEFAULT_TIMEOUT_MS });
    return { ms: Date.now() - t0 };
  },
  // Polls with evaluate (which the page's CSP does not govern) instead of page.waitForFunction, whose
  // predicate is compiled inside the page and so needs 'unsafe-eval' there.
  async waitForFunction(cmd) {
    const t0 = Date.now();
    const limit = cmd.timeout ?? DEFAULT_TIMEOUT_MS;
    let last = null;
    for (;;) {
      try {
        if (await (await frameOf(cmd)).evaluate(cmd.expression)) return { ms: Date.now() - t0 };
      } catch (err) { last = err; }
      if (Date.now() - t0 > limit) throw new Error(`timeout ${limit}ms waiting for ${cmd.expression}${last ? ` (${last.message})` : ''}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  },
  async waitForURL(cmd) { await page(cmd).waitForURL(cmd.pattern ? new RegExp(cmd.pattern) : cmd.url, { timeout: cmd.timeout ?? DEFAULT_TIMEOUT_MS }); return page(cmd).url(); },
  async setFiles(cmd) {
    const files = cmd.files.map((f) => ({ name: f.name, mimeType: f.type, buffer: Buffer.from(f.base64, 'base64') }));
    await (await frameOf(cmd)).setInputFiles(cmd.selector, files, { timeout: cmd.timeout ?? DEFAULT_TIMEOUT_MS });
    return null;
  },
  async eval(cmd) { return (await frameOf(cmd)).evaluate(cmd.expression); },
  async text(cmd) { return (await frameOf(cmd)).textContent(cmd.selector, { timeout: cmd.timeout ?? DEFAULT_TIMEOUT_MS }); },
  async count(cmd) { return (await frameOf(cmd)).locator(cmd.selector).count(); },
  async screenshot(cmd) { await page(cmd).screenshot({ path: cmd.path, fullPage: !!cmd.fullPage }); return cmd.path; },
  async events() {
    const out = JSON.parse(JSON.stringify(events));
    for (const key of Object.keys(events)) events[key].length = 0;
    return out;
  },
  async cookies(cmd) { return context.cookies(cmd.urls); },
  async confirm(cmd) { acceptConfirm = !!cmd.accept; return null; },
};

const rl = createInterface({ input: process.stdin });
const write = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);
write({ id: 0, ok: true, result: { version: context.browser()?.version() ?? 'chromium' } });
for await (const line of rl) {
  if (!line.trim()) continue;
  let cmd;
  try { cmd = JSON.parse(line); } catch { write({ id: null, ok: false, error: 'bad JSON' }); continue; }
  if (cmd.op === 'quit') break;
  const fn = ops[cmd.op];
  if (!fn) { write({ id: cmd.id, ok: false, error: `unknown op ${cmd.op}` }); continue; }
  try {
    write({ id: cmd.id, ok: true, result: await fn(cmd) ?? null });
  } catch (err) {
    write({ id: cmd.id, ok: false, error: String(err && err.message || err).slice(0, 4000) });
  }
}
await context.close();
process.exit(0);
