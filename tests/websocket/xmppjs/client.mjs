// xmpp.js (@xmpp/client) logs in over peerage's RFC 7395 endpoint, sends a chat message to PEER and waits
// for an answer; one JSON event per line on stdout for tests/websocket/test_xmppjs.py.
// Usage: node --experimental-websocket client.mjs URL DOMAIN USER PASSWORD PEER TIMEOUT_MS
import { client, xml } from "@xmpp/client";

const [url, domain, username, password, peer, timeoutMs] = process.argv.slice(2);
const say = (event) => process.stdout.write(JSON.stringify(event) + "\n");
const timer = setTimeout(() => { say({ event: "timeout" }); process.exit(2); }, Number(timeoutMs));

const xmpp = client({ service: url, domain, username, password, resource: "xmppjs" });
xmpp.on("error", (err) => say({ event: "error", message: String(err) }));
xmpp.on("stanza", async (stanza) => {
  if (stanza.is("message") && stanza.getChildText("body")) {
    say({ event: "message", from: stanza.attrs.from, body: stanza.getChildText("body") });
    await xmpp.send(xml("presence", { type: "unavailable" }));
    await xmpp.stop();
    clearTimeout(timer);
    say({ event: "stopped" });
  }
});
xmpp.on("online", async (address) => {
  say({ event: "online", jid: address.toString(), mechanism: xmpp.mechanism ?? null });
  await xmpp.send(xml("presence"));
  await xmpp.send(xml("message", { type: "chat", to: peer }, xml("body", {}, "hello from xmpp.js")));
});
xmpp.start().catch((err) => { say({ event: "failed", message: String(err) }); process.exit(1); });
