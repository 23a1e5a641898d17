'use strict';

/**
 * The whatsapp-web.js sidecar proper: settings from `init`, the session table and the
 * methods. The protocol plumbing, request ordering and the orderly exit are shared with
 * the other sidecars (enginehost/sidecar/js/core.js).
 */

const { ReplyError } = require('../../../../sidecar/js/protocol');
const params = require('../../../../sidecar/js/params');
const { LEVEL_NAMES } = require('../../../../sidecar/js/stdio');
const { createCore, DEFAULT_MAX_LINE_BYTES } = require('../../../../sidecar/js/core');
const { watchSpawns, killGroup, groupGone, live } = require('./browsers');
const { Session } = require('./session');

/** The exit must finish within 2 s of EOF; this leaves room for the process to go. */
const EXIT_BUDGET_MS = 1500;
/** LocalAuth's rule for a clientId, which the session id becomes. */
const SESSION_ID = /^[-_\w]+$/;

/**
 * @param {object} options
 * @param {object} options.deps loaded packages ({Client, LocalAuth, version})
 * @param {{write: Function, drained: Function}} options.writer the stdout line writer
 * @param {object} options.logger the root logger
 * @param {(code: number) => void} options.exit ends the process
 */
function createSidecar({ deps, writer, logger, exit }) {
  const core = createCore({
    writer,
    logger,
    exit,
    library: 'whatsapp-web.js',
    libraryVersion: deps.version,
    exitBudgetMs: EXIT_BUDGET_MS,
  });
  const { settings, protocol, enqueue, requireInit, memory, log } = core;
  /** @type {Map<string, Session>} */
  const sessions = new Map();
  const spawns = watchSpawns(log);

  // Whatever ends the process, no browser it started survives it. (puppeteer kills its
  // own on exit too; this also covers a browser spawned but not yet handed over.)
  process.on('exit', () => {
    for (const pid of live) killGroup(pid);
  });

  function existing(id) {
    const session = sessions.get(id);
    if (!session) throw new ReplyError('no_session', `session ${JSON.stringify(id)} is not on this sidecar`);
    return session;
  }

  function sessionId(p) {
    return params.matching(p, 'session', SESSION_ID, 'letters, digits, "-" or "_" (it names the browser profile)');
  }

  const METHODS = {
    init(p) {
      const next = {
        executablePath: params.string(p, 'executablePath'),
        chromiumArgs: params.stringList(p, 'chromiumArgs'),
        headless: params.boolean(p, 'headless'),
        webVersion: params.optionalString(p, 'webVersion'),
        webVersionCacheDir: params.optionalAbsolutePath(p, 'webVersionCacheDir'),
        initTimeoutMs: params.positiveInt(p, 'initTimeoutMs'),
        authTimeoutMs: params.nonNegativeInt(p, 'authTimeoutMs'),
        logLevel: params.oneOf(p, 'logLevel', LEVEL_NAMES),
        maxLineBytes: params.positiveInt(p, 'maxLineBytes', DEFAULT_MAX_LINE_BYTES),
      };
      Object.assign(settings, next, { initialized: true });
      logger.level = next.logLevel;
      if (next.webVersion && !next.webVersionCacheDir) {
        log('warn', 'webVersion has no effect without webVersionCacheDir: the page is whatever WhatsApp serves');
      }
      return {};
    },

    ping() {
      const { rss, heapUsed } = memory();
      return { sessions: sessions.size, rss, heapUsed };
    },

    'session.start'(p) {
      requireInit();
      const id = sessionId(p);
      const dataPath = params.absolutePath(p, 'dataPath');
      return enqueue(id, async () => {
        if (core.shuttingDown()) throw new ReplyError('internal', 'the sidecar is shutting down');
        let session = sessions.get(id);
        if (!session) {
          session = new Session({ id, deps, settings, protocol, logger, spawns });
          sessions.set(id, session);
        }
        try {
          await session.start({ dataPath });
        } catch (err) {
          // A session that never got a client is not kept (a refused profile, say).
          if (!session.run && !session.profileDir && sessions.get(id) === session) sessions.delete(id);
          throw err;
        }
        return {};
      });
    },

    'session.stop'(p) {
      const id = params.string(p, 'session');
      return enqueue(id, async () => {
        const session = sessions.get(id);
        if (!session) return {};
        sessions.delete(id);
        session.dispose();
        await session.stop();
        return {};
      });
    },

    'session.logout'(p) {
      const id = params.string(p, 'session');
      existing(id);
      return enqueue(id, async () => {
        const session = existing(id);
        sessions.delete(id);
        session.dispose();
        await session.logout();
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
      const chatId = params.jid(p, 'chatId', '123@c.us');
      const text = params.text(p, 'text');
      const quotedId = params.optionalString(p, 'quotedId');
      return existing(id).sendText(chatId, text, quotedId);
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

  // On exit: destroy every client within the budget, then kill what is left.
  core.onShutdown(async (budgetMs) => {
    const all = [...sessions.values()];
    sessions.clear();
    for (const session of all) session.dispose();
    const destroyMs = Math.max(100, budgetMs - 500);
    let timer;
    await Promise.race([
      Promise.all(all.map((session) => session.stop(destroyMs, 300))),
      new Promise((resolve) => {
        timer = setTimeout(resolve, budgetMs);
      }),
    ]);
    clearTimeout(timer);
    const left = [...live];
    for (const pid of left) killGroup(pid);
    // A moment for the kernel to take them: an exit right after the kill would let
    // the host see members of a group that is about to be empty.
    await Promise.all(left.map((pid) => groupGone(pid, 300)));
  });

  return core;
}

module.exports = { createSidecar };
