'use strict';

/**
 * The browsers under the sidecar: noticing each launch the moment Chromium is spawned,
 * their process groups, and the profile lock Chromium leaves in a user-data dir.
 *
 * puppeteer spawns Chromium detached (`detached: true`), so the browser leads a process
 * group (and session) of its own whose id is its PID, and every helper it forks (zygotes,
 * renderers, GPU, network and storage services) stays in that group. Its two crashpad
 * handlers make sessions of their own; they exit by themselves when the browser does.
 */

const childProcess = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

/** Browser PIDs (= process group ids) that are running, for the kill on exit. */
const live = new Set();

/**
 * Watch child_process.spawn for Chromium launches. puppeteer gives no hook between the
 * spawn and the end of its launch handshake, and a browser must be reported (so the
 * host can kill its group if the sidecar dies) from the moment it exists. A launch is
 * recognised by the `--user-data-dir=` argument puppeteer passes: each session's
 * profile is its own.
 * @param {(level: string, msg: string, fields?: object) => void} log
 * @returns {{expect: (profileDir: string, onSpawn: (child: import('child_process').ChildProcess) => void) => () => void}}
 */
function watchSpawns(log) {
  const expected = new Map();
  const spawn = childProcess.spawn;
  childProcess.spawn = function spawnWatched(command, args, ...rest) {
    const child = spawn.call(this, command, args, ...rest);
    const dir = Array.isArray(args) ? userDataDir(args) : null;
    const onSpawn = dir ? expected.get(dir) : undefined;
    if (onSpawn) {
      expected.delete(dir);
      try {
        onSpawn(child);
      } catch (err) {
        log('error', `handling a browser spawn failed: ${(err && err.stack) || err}`);
      }
    }
    return child;
  };
  return {
    /** Call onSpawn for the next spawn using profileDir; returns a function that stops waiting. */
    expect(profileDir, onSpawn) {
      const key = path.resolve(profileDir);
      expected.set(key, onSpawn);
      return () => {
        if (expected.get(key) === onSpawn) expected.delete(key);
      };
    },
  };
}

function userDataDir(args) {
  for (const arg of args) {
    if (typeof arg === 'string' && arg.startsWith('--user-data-dir=')) {
      return path.resolve(arg.slice('--user-data-dir='.length));
    }
  }
  return null;
}

/**
 * The processes of a process group that still run (zombies do not count: where PID 1
 * does not reap orphans they linger, holding no memory and no files).
 * @param {number} pgid
 * @returns {number[]}
 */
function groupMembers(pgid) {
  try {
    process.kill(-pgid, 0);
  } catch (err) {
    if (err.code === 'ESRCH') return [];
  }
  const members = [];
  let names;
  try {
    names = fs.readdirSync('/proc');
  } catch {
    return [pgid]; // no /proc: trust the signal probe above
  }
  for (const name of names) {
    if (!/^\d+$/.test(name)) continue;
    let stat;
    try {
      stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
    } catch {
      continue; // gone meanwhile
    }
    // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(fields[2]) === pgid && fields[0] !== 'Z') members.push(Number(name));
  }
  return members;
}

/** SIGKILL a whole process group; quiet when it is gone already. */
function killGroup(pgid) {
  try {
    process.kill(-pgid, 'SIGKILL');
    return true;
  } catch {
    return false;
  }
}

/**
 * Resolve true once no process of the group runs, false after timeoutMs.
 * @param {number} pgid
 * @param {number} timeoutMs
 */
async function groupGone(pgid, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (groupMembers(pgid).length === 0) return true;
    if (Date.now() >= deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** Whether a PID names a running (not zombie) process. */
function pidRuns(pid) {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if (err.code !== 'EPERM') return false;
  }
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return true;
  }
}

const SINGLETON_FILES = ['SingletonLock', 'SingletonSocket', 'SingletonCookie'];

/**
 * Whether process `pid` is a browser running on `profileDir`. A lock's PID alone proves
 * nothing: after a restart (a container keeps its hostname, PIDs start over) or a PID
 * wrap-around it often names an unrelated process.
 */
function runsOnProfile(pid, profileDir) {
  if (!pidRuns(pid)) return false;
  let args;
  try {
    args = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    return false;
  }
  const wanted = path.resolve(profileDir);
  return args.some(
    (arg) => arg.startsWith('--user-data-dir=') && path.resolve(arg.slice('--user-data-dir='.length)) === wanted,
  );
}

/**
 * Check a Chromium profile before launching on it. Chromium marks a profile in use with
 * a `SingletonLock` symlink whose target is `<hostname>-<pid>`. When that names this host
 * and a running browser on this very profile, the profile is in use: returns
 * `{pid, lockPath}` and touches nothing. Otherwise the lock is stale (a browser killed
 * hard leaves it behind, and it blocks the next launch): the three Singleton files are
 * removed, with the temporary directory `SingletonSocket` points into, and null is
 * returned.
 * @param {string} profileDir
 * @returns {{pid: number, lockPath: string}|null}
 */
function claimProfile(profileDir) {
  const lockPath = path.join(profileDir, 'SingletonLock');
  let target = null;
  try {
    target = fs.readlinkSync(lockPath);
  } catch {
    // No lock (ENOENT), or not a symlink (EINVAL): nothing names a holder.
  }
  if (target !== null) {
    const match = /^(.*)-(\d+)$/.exec(target);
    if (match && match[1] === os.hostname() && runsOnProfile(Number(match[2]), profileDir)) {
      return { pid: Number(match[2]), lockPath };
    }
  }
  try {
    // The socket lives in a directory of its own under the system's temporary folder,
    // which nothing else removes once its browser was killed.
    const socket = fs.readlinkSync(path.join(profileDir, 'SingletonSocket'));
    const folder = path.dirname(socket);
    if (path.basename(folder).startsWith('org.chromium.Chromium.')) {
      fs.rmSync(folder, { recursive: true, force: true });
    }
  } catch {
    // No socket link: nothing to clean.
  }
  for (const name of SINGLETON_FILES) {
    fs.rmSync(path.join(profileDir, name), { force: true });
  }
  return null;
}

module.exports = { watchSpawns, groupMembers, killGroup, groupGone, claimProfile, live };
