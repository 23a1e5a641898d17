'use strict';

/**
 * One session: at most one whatsapp-web.js Client (one Chromium) at a time, and the
 * teardown discipline that leaves no browser process behind.
 *
 * Each Client lives in a run record (`run`): its listeners, its init watchdog, and the
 * browser process once spawned. Teardown marks the run detached (nothing it emits
 * reaches the host any more), removes the listeners, destroys the client (bounded) and
 * waits until the browser's process group is empty, SIGKILLing it when it does not go.
 */

const fs = require('fs');
const path = require('path');
const { ReplyError } = require('../../../../sidecar/js/protocol');
const { groupGone, killGroup, claimProfile, live } = require('./browsers');
const convert = require('./convert');

/** Always on the Chromium command line; the operator's `chromiumArgs` come after. */
const BASE_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

const STOP_DESTROY_MS = 10000;
const LOGOUT_TIMEOUT_MS = 10000;
/** After a clean destroy the browser is normally gone; this long it may take to go. */
const GONE_AFTER_DESTROY_MS = 3000;
/** After a SIGKILL of the group. */
const GONE_AFTER_KILL_MS = 2000;
/** A launch in flight when the client was destroyed: how long to wait for it to settle. */
const LAUNCH_SETTLE_MS = 5000;
const PAIRING_TIMEOUT_MS = 30000;
// Below the host's request timeout (30 s), so the host hears this sidecar's answer
// rather than timing out blind. (The page cannot be told to drop a send in progress:
// one that completes later still arrives, as an own message.)
const SEND_TIMEOUT_MS = 25000;
const PROFILE_REMOVE_MS = 5000;

/** Resolve with the promise's value, or reject after ms. */
function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The text of whatever a library rejected with (it throws strings too). */
function errorText(err) {
  if (err && typeof err.message === 'string' && err.message) return err.message;
  return String(err);
}

/**
 * Delete a directory tree, retrying while files are busy (the browser's last writes).
 * @param {string} dir
 */
async function removeTree(dir) {
  const deadline = Date.now() + PROFILE_REMOVE_MS;
  for (;;) {
    try {
      await fs.promises.rm(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
    } catch (err) {
      if (Date.now() >= deadline) throw err;
    }
    if (!fs.existsSync(dir)) return;
    if (Date.now() >= deadline) throw new Error(`${dir} is still there`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

class Session {
  /**
   * @param {object} options
   * @param {string} options.id
   * @param {object} options.deps the loaded packages ({Client, LocalAuth})
   * @param {object} options.settings the sidecar's settings from `init` (read live)
   * @param {object} options.protocol the host connection (events)
   * @param {object} options.logger the root logger
   * @param {object} options.spawns the browser spawn watcher
   */
  constructor({ id, deps, settings, protocol, logger, spawns }) {
    this.id = id;
    this.Client = deps.Client;
    this.LocalAuth = deps.LocalAuth;
    this.settings = settings;
    this.protocol = protocol;
    this.spawns = spawns;
    this.logger = logger.child({ session: id });
    /** The current client and what hangs on it; null when there is none. */
    this.run = null;
    /** Teardowns in flight (a stop must wait for every browser to be gone). */
    this.teardowns = new Set();
    /** The profile of the last start, for logout after the client has closed. */
    this.profileDir = null;
    this.closed = false;
  }

  emit(name, data) {
    this.protocol.event(name, this.id, data);
  }

  /**
   * Start a client for the session, tearing down the one it has. Resolves once
   * `initialize()` has begun; everything after comes as events.
   * @param {{dataPath: string}} options
   */
  async start({ dataPath }) {
    await this.stop(STOP_DESTROY_MS);
    if (this.closed) throw new ReplyError('internal', 'the session was stopped');
    const profileDir = path.join(path.resolve(dataPath), `session-${this.id}`);
    const holder = claimProfile(profileDir);
    if (holder) {
      throw new ReplyError(
        'profile_in_use',
        `the browser profile ${profileDir} is in use by process ${holder.pid} (${holder.lockPath})`,
      );
    }
    this.profileDir = profileDir;
    const settings = this.settings;
    const options = {
      authStrategy: new this.LocalAuth({ clientId: this.id, dataPath }),
      puppeteer: {
        executablePath: settings.executablePath,
        headless: settings.headless,
        args: [...BASE_ARGS, ...settings.chromiumArgs],
        // DevTools over a pipe rather than a WebSocket: when the sidecar dies in any
        // way, SIGKILL included, the pipe closes and Chromium exits by itself.
        pipe: true,
        // The sidecar decides when browsers end: puppeteer's own handlers would close
        // them (and exit on SIGINT) on a signal the hosted sidecar must ignore.
        handleSIGINT: false,
        handleSIGTERM: false,
        handleSIGHUP: false,
      },
      // With a directory: the pinned page from it, and nothing else (strict). Without:
      // no cache at all. The library's default (a non-strict cache in the working
      // directory) would write the live page there, which may be read-only.
      webVersionCache: settings.webVersionCacheDir
        ? { type: 'local', path: settings.webVersionCacheDir, strict: true }
        : { type: 'none' },
      authTimeoutMs: settings.authTimeoutMs,
      qrMaxRetries: 0,
      takeoverOnConflict: false,
    };
    if (settings.webVersion) options.webVersion = settings.webVersion;
    const client = new this.Client(options);
    const run = {
      client,
      profileDir,
      listeners: [],
      detached: false,
      torn: null,
      pid: null,
      exited: false,
      gone: null,
      sawQr: false,
      ready: false,
      state: 'starting',
      me: null,
      qrWaiters: [],
      initTimer: null,
      initSettled: null,
      stopWatching: () => {},
    };
    this.run = run;
    this.attach(run);
    run.stopWatching = this.spawns.expect(profileDir, (child) => this.onSpawn(run, child));
    run.initTimer = setTimeout(() => this.onInitTimeout(run), settings.initTimeoutMs);
    // Not awaited: the QR (or ready) comes as events; the watchdog bounds the wait.
    run.initSettled = client.initialize().then(
      () => this.logger.debug('initialize() finished'),
      (err) => this.onInitFailed(run, err),
    );
  }

  /** Subscribe to the client's events; every handler is recorded for teardown. */
  attach(run) {
    const on = (event, handler) => {
      const listener = (...args) => {
        if (run.detached) return;
        try {
          handler(...args);
        } catch (err) {
          this.logger.error({ err }, `handling ${event} failed`);
          this.emit('error', { code: 'internal', message: `handling ${event} failed: ${err.message}` });
        }
      };
      run.client.on(event, listener);
      run.listeners.push([event, listener]);
    };
    const emitIf = (name, data) => {
      if (data) this.emit(name, data);
    };
    on('qr', (qr) => {
      clearTimeout(run.initTimer);
      run.sawQr = true;
      run.state = 'qr';
      this.emit('qr', { qr });
      for (const waiter of run.qrWaiters.splice(0)) waiter.resolve();
    });
    on('code', (code) => this.emit('pairing_code', { code }));
    on('loading_screen', (percent, message) => this.logger.debug({ percent, message }, 'loading screen'));
    on('authenticated', () => {
      run.state = 'authenticated';
      this.emit('authenticated', {});
    });
    on('auth_failure', (message) => this.closeRun(run, 'AUTH_FAILURE', String(message || 'authentication failed')));
    on('ready', () => {
      clearTimeout(run.initTimer);
      run.ready = true;
      run.state = 'open';
      const me = convert.account(run.client.info);
      run.me = me.id;
      this.emit('open', { me });
    });
    on('message', (msg) => emitIf('message', convert.message(msg, run.me)));
    on('message_create', (msg) => {
      if (msg && msg.fromMe) emitIf('message', convert.message(msg, run.me));
    });
    on('message_ack', (msg, ack) => emitIf('ack', convert.ack(msg, ack)));
    on('message_revoke_everyone', (msg) => emitIf('revoke', convert.revoke(msg, run.me)));
    on('message_reaction', (reaction) => emitIf('reaction', convert.reaction(reaction, run.me)));
    on('change_state', (state) => this.emit('state', { state: String(state) }));
    on('disconnected', (reason) => {
      const text = String(reason);
      // WAState names and LOGOUT pass through; free text (such as the library's
      // "Max qrcode retries reached") is filed under DISCONNECTED.
      this.closeRun(run, /^[A-Z][A-Z_]*$/.test(text) ? text : 'DISCONNECTED', text);
    });
  }

  /** The browser of this run was just spawned (it exists from now on). */
  onSpawn(run, child) {
    const pid = child.pid;
    if (!pid) return; // the spawn failed: the launch rejects, and initialize() with it
    run.pid = pid;
    live.add(pid);
    run.gone = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal }))).then(
      async (exit) => {
        // Its helpers follow the browser out; make sure none stays behind.
        if (!(await groupGone(pid, GONE_AFTER_DESTROY_MS))) {
          this.logger.warn({ browserPid: pid }, 'browser helpers outlived the browser: killing the group');
          killGroup(pid);
          await groupGone(pid, GONE_AFTER_KILL_MS);
        }
        live.delete(pid);
        run.exited = true;
        this.emit('process', { pid, state: 'exited' });
        if (!run.detached) {
          this.closeRun(run, 'BROWSER_EXITED', `the browser exited (${exit.signal || `code ${exit.code}`})`);
        }
        return exit;
      },
    );
    this.logger.info({ browserPid: pid }, 'browser started');
    this.emit('process', { pid, state: 'started' });
    // Torn down while the launch was in flight: the launch must not leave a browser.
    if (run.detached) killGroup(pid);
  }

  onInitTimeout(run) {
    if (run.detached || run.sawQr || run.ready) return;
    const ms = this.settings.initTimeoutMs;
    this.logger.warn(`no QR and no ready within ${ms} ms: destroying the client`);
    this.closeRun(run, 'INIT_TIMEOUT', `no QR and no ready within initTimeoutMs (${ms} ms)`);
  }

  onInitFailed(run, err) {
    const message = errorText(err);
    if (run.detached) {
      this.logger.debug({ err: message }, 'initialize() of a torn-down client rejected');
      return;
    }
    this.logger.error({ err: message }, 'initialize() failed');
    this.emit('error', { code: 'init_failed', message });
    this.closeRun(run, 'INIT_FAILED', message);
  }

  /**
   * The client ended by itself (or the watchdog ended it): tear down, then `close`.
   * Synchronously detaches, so nothing more of this run reaches the host.
   */
  closeRun(run, code, reason) {
    if (run.detached || run !== this.run) return;
    const torn = this.teardown(run, STOP_DESTROY_MS);
    // Reported only if nothing replaced or stopped the session meanwhile: a late close
    // of an old run would read as the end of the new one.
    torn.then(() => {
      if (!this.closed && this.run === null) this.emit('close', { code, reason });
    });
  }

  /**
   * Detach, destroy and forget a run; resolves once its browser is gone. Idempotent.
   * @param {object} run
   * @param {number} destroyMs how long client.destroy() may take before the group is killed
   * @param {number} [settleMs] how long a launch in flight may take to settle
   * @returns {Promise<void>}
   */
  teardown(run, destroyMs, settleMs = LAUNCH_SETTLE_MS) {
    if (run.torn) return run.torn;
    run.detached = true;
    if (this.run === run) this.run = null;
    run.state = 'closed';
    clearTimeout(run.initTimer);
    for (const [event, listener] of run.listeners.splice(0)) run.client.off(event, listener);
    for (const waiter of run.qrWaiters.splice(0)) {
      waiter.reject(new ReplyError('not_connected', 'the client was closed'));
    }
    run.torn = this.destroy(run, destroyMs, settleMs).catch((err) =>
      this.logger.error({ err: errorText(err) }, 'teardown failed'),
    );
    this.teardowns.add(run.torn);
    run.torn.finally(() => this.teardowns.delete(run.torn));
    return run.torn;
  }

  async destroy(run, destroyMs, settleMs) {
    const { client } = run;
    let destroyed = false;
    try {
      await withTimeout(client.destroy(), destroyMs, 'client.destroy()');
      destroyed = true;
    } catch (err) {
      this.logger.warn({ err: errorText(err) }, 'destroy did not complete');
    }
    if (!run.pid) {
      // No browser yet: either none will come, or the launch is in flight. onSpawn
      // kills one spawned from now on; wait for the launch to fail with it.
      await withTimeout(run.initSettled, settleMs, 'the launch').catch(() => {});
    }
    run.stopWatching();
    if (!run.pid) return;
    // destroy() closed the browser only when it had been handed over to the client.
    if (!destroyed || !client.pupBrowser) killGroup(run.pid);
    let gone = await withTimeout(run.gone, GONE_AFTER_DESTROY_MS + GONE_AFTER_KILL_MS, 'browser exit').then(
      () => true,
      () => false,
    );
    if (!gone) {
      this.logger.warn({ browserPid: run.pid }, 'the browser did not go: killing its process group');
      killGroup(run.pid);
      gone = await withTimeout(run.gone, GONE_AFTER_KILL_MS, 'browser exit').then(
        () => true,
        () => false,
      );
      if (!gone) this.logger.error({ browserPid: run.pid }, 'the browser survived SIGKILL of its group');
    }
  }

  /**
   * session.stop (and the first step of a start): destroy the client, keep the profile;
   * resolves once every browser of the session is gone.
   * @param {number} [destroyMs]
   * @param {number} [settleMs]
   */
  async stop(destroyMs = STOP_DESTROY_MS, settleMs = LAUNCH_SETTLE_MS) {
    if (this.run) this.teardown(this.run, destroyMs, settleMs);
    await Promise.all([...this.teardowns]);
  }

  /**
   * session.logout: unlink (client.logout(), bounded), tear down like stop, then make
   * sure the profile is deleted (retrying while the browser's files are busy).
   */
  async logout() {
    const run = this.run;
    if (run && run.client.pupPage) {
      // Detached first: the logout ends the client itself, and that end is the host's doing.
      for (const [event, listener] of run.listeners.splice(0)) run.client.off(event, listener);
      run.detached = true;
      try {
        await withTimeout(run.client.logout(), LOGOUT_TIMEOUT_MS, 'logout');
      } catch (err) {
        this.logger.warn({ err: errorText(err) }, 'logout did not complete');
      }
    }
    await this.stop();
    if (this.profileDir) {
      try {
        await removeTree(this.profileDir);
      } catch (err) {
        throw new ReplyError('internal', `logged out, but the profile could not be deleted: ${errorText(err)}`);
      }
    }
  }

  /**
   * session.pairingCode: waits (up to initTimeoutMs) for the first QR, the point from
   * which the page accepts a phone-number registration.
   * @param {string} phone
   * @returns {Promise<{code: string}>}
   */
  async pairingCode(phone) {
    const run = this.run;
    if (!run) throw new ReplyError('not_connected', 'the session has no client');
    if (run.ready) throw new ReplyError('not_connected', 'the session is already linked');
    if (!run.sawQr) {
      await withTimeout(
        new Promise((resolve, reject) => run.qrWaiters.push({ resolve, reject })),
        this.settings.initTimeoutMs,
        'waiting for the QR stage',
      ).catch((err) => {
        throw err instanceof ReplyError ? err : new ReplyError('not_connected', err.message);
      });
    }
    if (run.detached) throw new ReplyError('not_connected', 'the client was closed');
    try {
      const code = await withTimeout(run.client.requestPairingCode(phone), PAIRING_TIMEOUT_MS, 'pairing code');
      return { code: String(code) };
    } catch (err) {
      throw new ReplyError('internal', `pairing code request failed: ${errorText(err)}`);
    }
  }

  /**
   * message.sendText. Link previews are off (a preview would fetch the URL from the
   * browser) and the chat is not marked read.
   * @param {string} chatId
   * @param {string} text
   * @param {string|null} quotedId a short message id, or the library's serialised id
   * @returns {Promise<{id: string, timestamp: number}>}
   */
  async sendText(chatId, text, quotedId) {
    const run = this.run;
    if (!run || !run.ready) throw new ReplyError('not_connected', 'the session is not open');
    const options = { linkPreview: false, sendSeen: false };
    if (quotedId) options.quotedMessageId = await this.quotedHandle(run, chatId, quotedId);
    let sent;
    try {
      sent = await withTimeout(run.client.sendMessage(chatId, text, options), SEND_TIMEOUT_MS, 'sendMessage');
    } catch (err) {
      throw new ReplyError('send_failed', errorText(err));
    }
    if (!sent || !sent.id || !sent.id.id) throw new ReplyError('send_failed', 'the library returned no message (unknown chat?)');
    return { id: sent.id.id, timestamp: convert.seconds(sent.timestamp) };
  }

  /**
   * The library quotes by serialised id; the host names messages by their short id.
   * Look the message up among those the page holds for the chat; one it no longer
   * holds is named by its most likely serialised form (the library then sends unquoted).
   */
  async quotedHandle(run, chatId, quotedId) {
    if (/^(true|false)_/.test(quotedId)) return quotedId;
    try {
      const found = await run.client.pupPage.evaluate(
        (chat, id) => {
          const { Msg } = window.require('WAWebCollections');
          const msg = Msg.getModelsArray().find((m) => m.id.id === id && String(m.id.remote) === chat);
          return msg ? msg.id._serialized : null;
        },
        chatId,
        quotedId,
      );
      if (found) return found;
    } catch (err) {
      this.logger.warn({ err: errorText(err) }, 'looking up the quoted message failed');
    }
    return `false_${chatId}_${quotedId}`;
  }

  /** debug.stats for this session. */
  stats() {
    const run = this.run;
    return {
      browserPid: run && run.pid && !run.exited ? run.pid : null,
      state: run ? run.state : 'closed',
    };
  }

  /** Forget the session for good: no client may be created after this. */
  dispose() {
    this.closed = true;
  }
}

module.exports = { Session, BASE_ARGS };
