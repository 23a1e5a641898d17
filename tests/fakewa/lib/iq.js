'use strict'
// Answers to the IQs a companion sends. Each gets a result, so no Baileys query waits for
// its timeout; the ones whose content Baileys reads get plausible content.
const {
    jidDecode, getBinaryNodeChild, getBinaryNodeChildren, getAllBinaryNodeChildren,
} = require('./wa')

// Baileys decodes the service's own address (a jid with no user) to this string and
// compares notification senders against it, so the fake always sends it in this form.
const SERVICE = '@s.whatsapp.net'

const bigEndian = (value, length) => {
    const out = Buffer.alloc(length)
    out.writeUIntBE(value, 0, length)
    return out
}
const readUInt = (buf) => (buf && buf.length ? Buffer.from(buf).readUIntBE(0, buf.length) : undefined)
const childBuffer = (node, tag) => {
    const content = getBinaryNodeChild(node, tag)?.content
    return content instanceof Uint8Array ? Buffer.from(content) : undefined
}

function result(conn, node, content) {
    conn.send({
        tag: 'iq',
        attrs: { from: SERVICE, type: 'result', id: node.attrs.id },
        ...(content ? { content } : {}),
    })
}

function answerIq(conn, node) {
    const { xmlns, type } = node.attrs
    if (!conn.device && xmlns !== 'w:p') {
        // Before login only keep-alives make sense; answer anything else emptily.
        result(conn, node)
        return
    }
    switch (xmlns) {
    case 'encrypt':
        answerEncrypt(conn, node, type)
        return
    case 'usync':
        result(conn, node, [usyncResult(node)])
        return
    case 'passive':
        result(conn, node)
        if (getBinaryNodeChild(node, 'active') && conn.phase === 'login' && !conn.loginSettled) {
            conn.loginSettled = true
            // Not awaited: it waits for acks that arrive as later frames.
            conn.settleLogin().catch((err) => conn.fail(err))
        }
        return
    case 'w':
        if (getBinaryNodeChild(node, 'props')) {
            result(conn, node, [{ tag: 'props', attrs: { protocol: '2', hash: 'fakewa' }, content: [] }])
            return
        }
        break
    case 'privacy':
        if (type === 'get' && getBinaryNodeChild(node, 'privacy')) {
            const settings = {
                readreceipts: 'all', last: 'all', online: 'all', profile: 'all',
                status: 'all', groupadd: 'all', calladd: 'all', messages: 'all',
            }
            result(conn, node, [{
                tag: 'privacy',
                attrs: {},
                content: Object.entries(settings).map(([name, value]) => ({ tag: 'category', attrs: { name, value } })),
            }])
            return
        }
        break
    case 'blocklist':
        if (type === 'get') {
            result(conn, node, [{ tag: 'list', attrs: {}, content: [] }])
            return
        }
        break
    case 'w:m':
        if (getBinaryNodeChild(node, 'media_conn')) {
            result(conn, node, [{
                tag: 'media_conn',
                attrs: { auth: 'fakewa', ttl: '3600' },
                content: [{ tag: 'host', attrs: { hostname: '127.0.0.1', maxContentLengthBytes: '0' } }],
            }])
            return
        }
        break
    case 'md':
        if (getBinaryNodeChild(node, 'remove-companion-device')) {
            conn.device.removed = true
            conn.device.phase = 'removed'
            conn.world.emit('loggedOut', { jid: conn.device.jid, conn: conn.id })
        }
        break
    default:
    }
    result(conn, node)
}

function answerEncrypt(conn, node, type) {
    const device = conn.device
    if (type === 'get' && getBinaryNodeChild(node, 'count')) {
        result(conn, node, [{ tag: 'count', attrs: { value: String(device.preKeys.size) } }])
        return
    }
    if (type === 'set' && getBinaryNodeChild(node, 'list')) {
        const skey = getBinaryNodeChild(node, 'skey')
        device.setRegistration({
            identity: childBuffer(node, 'identity'),
            registrationId: readUInt(childBuffer(node, 'registration')),
            signedPreKey: skey && {
                id: readUInt(childBuffer(skey, 'id')),
                public: childBuffer(skey, 'value'),
                signature: childBuffer(skey, 'signature'),
            },
        })
        for (const key of getBinaryNodeChildren(getBinaryNodeChild(node, 'list'), 'key')) {
            device.preKeys.set(readUInt(childBuffer(key, 'id')), childBuffer(key, 'value'))
        }
        result(conn, node)
        return
    }
    if (type === 'get' && getBinaryNodeChild(node, 'key')) {
        const users = getBinaryNodeChildren(getBinaryNodeChild(node, 'key'), 'user')
        result(conn, node, [{ tag: 'list', attrs: {}, content: users.map((user) => bundleNode(conn, user.attrs.jid)) }])
        return
    }
    result(conn, node)
}

function bundleNode(conn, jid) {
    const { user, device: number } = jidDecode(jid) || {}
    try {
        let bundle
        if (number) {
            const device = conn.world.devices.get(`${user}:${number}@s.whatsapp.net`)
            if (!device) throw new Error('unknown device')
            bundle = device.takeBundle()
        } else {
            bundle = conn.world.peer(user).takeBundle()
        }
        const content = [
            { tag: 'registration', attrs: {}, content: bigEndian(bundle.registrationId, 4) },
            { tag: 'type', attrs: {}, content: Buffer.from([5]) },
            { tag: 'identity', attrs: {}, content: bundle.identity },
            {
                tag: 'skey',
                attrs: {},
                content: [
                    { tag: 'id', attrs: {}, content: bigEndian(bundle.signedPreKey.id, 3) },
                    { tag: 'value', attrs: {}, content: bundle.signedPreKey.public },
                    { tag: 'signature', attrs: {}, content: bundle.signedPreKey.signature },
                ],
            },
        ]
        if (bundle.preKey) {
            content.push({
                tag: 'key',
                attrs: {},
                content: [
                    { tag: 'id', attrs: {}, content: bigEndian(bundle.preKey.id, 3) },
                    { tag: 'value', attrs: {}, content: bundle.preKey.public },
                ],
            })
        }
        return { tag: 'user', attrs: { jid }, content }
    } catch (err) {
        conn.log(`no bundle for ${jid}: ${err.message}`)
        return { tag: 'user', attrs: { jid }, content: [{ tag: 'error', attrs: { code: '404', text: 'item-not-found' } }] }
    }
}

// Every number is "on WhatsApp" with exactly one device, its phone: the fake does not
// fan messages out to other companions of the same account.
function usyncResult(node) {
    const usync = getBinaryNodeChild(node, 'usync')
    const wanted = new Set(getAllBinaryNodeChildren(getBinaryNodeChild(usync, 'query')).map((child) => child.tag))
    const users = getBinaryNodeChildren(getBinaryNodeChild(usync, 'list'), 'user').map((user) => {
        let jid = user.attrs.jid
        const contact = getBinaryNodeChild(user, 'contact')?.content
        if (!jid && contact) {
            jid = `${Buffer.from(contact).toString().replace(/\D/g, '')}@s.whatsapp.net`
        }
        const content = []
        if (wanted.has('devices')) {
            content.push({
                tag: 'devices',
                attrs: {},
                content: [{ tag: 'device-list', attrs: {}, content: [{ tag: 'device', attrs: { id: '0' } }] }],
            })
        }
        if (wanted.has('contact')) {
            content.push({ tag: 'contact', attrs: { type: 'in' } })
        }
        return { tag: 'user', attrs: { jid: jid || '' }, content }
    })
    return {
        tag: 'usync',
        attrs: { ...usync.attrs },
        content: [{ tag: 'list', attrs: {}, content: users }],
    }
}

module.exports = { answerIq, SERVICE, readUInt, childBuffer }
