// Loops on every event: the transpiler's loop guard throws after TASK_TIMEOUT.
function processEvent(event) {
    let spins = 0
    while (true) {
        spins++
    }
    return event
}

module.exports = { processEvent }
