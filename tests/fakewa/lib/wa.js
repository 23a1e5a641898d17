'use strict'
// The WhatsApp building blocks the server needs, taken from Baileys' protobuf and binary
// XML modules and from libsignal, without loading Baileys' whole index (which pulls in
// HTTP, logging and media code a fake service never runs, some 20 MB of it).
const crypto = require('crypto')
const { load } = require('./deps')

const { proto } = load('baileys/WAProto')
const binary = load('baileys/lib/WABinary')
const libsignal = load('libsignal')

/** Keys as WhatsApp carries them: 32 bytes, without libsignal's leading type byte 5. */
const strip = (key) => (key.length === 33 ? Buffer.from(key).subarray(1) : Buffer.from(key))
const withType = (key) => (key.length === 33 ? Buffer.from(key) : Buffer.concat([Buffer.from([5]), key]))

const Curve = {
    generateKeyPair() {
        const { pubKey, privKey } = libsignal.curve.generateKeyPair()
        return { public: strip(pubKey), private: Buffer.from(privKey) }
    },
    sharedKey: (privateKey, publicKey) => Buffer.from(libsignal.curve.calculateAgreement(withType(publicKey), privateKey)),
    sign: (privateKey, message) => Buffer.from(libsignal.curve.calculateSignature(privateKey, message)),
    // libsignal returns the verdict rather than throwing on a bad signature.
    verify: (publicKey, message, signature) => libsignal.curve.verifySignature(withType(publicKey), message, signature) === true,
}

const GCM_TAG = 16

function aesEncryptGCM(plaintext, key, iv, aad) {
    const cipher = crypto.createCipheriv('aes-256-gcm', key, iv)
    cipher.setAAD(aad)
    return Buffer.concat([cipher.update(plaintext), cipher.final(), cipher.getAuthTag()])
}

function aesDecryptGCM(ciphertext, key, iv, aad) {
    const decipher = crypto.createDecipheriv('aes-256-gcm', key, iv)
    decipher.setAAD(aad)
    decipher.setAuthTag(ciphertext.subarray(ciphertext.length - GCM_TAG))
    return Buffer.concat([decipher.update(ciphertext.subarray(0, ciphertext.length - GCM_TAG)), decipher.final()])
}

// Signal payloads carry a proto Message followed by 1-15 padding bytes, each holding the
// padding length.
function encodePaddedMessage(message) {
    const length = (crypto.randomBytes(1)[0] & 0x0f) || 0x0f
    return Buffer.concat([Buffer.from(proto.Message.encode(message).finish()), Buffer.alloc(length, length)])
}

function decodePaddedMessage(padded) {
    const bytes = Buffer.from(padded)
    const length = bytes.length ? bytes[bytes.length - 1] : 0
    if (!length || length > bytes.length) {
        throw new Error(`bad message padding (${length} of ${bytes.length} bytes)`)
    }
    return proto.Message.decode(bytes.subarray(0, bytes.length - length))
}

module.exports = {
    proto,
    libsignal,
    Curve,
    strip,
    withType,
    aesEncryptGCM,
    aesDecryptGCM,
    encodePaddedMessage,
    decodePaddedMessage,
    encodeBinaryNode: binary.encodeBinaryNode,
    decodeBinaryNode: binary.decodeBinaryNode,
    jidDecode: binary.jidDecode,
    getBinaryNodeChild: binary.getBinaryNodeChild,
    getBinaryNodeChildren: binary.getBinaryNodeChildren,
    getAllBinaryNodeChildren: binary.getAllBinaryNodeChildren,
}
