'use strict';

/**
 * The process around a sidecar, the same for every library: stdout taken for the
 * protocol before the library is loaded, console.* sent to stderr, process-level errors
 * turned into events, hosted-mode signal handling, and stdin read as lines until EOF.
 */

const stdio = require('./stdio');

/**
 * Run a sidecar in this process.
 * @param {object} options
 * @param {string} options.library what the library is called in log lines
 * @param {() => object} options.loadDependencies loads the library (after stdout is taken)
 * @param {(deps: object) => object} options.createLogger the root logger (pino's interface, fd 2)
 * @param {(options: {deps: object, writer: object, logger: object, exit: (code: number) => void}) => object} options.createSidecar
 *   returns {handleLine, maxLineBytes, lineTooLong, hello, reportCrash, shutdown}
 */
function runSidecar({ library, loadDependencies, createLogger, createSidecar }) {
  // stdout is taken for the protocol before anything else is loaded: libraries that log
  // to stdout or call console.* must never reach the host's protocol stream.
  const writer = stdio.captureStdout();
  stdio.redirectConsole();

  let sidecar = null;
  process.on('uncaughtException', (err) => {
    if (sidecar) sidecar.reportCrash('uncaught_exception', err);
    else stdio.log('fatal', `uncaught exception: ${(err && err.stack) || err}`);
  });
  process.on('unhandledRejection', (err) => {
    if (sidecar) sidecar.reportCrash('unhandled_rejection', err);
    else stdio.log('fatal', `unhandled rejection: ${(err && err.stack) || err}`);
  });

  let deps;
  try {
    deps = loadDependencies();
  } catch (err) {
    stdio.log('fatal', `cannot load ${library}: ${err.stack || err}`);
    process.exit(1);
  }

  const logger = createLogger(deps);
  stdio.useLogger(logger);

  sidecar = createSidecar({ deps, writer, logger, exit: (code) => process.exit(code) });

  // Run by the host, the sidecar ends when its stdin does: a SIGTERM or SIGINT meant for
  // the whole service (systemd signals every process of the unit) must not end it before
  // the host has stopped its sessions. Run by hand, the signals end it as usual.
  const hosted = process.env.ENGINEHOST_SIDECAR_HOSTED === '1';
  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.on(signal, () => {
      if (hosted) {
        logger.info({ signal }, 'signal ignored: the host ends this sidecar by closing stdin');
      } else {
        sidecar.shutdown(signal);
      }
    });
  }

  const feed = stdio.createLineSplitter(
    () => sidecar.maxLineBytes(),
    (line) => sidecar.handleLine(line),
    (bytes) => sidecar.lineTooLong(bytes),
  );
  process.stdin.on('data', feed);
  process.stdin.on('end', () => sidecar.shutdown('stdin closed'));
  process.stdin.on('error', (err) => sidecar.shutdown(`stdin failed: ${err.message}`));

  sidecar.hello();
  return sidecar;
}

module.exports = { runSidecar };
