'use strict';

/** Loads Baileys and the two packages the sidecar uses next to it (pino, the cache). */

const { locateLibrary, NODE_MODULES_ENV } = require('../../../../sidecar/js/library');

/**
 * @param {NodeJS.ProcessEnv} [env]
 * @returns {{baileys: object, pino: Function, NodeCache: Function, version: string, root: string}}
 */
function loadDependencies(env = process.env) {
  const { main, root, version, requireNextTo } = locateLibrary('baileys', require, env);
  const baileys = requireNextTo(main);
  const pino = requireNextTo('pino');
  const nodeCache = requireNextTo('@cacheable/node-cache');
  const NodeCache = nodeCache.default || nodeCache.NodeCache || nodeCache;
  return { baileys, pino, NodeCache, version, root };
}

module.exports = { loadDependencies, NODE_MODULES_ENV };
