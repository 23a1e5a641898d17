'use strict';

/**
 * The sidecar proper: settings from `init`, the session table, request dispatch,
 * process-level error reporting and the orderly exit.
 */

const { createProtocol, ReplyError } = require('./protocol');
const { createConverter } = require('./convert');
const { Session } = require('./session');
const params = require('./params');
const { LEVEL_NAMES } = require('./stdio');

const DEFAULT_MAX_LINE_BYTES = 1024 * 1024;
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
  const settings = { initialized: false, maxLineBytes: DEFAULT_MAX_LINE_BYTES };
  /** @type {Map<string, Session>} */
  const sessions = new Map();
  /** Per-session chains that keep start/stop/logout of one session in order. */
  const queues = new Map();
  const converter = createConverter(deps.baileys);
  let shuttingDown = false;

  const log = (level, msg, fields) => logger[level](fields || {}, msg);

  const protocol = createProtocol({
    writer,
    maxLineBytes: () => settings.maxLineBytes,
    onRequest: (method, p) => {
      const handler = METHODS[method];
      if (!handler) throw new ReplyError('unknown_method', `unknown method ${JSON.stringify(method)}`);
      return handler(p);
    },
    log,
  });

  /** Run fn after every earlier lifecycle request of the same session. */
  function enqueue(id, fn) {
    const previous = queues.get(id) || Promise.resolve();
    const run = previous.then(fn);
    const tail = run.catch(() => {});
    queues.set(id, tail);
    tail.then(() => {
      if (queues.get(id) === tail) queues.delete(id);
    });
    return run;
  }

  function requireInit() {
    if (!settings.initialized) throw new ReplyError('internal', 'init must come before session requests');
    if (shuttingDown) throw new ReplyError('internal', 'the sidecar is shutting down');
  }

  function existing(id) {
    const session = sessions.get(id);
    if (!session) throw new ReplyError('no_session', `session ${JSON.stringify(id)} is not on this sidecar`);
    return session;
  }

  function memory() {
    const { rss, heapUsed, heapTotal } = process.memoryUsage();
    return { rss, heapUsed, heapTotal };
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
        if (shuttingDown) throw new ReplyError('internal', 'the sidecar is shutting down');
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
      if (typeof global.gc !== 'function') throw new ReplyError('internal', 'node was started without --expose-gc');
      global.gc();
      const { heapUsed, rss } = process.memoryUsage();
      return { heapUsed, rss };
    },
  };

  let reporting = false;
  /**
   * Turn a process-level failure into a sidecar-wide `error` event.
   * @param {string} code uncaught_exception or unhandled_rejection
   * @param {unknown} err
   */
  function reportCrash(code, err) {
    const message = (err && err.message) || String(err);
    log('error', `${code}: ${(err && err.stack) || message}`);
    if (reporting) return; // a failure while reporting one: the log line has to do
    reporting = true;
    try {
      protocol.event('error', undefined, { code, message });
    } finally {
      reporting = false;
    }
  }

  /**
   * End every socket, let auth writes land, flush stdout, exit. Idempotent.
   * @param {string} why
   */
  async function shutdown(why) {
    if (shuttingDown) return;
    shuttingDown = true;
    log('info', `exiting: ${why}`);
    const hardStop = setTimeout(() => exit(0), EXIT_BUDGET_MS + 300);
    const all = [...sessions.values()];
    sessions.clear();
    for (const session of all) {
      try {
        session.dispose();
      } catch (err) {
        log('error', `teardown failed: ${err.message}`, { session: session.id });
      }
    }
    await Promise.all(all.map((session) => session.settle(EXIT_BUDGET_MS - 300)));
    await writer.drained(200);
    clearTimeout(hardStop);
    exit(0);
  }

  return {
    handleLine: (line) => protocol.handleLine(line),
    maxLineBytes: () => settings.maxLineBytes,
    lineTooLong(bytes) {
      log('warn', `input line over maxLineBytes (${bytes}+ bytes) dropped`);
      protocol.event('error', undefined, {
        code: 'line_too_long',
        message: `an input line exceeded maxLineBytes (${settings.maxLineBytes}); it was dropped`,
      });
    },
    hello() {
      protocol.hello({ library: 'baileys', libraryVersion: deps.version, node: process.versions.node, pid: process.pid });
    },
    reportCrash,
    shutdown,
  };
}

module.exports = { createSidecar };
