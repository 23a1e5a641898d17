'use strict';

/**
 * Finds whatsapp-web.js.
 *
 * It normally sits in the sidecar directory's own node_modules. When that directory is
 * read-only the host installs it elsewhere and names that node_modules directory in
 * ENGINEHOST_SIDECAR_NODE_MODULES. Its own dependencies (puppeteer) are resolved from
 * its location, so both layouts (flat or nested) work.
 */

const fs = require('fs');
const path = require('path');

const NODE_MODULES_ENV = 'ENGINEHOST_SIDECAR_NODE_MODULES';
const PACKAGE = 'whatsapp-web.js';

/**
 * Resolve and load whatsapp-web.js.
 * @param {NodeJS.ProcessEnv} [env]
 * @returns {{wwebjs: object, Client: Function, LocalAuth: Function, version: string, root: string}}
 */
function loadDependencies(env = process.env) {
  const override = env[NODE_MODULES_ENV];
  // require(path.join(dir, PACKAGE)) semantics: dir is a node_modules directory.
  const main = override ? require.resolve(path.join(path.resolve(override), PACKAGE)) : require.resolve(PACKAGE);
  const root = packageRoot(main);
  const version = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).version;
  const wwebjs = require(main);
  return { wwebjs, Client: wwebjs.Client, LocalAuth: wwebjs.LocalAuth, version, root };
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
