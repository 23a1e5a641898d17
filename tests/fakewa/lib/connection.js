'use strict'
// One client WebSocket as the service sees it: the Noise handshake, then either a
// registration (QR pairing) or a login, then the stanzas of a logged-in companion.
const crypto = require('crypto')
const { ServerNoise, FrameReader, frame } = require('./noise')
const { answerIq, SERVICE, readUInt, childBuffer } = require('./iq')
const {
    proto, Curve, encodeBinaryNode, decodeBinaryNode, jidDecode, getBinaryNodeChild, getBinaryNodeChildren,
} = require('./wa')

const REPLY_TIMEOUT_MS = 10000
// See sendFirst(): how long to wait for the client to answer the first encrypted frame
// before concluding it was read as handshake data and sending the same bytes again.
const FIRST_FRAME_RETRY_MS = 2000
const FIRST_FRAME_TRIES = 3
// Time the client gets to process a stanza before the service hangs up after it.
const CLOSE_GRACE_MS = 200

const now = () => String(Math.floor(Date.now() / 1000))
const newStanzaId = () => crypto.randomBytes(8).toString('hex').toUpperCase()
const newMessageId = () => `3EB0${crypto.randomBytes(8).toString('hex').toUpperCase()}`
const textOf = (message) => {
    if (!message) return undefined
    return message.conversation || message.extendedTextMessage?.text || undefined
}

const DISCONNECT_STANZAS = {
    401: { tag: 'failure', attrs: { reason: '401', location: 'fake' } },
    403: { tag: 'failure', attrs: { reason: '403', location: 'fake' } },
    428: { tag: 'xmlstreamend', attrs: {} },
    440: { tag: 'stream:error', attrs: {}, content: [{ tag: 'conflict', attrs: { type: 'replaced' } }] },
}
const disconnectStanza = (code) => DISCONNECT_STANZAS[code]
    || { tag: 'stream:error', attrs: { code: String(code) } }

class Connection {
    constructor(world, ws) {
        this.world = world
        this.ws = ws
        this.id = world.nextConnectionId++
        this.noise = new ServerNoise(world.identity)
        this.reader = new FrameReader()
        this.silent = world.silent
        this.phase = 'handshake'
        this.clientStatic = null
        this.registration = null
        this.refs = []
        this.device = null
        this.loginSettled = false
        this.closed = false
        this.waiters = new Map()
        this.firstFrameTimer = null
        // Frames are handled strictly in arrival order, one at a time.
        this.queue = Promise.resolve()
        ws.on('message', (data) => this.onData(data))
        ws.on('close', () => this.onClose())
        ws.on('error', (err) => this.log(`socket error: ${err.message}`))
    }

    log(message) {
        process.stderr.write(`fakewa[conn ${this.id}${this.device ? ` ${this.device.jid}` : ''}] ${message}\n`)
    }

    get jid() {
        return this.device?.jid
    }

    // ------------------------------------------------------------------ transport

    onData(data) {
        if (this.silent || this.closed) {
            return
        }
        let frames
        try {
            frames = this.reader.push(data)
        } catch (err) {
            this.fail(err)
            return
        }
        for (const payload of frames) {
            this.queue = this.queue
                .then(() => this.onFrame(payload))
                .catch((err) => this.fail(err))
        }
    }

    async onFrame(payload) {
        if (this.closed) {
            return
        }
        if (!this.noise.finished) {
            if (!this.noise.ephemeral) {
                this.sendRaw(this.noise.respond(payload))
                return
            }
            const { clientStatic, payload: clientPayload } = this.noise.finish(payload)
            this.clientStatic = clientStatic
            // The client switches to transport keys without awaiting it: give it a moment
            // before the first encrypted frame, or that frame is read as handshake data.
            setTimeout(() => this.afterHandshake(clientPayload), this.world.handshakeDelayMs)
            return
        }
        if (this.firstFrameTimer) {
            clearTimeout(this.firstFrameTimer)
            this.firstFrameTimer = null
        }
        const node = await decodeBinaryNode(this.noise.decrypt(payload))
        await this.onNode(node)
    }

    sendRaw(bytes) {
        if (this.ws.readyState === this.ws.OPEN) {
            this.ws.send(frame(bytes))
        }
    }

    send(node) {
        if (this.closed || this.ws.readyState !== this.ws.OPEN) {
            return false
        }
        this.ws.send(frame(this.noise.encrypt(encodeBinaryNode(node))))
        return true
    }

    /**
     * Sends the first stanza after the handshake. Baileys starts deriving its transport
     * keys only once the handshake frame is written and does not wait for them; a frame
     * arriving before they are ready is taken for handshake data and silently lost. The
     * first stanza always gets an answer (the QR IQ's result, or the pre-key count query
     * after `success`), so when none comes the client missed it: the identical bytes are
     * sent again, still valid for the client's unchanged counter.
     */
    sendFirst(node) {
        if (this.closed || this.ws.readyState !== this.ws.OPEN) {
            return
        }
        const bytes = frame(this.noise.encrypt(encodeBinaryNode(node)))
        let tries = 1
        const retry = () => {
            if (this.closed || this.ws.readyState !== this.ws.OPEN || tries >= FIRST_FRAME_TRIES) {
                this.firstFrameTimer = null
                return
            }
            tries++
            this.log(`no answer to the first ${node.tag} frame; sending it again`)
            this.ws.send(bytes)
            this.firstFrameTimer = setTimeout(retry, FIRST_FRAME_RETRY_MS)
        }
        this.ws.send(bytes)
        this.firstFrameTimer = setTimeout(retry, FIRST_FRAME_RETRY_MS)
    }

    /** Sends a stanza and resolves with the client's answer (an iq result or an ack). */
    request(node, kind = 'iq', timeoutMs = REPLY_TIMEOUT_MS) {
        const id = node.attrs.id
        return new Promise((resolve, reject) => {
            const timer = setTimeout(() => {
                this.waiters.delete(`${kind}:${id}`)
                reject(new Error(`no ${kind} for ${node.tag} ${id} within ${timeoutMs} ms`))
            }, timeoutMs)
            this.waiters.set(`${kind}:${id}`, { resolve, reject, timer })
            if (!this.send(node)) {
                clearTimeout(timer)
                this.waiters.delete(`${kind}:${id}`)
                reject(new Error('connection is closed'))
            }
        })
    }

    settle(kind, node) {
        const key = `${kind}:${node.attrs.id}`
        const waiter = this.waiters.get(key)
        if (!waiter) {
            return false
        }
        this.waiters.delete(key)
        clearTimeout(waiter.timer)
        waiter.resolve(node)
        return true
    }

    fail(err) {
        this.log(`closing after error: ${err.stack || err}`)
        this.terminate()
    }

    /** Sends the stanza a disconnect code stands for, then hangs up; or just drops TCP. */
    disconnect(code, { drop = false } = {}) {
        if (drop) {
            this.terminate()
            return
        }
        if (code === 401 && this.device) {
            this.device.removed = true
            this.device.phase = 'removed'
        }
        this.send(disconnectStanza(code))
        this.closeSoon()
    }

    closeSoon() {
        setTimeout(() => this.terminate(false), CLOSE_GRACE_MS).unref()
    }

    terminate(hard = true) {
        if (this.ws.readyState === this.ws.CLOSED) {
            return
        }
        if (hard || this.ws.readyState !== this.ws.OPEN) {
            this.ws.terminate()
        } else {
            this.ws.close()
        }
    }

    onClose() {
        if (this.closed) {
            return
        }
        this.closed = true
        this.phase = 'closed'
        clearTimeout(this.firstFrameTimer)
        this.world.connections.delete(this)
        for (const ref of this.refs) {
            this.world.refs.delete(ref)
        }
        for (const waiter of this.waiters.values()) {
            clearTimeout(waiter.timer)
            waiter.reject(new Error('connection closed'))
        }
        this.waiters.clear()
        if (this.device) {
            this.device.connections.delete(this)
            if (!this.device.connections.size && !this.device.removed) {
                this.device.phase = 'offline'
            }
        }
        this.world.emit('connection', { state: 'closed', conn: this.id, jid: this.jid ?? null })
    }

    // ------------------------------------------------------------------ handshake outcome

    afterHandshake(payload) {
        if (this.closed) {
            return
        }
        if (payload.username !== null && payload.username !== undefined && String(payload.username) !== '0') {
            this.login(payload)
        } else if (payload.devicePairingData) {
            this.register(payload.devicePairingData)
        } else {
            this.log('client payload is neither a login nor a registration')
            this.disconnect(500)
        }
    }

    register(data) {
        this.registration = {
            identity: Buffer.from(data.eIdent),
            registrationId: readUInt(data.eRegid),
            signedPreKey: {
                id: readUInt(data.eSkeyId),
                public: Buffer.from(data.eSkeyVal),
                signature: Buffer.from(data.eSkeySig),
            },
        }
        this.phase = 'registering'
        for (let i = 0; i < this.world.refCount; i++) {
            const ref = `2@${crypto.randomBytes(24).toString('base64')}`
            this.refs.push(ref)
            this.world.refs.set(ref, this)
        }
        this.sendFirst({
            tag: 'iq',
            attrs: { from: SERVICE, type: 'set', id: newStanzaId(), xmlns: 'md' },
            content: [{
                tag: 'pair-device',
                attrs: {},
                content: this.refs.map((ref) => ({ tag: 'ref', attrs: {}, content: Buffer.from(ref) })),
            }],
        })
        this.world.emit('registration', { conn: this.id })
    }

    /**
     * What the phone does when it scans this connection's QR: vouch for the companion's
     * identity key with the account key (ADV), authenticated with the QR's secret. Resolves
     * with the new device jid once the companion has signed it back.
     */
    async pair({ phone, pushName, shareAppStateKey, advSecret }) {
        if (this.phase !== 'registering') {
            throw new Error(`connection ${this.id} is not waiting for a scan (phase ${this.phase})`)
        }
        this.phase = 'pairing'
        try {
            const account = this.world.account(phone)
            if (pushName !== undefined) account.pushName = pushName
            if (shareAppStateKey !== undefined) account.shareAppStateKey = Boolean(shareAppStateKey)
            const number = account.nextDevice
            const jid = `${phone}:${number}@s.whatsapp.net`
            const keyIndex = account.nextKeyIndex++
            const companionKey = this.registration.identity
            const accountKey = account.peer.identityKey
            const details = Buffer.from(proto.ADVDeviceIdentity.encode({
                rawId: account.rawId, timestamp: Math.floor(Date.now() / 1000), keyIndex,
            }).finish())
            const accountSignature = Curve.sign(
                account.peer.identityPrivate, Buffer.concat([Buffer.from([6, 0]), details, companionKey])
            )
            const signed = Buffer.from(proto.ADVSignedDeviceIdentity.encode({
                details, accountSignatureKey: accountKey, accountSignature,
            }).finish())
            const hmac = crypto.createHmac('sha256', advSecret).update(signed).digest()
            const container = proto.ADVSignedDeviceIdentityHMAC.encode({ details: signed, hmac }).finish()
            const answer = await this.request({
                tag: 'iq',
                attrs: { from: SERVICE, type: 'set', id: newStanzaId(), xmlns: 'md' },
                content: [{
                    tag: 'pair-success',
                    attrs: {},
                    content: [
                        { tag: 'device-identity', attrs: {}, content: container },
                        { tag: 'platform', attrs: { name: 'android' } },
                        { tag: 'device', attrs: { jid } },
                    ],
                }],
            })
            const signedBack = childBuffer(getBinaryNodeChild(answer, 'pair-device-sign'), 'device-identity')
            if (answer.attrs.type !== 'result' || !signedBack) {
                throw new Error('companion did not sign the device identity')
            }
            const identity = proto.ADVSignedDeviceIdentity.decode(signedBack)
            const deviceMessage = Buffer.concat([
                Buffer.from([6, 1]), Buffer.from(identity.details), companionKey, accountKey,
            ])
            if (!Curve.verify(companionKey, deviceMessage, Buffer.from(identity.deviceSignature))) {
                throw new Error('companion device signature does not verify')
            }
            const device = this.world.addDevice(account, this.clientStatic, number)
            device.setRegistration(this.registration)
            this.world.emit('paired', { jid, conn: this.id })
            // A real service makes a freshly paired companion reconnect and log in.
            this.send(disconnectStanza(515))
            this.closeSoon()
            return jid
        } catch (err) {
            if (this.phase === 'pairing' && !this.closed) {
                this.phase = 'registering'
            }
            throw err
        }
    }

    login(payload) {
        const user = String(payload.username)
        const number = payload.device || 0
        const jid = `${user}:${number}@s.whatsapp.net`
        let device = this.world.devices.get(jid)
        if (device && (device.removed || !device.noiseKey.equals(this.clientStatic))) {
            this.log(`refusing login of ${device.removed ? 'removed device' : 'unknown noise key for'} ${jid}`)
            this.sendFirst(disconnectStanza(401))
            // The client hangs up on its own once it reads the failure.
            setTimeout(() => this.terminate(), FIRST_FRAME_RETRY_MS * FIRST_FRAME_TRIES).unref()
            return
        }
        if (!device) {
            // Credentials paired by an earlier server process: adopt them. The device
            // re-uploads its keys when told it has none on the server.
            device = this.world.addDevice(this.world.account(user), this.clientStatic, number)
            this.log(`adopted ${jid} (paired before this server started)`)
        }
        for (const other of device.connections) {
            other.log('replaced by a newer login')
            other.disconnect(440)
        }
        this.device = device
        device.connections.add(this)
        device.phase = 'loggingIn'
        this.phase = 'login'
        this.sendFirst({
            tag: 'success',
            attrs: { t: now(), props: '1', abprops: '1', location: 'fake', creation: now() },
        })
        this.world.emit('loggedIn', { jid, conn: this.id })
    }

    /**
     * Runs once the companion declares itself active: the phone shares its app-state key
     * (if the account does that), then the service reports no offline backlog, which is
     * what lets Baileys stop buffering events.
     */
    async settleLogin() {
        const device = this.device
        const account = device.account
        if (account.shareAppStateKey && !device.keyShared) {
            const sent = await this.deliver(account.peer, account.appStateKeyShareMessage(device.number), {
                category: 'peer', notify: account.pushName,
            })
            // Baileys handles messages and notifications one at a time, in order, and acks a
            // notification only after handling it: once this one is acked, the key share
            // before it has been stored.
            const marker = {
                tag: 'notification',
                attrs: { from: account.peer.jid, type: 'devices', id: newStanzaId(), t: now() },
                content: [{
                    tag: 'devices',
                    attrs: { jid: account.peer.jid },
                    content: [{ tag: 'device', attrs: { jid: device.jid } }],
                }],
            }
            await this.request(marker, 'ack')
            device.keyShared = true
            this.log(`shared app-state key in message ${sent}`)
        }
        this.send({ tag: 'ib', attrs: { from: SERVICE }, content: [{ tag: 'offline', attrs: { count: '0' } }] })
        this.phase = 'ready'
        device.phase = 'ready'
        this.world.emit('ready', { jid: device.jid, conn: this.id })
    }

    /** Encrypts a proto Message from `peer` (a phone, device 0) to this device and sends it. */
    async deliver(peer, message, { id = newMessageId(), category, notify } = {}) {
        const device = this.device
        let bundle
        if (!peer.hasSession(device.user, device.number)) {
            bundle = device.takeBundle()
            if (bundle.low) {
                this.send({
                    tag: 'notification',
                    attrs: { from: SERVICE, type: 'encrypt', id: newStanzaId(), t: now() },
                    content: [{ tag: 'count', attrs: { value: String(device.preKeys.size) } }],
                })
            }
        }
        const { type, ciphertext } = await peer.encryptMessage(device.user, device.number, message, bundle)
        const attrs = { from: peer.jid, id, type: 'text', t: now() }
        if (category) attrs.category = category
        if (notify) attrs.notify = notify
        if (!this.send({ tag: 'message', attrs, content: [{ tag: 'enc', attrs: { v: '2', type }, content: ciphertext }] })) {
            throw new Error(`connection to ${device.jid} closed before delivery`)
        }
        return id
    }

    // ------------------------------------------------------------------ stanzas

    async onNode(node) {
        switch (node.tag) {
        case 'iq':
            if ((node.attrs.type === 'result' || node.attrs.type === 'error') && this.settle('iq', node)) {
                return
            }
            if (node.attrs.type === 'get' || node.attrs.type === 'set') {
                answerIq(this, node)
            }
            return
        case 'ack':
            this.settle('ack', node)
            return
        case 'message':
            await this.onMessage(node)
            return
        case 'receipt':
            if (this.device) {
                this.world.emit('receipt', {
                    jid: this.device.jid, id: node.attrs.id, to: node.attrs.to ?? null, receiptType: node.attrs.type ?? null,
                })
            }
            return
        default:
            // presence, chatstate, calls: nothing to do for a fake service
        }
    }

    /** A message the companion sends: decrypt every copy the fake phones can read. */
    async onMessage(node) {
        const device = this.device
        const { id, to } = node.attrs
        if (!device || !id) {
            return
        }
        const copies = []
        const participants = getBinaryNodeChild(node, 'participants')
        if (participants) {
            for (const item of getBinaryNodeChildren(participants, 'to')) {
                const enc = getBinaryNodeChild(item, 'enc')
                if (enc) copies.push({ jid: item.attrs.jid, enc })
            }
        } else {
            for (const enc of getBinaryNodeChildren(node, 'enc')) copies.push({ jid: to, enc })
        }
        let text
        let error
        let decrypted = 0
        for (const { jid, enc } of copies) {
            const target = jidDecode(jid)
            if (!target || target.device) {
                continue
            }
            try {
                let message = await this.world.peer(target.user).decryptMessage(
                    device.user, device.number, enc.attrs.type, Buffer.from(enc.content)
                )
                message = message.deviceSentMessage?.message || message
                text = text ?? textOf(message)
                decrypted++
            } catch (err) {
                error = err.message
                this.log(`cannot decrypt copy of ${id} for ${jid}: ${err.stack || err}`)
            }
        }
        this.send({ tag: 'ack', attrs: { class: 'message', id, from: to, t: now() } })
        if (node.attrs.category === 'peer') {
            return
        }
        const entry = { id, from: device.jid, to, text: text ?? null }
        if (!decrypted && error) entry.error = error
        this.world.recordOutbound(entry)
        this.world.emit('outbound', entry)
    }
}

module.exports = { Connection, newMessageId }
