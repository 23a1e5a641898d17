'use strict';

/**
 * The Baileys sidecar proper: settings from `init`, the session table and the methods.
 * The protocol plumbing, request ordering, process-level error reporting and the
 * orderly exit are shared with the other sidecars (enginehost/sidecar/js/core.js).
 */

const { ReplyError } = require('../../../../sidecar/js/protocol');
const params = require('../../../../sidecar/js/params');
const { LEVEL_NAMES } = require('../../../../sidecar/js/stdio');
const { createCore, DEFAULT_MAX_LINE_BYTES } = require('../../../../sidecar/js/core');
const { createConverter } = require('./convert');
const { Session } = require('./session');

/** The exit must finish within 2 s of EOF; this leaves room for the process to go. */
const EXIT_BUDGET_MS = 1500;

/**
 * @param {object} options
 * @param {object} options.deps loaded packages ({baileys, pino, NodeCache, version})
 * @param {{write: Function, drained: Function}} options.writer the stdout line writer
 * @param {object} options.logger the root pino logger
 * @param {(code: number) => void} options.exit ends the process
 */
function createSidecar({ deps, writer, logger, exit }) {
  const core = createCore({
    writer,
    logger,
    exit,
    library: 'baileys',
    libraryVersion: deps.version,
    exitBudgetMs: EXIT_BUDGET_MS,
  });
  const { settings, protocol, enqueue, requireInit, memory } = core;
  /** @type {Map<string, Session>} */
  const sessions = new Map();
  const converter = createConverter(deps.baileys);
  const log = core.log;

  function existing(id) {
    const session = sessions.get(id);
    if (!session) throw new ReplyError('no_session', `session ${JSON.stringify(id)} is not on this sidecar`);
    return session;
  }

  const METHODS = {
    init(p) {
      const next = {
        websocketUrl: params.optionalUrl(p, 'websocketUrl'),
        browserName: params.string(p, 'browserName'),
        connectTimeoutMs: params.positiveInt(p, 'connectTimeoutMs'),
        logLevel: params.oneOf(p, 'logLevel', LEVEL_NAMES),
        markOnlineOnConnect: params.boolean(p, 'markOnlineOnConnect'),
        syncFullHistory: params.boolean(p, 'syncFullHistory'),
        appStateTimeoutMs: params.positiveInt(p, 'appStateTimeoutMs'),
        connectWatchdogMs: params.positiveInt(p, 'connectWatchdogMs'),
        maxLineBytes: params.positiveInt(p, 'maxLineBytes', DEFAULT_MAX_LINE_BYTES),
      };
      Object.assign(settings, next, { initialized: true });
      // Session loggers are children made later, so they inherit this level.
      logger.level = next.logLevel;
      return {};
    },

    ping() {
      const { rss, heapUsed } = memory();
      return { sessions: sessions.size, rss, heapUsed };
    },

    'session.start'(p) {
      requireInit();
      const id = params.string(p, 'session');
      const authDir = params.absolutePath(p, 'authDir');
      const pairingPhone = params.phone(p, 'pairingPhone', true);
      return enqueue(id, async () => {
        if (core.shuttingDown()) throw new ReplyError('internal', 'the sidecar is shutting down');
        let session = sessions.get(id);
        if (!session) {
          session = new Session({ id, deps, settings, protocol, logger, converter });
          sessions.set(id, session);
        }
        await session.start({ authDir, pairingPhone });
        return {};
      });
    },

    'session.stop'(p) {
      const id = params.string(p, 'session');
      return enqueue(id, async () => {
        const session = sessions.get(id);
        if (!session) return {};
        sessions.delete(id);
        await session.stop();
        session.dispose();
        return {};
      });
    },

    'session.logout'(p) {
      const id = params.string(p, 'session');
      existing(id);
      return enqueue(id, async () => {
        const session = existing(id);
        sessions.delete(id);
        await session.logout();
        session.dispose();
        return {};
      });
    },

    'session.pairingCode'(p) {
      const id = params.string(p, 'session');
      const phone = params.phone(p, 'phone', false);
      return existing(id).pairingCode(phone);
    },

    'message.sendText'(p) {
      const id = params.string(p, 'session');
      const jid = params.jid(p, 'jid');
      const text = params.text(p, 'text');
      const quotedId = params.optionalString(p, 'quotedId');
      return existing(id).sendText(jid, text, quotedId);
    },

    'debug.stats'() {
      const stats = {};
      for (const [id, session] of sessions) stats[id] = session.stats();
      return { sessions: stats, ...memory() };
    },

    'debug.gc'() {
      return core.gc();
    },
  };

  core.setMethods(METHODS);

  // On exit: end every socket, then let the auth writes in flight land.
  core.onShutdown(async (budgetMs) => {
    const all = [...sessions.values()];
    sessions.clear();
    for (const session of all) {
      try {
        session.dispose();
      } catch (err) {
        log('error', `teardown failed: ${err.message}`, { session: session.id });
      }
    }
    await Promise.all(all.map((session) => session.settle(budgetMs)));
  });

  return core;
}

module.exports = { createSidecar };
