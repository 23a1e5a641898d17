'use strict';

/**
 * What every sidecar does whatever library it hosts: the settings `init` sets, request
 * dispatch, per-session ordering of lifecycle requests, process-level error reporting,
 * the line-limit bookkeeping and the orderly exit. A sidecar supplies its methods and
 * how to end its sessions; see docs/sidecar-protocol.md.
 */

const { createProtocol, ReplyError } = require('./protocol');

const DEFAULT_MAX_LINE_BYTES = 1024 * 1024;

/**
 * @param {object} options
 * @param {{write: Function, drained: Function}} options.writer the stdout line writer
 * @param {object} options.logger the root logger (pino's interface)
 * @param {(code: number) => void} options.exit ends the process
 * @param {string} options.library the `library` of the hello line
 * @param {string} options.libraryVersion
 * @param {number} options.exitBudgetMs how long the exit may take before it is forced
 *   (the protocol wants the process gone within 2 s of EOF)
 */
function createCore({ writer, logger, exit, library, libraryVersion, exitBudgetMs }) {
  const settings = { initialized: false, maxLineBytes: DEFAULT_MAX_LINE_BYTES };
  /** Per-session chains that keep start/stop/logout of one session in order. */
  const queues = new Map();
  let methods = {};
  /** Ends every session within the budget it is given (ms); set by the sidecar. */
  let closeSessions = async () => {};
  let shuttingDown = false;

  const log = (level, msg, fields) => logger[level](fields || {}, msg);

  const protocol = createProtocol({
    writer,
    maxLineBytes: () => settings.maxLineBytes,
    onRequest: (method, p) => {
      const handler = Object.prototype.hasOwnProperty.call(methods, method) ? methods[method] : null;
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

  function memory() {
    const { rss, heapUsed, heapTotal } = process.memoryUsage();
    return { rss, heapUsed, heapTotal };
  }

  /** `debug.gc`, the same for every sidecar. */
  function gc() {
    if (typeof global.gc !== 'function') throw new ReplyError('internal', 'node was started without --expose-gc');
    global.gc();
    const { heapUsed, rss } = process.memoryUsage();
    return { heapUsed, rss };
  }

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
   * End every session, flush stdout, exit. Idempotent.
   * @param {string} why
   */
  async function shutdown(why) {
    if (shuttingDown) return;
    shuttingDown = true;
    log('info', `exiting: ${why}`);
    const hardStop = setTimeout(() => exit(0), exitBudgetMs + 300);
    try {
      await closeSessions(exitBudgetMs - 300);
    } catch (err) {
      log('error', `ending the sessions failed: ${(err && err.stack) || err}`);
    }
    await writer.drained(200);
    clearTimeout(hardStop);
    exit(0);
  }

  return {
    settings,
    protocol,
    log,
    enqueue,
    requireInit,
    memory,
    gc,
    shuttingDown: () => shuttingDown,
    /** @param {Record<string, (params: object) => (object|Promise<object>)>} table */
    setMethods(table) {
      methods = table;
    },
    /** @param {(budgetMs: number) => Promise<void>} fn */
    onShutdown(fn) {
      closeSessions = fn;
    },

    // What the entry point (main.js) drives.
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
      protocol.hello({ library, libraryVersion, node: process.versions.node, pid: process.pid });
    },
    reportCrash,
    shutdown,
  };
}

module.exports = { createCore, DEFAULT_MAX_LINE_BYTES };
