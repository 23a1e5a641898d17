'use strict';

/** Loads whatsapp-web.js (its own dependencies, puppeteer, resolve from its location). */

const { locateLibrary, NODE_MODULES_ENV } = require('../../../../sidecar/js/library');

/**
 * @param {NodeJS.ProcessEnv} [env]
 * @returns {{wwebjs: object, Client: Function, LocalAuth: Function, version: string, root: string}}
 */
function loadDependencies(env = process.env) {
  const { main, root, version } = locateLibrary('whatsapp-web.js', require, env);
  const wwebjs = require(main);
  return { wwebjs, Client: wwebjs.Client, LocalAuth: wwebjs.LocalAuth, version, root };
}

module.exports = { loadDependencies, NODE_MODULES_ENV };
