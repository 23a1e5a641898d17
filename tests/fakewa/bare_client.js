'use strict'
// Real Baileys sockets and nothing else, driven against the fake service: for the
// fixture's own tests and for measuring what N idle logged-in sockets cost.
//
//   node --expose-gc tests/fakewa/bare_client.js --url WS_URL --sessions N --auth-dir DIR
//        [--login-only] [--events] [--no-tap] [--concurrency 25]
//        [--connect-timeout-ms 20000] [--open-timeout-s 300]
//
// Session i keeps its credentials in DIR/i. The first line is {"type":"started",...}. A session without credentials pairs: its QR
// is posted to the service's /qr endpoint (the service scans it when auto-scan is on),
// unless --no-tap, when only a "qr" line is printed for someone to `scan`. --login-only
// refuses to pair. Once every session is open, one line {"type":"ready",...} is printed.
//
// stdout is JSON lines only. With --events it also reports what the sockets see
// (qr, open, close, upsert, update). stdin takes JSON commands, one per line:
//   {"cmd":"stats"}                       -> {"type":"stats","rss":...,"heapUsed":...}
//   {"cmd":"send","session":0,"to":JID,"text":"..."} -> {"type":"sent","session":0,"id":...}
//   {"cmd":"creds","session":0}           -> {"type":"creds",...} (me, app-state key id)
//   {"cmd":"buffering","session":0}       -> {"type":"buffering","session":0,"buffering":bool}
//   {"cmd":"reconnect","session":0}       -> opens session 0 again (after a close)
//   {"cmd":"quit"}                        -> closes every socket, saves creds, exits
const path = require('path')
const readline = require('readline')
const { load } = require('./lib/deps')
const { postQr } = require('./qr_tap')

// Baileys and libsignal log through the console; stdout is kept for the protocol.
const toStderr = (...parts) => process.stderr.write(`${parts.map(String).join(' ')}\n`)
console.log = console.info = console.debug = console.warn = console.error = toStderr

const baileys = load('baileys')
const pino = load('pino')
const makeWASocket = baileys.default || baileys.makeWASocket
const { useMultiFileAuthState, DisconnectReason } = baileys

const argv = process.argv.slice(2)
const option = (name, fallback) => {
    const index = argv.indexOf(name)
    return index >= 0 && index + 1 < argv.length ? argv[index + 1] : fallback
}
const flag = (name) => argv.includes(name)

const url = option('--url')
const authDir = option('--auth-dir')
const sessions = Number(option('--sessions', 1))
const concurrency = Math.max(1, Number(option('--concurrency', 25)))
const connectTimeoutMs = Number(option('--connect-timeout-ms', 20000))
const openTimeoutS = Number(option('--open-timeout-s', 300))
const loginOnly = flag('--login-only')
const events = flag('--events')
const tap = !flag('--no-tap') && !loginOnly

if (!url || !authDir || !Number.isInteger(sessions) || sessions < 1) {
    toStderr('usage: bare_client.js --url WS_URL --sessions N --auth-dir DIR [--login-only] [--events] [--no-tap]')
    process.exit(2)
}

const tapUrl = (() => {
    const parsed = new URL(url)
    return `http://${parsed.host}/qr`
})()
const logger = pino({ level: 'warn' }, pino.destination(2))
const write = (object) => process.stdout.write(`${JSON.stringify(object)}\n`)
const report = (object) => events && write(object)
const pendingSaves = new Set()

const textOf = (message) => message?.conversation || message?.extendedTextMessage?.text || null

class Session {
    constructor(index) {
        this.index = index
        this.dir = path.join(authDir, String(index))
        this.sock = null
        this.open = false
        this.auth = null
    }

    async start() {
        if (!this.auth) {
            this.auth = await useMultiFileAuthState(this.dir)
        }
        const { state, saveCreds } = this.auth
        if (loginOnly && !state.creds.me) {
            throw new Error(`session ${this.index} has no credentials in ${this.dir} (--login-only)`)
        }
        this.open = false
        const sock = makeWASocket({
            waWebSocketUrl: url,
            auth: state,
            logger,
            printQRInTerminal: false,
            connectTimeoutMs,
            markOnlineOnConnect: false,
        })
        const previous = this.sock
        this.sock = sock
        // A socket still open from before is dropped; its events no longer count.
        previous?.end(undefined)
        sock.ev.on('creds.update', () => {
            const save = saveCreds().catch((err) => toStderr(`session ${this.index}: saving creds: ${err.message}`))
            pendingSaves.add(save)
            save.finally(() => pendingSaves.delete(save))
        })
        sock.ev.on('connection.update', (update) => this.onConnectionUpdate(sock, update))
        if (events) {
            sock.ev.on('messages.upsert', ({ messages, type }) => write({
                type: 'upsert',
                session: this.index,
                upsertType: type,
                messages: messages.map((m) => ({
                    id: m.key.id,
                    remoteJid: m.key.remoteJid,
                    fromMe: Boolean(m.key.fromMe),
                    text: textOf(m.message),
                    protocol: Boolean(m.message?.protocolMessage),
                })),
            }))
            sock.ev.on('messages.update', (updates) => write({
                type: 'update',
                session: this.index,
                updates: updates.map((u) => ({ id: u.key.id, remoteJid: u.key.remoteJid, status: u.update.status ?? null })),
            }))
        }
    }

    onConnectionUpdate(sock, { connection, qr, lastDisconnect }) {
        if (sock !== this.sock) {
            return
        }
        if (qr) {
            report({ type: 'qr', session: this.index, qr })
            if (tap) {
                postQr(tapUrl, qr).then(
                    ({ status, body }) => status !== 200 && toStderr(`session ${this.index}: qr tap ${status} ${JSON.stringify(body)}`),
                    (err) => toStderr(`session ${this.index}: qr tap: ${err.message}`)
                )
            }
        }
        if (connection === 'open') {
            this.open = true
            report({ type: 'open', session: this.index, jid: sock.user?.id ?? null })
            this.onOpen?.()
        }
        if (connection === 'close') {
            this.open = false
            const code = lastDisconnect?.error?.output?.statusCode ?? null
            report({ type: 'close', session: this.index, code })
            // After pairing the service asks for a restart; any real app reconnects then.
            if (code === DisconnectReason.restartRequired) {
                this.start().catch((err) => this.onFail?.(err))
            } else {
                this.onFail?.(new Error(`session ${this.index} closed with ${code}`))
            }
        }
    }

    /** Starts the session and resolves once it is open (bounded by the overall timeout). */
    openOnce() {
        return new Promise((resolve, reject) => {
            this.onOpen = () => { this.onOpen = this.onFail = null; resolve() }
            this.onFail = (err) => { this.onOpen = this.onFail = null; reject(err) }
            this.start().catch((err) => this.onFail?.(err))
        })
    }
}

const all = Array.from({ length: sessions }, (_, i) => new Session(i))

async function openAll() {
    let next = 0
    const worker = async () => {
        while (next < all.length) {
            const session = all[next++]
            try {
                await session.openOnce()
            } catch (err) {
                if (!events) throw err
                toStderr(err.message)
            }
        }
    }
    await Promise.all(Array.from({ length: Math.min(concurrency, all.length) }, worker))
}

function sessionAt(index) {
    const session = all[Number(index)]
    if (!session) throw new Error(`no session ${JSON.stringify(index)}`)
    return session
}

async function quit() {
    for (const session of all) {
        try {
            session.sock?.end(undefined)
        } catch { /* already closed */ }
    }
    await Promise.allSettled([...pendingSaves])
    process.exit(0)
}

async function onCommand(line) {
    if (!line.trim()) return
    let command
    try {
        command = JSON.parse(line)
        switch (command.cmd) {
        case 'stats': {
            global.gc?.()
            const { rss, heapUsed } = process.memoryUsage()
            write({ type: 'stats', rss, heapUsed, gc: typeof global.gc === 'function' })
            return
        }
        case 'send': {
            const session = sessionAt(command.session)
            const sent = await session.sock.sendMessage(command.to, { text: String(command.text) })
            write({ type: 'sent', session: session.index, id: sent.key.id })
            return
        }
        case 'creds': {
            const session = sessionAt(command.session)
            const { me, myAppStateKeyId, accountSyncCounter } = session.auth.state.creds
            write({ type: 'creds', session: session.index, me: me ?? null, myAppStateKeyId: myAppStateKeyId ?? null, accountSyncCounter })
            return
        }
        case 'buffering': {
            const session = sessionAt(command.session)
            write({ type: 'buffering', session: session.index, buffering: session.sock.ev.isBuffering() })
            return
        }
        case 'reconnect': {
            const session = sessionAt(command.session)
            session.onOpen = session.onFail = null
            await session.start()
            write({ type: 'reconnecting', session: session.index })
            return
        }
        case 'quit':
            await quit()
            return
        default:
            throw new Error(`unknown command ${JSON.stringify(command.cmd)}`)
        }
    } catch (err) {
        write({ type: 'error', cmd: command?.cmd ?? null, error: err.message })
    }
}

const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
lines.on('line', (line) => { onCommand(line) })
lines.on('close', () => { quit() })

const started = Date.now()
write({ type: 'started', sessions, pid: process.pid })
const deadline = setTimeout(() => {
    write({ type: 'error', error: `not every session opened within ${openTimeoutS} s`, open: all.filter((s) => s.open).length })
    if (!events) process.exit(1)
}, openTimeoutS * 1000)

openAll().then(() => {
    clearTimeout(deadline)
    write({ type: 'ready', sessions: all.filter((s) => s.open).length, seconds: (Date.now() - started) / 1000 })
}, (err) => {
    clearTimeout(deadline)
    write({ type: 'error', error: err.message })
    process.exit(1)
})

process.on('unhandledRejection', (err) => toStderr(`unhandled rejection: ${err && err.stack ? err.stack : err}`))
