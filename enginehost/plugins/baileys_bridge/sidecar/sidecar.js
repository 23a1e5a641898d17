'use strict';

/**
 * Entry point: `node --expose-gc sidecar.js`. Speaks the JSON-lines sidecar protocol
 * (docs/sidecar-protocol.md) on stdin/stdout and hosts Baileys sessions. The process
 * around it (stdout discipline, signals, stdin) is shared: enginehost/sidecar/js/main.js.
 */

const { runSidecar } = require('../../../sidecar/js/main');
const stdio = require('../../../sidecar/js/stdio');

runSidecar({
  library: 'baileys',
  loadDependencies: () => require('./lib/deps').loadDependencies(),
  createLogger: (deps) => stdio.createLogger(deps.pino, 'info'),
  createSidecar: (options) => require('./lib/sidecar').createSidecar(options),
});
