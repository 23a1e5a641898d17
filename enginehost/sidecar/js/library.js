'use strict';

/**
 * Finds the npm package a sidecar exists to run.
 *
 * It normally sits in the sidecar directory's own node_modules. When that directory is
 * read-only the host installs the dependencies elsewhere and names that node_modules
 * directory in ENGINEHOST_SIDECAR_NODE_MODULES. The library's own dependencies are
 * then resolved from its location, so both layouts (flat or nested) work.
 */

const fs = require('fs');
const path = require('path');
const { createRequire } = require('module');

const NODE_MODULES_ENV = 'ENGINEHOST_SIDECAR_NODE_MODULES';

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

/**
 * Locate package `name` for a sidecar whose own `require` is `localRequire`.
 * @param {string} name
 * @param {NodeJS.Require} localRequire the sidecar's require (resolves from its folder)
 * @param {NodeJS.ProcessEnv} [env]
 * @returns {{main: string, root: string, version: string, requireNextTo: NodeJS.Require}}
 */
function locateLibrary(name, localRequire, env = process.env) {
  const override = env[NODE_MODULES_ENV];
  // require(path.join(dir, name)) semantics: dir is a node_modules directory.
  const main = override
    ? localRequire.resolve(path.join(path.resolve(override), name))
    : localRequire.resolve(name);
  const root = packageRoot(main);
  const version = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).version;
  return { main, root, version, requireNextTo: createRequire(main) };
}

module.exports = { locateLibrary, NODE_MODULES_ENV };
