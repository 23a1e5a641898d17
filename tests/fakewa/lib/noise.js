'use strict'
// The responder half of the Noise_XX_25519_AESGCM_SHA256 handshake that Baileys runs as
// initiator (node_modules/baileys/lib/Utils/noise-handler.js), plus the transport framing.
//
// Quirks of the client that this mirrors on purpose:
// - the protocol name is exactly 32 bytes, so it is the initial hash as is (no SHA-256);
// - until the handshake finishes ONE counter serves both directions, reset by every mixKey;
// - after the handshake the client uses the first HKDF half to write and the second to read,
//   and the AAD becomes the empty buffer (its hash is reset and no longer updated).
const crypto = require('crypto')
const { Curve, aesEncryptGCM, aesDecryptGCM, proto } = require('./wa')

const PROTOCOL_NAME = Buffer.from('Noise_XX_25519_AESGCM_SHA256\0\0\0\0')
const WA_HEADER = Buffer.from([0x57, 0x41, 6, 2])
const EMPTY = Buffer.alloc(0)
const MAX_FRAME = 1 << 24

const ivFor = (counter) => {
    const iv = Buffer.alloc(12)
    iv.writeUInt32BE(counter, 8)
    return iv
}

const sha256 = (data) => crypto.createHash('sha256').update(data).digest()

const hkdf64 = (ikm, salt) => Buffer.from(crypto.hkdfSync('sha256', ikm, salt, EMPTY, 64))

/**
 * A server identity the client accepts: a static Noise key pair and a certificate chain.
 * Baileys only checks that the intermediate certificate's issuerSerial is 0, but the chain
 * is still built properly (root key signs the intermediate, which signs the leaf) so it is
 * not a hollow blob.
 */
function makeServerIdentity() {
    const root = Curve.generateKeyPair()
    const intermediate = Curve.generateKeyPair()
    const staticKey = Curve.generateKeyPair()
    const now = Math.floor(Date.now() / 1000)
    const Details = proto.CertChain.NoiseCertificate.Details
    const intermediateDetails = Details.encode({
        serial: 1, issuerSerial: 0, key: intermediate.public, notBefore: now - 60, notAfter: now + 86400 * 365,
    }).finish()
    const leafDetails = Details.encode({
        serial: 2, issuerSerial: 1, key: staticKey.public, notBefore: now - 60, notAfter: now + 86400 * 30,
    }).finish()
    const certChain = proto.CertChain.encode({
        leaf: { details: leafDetails, signature: Curve.sign(intermediate.private, leafDetails) },
        intermediate: { details: intermediateDetails, signature: Curve.sign(root.private, intermediateDetails) },
    }).finish()
    return { staticKey, certChain: Buffer.from(certChain) }
}

class ServerNoise {
    constructor(identity) {
        this.identity = identity
        this.hash = PROTOCOL_NAME
        this.salt = PROTOCOL_NAME
        this.key = PROTOCOL_NAME
        this.counter = 0
        this.ephemeral = null
        this.finished = false
        this.sendKey = null
        this.recvKey = null
        this.sendCounter = 0
        this.recvCounter = 0
        this.mixHash(WA_HEADER)
    }

    mixHash(data) {
        this.hash = sha256(Buffer.concat([this.hash, data]))
    }

    mixKey(ikm) {
        const out = hkdf64(ikm, this.salt)
        this.salt = out.subarray(0, 32)
        this.key = out.subarray(32)
        this.counter = 0
    }

    seal(plaintext) {
        const sealed = aesEncryptGCM(plaintext, this.key, ivFor(this.counter++), this.hash)
        this.mixHash(sealed)
        return sealed
    }

    open(ciphertext) {
        const opened = aesDecryptGCM(ciphertext, this.key, ivFor(this.counter++), this.hash)
        this.mixHash(ciphertext)
        return opened
    }

    /** Handles the client hello; returns the encoded server hello. */
    respond(helloFrame) {
        const hello = proto.HandshakeMessage.decode(helloFrame).clientHello
        if (!hello || !hello.ephemeral || hello.ephemeral.length !== 32) {
            throw new Error('first frame is not a client hello with a 32-byte ephemeral key')
        }
        this.clientEphemeral = Buffer.from(hello.ephemeral)
        this.mixHash(this.clientEphemeral)
        this.ephemeral = Curve.generateKeyPair()
        this.mixHash(this.ephemeral.public)
        this.mixKey(Curve.sharedKey(this.ephemeral.private, this.clientEphemeral))
        const sealedStatic = this.seal(this.identity.staticKey.public)
        this.mixKey(Curve.sharedKey(this.identity.staticKey.private, this.clientEphemeral))
        const sealedCert = this.seal(this.identity.certChain)
        return Buffer.from(proto.HandshakeMessage.encode({
            serverHello: { ephemeral: this.ephemeral.public, static: sealedStatic, payload: sealedCert },
        }).finish())
    }

    /** Handles the client finish; returns the client's static key and its ClientPayload. */
    finish(finishFrame) {
        const finish = proto.HandshakeMessage.decode(finishFrame).clientFinish
        if (!finish || !finish.static || !finish.payload) {
            throw new Error('second frame is not a client finish')
        }
        const clientStatic = this.open(Buffer.from(finish.static))
        this.mixKey(Curve.sharedKey(this.ephemeral.private, clientStatic))
        const payload = proto.ClientPayload.decode(this.open(Buffer.from(finish.payload)))
        const keys = hkdf64(EMPTY, this.salt)
        this.recvKey = keys.subarray(0, 32)
        this.sendKey = keys.subarray(32)
        this.finished = true
        this.ephemeral = null
        return { clientStatic: Buffer.from(clientStatic), payload }
    }

    encrypt(plaintext) {
        return aesEncryptGCM(plaintext, this.sendKey, ivFor(this.sendCounter++), EMPTY)
    }

    decrypt(ciphertext) {
        return aesDecryptGCM(ciphertext, this.recvKey, ivFor(this.recvCounter++), EMPTY)
    }
}

/** Splits the client's byte stream into frames: 3-byte big-endian length, then payload. */
class FrameReader {
    constructor() {
        this.buffer = EMPTY
        this.sawIntro = false
    }

    push(data) {
        this.buffer = this.buffer.length ? Buffer.concat([this.buffer, data]) : Buffer.from(data)
        if (!this.sawIntro) {
            if (!this.skipIntro()) {
                return []
            }
        }
        const frames = []
        while (this.buffer.length >= 3) {
            const size = (this.buffer[0] << 16) | this.buffer.readUInt16BE(1)
            if (size > MAX_FRAME) {
                throw new Error(`frame of ${size} bytes is too large`)
            }
            if (this.buffer.length < size + 3) {
                break
            }
            frames.push(this.buffer.subarray(3, size + 3))
            this.buffer = this.buffer.subarray(size + 3)
        }
        return frames
    }

    // The first bytes are the "WA" intro, optionally preceded by an "ED" routing header
    // (sent when the client stored routing info, which this server never hands out).
    skipIntro() {
        let offset = 0
        if (this.buffer.length >= 2 && this.buffer[0] === 0x45 && this.buffer[1] === 0x44) {
            if (this.buffer.length < 7) {
                return false
            }
            offset = 7 + ((this.buffer[4] << 16) | this.buffer.readUInt16BE(5))
        }
        if (this.buffer.length < offset + 4) {
            return false
        }
        if (!this.buffer.subarray(offset, offset + 4).equals(WA_HEADER)) {
            throw new Error(`unexpected intro bytes ${this.buffer.subarray(offset, offset + 4).toString('hex')}`)
        }
        this.buffer = this.buffer.subarray(offset + 4)
        this.sawIntro = true
        return true
    }
}

function frame(payload) {
    const out = Buffer.alloc(payload.length + 3)
    out[0] = payload.length >> 16
    out.writeUInt16BE(payload.length & 0xffff, 1)
    out.set(payload, 3)
    return out
}

module.exports = { ServerNoise, FrameReader, frame, makeServerIdentity }
