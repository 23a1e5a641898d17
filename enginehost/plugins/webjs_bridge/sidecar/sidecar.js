'use strict';

/**
 * Entry point: `node --expose-gc sidecar.js`. Speaks the JSON-lines sidecar protocol
 * (docs/sidecar-protocol.md) on stdin/stdout and hosts whatsapp-web.js sessions, each a
 * Chromium of its own. The process around it (stdout discipline, signals, stdin) is
 * shared: enginehost/sidecar/js/main.js.
 */

const { runSidecar } = require('../../../sidecar/js/main');
const stdio = require('../../../sidecar/js/stdio');

runSidecar({
  library: 'whatsapp-web.js',
  loadDependencies: () => require('./lib/deps').loadDependencies(),
  createLogger: () => stdio.createJsonLogger('info'),
  createSidecar: (options) => require('./lib/sidecar').createSidecar(options),
});
