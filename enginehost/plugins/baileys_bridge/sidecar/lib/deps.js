'use strict';

/**
 * Finds the npm packages the sidecar runs on.
 *
 * They normally sit in the sidecar directory's own node_modules. When that directory
 * is read-only the host installs them elsewhere and names that node_modules directory
 * in ENGINEHOST_SIDECAR_NODE_MODULES. Baileys' own dependencies (pino, the cache) are
 * then resolved from Baileys' location, so both layouts (flat or nested) work.
 */

const fs = require('fs');
const path = require('path');
const { createRequire } = require('module');

const NODE_MODULES_ENV = 'ENGINEHOST_SIDECAR_NODE_MODULES';

/**
 * Resolve and load Baileys and the two packages the sidecar uses next to it.
 * @param {NodeJS.ProcessEnv} [env]
 * @returns {{baileys: object, pino: Function, NodeCache: Function, version: string, root: string}}
 */
function loadDependencies(env = process.env) {
  const override = env[NODE_MODULES_ENV];
  let baileysMain;
  if (override) {
    // require(path.join(dir, 'baileys')) semantics: dir is a node_modules directory.
    baileysMain = require.resolve(path.join(path.resolve(override), 'baileys'));
  } else {
    baileysMain = require.resolve('baileys');
  }
  const fromBaileys = createRequire(baileysMain);
  const root = packageRoot(baileysMain);
  const version = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).version;
  const baileys = fromBaileys(baileysMain);
  const pino = fromBaileys('pino');
  const nodeCache = fromBaileys('@cacheable/node-cache');
  const NodeCache = nodeCache.default || nodeCache.NodeCache || nodeCache;
  return { baileys, pino, NodeCache, version, root };
}

/** The directory holding the package.json of the package a file belongs to. */
function packageRoot(file) {
  let dir = path.dirname(file);
  while (!fs.existsSync(path.join(dir, 'package.json'))) {
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`no package.json above ${file}`);
    dir = parent;
  }
  return dir;
}

module.exports = { loadDependencies, NODE_MODULES_ENV };
