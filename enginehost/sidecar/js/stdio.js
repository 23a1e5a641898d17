'use strict';

/**
 * The sidecar's standard streams (shared by every Node sidecar of enginehost).
 *
 * stdout belongs to the protocol alone: its writer is captured here before any library
 * is loaded, and everything else that would write there (console.*, a stray
 * process.stdout.write) is turned into a JSON log line on stderr instead. stdin is
 * split into lines without ever holding more than one line's worth of bytes.
 */

const fs = require('fs');
const util = require('util');

/** pino's level numbers, which the host reads from every stderr line. */
const LEVELS = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60 };
const LEVEL_NAMES = Object.keys(LEVELS).concat(['silent']);

/**
 * Where log records go: a plain JSON writer on fd 2 until the library's pino logger
 * exists, then that logger (so every stderr line has the same shape and one writer).
 */
const sink = { logger: null, threshold: LEVELS.info };

/**
 * Write one log record to stderr.
 * @param {string} level a pino level name
 * @param {string} msg
 * @param {object} [fields] extra fields (for example `session`)
 */
function log(level, msg, fields) {
  if (sink.logger) {
    sink.logger[level](fields || {}, msg);
    return;
  }
  if (LEVELS[level] < sink.threshold) return;
  const record = { level: LEVELS[level], time: Date.now(), pid: process.pid, ...fields, msg };
  try {
    fs.writeSync(2, `${JSON.stringify(record)}\n`);
  } catch {
    // stderr gone: nothing sensible left to do with a log line.
  }
}

/**
 * Hand logging over to a pino logger (created once the library is loaded).
 * @param {object} logger a pino logger writing to fd 2
 */
function useLogger(logger) {
  sink.logger = logger;
}

/**
 * Make a pino logger that writes JSON lines to stderr.
 * @param {Function} pino the pino module
 * @param {string} level a pino level name
 * @returns {object}
 */
function createLogger(pino, level) {
  // Synchronous writes: a log line is never lost when the process exits right after it.
  return pino({ level, base: { pid: process.pid } }, pino.destination({ dest: 2, sync: true }));
}

/**
 * A small logger with pino's interface and output, for sidecars whose library brings no
 * pino: `logger.info(fields, msg)` or `logger.info(msg)`, `child(bindings)`, a settable
 * `level`. Children follow the root's level (changed by `init` after they exist).
 * Lines are written synchronously to fd 2 as `{level, time, pid, ...bindings, ...fields, msg}`.
 * @param {string} level a pino level name
 * @returns {object}
 */
function createJsonLogger(level) {
  const root = { threshold: LEVELS[level] === undefined ? Infinity : LEVELS[level], name: level };

  function serialise(value) {
    if (value instanceof Error) return { type: value.name, message: value.message, stack: value.stack };
    return value;
  }

  function make(bindings) {
    const logger = {
      get level() {
        return root.name;
      },
      set level(name) {
        if (!LEVEL_NAMES.includes(name)) throw new Error(`unknown log level ${name}`);
        root.name = name;
        root.threshold = name === 'silent' ? Infinity : LEVELS[name];
      },
      child(more) {
        return make({ ...bindings, ...more });
      },
    };
    for (const [name, number] of Object.entries(LEVELS)) {
      logger[name] = (fields, msg) => {
        if (number < root.threshold) return;
        let extra = fields;
        let text = msg;
        if (typeof fields === 'string' || fields instanceof Error) {
          text = typeof fields === 'string' ? fields : fields.message;
          extra = fields instanceof Error ? { err: fields } : {};
        }
        const record = { level: number, time: Date.now(), pid: process.pid, ...bindings };
        for (const [key, value] of Object.entries(extra || {})) record[key] = serialise(value);
        record.msg = text === undefined ? '' : String(text);
        let line;
        try {
          line = JSON.stringify(record);
        } catch {
          line = JSON.stringify({ level: number, time: record.time, pid: process.pid, ...bindings, msg: record.msg });
        }
        try {
          fs.writeSync(2, `${line}\n`);
        } catch {
          // stderr gone: nothing sensible left to do with a log line.
        }
      };
    }
    return logger;
  }

  return make({});
}

/**
 * Send console.* to stderr as JSON log lines. Libraries call console directly (Baileys'
 * libsignal, whatsapp-web.js); on stdout those lines would corrupt the protocol.
 */
function redirectConsole() {
  const methods = {
    log: 'info',
    info: 'info',
    warn: 'warn',
    error: 'error',
    debug: 'debug',
    trace: 'trace',
  };
  for (const [method, level] of Object.entries(methods)) {
    console[method] = (...args) => log(level, util.format(...args), { source: 'console' });
  }
  console.dir = (value, options) => log('info', util.inspect(value, options), { source: 'console' });
}

/**
 * A line writer for the protocol on a writable stream. Lines are written whole, in
 * order, one write each; when the stream signals back-pressure the following lines
 * wait in memory until it drains, so none is lost and none interleaves.
 * @param {import('stream').Writable} stream
 * @param {(chunk: string) => boolean} write the stream's original write function
 * @returns {{write: (line: string) => void, drained: (timeoutMs: number) => Promise<void>, dead: () => boolean}}
 */
function createLineWriter(stream, write) {
  const waiting = [];
  let blocked = false;
  let broken = false;

  stream.on('error', (err) => {
    // EPIPE and friends: the reader is gone. Keep quiet; stdin EOF ends the process.
    broken = true;
    waiting.length = 0;
    log('warn', `stdout failed: ${err.message}`);
  });

  function pump() {
    blocked = false;
    while (waiting.length && !blocked && !broken) {
      writeNow(waiting.shift());
    }
  }

  function writeNow(line) {
    if (!write(line)) {
      blocked = true;
      stream.once('drain', pump);
    }
  }

  return {
    write(line) {
      if (broken) return;
      if (blocked) waiting.push(line);
      else writeNow(line);
    },
    /** Resolves once every queued line has been handed to the OS (or after timeoutMs). */
    drained(timeoutMs) {
      return new Promise((resolve) => {
        const timer = setTimeout(finish, timeoutMs);
        function finish() {
          clearTimeout(timer);
          clearInterval(poll);
          resolve();
        }
        const poll = setInterval(() => {
          if (broken || (!waiting.length && !blocked && !stream.writableLength)) finish();
        }, 5);
        if (broken || (!waiting.length && !blocked && !stream.writableLength)) finish();
      });
    },
    dead: () => broken,
  };
}

/**
 * Take stdout for the protocol: returns its line writer and turns any other write to
 * process.stdout into a log line.
 * @returns {ReturnType<typeof createLineWriter>}
 */
function captureStdout() {
  const stdout = process.stdout;
  const write = stdout.write.bind(stdout);
  stdout.write = (chunk, encoding, callback) => {
    const text = Buffer.isBuffer(chunk) ? chunk.toString('utf8') : String(chunk);
    log('info', text.replace(/\n$/, ''), { source: 'stdout' });
    const done = typeof encoding === 'function' ? encoding : callback;
    if (typeof done === 'function') process.nextTick(done);
    return true;
  };
  return createLineWriter(stdout, write);
}

/**
 * Split a byte stream into lines of at most maxBytes bytes (the newline not counted).
 * A longer line is reported once, as soon as it crosses the limit, and its bytes are
 * dropped up to the next newline: memory stays bounded whatever the sender does.
 * @param {() => number} maxBytes read on every chunk, so `init` can change it
 * @param {(line: string) => void} onLine
 * @param {(bytesSoFar: number) => void} onTooLong
 * @returns {(chunk: Buffer) => void} feed one chunk
 */
function createLineSplitter(maxBytes, onLine, onTooLong) {
  let parts = [];
  let size = 0;
  let discarding = false;

  return function feed(chunk) {
    const limit = maxBytes();
    let start = 0;
    for (;;) {
      const newline = chunk.indexOf(10, start);
      const end = newline === -1 ? chunk.length : newline;
      const piece = chunk.subarray(start, end);
      if (!discarding) {
        if (size + piece.length > limit) {
          onTooLong(size + piece.length);
          discarding = true;
          parts = [];
          size = 0;
        } else if (piece.length) {
          parts.push(piece);
          size += piece.length;
        }
      }
      if (newline === -1) break;
      if (!discarding && size) {
        const line = parts.length === 1 ? parts[0] : Buffer.concat(parts, size);
        parts = [];
        size = 0;
        onLine(line.toString('utf8'));
      }
      discarding = false;
      start = newline + 1;
    }
  };
}

module.exports = {
  LEVELS,
  LEVEL_NAMES,
  log,
  useLogger,
  createLogger,
  createJsonLogger,
  redirectConsole,
  captureStdout,
  createLineWriter,
  createLineSplitter,
};
