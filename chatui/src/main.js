// The /chat/ page: converse.js for XMPP chat over WebSocket and a JsSIP phone, both opened with the
// web login's session: converse.js fetches its XMPP credentials from credentials_url, the phone a
// short-lived SIP password from /auth/sip-credentials, so the user never types a password here.
import converse from 'converse.js';
import { startPhone } from './phone.js';

async function getJson(url, init) {
  const response = await fetch(url, { credentials: 'same-origin', ...init });
  if (response.status === 401) {
    location.assign(`/login?next=${encodeURIComponent(location.pathname)}`);
    throw new Error('not logged in');
  }
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.json();
}

async function main() {
  const session = await getJson('/auth/session');
  const config = await getJson('/chat/config');
  document.getElementById('me').textContent = session.account;
  document.getElementById('logout-csrf').value = session.csrf;
  // Logging out ends this session's XMPP and SIP tokens first, so neither outlives the login here.
  document.getElementById('logout').addEventListener('submit', async (event) => {
    event.preventDefault();
    const headers = { 'X-CSRF-Token': session.csrf };
    await Promise.allSettled(['/auth/xmpp-credentials', '/auth/sip-credentials'].map(
      (url) => fetch(url, { method: 'DELETE', headers, credentials: 'same-origin' })));
    event.target.submit();
  });
  const api = { getJson, csrf: session.csrf, config };
  window.peerageChat = { config, converse: null, phone: null };

  // Shows the XMPP connection's state in the bar (and to the page's tests): converse.js tells its
  // plugins through events, so a small plugin listens.
  // converse.js's splash footer shows its sponsors' logos from conversejs.org: a request to a third party
  // on every page load (the CSP refuses it). An element defined first is one converse.js leaves alone.
  if (!customElements.get('converse-footer')) customElements.define('converse-footer', class extends HTMLElement {});
  converse.plugins.add('peerage-status', {
    initialize() {
      const { api } = this._converse;
      const set = (state) => {
        document.body.dataset.xmpp = state;
        document.getElementById('me').title = `chat: ${state}`;
      };
      api.listen.on('connected', () => set('connected'));
      api.listen.on('reconnected', () => set('connected'));
      api.listen.on('disconnected', () => set('disconnected'));
    },
  });
  const wanted = new URLSearchParams(location.search).get('transport');
  const useBosh = Boolean(config.xmpp.bosh) && (wanted === 'bosh' || typeof WebSocket === 'undefined');
  document.body.dataset.xmppTransport = useBosh ? 'bosh' : 'websocket';
  converse.initialize({
    assets_path: '/chat/',
    authentication: 'login',
    auto_login: true,
    auto_reconnect: true,
    credentials_url: config.xmpp.credentials,
    // BOSH (XEP-0206) where the browser has no WebSocket, or when asked for (/chat/?transport=bosh).
    ...(useBosh ? { bosh_service_url: config.xmpp.bosh } : { websocket_url: config.xmpp.websocket }),
    discover_connection_methods: false,
    allow_registration: false,
    allow_logout: false, // the page's own "Log out" ends the web session too
    view_mode: 'fullscreen',
    i18n: 'en',
    loglevel: 'warn',
    // Inline images only from this server (HTTP upload, XEP-0363, shares the origin): a remote image would
    // tell a third party who reads what, and the CSP refuses it anyway.
    show_images_inline: [location.hostname],
    play_sounds: false,
    whitelisted_plugins: ['peerage-status'],
  }).then(() => { window.peerageChat.converse = 'started'; }, (error) => {
    window.peerageChat.converse = `failed: ${error}`;
  });

  if (config.sip) {
    window.peerageChat.phone = startPhone(api);
  } else {
    document.getElementById('phone-status').textContent = 'Phone: not offered by this server';
  }
}

main().catch((error) => {
  console.error(error);
  const status = document.getElementById('phone-status');
  if (status) status.textContent = `Error: ${error.message}`;
});
