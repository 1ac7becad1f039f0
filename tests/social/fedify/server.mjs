// A small ActivityPub server on Fedify, for peerage's social acceptance tests.
//
// One actor, fred, on the domain given in FEDIFY_DOMAIN, served over HTTPS (FEDIFY_CERT, FEDIFY_KEY)
// on FEDIFY_LISTEN (address:port). Fedify does WebFinger, the actor, key handling, HTTP Signatures
// (RFC 9421 first, draft-cavage after a refusal) and verification of what arrives. A control API on
// FEDIFY_CONTROL (plain HTTP, loopback) lets the test make fred act and read what he received.
import { readFileSync } from "node:fs";
import { createServer as createHttps } from "node:https";
import { createServer as createHttp } from "node:http";
import {
  createFederation, MemoryKvStore, generateCryptoKeyPair,
} from "@fedify/fedify";
import {
  Accept, Add, Announce, Create, Delete, Document, Endpoints, Follow, Like, Mention, Note, Person, PUBLIC_COLLECTION,
  Reject, Remove, Tombstone, Undo, Update,
} from "@fedify/fedify/vocab";

import { configure, getConsoleSink } from "@logtape/logtape";

await configure({
  sinks: { console: getConsoleSink() },
  loggers: [
    { category: "fedify", lowestLevel: "warning", sinks: ["console"] },
    { category: ["logtape", "meta"], lowestLevel: "error", sinks: ["console"] },
  ],
});

const DOMAIN = process.env.FEDIFY_DOMAIN;
const [HOST, PORT] = process.env.FEDIFY_LISTEN.split(":");
const [CONTROL_HOST, CONTROL_PORT] = process.env.FEDIFY_CONTROL.split(":");
const ORIGIN = `https://${DOMAIN}`;
const USER = "fred";

const federation = createFederation({
  kv: new MemoryKvStore(),
  origin: ORIGIN,
  allowPrivateAddress: true, // the peers are on loopback in the test
});

const received = [];        // every activity fred's inboxes accepted, as JSON-LD (compacted)
const followers = new Map(); // actor id -> actor object
const posts = new Map();     // note id -> Note
let keyPairs = null;

federation.setActorDispatcher("/users/{identifier}", async (ctx, identifier) => {
  if (identifier !== USER) return null;
  const keys = await ctx.getActorKeyPairs(identifier);
  return new Person({
    id: ctx.getActorUri(identifier),
    preferredUsername: identifier,
    name: "Fred Fedify",
    inbox: ctx.getInboxUri(identifier),
    endpoints: new Endpoints({ sharedInbox: ctx.getInboxUri() }),
    followers: ctx.getFollowersUri(identifier),
    url: ctx.getActorUri(identifier),
    publicKey: keys[0].cryptographicKey,
    assertionMethods: keys.map((k) => k.multikey),
  });
}).setKeyPairsDispatcher(async (_ctx, identifier) => {
  if (identifier !== USER) return [];
  if (keyPairs === null) {
    keyPairs = [await generateCryptoKeyPair("RSASSA-PKCS1-v1_5"), await generateCryptoKeyPair("Ed25519")];
  }
  return keyPairs;
});

federation.setFollowersDispatcher("/users/{identifier}/followers", async (_ctx, identifier) => {
  if (identifier !== USER) return null;
  return { items: [...followers.values()].map((a) => ({ id: a.id, inboxId: a.inboxId,
    endpoints: a.endpoints })) };
});

federation.setObjectDispatcher(Note, "/users/{identifier}/notes/{id}", (ctx, values) => {
  return posts.get(ctx.getObjectUri(Note, values).href) ?? null;
});

const inboxContexts = new Map(); // activity id and object id -> the InboxContext it came with

async function record(ctx, activity) {
  received.push(await activity.toJsonLd({ format: "compact" }));
  // Kept so the control API can forward it later (InboxContext.forwardActivity, ActivityPub §7.1.2).
  if (activity.id) inboxContexts.set(activity.id.href, ctx);
  if (activity.objectId) inboxContexts.set(activity.objectId.href, ctx);
}

federation.setInboxListeners("/users/{identifier}/inbox", "/inbox")
  .on(Follow, async (ctx, follow) => {
    await record(ctx, follow);
    if (follow.objectId?.href !== ctx.getActorUri(USER).href) return;
    const follower = await follow.getActor(ctx);
    if (follower === null) return;
    followers.set(follower.id.href, follower);
    await ctx.sendActivity({ identifier: USER }, follower,
      new Accept({ id: new URL(`${ORIGIN}/accepts/${crypto.randomUUID()}`), actor: ctx.getActorUri(USER),
        object: follow }));
  })
  .on(Accept, record).on(Reject, record).on(Add, record).on(Remove, record)
  .on(Create, record).on(Update, record).on(Like, record).on(Announce, record).on(Delete, record)
  .onError((_ctx, error) => console.error("inbox error:", error))
  .on(Undo, async (ctx, undo) => {
    await record(ctx, undo);
    const object = await undo.getObject(ctx);
    if (object instanceof Follow && undo.actorId) followers.delete(undo.actorId.href);
  });

function nodeRequest(req, body) {
  const headers = new Headers();
  for (const [name, value] of Object.entries(req.headers)) {
    if (Array.isArray(value)) value.forEach((v) => headers.append(name, v)); else headers.set(name, value);
  }
  return new Request(`${ORIGIN}${req.url}`, { method: req.method, headers,
    body: ["GET", "HEAD"].includes(req.method) ? undefined : body });
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks);
}

async function reply(res, response) {
  res.writeHead(response.status, Object.fromEntries(response.headers));
  res.end(Buffer.from(await response.arrayBuffer()));
}

createHttps({ cert: readFileSync(process.env.FEDIFY_CERT), key: readFileSync(process.env.FEDIFY_KEY) },
  async (req, res) => {
    try {
      const response = await federation.fetch(nodeRequest(req, await readBody(req)), { contextData: undefined });
      await reply(res, response);
    } catch (error) {
      console.error(error);
      res.writeHead(500); res.end(String(error));
    }
  }).listen(Number(PORT), HOST);

// --- control API --------------------------------------------------------------------------------

function context() {
  return federation.createContext(new URL(ORIGIN), undefined);
}

async function lookup(ctx, handle) {
  const actor = await ctx.lookupObject(handle);
  if (actor === null) throw new Error(`cannot find ${handle}`);
  return actor;
}

const control = {
  async follow({ handle }) {
    const ctx = context();
    const target = await lookup(ctx, handle);
    const follow = new Follow({ id: new URL(`${ORIGIN}/follows/${crypto.randomUUID()}`),
      actor: ctx.getActorUri(USER), object: target.id });
    await ctx.sendActivity({ identifier: USER }, target, follow);
    return { id: follow.id.href };
  },
  // direct: addressed to the recipient alone (a Mastodon "direct message"), else public.
  async post({ content, to, inReplyTo, direct, attachments }) {
    const ctx = context();
    const recipient = await lookup(ctx, to);
    const id = crypto.randomUUID();
    const noteId = ctx.getObjectUri(Note, { identifier: USER, id });
    const tos = direct ? [recipient.id] : [PUBLIC_COLLECTION];
    const ccs = direct ? [] : [ctx.getFollowersUri(USER), recipient.id];
    const note = new Note({ id: noteId, attribution: ctx.getActorUri(USER), content, tos, ccs,
      tags: [new Mention({ href: recipient.id, name: to })],
      attachments: (attachments ?? []).map((a) => new Document({ url: new URL(a.url), mediaType: a.mediaType,
        name: a.name })),
      replyTarget: inReplyTo ? new URL(inReplyTo) : null });
    posts.set(noteId.href, note);
    const create = new Create({ id: new URL(`${noteId.href}/activity`), actor: ctx.getActorUri(USER),
      object: note, tos, ccs });
    await ctx.sendActivity({ identifier: USER }, recipient, create);
    return { id: noteId.href };
  },
  async like({ object, to }) {
    const ctx = context();
    const recipient = await lookup(ctx, to);
    const like = new Like({ id: new URL(`${ORIGIN}/likes/${crypto.randomUUID()}`), actor: ctx.getActorUri(USER),
      object: new URL(object) });
    await ctx.sendActivity({ identifier: USER }, recipient, like);
    return { id: like.id.href };
  },
  async announce({ object, to }) {
    const ctx = context();
    const recipient = await lookup(ctx, to);
    const announce = new Announce({ id: new URL(`${ORIGIN}/announces/${crypto.randomUUID()}`),
      actor: ctx.getActorUri(USER), object: new URL(object), to: PUBLIC_COLLECTION });
    await ctx.sendActivity({ identifier: USER }, recipient, announce);
    return { id: announce.id.href };
  },
  // Forward an activity fred received (by its id or its object's id), as received, signed by fred.
  async forward({ activity, to }) {
    const inboxCtx = inboxContexts.get(activity);
    if (inboxCtx === undefined) throw new Error(`nothing received about ${activity}`);
    const recipient = await lookup(context(), to);
    await inboxCtx.forwardActivity({ identifier: USER }, recipient, { skipIfUnsigned: false });
    return { forwarded: activity };
  },
  async undo({ activity, to }) {
    const ctx = context();
    const recipient = await lookup(ctx, to);
    const undo = new Undo({ id: new URL(`${ORIGIN}/undos/${crypto.randomUUID()}`), actor: ctx.getActorUri(USER),
      object: new URL(activity) });
    await ctx.sendActivity({ identifier: USER }, recipient, undo);
    return { id: undo.id.href };
  },
  async delete({ object, to }) {
    const ctx = context();
    const recipient = await lookup(ctx, to);
    posts.delete(object);
    const del = new Delete({ id: new URL(`${object}#delete`), actor: ctx.getActorUri(USER),
      object: new Tombstone({ id: new URL(object) }), to: PUBLIC_COLLECTION });
    await ctx.sendActivity({ identifier: USER }, recipient, del);
    return { id: del.id.href };
  },
};

createHttp(async (req, res) => {
  try {
    const url = new URL(req.url, "http://control");
    if (req.method === "GET" && url.pathname === "/received") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(received));
      return;
    }
    if (req.method === "GET" && url.pathname === "/followers") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify([...followers.keys()]));
      return;
    }
    const action = control[url.pathname.slice(1)];
    if (req.method !== "POST" || action === undefined) { res.writeHead(404); res.end(); return; }
    const result = await action(JSON.parse((await readBody(req)).toString() || "{}"));
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify(result));
  } catch (error) {
    console.error(error);
    res.writeHead(500, { "content-type": "text/plain" });
    res.end(String(error?.stack ?? error));
  }
}).listen(Number(CONTROL_PORT), CONTROL_HOST, () => console.log("fedify peer ready"));
