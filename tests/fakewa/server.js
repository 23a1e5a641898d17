'use strict'
// A loopback stand-in for WhatsApp's WebSocket service that real Baileys connects to.
//
//   node tests/fakewa/server.js [--port 0] [--auto-scan] [--verbose]
//
// stdout carries JSON lines only: first {"type":"listening",...}, then replies to the
// control requests read from stdin and unprompted {"type":"event",...} lines. Logs go to
// stderr. EOF on stdin stops the server.
//
// Besides the WebSocket at /ws/chat, the same port answers POST /qr with a QR string in
// the body: that is the "phone camera" for auto-scan mode. The service itself never sees
// the QR's secret (Baileys only displays it), so a client that wants to be paired without
// a `scan` command posts its QR there (see qr_tap.js).
const http = require('http')
const readline = require('readline')
const { load } = require('./lib/deps')
const { World } = require('./lib/world')
const { Connection } = require('./lib/connection')
const { dispatch, scan } = require('./lib/control')

const args = process.argv.slice(2)
const option = (name, fallback) => {
    const index = args.indexOf(name)
    return index >= 0 && index + 1 < args.length ? args[index + 1] : fallback
}
const verbose = args.includes('--verbose')

// stdout belongs to the protocol. libsignal reports session changes with console.info
// (to stdout), so the console is pointed at stderr, and its chatter kept only if asked.
const toStderr = (...parts) => process.stderr.write(`${parts.map(String).join(' ')}\n`)
console.log = console.info = console.debug = verbose ? toStderr : () => {}
console.warn = console.error = toStderr

const { WebSocketServer } = load('ws')

const write = (object) => process.stdout.write(`${JSON.stringify(object)}\n`)
const emit = (event, fields) => write({ ...fields, type: 'event', event })

const world = new World({
    emit,
    autoScan: args.includes('--auto-scan'),
    handshakeDelayMs: Number(option('--handshake-delay-ms', 100)),
})

const MAX_QR_BODY = 4096

function reply(res, status, body) {
    res.writeHead(status, { 'content-type': 'application/json' })
    res.end(JSON.stringify(body))
}

function onRequest(req, res) {
    if (req.method !== 'POST' || req.url !== '/qr') {
        reply(res, 404, { error: 'only POST /qr and the WebSocket at /ws/chat live here' })
        return
    }
    let body = ''
    req.setEncoding('utf8')
    req.on('data', (chunk) => {
        body += chunk
        if (body.length > MAX_QR_BODY) {
            req.destroy()
        }
    })
    req.on('end', async () => {
        if (!world.autoScan) {
            reply(res, 409, { error: 'auto-scan is off' })
            return
        }
        try {
            const { jid } = await scan(world, {
                qr: body.trim(), shareAppStateKey: world.autoScanOptions.shareAppStateKey,
            })
            reply(res, 200, { jid })
        } catch (err) {
            reply(res, 422, { error: err.message })
        }
    })
}

const server = http.createServer(onRequest)
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 16 << 20 })

server.on('upgrade', (req, socket, head) => {
    if (world.rejectStatus) {
        // A plain HTTP answer instead of "101 Switching Protocols".
        const status = world.rejectStatus
        socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status] || 'Error'}\r\n` +
            'Connection: close\r\nContent-Length: 0\r\n\r\n')
        emit('upgradeRejected', { status })
        return
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
        const conn = new Connection(world, ws)
        world.connections.add(conn)
        emit('connection', { state: 'opened', conn: conn.id, jid: null, silent: conn.silent })
    })
})

server.on('clientError', (err, socket) => socket.destroy())

async function handleLine(line) {
    if (!line.trim()) {
        return
    }
    let request
    try {
        request = JSON.parse(line)
    } catch (err) {
        write({ id: null, ok: false, error: `not JSON: ${err.message}` })
        return
    }
    const id = request && typeof request === 'object' ? request.id ?? null : null
    try {
        if (!request || typeof request !== 'object' || Array.isArray(request)) {
            throw new Error('a request must be a JSON object with "cmd"')
        }
        write({ ...(await dispatch(world, request)), id, ok: true })
    } catch (err) {
        write({ id, ok: false, error: err.message })
    }
}

function shutdown() {
    for (const conn of world.connections) {
        conn.terminate()
    }
    server.close()
    process.exit(0)
}

server.listen(Number(option('--port', 0)), '127.0.0.1', () => {
    const { port } = server.address()
    write({ type: 'listening', port, url: `ws://127.0.0.1:${port}/ws/chat` })
    const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
    lines.on('line', (line) => { handleLine(line) })
    lines.on('close', shutdown)
})

process.on('unhandledRejection', (err) => toStderr(`fakewa: unhandled rejection: ${err && err.stack ? err.stack : err}`))
