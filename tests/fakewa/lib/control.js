'use strict'
// The JSON-lines control protocol: what a test can make the fake service (and the fake
// phones behind it) do. Each handler returns the reply's fields or throws a clear error.
const { newMessageId } = require('./connection')

const DISCONNECT_CODES = new Set([401, 403, 428, 440, 500, 503, 515])

const digits = (value, name) => {
    const text = String(value ?? '')
    if (!/^\d{5,20}$/.test(text)) {
        throw new Error(`'${name}' must be a phone number in digits, got ${JSON.stringify(value)}`)
    }
    return text
}

/** Splits "ref,noiseKey,identityKey,advSecret" and finds the connection showing the ref. */
function findScan(world, qr) {
    if (typeof qr !== 'string' || qr.split(',').length !== 4) {
        throw new Error("'qr' must be the QR string Baileys emits: ref,noiseKey,identityKey,advSecret")
    }
    const [ref, noiseKey, identityKey, advSecret] = qr.split(',')
    const conn = world.refs.get(ref)
    if (!conn || conn.closed) {
        throw new Error('unknown or expired QR: no open connection is showing this ref')
    }
    if (!Buffer.from(noiseKey, 'base64').equals(conn.clientStatic)) {
        throw new Error(`QR noise key does not match connection ${conn.id} that showed the ref`)
    }
    if (!Buffer.from(identityKey, 'base64').equals(conn.registration.identity)) {
        throw new Error(`QR identity key does not match connection ${conn.id} that showed the ref`)
    }
    const secret = Buffer.from(advSecret, 'base64')
    if (secret.length !== 32) {
        throw new Error('QR adv secret is not 32 bytes of base64')
    }
    return { conn, advSecret: secret }
}

async function scan(world, { qr, phone, pushName, shareAppStateKey }) {
    const { conn, advSecret } = findScan(world, qr)
    const number = phone === undefined ? world.autoPhone() : digits(phone, 'phone')
    const jid = await conn.pair({ phone: number, pushName, shareAppStateKey, advSecret })
    return { jid }
}

function liveConnections(devices) {
    return devices.flatMap((device) => [...device.connections].filter((conn) => conn.phase === 'ready' || conn.phase === 'login'))
}

const commands = {
    status(world) {
        return {
            connections: world.connections.size,
            devices: [...world.devices.values()].map((device) => ({
                jid: device.jid, connected: device.connections.size, phase: device.phase,
            })),
        }
    },

    scan,

    /** Memory of this process, after a full collection when node runs with --expose-gc. */
    stats(world) {
        global.gc?.()
        const { rss, heapUsed, external, arrayBuffers } = process.memoryUsage()
        return { rss, heapUsed, external, arrayBuffers, gc: typeof global.gc === 'function', connections: world.connections.size }
    },

    // Message ids travel as `messageId`: `id` belongs to the request/reply pairing.
    async sendText(world, { to, from, text, messageId, pushName }) {
        if (typeof text !== 'string') throw new Error("'text' must be a string")
        const sender = world.peer(digits(from, 'from'))
        const targets = liveConnections(world.targets(to))
        if (!targets.length) {
            throw new Error(`no logged-in connection for ${to}`)
        }
        const id = messageId === undefined ? newMessageId() : String(messageId)
        const devices = []
        for (const conn of targets) {
            await conn.deliver(sender, { conversation: text }, { id, notify: pushName })
            devices.push(conn.jid)
        }
        return { messageId: id, devices }
    },

    outbound(world) {
        return { messages: world.outbound }
    },

    disconnect(world, { code, jid, drop = false }) {
        const number = Number(code)
        if (!drop && !DISCONNECT_CODES.has(number)) {
            throw new Error(`'code' must be one of ${[...DISCONNECT_CODES].join(', ')} (or pass drop: true)`)
        }
        let conns
        if (jid === undefined || jid === null) {
            conns = [...world.connections]
        } else {
            const device = world.devices.get(jid)
            if (!device) throw new Error(`unknown device ${jid}`)
            conns = [...device.connections]
        }
        for (const conn of conns) {
            conn.disconnect(number, { drop: Boolean(drop) })
        }
        return { closed: conns.length }
    },

    rejectUpgrades(world, { status }) {
        if (status !== null && status !== undefined && !(Number.isInteger(status) && status >= 400 && status <= 599)) {
            throw new Error("'status' must be an HTTP error status (400-599) or null")
        }
        world.rejectStatus = status ?? null
        return { status: world.rejectStatus }
    },

    silent(world, { on }) {
        world.silent = Boolean(on)
        return { on: world.silent }
    },

    ack(world, { messageId, status }) {
        if (status !== 'delivered' && status !== 'read') {
            throw new Error("'status' must be 'delivered' or 'read'")
        }
        const entry = world.outboundById.get(messageId)
        if (!entry) throw new Error(`no outbound message with id ${JSON.stringify(messageId)}`)
        const sender = world.devices.get(entry.from)
        const conns = liveConnections([...sender.account.devices.values()])
        const attrs = { from: entry.to, id: entry.id, t: String(Math.floor(Date.now() / 1000)) }
        if (status === 'read') attrs.type = 'read'
        for (const conn of conns) {
            conn.send({ tag: 'receipt', attrs })
        }
        return { devices: conns.map((conn) => conn.jid) }
    },

    autoScan(world, { on, shareAppStateKey }) {
        world.autoScan = Boolean(on)
        if (shareAppStateKey !== undefined) {
            world.autoScanOptions.shareAppStateKey = Boolean(shareAppStateKey)
        }
        return { on: world.autoScan }
    },
}

async function dispatch(world, request) {
    const handler = Object.prototype.hasOwnProperty.call(commands, request.cmd) ? commands[request.cmd] : undefined
    if (!handler) {
        throw new Error(`unknown command ${JSON.stringify(request.cmd)}; known: ${Object.keys(commands).join(', ')}`)
    }
    return handler(world, request)
}

module.exports = { dispatch, scan }
