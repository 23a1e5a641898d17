'use strict';

/**
 * A session's auth state on disk, crash-safe.
 *
 * The layout is the one Baileys' own multi-file store uses (`creds.json`, and one
 * `<category>-<id>.json` per signal key, with `/` and `:` in names made safe), so
 * folders written by either work with the other. What differs is how files are
 * written: Baileys writes in place, so a process killed mid-write (a SIGKILLed sidecar)
 * leaves a truncated `creds.json`, which it then reads as "no credentials" and pairs
 * from scratch: the link is lost. Here every write goes to a temporary file that is
 * renamed over the old one, so a file is always either the old or the new version.
 * `creds.json` is also flushed to disk before the rename (it is written seldom, and
 * losing it unlinks the device); key files, written on every message exchange, are
 * not, which keeps them safe from a process crash, if not from a power cut. Writes of
 * one file are serialized, so the newest always wins.
 */

const fs = require('fs/promises');
const path = require('path');

/** Map a key file name to a safe file name (as Baileys' own store does). */
function fileName(name) {
  return name.replace(/\//g, '__').replace(/:/g, '-');
}

class FileQueue {
  constructor() {
    /** @type {Map<string, Promise<unknown>>} the last operation queued per file */
    this.tails = new Map();
  }

  /** Run `work` after every operation already queued for `file`. */
  run(file, work) {
    const previous = this.tails.get(file) || Promise.resolve();
    const next = previous.then(work, work);
    const tail = next.catch(() => {});
    this.tails.set(file, tail);
    tail.then(() => {
      if (this.tails.get(file) === tail) this.tails.delete(file);
    });
    return next;
  }
}

let serial = 0;

async function writeAtomically(file, text, durable) {
  serial += 1;
  const temporary = `${file}.${process.pid}.${serial}.tmp`;
  const handle = await fs.open(temporary, 'w', 0o600);
  try {
    await handle.writeFile(text);
    if (durable) await handle.sync();
  } finally {
    await handle.close();
  }
  try {
    await fs.rename(temporary, file);
  } catch (err) {
    await fs.unlink(temporary).catch(() => {});
    throw err;
  }
}

/**
 * Load (or start) the auth state kept in `folder`.
 *
 * @param {string} folder the session's auth directory (created if missing)
 * @param {object} baileys the loaded library (BufferJSON, initAuthCreds, proto)
 * @param {object} logger a pino logger
 * @returns {Promise<{state: {creds: object, keys: object}, saveCreds: () => Promise<void>}>}
 */
async function useCrashSafeAuthState(folder, baileys, logger) {
  const { BufferJSON, initAuthCreds, proto } = baileys;
  const queue = new FileQueue();
  await fs.mkdir(folder, { recursive: true, mode: 0o700 });
  // Leftovers of writes a crash interrupted: the renamed-over file is intact.
  for (const entry of await fs.readdir(folder)) {
    if (entry.endsWith('.tmp')) await fs.unlink(path.join(folder, entry)).catch(() => {});
  }

  const where = (name) => path.join(folder, fileName(name));

  const read = (name) =>
    queue.run(where(name), async () => {
      let text;
      try {
        text = await fs.readFile(where(name), { encoding: 'utf-8' });
      } catch (err) {
        if (err.code === 'ENOENT') return null;
        throw err;
      }
      try {
        return JSON.parse(text, BufferJSON.reviver);
      } catch (err) {
        logger.error({ file: name, err: err.message }, 'unreadable auth state file ignored');
        return null;
      }
    });

  const write = (name, value) =>
    queue.run(where(name), () =>
      writeAtomically(where(name), JSON.stringify(value, BufferJSON.replacer), name === 'creds.json'),
    );

  const remove = (name) =>
    queue.run(where(name), () =>
      fs.unlink(where(name)).catch((err) => {
        if (err.code !== 'ENOENT') throw err;
      }),
    );

  const creds = (await read('creds.json')) || initAuthCreds();
  return {
    state: {
      creds,
      keys: {
        async get(type, ids) {
          const found = {};
          await Promise.all(
            ids.map(async (id) => {
              let value = await read(`${type}-${id}.json`);
              if (type === 'app-state-sync-key' && value) {
                value = proto.Message.AppStateSyncKeyData.fromObject(value);
              }
              found[id] = value;
            }),
          );
          return found;
        },
        async set(data) {
          const work = [];
          for (const category of Object.keys(data)) {
            for (const id of Object.keys(data[category])) {
              const value = data[category][id];
              const name = `${category}-${id}.json`;
              work.push(value ? write(name, value) : remove(name));
            }
          }
          await Promise.all(work);
        },
      },
    },
    saveCreds: () => write('creds.json', creds),
  };
}

module.exports = { useCrashSafeAuthState, fileName };
