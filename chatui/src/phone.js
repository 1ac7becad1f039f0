// The phone: JsSIP registered over SIP WebSocket (RFC 7118) with a short-lived digest password the web
// session issues; calls and incoming calls with WebRTC audio, ICE servers (STUN/TURN with time-limited
// coturn credentials) fetched from the server before each call, DTMF (SIP INFO, RFC 6086
// application/dtmf-relay, which JsSIP sends and receives), hang-up.
import JsSIP from 'jssip';

// Fetch a new SIP password when this share of its life has gone (it lasts hours; see
// peerage.identity.sip_tokens), and new ICE servers when theirs is this close to expiry.
const REFRESH_AT = 0.8;
const ICE_MARGIN_SECONDS = 5;
const KEYS = ['1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '0', '#'];

export function startPhone({ getJson, csrf, config }) {
  const $ = (id) => document.getElementById(id);
  const phone = $('phone');
  const status = $('phone-status');
  const state = { ua: null, session: null, ice: null, dtmf: [], lastEnd: null, calls: 0, refused: 0 };
  const relay = $('relay');
  relay.checked = localStorage.getItem('peerage.relayOnly') === '1';
  relay.addEventListener('change', () => localStorage.setItem('peerage.relayOnly', relay.checked ? '1' : '0'));

  function show(name, text) {
    phone.dataset.state = name;
    status.textContent = `Phone: ${text}`;
    $('call').disabled = !(name === 'registered' || name === 'ended') || state.session !== null;
    $('incoming').hidden = name !== 'ringing';
    $('in-call').hidden = !(name === 'calling' || name === 'in-call');
  }

  async function sipCredentials() {
    return getJson(config.sip.credentials, { method: 'POST', headers: { 'X-CSRF-Token': csrf } });
  }

  async function iceServers() {
    const now = Date.now() / 1000;
    if (!state.ice || (state.ice.expires !== null && state.ice.expires - ICE_MARGIN_SECONDS < now)) {
      state.ice = await getJson('/chat/ice-servers');
    }
    return state.ice.iceServers;
  }

  async function rtcOptions() {
    return {
      mediaConstraints: { audio: true, video: false },
      pcConfig: { iceServers: await iceServers(), iceTransportPolicy: relay.checked ? 'relay' : 'all' },
      rtcOfferConstraints: { offerToReceiveAudio: true },
    };
  }

  function target(text) {
    const value = text.trim();
    if (/^sips?:/i.test(value)) return value;
    const domain = config.account.split('@')[1];
    return `sip:${value.includes('@') ? value : `${value}@${domain}`}`;
  }

  function attach(session) {
    state.session = session;
    state.dtmf = [];
    $('dtmf-heard').textContent = '';
    const remoteAudio = $('remote-audio');
    const hook = (pc) => pc.addEventListener('track', (event) => {
      remoteAudio.srcObject = event.streams[0] || new MediaStream([event.track]);
    });
    if (session.connection) hook(session.connection);
    session.on('peerconnection', (e) => hook(e.peerconnection));
    session.on('progress', () => { if (session.direction === 'outgoing') show('calling', 'ringing…'); });
    session.on('confirmed', () => show('in-call', `in a call with ${session.remote_identity.uri.toAor()}`));
    session.on('newDTMF', (e) => {
      if (e.originator !== 'remote') return;
      state.dtmf.push(e.dtmf.tone);
      $('dtmf-heard').textContent = `heard ${state.dtmf.join('')}`;
    });
    const finish = (how) => (e) => {
      state.lastEnd = { how, originator: e.originator, cause: e.cause };
      state.session = null;
      remoteAudio.srcObject = null;
      show('ended', how === 'ended' ? `call ended (${e.originator === 'local' ? 'you hung up' : 'they hung up'})`
        : `call failed: ${e.cause}`);
    };
    session.on('ended', finish('ended'));
    session.on('failed', finish('failed'));
  }

  async function start() {
    show('registering', 'registering…');
    const credentials = await sipCredentials();
    const ua = new JsSIP.UA({
      sockets: [new JsSIP.WebSocketInterface(config.sip.websocket)],
      uri: credentials.uri,
      authorization_user: credentials.username,
      password: credentials.password,
      register: true,
      register_expires: 600,
      session_timers: false,
    });
    state.ua = ua;
    let retried = false;
    ua.on('registered', () => { retried = false; if (!state.session) show('registered', `ready as ${credentials.uri}`); });
    ua.on('unregistered', () => { if (!state.session) show('off', 'not registered'); });
    ua.on('registrationFailed', async (e) => {
      state.refused += 1;
      show('off', `registration failed: ${e.cause}`);
      if (!retried && e.response && [401, 403, 407].includes(e.response.status_code)) {
        retried = true; // the server restarted or the token expired: a fresh one, once
        ua.set('password', (await sipCredentials()).password);
        ua.register();
      }
    });
    ua.on('newRTCSession', (e) => {
      const session = e.session;
      if (e.originator === 'local') return;
      if (state.session) { session.terminate({ status_code: 486, reason_phrase: 'Busy Here' }); return; }
      attach(session);
      $('caller').textContent = `${session.remote_identity.uri.toAor()} is calling`;
      show('ringing', 'incoming call');
    });
    const refresh = async () => {
      const fresh = await sipCredentials();
      ua.set('password', fresh.password);
      setTimeout(refresh, Math.max(10, (fresh.expires - Date.now() / 1000) * REFRESH_AT) * 1000);
    };
    setTimeout(refresh, Math.max(10, (credentials.expires - Date.now() / 1000) * REFRESH_AT) * 1000);
    ua.start();
  }

  for (const key of KEYS) {
    const button = document.createElement('button');
    button.type = 'button';
    button.textContent = key;
    button.dataset.tone = key;
    button.addEventListener('click', () => { if (state.session) state.session.sendDTMF(key); });
    $('keypad').append(button);
  }
  $('dial').addEventListener('submit', async (event) => {
    event.preventDefault();
    if (state.session || !state.ua) return;
    state.calls += 1;
    show('calling', 'calling…');
    try {
      const session = state.ua.call(target($('callee').value), await rtcOptions());
      attach(session);
      show('calling', 'calling…');
    } catch (error) {
      show('ended', `call failed: ${error.message}`);
    }
  });
  $('answer').addEventListener('click', async () => {
    if (state.session) state.session.answer(await rtcOptions());
  });
  $('decline').addEventListener('click', () => {
    if (state.session) state.session.terminate({ status_code: 603, reason_phrase: 'Decline' });
  });
  $('hangup').addEventListener('click', () => { if (state.session) state.session.terminate(); });

  // For the page's tests and for a curious user's console: what the media did.
  async function stats() {
    const pc = state.session && state.session.connection;
    if (!pc) return null;
    const report = await pc.getStats();
    const result = { bytesReceived: 0, packetsReceived: 0, bytesSent: 0, localCandidateType: null, remoteCandidateType: null };
    const byId = new Map();
    report.forEach((entry) => byId.set(entry.id, entry));
    report.forEach((entry) => {
      if (entry.type === 'inbound-rtp' && entry.kind === 'audio') {
        result.bytesReceived += entry.bytesReceived || 0;
        result.packetsReceived += entry.packetsReceived || 0;
      }
      if (entry.type === 'outbound-rtp' && entry.kind === 'audio') result.bytesSent += entry.bytesSent || 0;
      if (entry.type === 'transport' && entry.selectedCandidatePairId) {
        const pair = byId.get(entry.selectedCandidatePairId);
        if (pair) {
          result.localCandidateType = byId.get(pair.localCandidateId)?.candidateType ?? null;
          result.remoteCandidateType = byId.get(pair.remoteCandidateId)?.candidateType ?? null;
        }
      }
    });
    return result;
  }

  start().catch((error) => show('off', `cannot start: ${error.message}`));
  return { state, stats, show };
}
