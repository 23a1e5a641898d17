// Empty stand-in for Baileys' lint config, which it lists as a runtime dependency.
module.exports = {}
