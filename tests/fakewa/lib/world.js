'use strict'
// Everything the fake service remembers: numbers (accounts) with their primary phone,
// companion devices, the contacts' phones, QR refs on display, and the messages devices
// sent. All in memory; one World per server process.
const crypto = require('crypto')
const { Peer } = require('./signal')
const { makeServerIdentity } = require('./noise')
const { proto } = require('./wa')

const MAX_OUTBOUND = 10000
// Below this many one-time pre-keys the service asks the device for more, as WhatsApp does.
const LOW_PREKEYS = 5
// Numbers handed out by auto-scan pairings: a block no test is expected to type by hand.
const AUTO_PHONE_BASE = 15557000000

class Account {
    constructor(phone, peer) {
        this.phone = phone
        this.peer = peer
        this.pushName = 'Fake Phone'
        this.shareAppStateKey = true
        this.rawId = crypto.randomBytes(4).readUInt32BE(0)
        this.nextDevice = 1
        this.nextKeyIndex = 1
        this.devices = new Map()
        // The key a real phone shares with each new companion so it can read app state.
        this.appStateKey = {
            keyId: crypto.randomBytes(6),
            keyData: crypto.randomBytes(32),
            timestamp: Date.now(),
        }
    }

    appStateKeyShareMessage(deviceNumber) {
        return {
            protocolMessage: {
                type: proto.Message.ProtocolMessage.Type.APP_STATE_SYNC_KEY_SHARE,
                appStateSyncKeyShare: {
                    keys: [{
                        keyId: { keyId: this.appStateKey.keyId },
                        keyData: {
                            keyData: this.appStateKey.keyData,
                            fingerprint: { rawId: this.rawId, currentIndex: 0, deviceIndexes: [0, deviceNumber] },
                            timestamp: this.appStateKey.timestamp,
                        },
                    }],
                },
            },
        }
    }
}

class Device {
    constructor(account, number, noiseKey) {
        this.account = account
        this.number = number
        this.user = account.phone
        this.jid = `${account.phone}:${number}@s.whatsapp.net`
        this.noiseKey = noiseKey
        this.identity = null
        this.registrationId = null
        this.signedPreKey = null
        this.preKeys = new Map()
        this.connections = new Set()
        this.phase = 'paired'
        this.keyShared = false
        this.removed = false
    }

    setRegistration({ identity, registrationId, signedPreKey }) {
        if (identity) this.identity = Buffer.from(identity)
        if (registrationId !== undefined) this.registrationId = registrationId
        if (signedPreKey) this.signedPreKey = signedPreKey
    }

    /** This device's pre-key bundle, consuming one uploaded one-time pre-key if any is left. */
    takeBundle() {
        if (!this.identity || !this.signedPreKey) {
            throw new Error(`${this.jid} has not registered its keys yet`)
        }
        let preKey
        const first = this.preKeys.keys().next()
        if (!first.done) {
            preKey = { id: first.value, public: this.preKeys.get(first.value) }
            this.preKeys.delete(first.value)
        }
        return {
            registrationId: this.registrationId,
            identity: this.identity,
            signedPreKey: this.signedPreKey,
            preKey,
            low: this.preKeys.size < LOW_PREKEYS,
        }
    }
}

class World {
    constructor({ emit, autoScan = false, handshakeDelayMs = 100, refCount = 6 }) {
        this.emit = emit
        this.identity = makeServerIdentity()
        this.handshakeDelayMs = handshakeDelayMs
        this.refCount = refCount
        this.autoScan = autoScan
        this.autoScanOptions = { shareAppStateKey: true }
        this.rejectStatus = null
        this.silent = false
        this.connections = new Set()
        this.nextConnectionId = 1
        this.accounts = new Map()
        this.peers = new Map()
        this.devices = new Map()
        this.refs = new Map()
        this.outbound = []
        this.outboundById = new Map()
        this.nextAutoPhone = 0
    }

    peer(user) {
        let peer = this.peers.get(user)
        if (!peer) {
            peer = new Peer(user)
            this.peers.set(user, peer)
        }
        return peer
    }

    account(phone) {
        let account = this.accounts.get(phone)
        if (!account) {
            account = new Account(phone, this.peer(phone))
            this.accounts.set(phone, account)
        }
        return account
    }

    autoPhone() {
        for (;;) {
            const phone = String(AUTO_PHONE_BASE + this.nextAutoPhone++)
            if (!this.accounts.has(phone)) {
                return phone
            }
        }
    }

    addDevice(account, noiseKey, number = account.nextDevice) {
        account.nextDevice = Math.max(account.nextDevice, number + 1)
        const device = new Device(account, number, noiseKey)
        account.devices.set(number, device)
        this.devices.set(device.jid, device)
        return device
    }

    /** Devices of an account, or the one device, addressed by number or device jid. */
    targets(to) {
        if (typeof to !== 'string' || !to) {
            throw new Error("'to' must be an account's phone digits or a device jid")
        }
        if (to.includes(':')) {
            const device = this.devices.get(to)
            if (!device) throw new Error(`unknown device ${to}`)
            return [device]
        }
        const phone = to.split('@')[0]
        const account = this.accounts.get(phone)
        if (!account) throw new Error(`unknown account ${phone}`)
        return [...account.devices.values()]
    }

    recordOutbound(entry) {
        this.outbound.push(entry)
        this.outboundById.set(entry.id, entry)
        if (this.outbound.length > MAX_OUTBOUND) {
            this.outboundById.delete(this.outbound.shift().id)
        }
    }
}

module.exports = { World }
