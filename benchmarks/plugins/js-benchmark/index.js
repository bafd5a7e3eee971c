// The work of the original's benchmark plugin: one constant property and an upper-cased copy.
function processEvent(event) {
    event.properties.processed = 'hell yes'
    event.properties.upperUuid = event.uuid.toUpperCase()
    return event
}

module.exports = { processEvent }
