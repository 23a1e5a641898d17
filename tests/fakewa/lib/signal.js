'use strict'
// A fake primary phone (device 0 of a number) as seen by the Signal protocol: an identity,
// a signed pre-key, one-time pre-keys handed out in bundles, and the sessions it holds
// with companion devices. Sessions live in memory only, as libsignal objects.
const { libsignal, strip, withType, encodePaddedMessage, decodePaddedMessage } = require('./wa')

// One-time pre-keys handed out but never used are dropped past this many, oldest first.
const MAX_OPEN_PREKEYS = 200
const PREKEY_ID_LIMIT = 0xffffff


class Peer {
    constructor(user) {
        this.user = user
        this.identity = libsignal.keyhelper.generateIdentityKeyPair()
        this.registrationId = libsignal.keyhelper.generateRegistrationId()
        this._signedPreKey = null
        this.preKeys = new Map()
        this.nextPreKeyId = 1
        this.sessions = new Map()
        const peer = this
        // The storage interface libsignal's SessionBuilder/SessionCipher call into.
        this.store = {
            isTrustedIdentity: () => true,
            loadSession: async (id) => peer.sessions.get(id),
            storeSession: async (id, record) => { peer.sessions.set(id, record) },
            loadPreKey: async (id) => peer.preKeys.get(Number(id)),
            removePreKey: async (id) => { peer.preKeys.delete(Number(id)) },
            loadSignedPreKey: async () => peer.signedPreKey.keyPair,
            getOurRegistrationId: () => peer.registrationId,
            getOurIdentity: () => peer.identity,
        }
    }

    // Made on first use: signing costs milliseconds of pure-JS curve math, and most phones
    // (auto-scanned accounts, contacts that only send) never hand out a bundle.
    get signedPreKey() {
        if (!this._signedPreKey) {
            this._signedPreKey = libsignal.keyhelper.generateSignedPreKey(this.identity, 1)
        }
        return this._signedPreKey
    }

    get jid() {
        return `${this.user}@s.whatsapp.net`
    }

    /** The 32-byte public identity key, as WhatsApp puts it on the wire. */
    get identityKey() {
        return strip(this.identity.pubKey)
    }

    get identityPrivate() {
        return this.identity.privKey
    }

    /** A pre-key bundle for this phone, consuming a fresh one-time pre-key. */
    takeBundle() {
        const keyId = this.nextPreKeyId
        this.nextPreKeyId = this.nextPreKeyId >= PREKEY_ID_LIMIT ? 1 : this.nextPreKeyId + 1
        this.preKeys.set(keyId, libsignal.keyhelper.generatePreKey(keyId).keyPair)
        if (this.preKeys.size > MAX_OPEN_PREKEYS) {
            this.preKeys.delete(this.preKeys.keys().next().value)
        }
        return {
            registrationId: this.registrationId,
            identity: this.identityKey,
            signedPreKey: {
                id: this.signedPreKey.keyId,
                public: strip(this.signedPreKey.keyPair.pubKey),
                signature: Buffer.from(this.signedPreKey.signature),
            },
            preKey: { id: keyId, public: strip(this.preKeys.get(keyId).pubKey) },
        }
    }

    address(user, device) {
        return new libsignal.ProtocolAddress(user, device || 0)
    }

    hasSession(user, device) {
        const record = this.sessions.get(this.address(user, device).toString())
        return Boolean(record && record.haveOpenSession())
    }

    /**
     * Encrypts a proto Message for a companion device; `bundle` (the device's keys) is
     * used only when no session exists yet. Returns { type: 'pkmsg'|'msg', ciphertext }.
     */
    async encryptMessage(user, device, message, bundle) {
        const address = this.address(user, device)
        if (!this.hasSession(user, device)) {
            if (!bundle) {
                throw new Error(`no session with ${address} and no pre-key bundle for it`)
            }
            await new libsignal.SessionBuilder(this.store, address).initOutgoing({
                registrationId: bundle.registrationId,
                identityKey: withType(bundle.identity),
                signedPreKey: {
                    keyId: bundle.signedPreKey.id,
                    publicKey: withType(bundle.signedPreKey.public),
                    signature: bundle.signedPreKey.signature,
                },
                preKey: bundle.preKey
                    ? { keyId: bundle.preKey.id, publicKey: withType(bundle.preKey.public) }
                    : undefined,
            })
        }
        const cipher = new libsignal.SessionCipher(this.store, address)
        const { type, body } = await cipher.encrypt(encodePaddedMessage(message))
        return { type: type === 3 ? 'pkmsg' : 'msg', ciphertext: Buffer.from(body) }
    }

    /** Decrypts what a companion device encrypted for this phone; returns a proto Message. */
    async decryptMessage(user, device, type, ciphertext) {
        const cipher = new libsignal.SessionCipher(this.store, this.address(user, device))
        let plaintext
        if (type === 'pkmsg') {
            plaintext = await cipher.decryptPreKeyWhisperMessage(Buffer.from(ciphertext))
        } else if (type === 'msg') {
            plaintext = await cipher.decryptWhisperMessage(Buffer.from(ciphertext))
        } else {
            throw new Error(`cannot decrypt enc type '${type}'`)
        }
        return decodePaddedMessage(plaintext)
    }
}

module.exports = { Peer }
