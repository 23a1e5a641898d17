'use strict'
// The "phone camera" of the fake service's auto-scan mode. The service cannot pair a
// companion on its own: the QR's adv secret exists only on the client, which displays
// it. A client (or a process preloaded with this file) posts each QR it shows to the
// service's POST /qr endpoint, and the service, when auto-scan is on, scans it.
//
// Two uses:
//   const { postQr } = require('./qr_tap'); await postQr('http://127.0.0.1:PORT/qr', qr)
//   FAKEWA_QR_URL=http://127.0.0.1:PORT/qr node --require tests/fakewa/qr_tap.js app.js
// The preload form wraps Baileys' event emitter so that an unmodified program using
// Baileys posts every QR it is shown, whatever it does with the QR itself.
const http = require('http')
const path = require('path')

const TAP_TIMEOUT_MS = 15000

/** Resolves with { status, body } (body parsed when it is JSON). */
function postQr(tapUrl, qr) {
    return new Promise((resolve, reject) => {
        const req = http.request(tapUrl, {
            method: 'POST',
            headers: { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(qr) },
            timeout: TAP_TIMEOUT_MS,
        }, (res) => {
            let text = ''
            res.setEncoding('utf8')
            res.on('data', (chunk) => { text += chunk })
            res.on('end', () => {
                let body = text
                try { body = JSON.parse(text) } catch { /* not JSON: keep the text */ }
                resolve({ status: res.statusCode, body })
            })
        })
        req.on('timeout', () => req.destroy(new Error(`no answer from ${tapUrl} within ${TAP_TIMEOUT_MS} ms`)))
        req.on('error', reject)
        req.end(qr)
    })
}

/** Wraps Baileys' event buffer factory so every emitted QR is posted to `tapUrl`. */
function install(tapUrl) {
    const { resolve } = require('./lib/deps')
    const eventBuffer = require(path.join(path.dirname(resolve('baileys')), 'Utils', 'event-buffer.js'))
    const original = eventBuffer.makeEventBuffer
    eventBuffer.makeEventBuffer = (...rest) => {
        const ev = original(...rest)
        const emit = ev.emit
        ev.emit = (event, data) => {
            if (event === 'connection.update' && data && typeof data.qr === 'string') {
                postQr(tapUrl, data.qr).then(
                    ({ status, body }) => status !== 200 && process.stderr.write(`qr tap: ${status} ${JSON.stringify(body)}\n`),
                    (err) => process.stderr.write(`qr tap: ${err.message}\n`)
                )
            }
            return emit.call(ev, event, data)
        }
        return ev
    }
}

// Preloaded with --require (the main module is not loaded yet) and told where to post.
if (require.main !== module && process.env.FAKEWA_QR_URL) {
    install(process.env.FAKEWA_QR_URL)
}

module.exports = { postQr, install }
