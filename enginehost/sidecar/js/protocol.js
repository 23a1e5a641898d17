'use strict';

/**
 * The JSON-lines protocol with the host: framing, requests in both directions and
 * their replies, events. It knows nothing about sessions or Baileys.
 */

const PROTOCOL_VERSION = 1;

/** A request failure with one of the protocol's error codes. */
class ReplyError extends Error {
  /**
   * @param {string} code unknown_method, bad_params, no_session, not_connected, send_failed, internal
   * @param {string} message
   */
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/**
 * @param {object} options
 * @param {{write: (line: string) => void}} options.writer the stdout line writer
 * @param {() => number} options.maxLineBytes the current line limit
 * @param {(method: string, params: object) => (object|Promise<object>)} options.onRequest
 *   runs a host request; throws/rejects a ReplyError to answer with an error
 * @param {(level: string, msg: string, fields?: object) => void} options.log
 */
function createProtocol({ writer, maxLineBytes, onRequest, log }) {
  const pending = new Map();
  let nextId = 1;

  /** Serialise and write one message, never a line longer than maxLineBytes. */
  function send(message) {
    let line;
    try {
      line = JSON.stringify(message);
    } catch (err) {
      log('error', `could not serialise a ${message.type}: ${err.message}`);
      if (message.type === 'reply') {
        send(errorReply(message.id, 'internal', `unserialisable result: ${err.message}`));
      } else if (message.type === 'event') {
        sendEvent('error', message.session, { code: 'internal', message: `unserialisable ${message.event} event` });
      }
      return false;
    }
    const bytes = Buffer.byteLength(line);
    if (bytes > maxLineBytes()) {
      log('warn', `dropping a ${bytes}-byte ${message.type} line`, message.session ? { session: message.session } : undefined);
      if (message.type === 'reply') {
        send(errorReply(message.id, 'internal', `the reply (${bytes} bytes) exceeds maxLineBytes`));
      } else if (message.type === 'event') {
        sendEvent('error', message.session, {
          code: 'line_too_long',
          message: `a ${message.event} event of ${bytes} bytes exceeds maxLineBytes`,
        });
      }
      return false;
    }
    writer.write(`${line}\n`);
    return true;
  }

  function errorReply(id, code, message) {
    return { type: 'reply', id, ok: false, error: { code, message } };
  }

  /**
   * Emit an event; `session` undefined makes it sidecar-wide.
   * @param {string} name
   * @param {string|undefined} session
   * @param {object} data
   */
  function sendEvent(name, session, data) {
    const message = { type: 'event', event: name };
    if (session !== undefined) message.session = session;
    message.data = data;
    return send(message);
  }

  function badLine(message) {
    sendEvent('error', undefined, { code: 'bad_line', message });
  }

  function runRequest(id, method, params) {
    let answered = false;
    const answer = (message) => {
      if (answered) return;
      answered = true;
      send(message);
    };
    const fail = (err) => {
      if (err instanceof ReplyError) {
        answer(errorReply(id, err.code, err.message));
      } else {
        log('error', `request ${method} failed: ${(err && err.stack) || err}`);
        answer(errorReply(id, 'internal', String((err && err.message) || err)));
      }
    };
    try {
      const result = onRequest(method, params);
      if (result && typeof result.then === 'function') {
        result.then((value) => answer({ type: 'reply', id, ok: true, result: value || {} }), fail);
      } else {
        // Synchronous methods (ping, debug.*) answer in the same tick.
        answer({ type: 'reply', id, ok: true, result: result || {} });
      }
    } catch (err) {
      fail(err);
    }
  }

  function takeReply(message) {
    const waiter = pending.get(message.id);
    if (!waiter) {
      log('warn', `reply to an unknown request id ${JSON.stringify(message.id)}`);
      return;
    }
    pending.delete(message.id);
    clearTimeout(waiter.timer);
    if (message.ok === true) waiter.resolve(message.result || {});
    else waiter.reject(new ReplyError((message.error && message.error.code) || 'internal', (message.error && message.error.message) || 'request failed'));
  }

  return {
    /** Handle one line read from stdin (without its newline). */
    handleLine(line) {
      if (!line.trim()) return;
      let message;
      try {
        message = JSON.parse(line);
      } catch (err) {
        badLine(`not JSON: ${err.message}`);
        return;
      }
      if (!message || typeof message !== 'object' || Array.isArray(message)) {
        badLine('a line must be a JSON object');
        return;
      }
      if (message.type === 'request') {
        if (typeof message.id !== 'string' || !message.id) {
          badLine('a request needs a non-empty string id');
          return;
        }
        if (typeof message.method !== 'string') {
          send(errorReply(message.id, 'bad_params', 'method: must be a string'));
          return;
        }
        const params = message.params === undefined || message.params === null ? {} : message.params;
        if (typeof params !== 'object' || Array.isArray(params)) {
          send(errorReply(message.id, 'bad_params', 'params: must be an object'));
          return;
        }
        runRequest(message.id, message.method, params);
      } else if (message.type === 'reply') {
        takeReply(message);
      } else {
        badLine(`unexpected message type ${JSON.stringify(message.type)}`);
      }
    },

    event: sendEvent,

    /** Write the unprompted first line. */
    hello(fields) {
      send({ type: 'hello', protocol: PROTOCOL_VERSION, ...fields });
    },

    /**
     * Ask the host something. Rejects with a ReplyError on an error reply, on timeout
     * (code `timeout`) or when the request could not be written.
     * @param {string} method
     * @param {object} params
     * @param {number} timeoutMs
     * @returns {Promise<object>}
     */
    request(method, params, timeoutMs) {
      return new Promise((resolve, reject) => {
        const id = `s${nextId++}`;
        const timer = setTimeout(() => {
          pending.delete(id);
          reject(new ReplyError('timeout', `${method} got no reply within ${timeoutMs} ms`));
        }, timeoutMs);
        pending.set(id, { resolve, reject, timer });
        if (!send({ type: 'request', id, method, params })) {
          pending.delete(id);
          clearTimeout(timer);
          reject(new ReplyError('internal', `${method} could not be sent`));
        }
      });
    },
  };
}

module.exports = { createProtocol, ReplyError, PROTOCOL_VERSION };
