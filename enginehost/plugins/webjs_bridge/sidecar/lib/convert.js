'use strict';

/**
 * whatsapp-web.js objects → protocol event data. Pure functions over the library's
 * Message and Reaction structures; chat and sender ids stay in its dialect
 * (`…@c.us`, `…@g.us`, `…@lid`). Message ids are the short ids (`msg.id.id`), the same
 * kind the Baileys sidecar reports; the serialised form (`false_<chat>_<id>`) is the
 * library's handle for a message, not the message's id.
 */

/** whatsapp-web.js message types → the host's message types. */
const TYPES = {
  chat: 'text',
  image: 'image',
  video: 'video',
  audio: 'audio',
  ptt: 'audio',
  document: 'document',
  sticker: 'sticker',
  location: 'location',
  vcard: 'contact',
  multi_vcard: 'contact',
};

const MEDIA_TYPES = new Set(['image', 'video', 'audio', 'document', 'sticker']);

/**
 * Types that are bookkeeping or notices rather than something a person sent: never
 * reported as messages (revokes and reactions come through their own events).
 */
const NOT_MESSAGES = new Set([
  'revoked',
  'ciphertext',
  'e2e_notification',
  'gp2',
  'notification',
  'notification_template',
  'group_notification',
  'broadcast_notification',
  'protocol',
  'call_log',
  'debug',
  'reaction',
]);

/** Library ACK values → `ack` statuses (0, pending, reports nothing). */
const ACK_STATUS = new Map([
  [-1, 'failed'],
  [1, 'sent'],
  [2, 'delivered'],
  [3, 'read'],
  [4, 'read'],
]);

/** An id that may be a string or a serialised Wid object. */
function serialized(value) {
  if (value === null || value === undefined) return null;
  if (typeof value === 'string') return value;
  if (typeof value._serialized === 'string') return value._serialized;
  return null;
}

function seconds(value) {
  const number = Number(value);
  return Number.isFinite(number) && number > 0 ? Math.floor(number) : Math.floor(Date.now() / 1000);
}

function isGroupLike(chat) {
  return chat.endsWith('@g.us') || chat.endsWith('@broadcast');
}

/** The chat a message belongs to. */
function chatOf(msg) {
  const remote = msg.id ? serialized(msg.id.remote) : null;
  if (remote) return remote;
  return serialized(msg.fromMe ? msg.to : msg.from);
}

/** Who sent a message, in the library's dialect. */
function senderOf(msg, chat, fromMe, me) {
  if (fromMe) return me || null;
  if (isGroupLike(chat)) return serialized(msg.author) || null;
  return serialized(msg.from) || chat;
}

/**
 * The `message` event data for a Message, or null when it is not a message the host hears of.
 * @param {object} msg a whatsapp-web.js Message
 * @param {string|null} me the account's serialised wid
 * @returns {object|null}
 */
function message(msg, me) {
  if (!msg || !msg.id || typeof msg.id.id !== 'string' || !msg.id.id) return null;
  if (NOT_MESSAGES.has(msg.type)) return null;
  const chat = chatOf(msg);
  if (!chat) return null;
  const fromMe = Boolean(msg.fromMe !== undefined ? msg.fromMe : msg.id.fromMe);
  const type = TYPES[msg.type] || 'unknown';
  const hasMedia = MEDIA_TYPES.has(type);
  let body = null;
  if (type === 'text') body = typeof msg.body === 'string' ? msg.body : '';
  else if (hasMedia) body = typeof msg.body === 'string' && msg.body ? msg.body : null; // the caption
  const data = msg._data || {};
  return {
    id: msg.id.id,
    chat,
    sender: senderOf(msg, chat, fromMe, me),
    fromMe,
    timestamp: seconds(msg.timestamp),
    type,
    body,
    quotedId: typeof data.quotedStanzaID === 'string' && data.quotedStanzaID ? data.quotedStanzaID : null,
    hasMedia,
    pushName: typeof data.notifyName === 'string' && data.notifyName ? data.notifyName : null,
  };
}

/**
 * The `ack` event data for a `message_ack`, or null (not our message, or pending).
 * @param {object} msg
 * @param {number} ack
 * @returns {object|null}
 */
function ack(msg, ack) {
  if (!msg || !msg.id || !msg.id.id) return null;
  const fromMe = Boolean(msg.fromMe !== undefined ? msg.fromMe : msg.id.fromMe);
  const status = ACK_STATUS.get(Number(ack));
  const chat = chatOf(msg);
  if (!fromMe || !status || !chat) return null;
  return { id: msg.id.id, chat, status };
}

/**
 * The `revoke` event data for a `message_revoke_everyone` (the message as it is now,
 * revoked, under its original id).
 * @param {object} msg
 * @param {string|null} me
 * @returns {object|null}
 */
function revoke(msg, me) {
  if (!msg || !msg.id || !msg.id.id) return null;
  const chat = chatOf(msg);
  if (!chat) return null;
  const fromMe = Boolean(msg.fromMe !== undefined ? msg.fromMe : msg.id.fromMe);
  return { chat, id: msg.id.id, sender: senderOf(msg, chat, fromMe, me), fromMe };
}

/**
 * The `reaction` event data for a `message_reaction`: `id` names the message reacted to.
 * @param {object} reaction a whatsapp-web.js Reaction
 * @param {string|null} me
 * @returns {object|null}
 */
function reaction(reaction, me) {
  const target = reaction && reaction.msgId;
  if (!target || !target.id) return null;
  const chat = serialized(target.remote);
  if (!chat) return null;
  const fromMe = Boolean(reaction.id && reaction.id.fromMe);
  return {
    chat,
    id: target.id,
    emoji: typeof reaction.reaction === 'string' ? reaction.reaction : '',
    sender: fromMe ? me || null : serialized(reaction.senderId),
    fromMe,
  };
}

/**
 * The account as the protocol shows it, from `client.info`.
 * @param {object|undefined} info
 * @returns {{id: string|null, name: string|null}}
 */
function account(info) {
  return {
    id: (info && serialized(info.wid)) || null,
    name: (info && typeof info.pushname === 'string' && info.pushname) || null,
  };
}

module.exports = { message, ack, revoke, reaction, account, seconds };
