// Test fixture: a JavaScript plugin (no "main" in plugin.json, so index.js) that adds a greeting.
function processEvent(event, { config }) {
    event.properties = { ...event.properties, greeting: config.greeting || 'hello' }
    return event
}

module.exports = { processEvent }
