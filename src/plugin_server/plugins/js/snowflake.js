// `require('snowflake-sdk')` for plugins, written for this server: the node SDK's connections, whose
// statements run on the host (hosted/snowflake.py, snowflake-connector-python).
//
// This file is one JavaScript expression, a function that prelude.js calls once per isolate:
//
//     (snowflake.js)(kit, modules)  ->  {"snowflake-sdk": the module}
//
//   kit.request(op, args)   snowflake.connect(options) -> handle; snowflake.execute(handle, sqlText,
//                           binds) -> {queryId, columns, rows, rowCount}; snowflake.destroy(handle)
//
// createConnection({account, username, password, database, schema, warehouse, role, accessUrl}) has
// connect(callback), connectAsync(), execute({sqlText, binds, complete(err, statement, rows)}) (rows
// as objects by column name), destroy(callback), getId(), isUp(); configure() is accepted.
(function (kit) {
    "use strict";

    const { request } = kit;
    const OPTIONS = ["account", "username", "password", "database", "schema", "warehouse", "role", "accessUrl"];
    let nextId = 1;

    class Statement {
        #sqlText;
        #result = null;

        constructor(sqlText) {
            this.#sqlText = sqlText;
        }

        _complete(result) {
            this.#result = result;
        }

        getSqlText() { return this.#sqlText; }
        getStatementId() { return this.#result && this.#result.queryId; }
        getQueryId() { return this.#result && this.#result.queryId; }
        getNumRows() { return this.#result ? this.#result.rows.length : undefined; }
        getNumUpdatedRows() { return this.#result ? this.#result.rowCount : undefined; }
        getColumns() {
            return this.#result ? this.#result.columns.map((name, index) => ({ getName: () => name, getIndex: () => index })) : undefined;
        }
    }

    class Connection {
        #options;
        #handle = null;
        #id = String(nextId++);

        constructor(options) {
            this.#options = {};
            for (const name of OPTIONS) {
                if (options && options[name] !== undefined && options[name] !== null) this.#options[name] = options[name];
            }
        }

        getId() {
            return this.#id;
        }

        isUp() {
            return this.#handle !== null;
        }

        connectAsync() {
            if (this.#handle !== null) return Promise.reject(new Error("Connection already in progress or connected."));
            this.#handle = request("snowflake.connect", [this.#options]);
            this.#handle.catch(() => { this.#handle = null; });
            return this.#handle.then(() => this);
        }

        connect(callback) {
            const connecting = this.connectAsync();
            connecting.then((connection) => callback && callback(null, connection), (error) => callback && callback(error, this));
            return this;
        }

        execute(options) {
            const given = options || {};
            const statement = new Statement(given.sqlText);
            const run = async () => {
                if (this.#handle === null) throw new Error("Unable to perform operation because a connection was never established.");
                const result = await request("snowflake.execute", [await this.#handle, String(given.sqlText), given.binds === undefined ? null : given.binds]);
                statement._complete(result);
                return result.rows.map((values) => {
                    const row = {};
                    result.columns.forEach((name, index) => { row[name] = values[index]; });
                    return row;
                });
            };
            run().then((rows) => given.complete && given.complete(null, statement, rows),
                (error) => given.complete && given.complete(error, statement, undefined));
            return statement;
        }

        destroy(callback) {
            const handle = this.#handle;
            this.#handle = null;
            const ending = handle === null ? Promise.resolve() : handle.then((value) => request("snowflake.destroy", [value]), () => undefined);
            ending.then(() => callback && callback(null, this), (error) => callback && callback(error, this));
            return this;
        }
    }

    const sdk = Object.freeze({
        createConnection: (options) => new Connection(options),
        configure: () => {},
    });
    return { "snowflake-sdk": sdk };
})
