'use strict'
// One place that loads the third-party modules the fake needs. They come from the
// baileys_bridge sidecar's node_modules: NODE_PATH normally points there, and when it
// does not (a script started by hand) the path is derived from this file's location
// in the repository, so no machine-specific path is ever written down.
const path = require('path')
const Module = require('module')

const SIDECAR_MODULES = path.resolve(
    __dirname, '..', '..', '..', 'enginehost', 'plugins', 'baileys_bridge', 'sidecar', 'node_modules'
)

/** The file `name` resolves to: through NODE_PATH first, else the sidecar's modules. */
function resolve(name) {
    try {
        return require.resolve(name)
    } catch (err) {
        if (err.code !== 'MODULE_NOT_FOUND') {
            throw err
        }
    }
    return Module.createRequire(path.join(SIDECAR_MODULES, 'noop.js')).resolve(name)
}

function load(name) {
    try {
        return require(resolve(name))
    } catch (err) {
        if (err.code !== 'MODULE_NOT_FOUND') {
            throw err
        }
        process.stderr.write(
            `fakewa: cannot load '${name}'. Run "npm ci" in ${path.dirname(SIDECAR_MODULES)} ` +
            `or set NODE_PATH to its node_modules directory (${err.message.split('\n')[0]}).\n`
        )
        process.exit(2)
    }
}

module.exports = { load, resolve, SIDECAR_MODULES }
