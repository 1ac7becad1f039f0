// JsSIP on Node with `ws` as its WebSocket: register two user agents on the server's default digest
// challenge over SIP WebSocket, then send a MESSAGE from the first to the second. Prints one JSON line
// per event; exits 0 when both registered and the message arrived, 1 otherwise.
// Usage: node register.js WS_URL DOMAIN USER PASSWORD PEER PEER_PASSWORD TIMEOUT_MS [unregistered]
// With `unregistered`, the first user agent sends its MESSAGE without registering first, so the proxy
// challenges the MESSAGE itself with a 407 (RFC 3261 §22.3) and JsSIP answers with Proxy-Authorization.
'use strict';
globalThis.WebSocket = require('ws');
const JsSIP = require('jssip');

const [url, domain, user, password, peer, peerPassword, timeoutMs, mode] = process.argv.slice(2);
const senderRegisters = mode !== 'unregistered';
const report = (event, detail) => console.log(JSON.stringify({ event, ...detail }));
const agents = [];

function agent(name, secret, registers = true) {
  const ua = new JsSIP.UA({
    sockets: [new JsSIP.WebSocketInterface(url)],
    uri: `sip:${name}@${domain}`,
    password: secret,
    register: registers,
    register_expires: 120,
    session_timers: false,
  });
  agents.push(ua);
  return new Promise((resolve, reject) => {
    if (!registers) {
      ua.on('connected', () => { report('connected', { user: name }); resolve(ua); });
    }
    ua.on('registered', (e) => {
      report('registered', { user: name, status: e.response.status_code });
      resolve(ua);
    });
    ua.on('registrationFailed', (e) => {
      report('registrationFailed', { user: name, cause: e.cause, status: e.response && e.response.status_code });
      reject(new Error(`${name}: ${e.cause}`));
    });
    ua.start();
  });
}

function finish(code) {
  for (const ua of agents) ua.stop();
  setTimeout(() => process.exit(code), 300);
}

setTimeout(() => { report('timeout', {}); finish(1); }, Number(timeoutMs));

(async () => {
  const second = await agent(peer, peerPassword);
  const first = await agent(user, password, senderRegisters);
  const received = new Promise((resolve) => {
    second.on('newMessage', (e) => {
      if (e.originator === 'remote') resolve(e.request.body);
    });
  });
  const sent = new Promise((resolve, reject) => {
    first.sendMessage(`sip:${peer}@${domain}`, 'hello from JsSIP', {
      eventHandlers: {
        succeeded: (e) => resolve(e.response.status_code),
        failed: (e) => reject(new Error(`MESSAGE failed: ${e.cause}`)),
      },
    });
  });
  report('messageSent', { status: await sent });
  report('messageReceived', { body: await received });
  finish(0);
})().catch((error) => { report('error', { message: String(error.message || error) }); finish(1); });
