'use strict';

/**
 * One session: at most one Baileys socket at a time, and the teardown discipline that
 * keeps a replaced or stopped socket from leaking connections or stray events.
 *
 * Everything attached to a socket is recorded in its connection record (`conn`):
 * the unsubscribe function of the single `sock.ev.process` subscription and any timer.
 * Teardown detaches all of it first and only then calls `sock.end()`, so the synthetic
 * close that `end()` emits reaches nothing of ours.
 */

const os = require('os');
const { ReplyError } = require('../../../../sidecar/js/protocol');
const { useCrashSafeAuthState } = require('./auth-state');

const STORE_TIMEOUT_MS = 5000;
const LOGOUT_TIMEOUT_MS = 5000;

function noop() {}

/** Resolve with the promise's value, or reject after ms. */
function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

class Session {
  /**
   * @param {object} options
   * @param {string} options.id
   * @param {object} options.deps the loaded packages (baileys, NodeCache)
   * @param {object} options.settings the sidecar's settings from `init` (read live)
   * @param {object} options.protocol the host connection (events, requests)
   * @param {object} options.logger the root pino logger
   * @param {object} options.converter Baileys → protocol event conversion
   */
  constructor({ id, deps, settings, protocol, logger, converter }) {
    this.id = id;
    this.baileys = deps.baileys;
    this.NodeCache = deps.NodeCache;
    this.settings = settings;
    this.protocol = protocol;
    this.converter = converter;
    this.logger = logger.child({ session: id });
    /** The current socket and what hangs on it; null when there is none. */
    this.conn = null;
    /** Auth-state writes still in flight (awaited before stop/exit: a cut write corrupts creds). */
    this.writes = new Set();
    this.closed = false;
    // Caches that outlive any single socket: retry counters must survive reconnects,
    // and caches Baileys would otherwise create per socket keep a timer alive forever.
    const { DEFAULT_CACHE_TTLS } = this.baileys;
    const cache = (stdTTL) => new this.NodeCache({ stdTTL, useClones: false });
    this.caches = {
      msgRetryCounterCache: cache(DEFAULT_CACHE_TTLS.MSG_RETRY),
      placeholderResendCache: cache(DEFAULT_CACHE_TTLS.MSG_RETRY),
      callOfferCache: cache(DEFAULT_CACHE_TTLS.CALL_OFFER),
      userDevicesCache: cache(DEFAULT_CACHE_TTLS.USER_DEVICES),
    };
  }

  emit(name, data) {
    this.protocol.event(name, this.id, data);
  }

  /**
   * Create the session's socket, tearing down the one it already has.
   * @param {{authDir: string, pairingPhone: string|null}} options
   */
  async start({ authDir, pairingPhone }) {
    this.teardown();
    // The previous socket's last creds write (pairing writes `me` just before the 515
    // restart) must land before the files are read again.
    await this.settle(2000);
    const { makeCacheableSignalKeyStore, makeWASocket } = this.baileys;
    const { state, saveCreds } = await useCrashSafeAuthState(authDir, this.baileys, this.logger);
    if (this.closed) return; // stopped (or the sidecar is exiting) while the files loaded
    this.teardown(); // belt and braces: nothing may have created one meanwhile
    const settings = this.settings;
    const keyCache = new this.NodeCache({
      stdTTL: this.baileys.DEFAULT_CACHE_TTLS.SIGNAL_STORE,
      useClones: false,
      deleteOnExpire: true,
    });
    // A logger of this socket's own, silenced at teardown: the library keeps logging
    // failures of work that was in flight when the socket ended ("Connection Closed"),
    // which after a deliberate end are noise, not errors.
    const socketLogger = this.logger.child({});
    const keys = makeCacheableSignalKeyStore(this.trackedKeys(state.keys), socketLogger, keyCache);
    const config = {
      auth: { creds: state.creds, keys },
      logger: socketLogger,
      // browser[0] is the device name the phone lists; browser[1] must be a platform
      // WhatsApp knows.
      browser: [settings.browserName, 'Chrome', os.release()],
      connectTimeoutMs: settings.connectTimeoutMs,
      markOnlineOnConnect: settings.markOnlineOnConnect,
      syncFullHistory: settings.syncFullHistory,
      printQRInTerminal: false,
      getMessage: (key) => this.getMessage(key),
      ...this.caches,
    };
    if (settings.websocketUrl) config.waWebSocketUrl = settings.websocketUrl;
    const sock = makeWASocket(config);
    const conn = {
      sock,
      listeners: [],
      detached: false,
      sawQr: false,
      open: false,
      pairingPhone,
      pairingRequested: false,
      qrWaiters: [],
      keyCache,
      logger: socketLogger,
      watchdog: null,
      stuckTimer: null,
    };
    this.conn = conn;
    // Subscribed in the same tick as creation: Baileys emits its first update on the next tick.
    conn.listeners.push(sock.ev.process((events) => this.onEvents(conn, events, saveCreds)));
    conn.watchdog = setTimeout(() => this.onWatchdog(conn), settings.connectWatchdogMs);
  }

  /** Wrap the file key store so its writes are tracked like creds writes. */
  trackedKeys(store) {
    return {
      get: (type, ids) => store.get(type, ids),
      set: (data) => {
        const write = store.set(data);
        this.track(write);
        return write;
      },
    };
  }

  track(write) {
    const tracked = Promise.resolve(write)
      .catch((err) => this.logger.error({ err }, 'auth state write failed'))
      .finally(() => this.writes.delete(tracked));
    this.writes.add(tracked);
  }

  /**
   * Wait (bounded) for the auth-state writes in flight.
   * @param {number} timeoutMs
   */
  async settle(timeoutMs) {
    if (!this.writes.size) return;
    await withTimeout(Promise.allSettled([...this.writes]), timeoutMs, 'auth writes').catch((err) =>
      this.logger.warn({ err }, 'auth state writes still pending'),
    );
  }

  /** The text the host stored for a message this account sent; retry receipts need it. */
  async getMessage(key) {
    try {
      const result = await this.protocol.request(
        'store.getMessage',
        { session: this.id, jid: key.remoteJid, id: key.id, fromMe: Boolean(key.fromMe) },
        STORE_TIMEOUT_MS,
      );
      if (typeof result.text === 'string') return { conversation: result.text };
    } catch (err) {
      this.logger.warn({ err: err.message, id: key.id }, 'store.getMessage failed');
    }
    return undefined;
  }

  /** Dispatch one batch from `sock.ev.process`. Never throws into Baileys. */
  onEvents(conn, events, saveCreds) {
    if (conn.detached) return;
    try {
      if (events['creds.update']) this.track(saveCreds());
      const update = events['connection.update'];
      if (update) this.onConnectionUpdate(conn, update);
      if (conn.detached) return;
      const me = conn.sock.authState.creds.me;
      if (events['messages.upsert']) {
        for (const { name, data } of this.converter.upsertEvents(events['messages.upsert'], me)) {
          this.emit(name, data);
        }
      }
      if (events['messages.update']) {
        for (const { name, data } of this.converter.updateEvents(events['messages.update'])) {
          this.emit(name, data);
        }
      }
      // Close last: messages flushed in the same batch still reach the host.
      if (update && update.connection === 'close') this.onClose(conn, update.lastDisconnect);
    } catch (err) {
      this.logger.error({ err }, 'event handling failed');
      this.emit('error', { code: 'internal', message: `event handling failed: ${err.message}` });
    }
  }

  onConnectionUpdate(conn, update) {
    const { connection, qr, isNewLogin, receivedPendingNotifications } = update;
    const creds = conn.sock.authState.creds;
    if (qr) {
      clearTimeout(conn.watchdog);
      const first = !conn.sawQr;
      conn.sawQr = true;
      this.emit('qr', { qr });
      if (first) {
        for (const waiter of conn.qrWaiters.splice(0)) waiter.resolve();
        if (conn.pairingPhone) {
          this.requestPairingCode(conn, conn.pairingPhone).catch((err) => {
            this.logger.error({ err }, 'pairing code request failed');
            this.emit('error', { code: 'pairing_code_failed', message: err.message });
          });
        }
      }
    }
    if (isNewLogin) this.emit('authenticated', { me: this.converter.account(creds.me) });
    if (connection === 'open') {
      clearTimeout(conn.watchdog);
      conn.open = true;
      this.emit('open', { me: this.converter.account(creds.me) });
    }
    if (receivedPendingNotifications === true) this.watchAppState(conn);
  }

  /**
   * After the offline notifications, a session without the app-state key makes Baileys
   * buffer every event until the phone sends it (chats.js). If that takes longer than
   * appStateTimeoutMs, report it and release the buffer once.
   */
  watchAppState(conn) {
    if (conn.stuckTimer || conn.sock.authState.creds.myAppStateKeyId) return;
    const since = Date.now();
    conn.stuckTimer = setTimeout(() => {
      if (conn.detached) return;
      const { sock } = conn;
      if (sock.authState.creds.myAppStateKeyId || !sock.ev.isBuffering()) return;
      const bufferedFor = Date.now() - since;
      this.logger.warn({ bufferedFor }, 'events held waiting for the app-state key: releasing them');
      this.emit('stuck', { reason: 'no app-state key from the phone', bufferedFor });
      // One flush undoes the one buffer() Baileys took for the missing key.
      sock.ev.flush();
    }, this.settings.appStateTimeoutMs);
  }

  onWatchdog(conn) {
    if (conn.detached || conn.sawQr || conn.open) return;
    this.logger.warn('no QR and no open within connectWatchdogMs: ending the socket');
    this.teardown();
    this.emit('close', { code: 408, reason: 'connect watchdog' });
  }

  /** The library closed the connection by itself. */
  onClose(conn, lastDisconnect) {
    if (conn !== this.conn) return;
    const error = lastDisconnect && lastDisconnect.error;
    const status = error && error.output ? error.output.statusCode : undefined;
    const code = typeof status === 'number' ? status : null;
    const reason = (error && error.message) || 'connection closed';
    this.teardown();
    this.emit('close', { code, reason });
  }

  /** Drop every listener and timer the sidecar attached to this socket. */
  detach(conn) {
    if (conn.detached) return;
    conn.detached = true;
    for (const off of conn.listeners.splice(0)) {
      try {
        off();
      } catch (err) {
        this.logger.warn({ err }, 'detaching a listener failed');
      }
    }
    clearTimeout(conn.watchdog);
    clearTimeout(conn.stuckTimer);
    for (const waiter of conn.qrWaiters.splice(0)) {
      waiter.reject(new ReplyError('not_connected', 'the socket was closed'));
    }
  }

  /**
   * Detach, end and forget the current socket (synchronous; a no-op without one).
   */
  teardown() {
    const conn = this.conn;
    if (!conn) return;
    this.detach(conn);
    this.conn = null;
    const { sock } = conn;
    try {
      sock.end(undefined);
    } catch (err) {
      this.logger.warn({ err }, 'ending the socket failed');
    } finally {
      // Same tick as end(): a socket still CONNECTING emits an 'error' after end()
      // removed Baileys' own handler, which would otherwise crash the process.
      sock.ws.on('error', noop);
      conn.logger.level = 'silent';
    }
    conn.keyCache.close();
    conn.keyCache.flushAll();
  }

  /** session.stop: tear down, then let pending auth writes land. */
  async stop() {
    this.teardown();
    await this.settle(2000);
  }

  /** session.logout: unlink on the server when open, then tear down. Never deletes authDir. */
  async logout() {
    const conn = this.conn;
    if (conn && conn.open) {
      // Detached first: logout() ends the socket itself, and that close is the host's doing.
      this.detach(conn);
      try {
        await withTimeout(conn.sock.logout(), LOGOUT_TIMEOUT_MS, 'logout');
      } catch (err) {
        this.logger.warn({ err: err.message }, 'logout did not complete');
      }
    }
    await this.stop();
  }

  /**
   * Ask for a pairing code for `phone` on a socket that is ready to register.
   * @param {object} conn
   * @param {string} phone
   * @returns {Promise<string>}
   */
  async requestPairingCode(conn, phone) {
    conn.pairingRequested = true;
    const code = await conn.sock.requestPairingCode(phone);
    if (!conn.detached) this.emit('pairing_code', { code });
    return code;
  }

  /**
   * session.pairingCode: waits (up to connectWatchdogMs) for the first QR, which is when
   * the server accepts a registration.
   * @param {string} phone
   * @returns {Promise<{code: string}>}
   */
  async pairingCode(phone) {
    const conn = this.conn;
    if (!conn) throw new ReplyError('not_connected', 'the session has no socket');
    if (conn.open) throw new ReplyError('not_connected', 'the session is already linked');
    if (!conn.sawQr) {
      await withTimeout(
        new Promise((resolve, reject) => conn.qrWaiters.push({ resolve, reject })),
        this.settings.connectWatchdogMs,
        'waiting for registration',
      ).catch((err) => {
        throw err instanceof ReplyError ? err : new ReplyError('not_connected', err.message);
      });
    }
    if (conn.detached) throw new ReplyError('not_connected', 'the socket was closed');
    try {
      return { code: await this.requestPairingCode(conn, phone) };
    } catch (err) {
      throw new ReplyError('internal', `pairing code request failed: ${err.message}`);
    }
  }

  /**
   * message.sendText
   * @param {string} jid
   * @param {string} text
   * @param {string|null} quotedId
   * @returns {Promise<{id: string, timestamp: number}>}
   */
  async sendText(jid, text, quotedId) {
    const conn = this.conn;
    if (!conn || !conn.open) throw new ReplyError('not_connected', 'the session is not open');
    // No link previews: generating one would fetch the URL from here.
    const content = { text, linkPreview: null };
    if (quotedId) content.contextInfo = { stanzaId: quotedId };
    let sent;
    try {
      sent = await conn.sock.sendMessage(jid, content);
    } catch (err) {
      throw new ReplyError('send_failed', err.message);
    }
    if (!sent || !sent.key) throw new ReplyError('send_failed', 'the library returned no message');
    return { id: sent.key.id, timestamp: this.converter.seconds(sent.messageTimestamp) };
  }

  /** debug.stats for this session. */
  stats() {
    const conn = this.conn;
    return {
      sockets: conn ? 1 : 0,
      listeners: conn ? conn.listeners.length : 0,
      buffering: conn ? conn.sock.ev.isBuffering() : false,
    };
  }

  /** Forget the session for good: no socket may be created after this. */
  dispose() {
    this.closed = true;
    this.teardown();
    for (const cache of Object.values(this.caches)) {
      cache.close();
      cache.flushAll();
    }
  }
}

module.exports = { Session };
