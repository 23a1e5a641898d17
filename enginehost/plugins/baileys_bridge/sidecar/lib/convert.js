'use strict';

/**
 * Baileys events → protocol events. Pure functions over the library's message objects;
 * the output holds only JSON values (protobuf Longs become numbers).
 */

/** Message content keys → the host's message types. */
const CONTENT_TYPES = {
  conversation: 'text',
  extendedTextMessage: 'text',
  imageMessage: 'image',
  videoMessage: 'video',
  ptvMessage: 'video',
  audioMessage: 'audio',
  documentMessage: 'document',
  stickerMessage: 'sticker',
  locationMessage: 'location',
  liveLocationMessage: 'location',
  contactMessage: 'contact',
  contactsArrayMessage: 'contact',
};

const MEDIA_TYPES = new Set(['image', 'video', 'audio', 'document', 'sticker']);

/**
 * Content that is bookkeeping between devices rather than something a person sent:
 * never reported as a message (revokes and reactions are handled before this check).
 */
const NOT_MESSAGES = new Set([
  'protocolMessage',
  'senderKeyDistributionMessage',
  'pollUpdateMessage',
  'encReactionMessage',
  'keepInChatMessage',
  'pinInChatMessage',
]);

/**
 * Upsert types whose messages from other people are reported. `append` is included:
 * Baileys files messages that reached it from the server's offline queue (sent while
 * this device was disconnected) under `append`, and a consolidated buffer flush labels
 * a mixed batch with the type of its first message.
 */
const REPORTED_UPSERT_TYPES = new Set(['notify', 'append']);

/**
 * @param {object} baileys the loaded library
 */
function createConverter(baileys) {
  const { normalizeMessageContent, getContentType, toNumber, jidNormalizedUser, isJidGroup, isJidBroadcast, proto } = baileys;
  const REVOKE = proto.Message.ProtocolMessage.Type.REVOKE;
  const Status = proto.WebMessageInfo.Status;
  const ACK_STATUS = new Map([
    [Status.ERROR, 'failed'],
    [Status.SERVER_ACK, 'sent'],
    [Status.DELIVERY_ACK, 'delivered'],
    [Status.READ, 'read'],
    [Status.PLAYED, 'read'],
  ]);

  function seconds(value) {
    const number = value === null || value === undefined ? NaN : Number(toNumber(value));
    return Number.isFinite(number) ? number : Math.floor(Date.now() / 1000);
  }

  /** Who sent a message, in the library's dialect. */
  function senderOf(msg, me) {
    const key = msg.key;
    if (key.fromMe) return me && me.id ? jidNormalizedUser(me.id) : null;
    if (isJidGroup(key.remoteJid) || isJidBroadcast(key.remoteJid)) {
      return key.participant || msg.participant || null;
    }
    return key.remoteJid || null;
  }

  function textOf(type, value) {
    if (typeof value === 'string') return value; // conversation
    if (!value || typeof value !== 'object') return null;
    if (type === 'extendedTextMessage') return value.text || '';
    return typeof value.caption === 'string' && value.caption ? value.caption : null;
  }

  /**
   * Protocol events for one message of a `messages.upsert`.
   * @param {object} msg a WebMessageInfo
   * @param {string} upsertType notify, append, …
   * @param {{id: string}|undefined} me the account
   * @returns {{name: string, data: object}[]}
   */
  function messageEvents(msg, upsertType, me) {
    const key = msg && msg.key;
    if (!key || !key.remoteJid || !key.id) return [];
    const fromMe = Boolean(key.fromMe);
    if (!fromMe && !REPORTED_UPSERT_TYPES.has(upsertType)) return [];
    const content = normalizeMessageContent(msg.message);
    if (!content) return []; // stubs (group notices, call logs) carry no content
    const chat = key.remoteJid;
    const sender = senderOf(msg, me);

    const protocolMessage = content.protocolMessage;
    if (protocolMessage) {
      if (protocolMessage.type === REVOKE && protocolMessage.key && protocolMessage.key.id) {
        return [{ name: 'revoke', data: { chat, id: protocolMessage.key.id, sender, fromMe } }];
      }
      return [];
    }
    const reaction = content.reactionMessage;
    if (reaction) {
      if (!reaction.key || !reaction.key.id) return [];
      return [{ name: 'reaction', data: { chat, id: reaction.key.id, emoji: reaction.text || '', sender, fromMe } }];
    }

    const contentKey = getContentType(content);
    if (!contentKey || NOT_MESSAGES.has(contentKey)) return [];
    const type = CONTENT_TYPES[contentKey] || 'unknown';
    const value = content[contentKey];
    const contextInfo = value && typeof value === 'object' ? value.contextInfo : null;
    return [
      {
        name: 'message',
        data: {
          id: key.id,
          chat,
          sender,
          fromMe,
          timestamp: seconds(msg.messageTimestamp),
          type,
          body: textOf(contentKey, value),
          quotedId: (contextInfo && contextInfo.stanzaId) || null,
          hasMedia: MEDIA_TYPES.has(type),
          pushName: msg.pushName || null,
        },
      },
    ];
  }

  /**
   * Protocol events for a `messages.upsert` payload.
   * @param {{messages: object[], type: string}} upsert
   * @param {{id: string}|undefined} me
   * @returns {{name: string, data: object}[]}
   */
  function upsertEvents(upsert, me) {
    const events = [];
    for (const msg of upsert.messages || []) {
      events.push(...messageEvents(msg, upsert.type, me));
    }
    return events;
  }

  /**
   * `ack` events for a `messages.update` payload: status changes of own messages.
   * @param {{key: object, update: object}[]} updates
   * @returns {{name: string, data: object}[]}
   */
  function updateEvents(updates) {
    const events = [];
    for (const { key, update } of updates || []) {
      if (!key || !key.fromMe || !update || update.status === undefined || update.status === null) continue;
      const status = ACK_STATUS.get(Number(update.status));
      if (!status) continue; // PENDING: nothing the host needs to hear
      events.push({ name: 'ack', data: { id: key.id, chat: key.remoteJid, status } });
    }
    return events;
  }

  /**
   * The account as the protocol shows it.
   * @param {{id: string, name?: string}|undefined} me
   * @returns {{id: string|null, name: string|null}}
   */
  function account(me) {
    return { id: (me && me.id) || null, name: (me && me.name) || null };
  }

  return { upsertEvents, updateEvents, account, seconds };
}

module.exports = { createConverter };
