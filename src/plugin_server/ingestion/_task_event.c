/* The raw event of the common `process_event_with_plugins` task body, made in one step (see
   celery.py): in Python, the task object, its arguments by name and the event's dict took ~2.5 µs a
   message between the body's JSON and the event, more than parsing the body.

   `raw_event_of_body(body)`: `body` is a task body as orjson parsed it, `[args, kwargs, embed]`.
   When it is the common shape (seven arguments by position, no keyword arguments, `data` an object,
   the distinct id a string, the team id an integer), the raw event that `message_fields.raw_event`
   makes of those arguments: `data`'s keys in order without the server's fields, `uuid` (null) when
   `data` has none, then the server's fields in SERVER_FIELDS order, and the properties without `$ip`
   when the task carries an ip. Otherwise None, and the caller takes the Python path, which also
   words the errors. The differential tests (tests/unit/test_celery_task_event.py) hold the two
   equal, key order included.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define ARGUMENTS 7 /* distinct_id, ip, site_url, data, team_id, now, sent_at (celery._EVENT_ARGUMENTS) */
enum { DISTINCT_ID, IP, SITE_URL, DATA, TEAM_ID, NOW, SENT_AT };

/* message_fields.SERVER_FIELDS, in its order, by their argument's position */
static const char *const SERVER_FIELD_NAMES[] = {"distinct_id", "ip", "site_url", "team_id", "now", "sent_at"};
static const int SERVER_FIELD_ARGUMENTS[] = {DISTINCT_ID, IP, SITE_URL, TEAM_ID, NOW, SENT_AT};
#define SERVER_FIELD_COUNT 6

static PyObject *server_field_names[SERVER_FIELD_COUNT];
static PyObject *server_field_set;
static PyObject *uuid_key, *properties_key, *ip_property_key, *ip_property_set;

/* A new dict of `source`'s items in order, without those whose key is in the set `skipped`. */
static PyObject *copy_without(PyObject *source, PyObject *skipped) {
    PyObject *copy = PyDict_New();
    if (copy == NULL)
        return NULL;
    Py_ssize_t position = 0;
    PyObject *key, *value;
    while (PyDict_Next(source, &position, &key, &value)) {
        int skip = PySet_Contains(skipped, key);
        if (skip < 0 || (!skip && PyDict_SetItem(copy, key, value) < 0)) {
            Py_DECREF(copy);
            return NULL;
        }
    }
    return copy;
}

static PyObject *event_of(PyObject *const *arguments) {
    PyObject *event = copy_without(arguments[DATA], server_field_set);
    if (event == NULL)
        return NULL;
    int has_uuid = PyDict_Contains(event, uuid_key);
    if (has_uuid < 0 || (!has_uuid && PyDict_SetItem(event, uuid_key, Py_None) < 0))
        goto failed;
    for (int i = 0; i < SERVER_FIELD_COUNT; i++) {
        if (PyDict_SetItem(event, server_field_names[i], arguments[SERVER_FIELD_ARGUMENTS[i]]) < 0)
            goto failed;
    }
    int has_ip = PyObject_IsTrue(arguments[IP]);
    if (has_ip < 0)
        goto failed;
    PyObject *properties = has_ip ? PyDict_GetItemWithError(event, properties_key) : NULL;
    if (properties != NULL && PyDict_Check(properties)) {
        int holds_ip = PyDict_Contains(properties, ip_property_key);
        if (holds_ip < 0)
            goto failed;
        if (holds_ip) {
            PyObject *kept = copy_without(properties, ip_property_set);
            if (kept == NULL || PyDict_SetItem(event, properties_key, kept) < 0) {
                Py_XDECREF(kept);
                goto failed;
            }
            Py_DECREF(kept);
        }
    }
    if (PyErr_Occurred())
        goto failed;
    return event;
failed:
    Py_DECREF(event);
    return NULL;
}

static PyObject *raw_event_of_body(PyObject *Py_UNUSED(module), PyObject *body) {
    if (!PyList_CheckExact(body) || PyList_GET_SIZE(body) != 3)
        Py_RETURN_NONE;
    PyObject *args = PyList_GET_ITEM(body, 0);
    PyObject *kwargs = PyList_GET_ITEM(body, 1);
    if (!PyList_CheckExact(args) || PyList_GET_SIZE(args) != ARGUMENTS || !PyDict_CheckExact(kwargs) ||
        PyDict_GET_SIZE(kwargs) != 0)
        Py_RETURN_NONE;
    PyObject *const *arguments = ((PyListObject *)args)->ob_item;
    if (!PyUnicode_CheckExact(arguments[DISTINCT_ID]) || !PyDict_CheckExact(arguments[DATA]) ||
        !PyLong_CheckExact(arguments[TEAM_ID]))
        Py_RETURN_NONE;
    return event_of(arguments);
}

static PyMethodDef METHODS[] = {
    {"raw_event_of_body", raw_event_of_body, METH_O,
     "raw_event_of_body(body) -> dict | None\n\nThe raw event of a common task body (see _task_event.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, "_task_event", NULL, 0, METHODS, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__task_event(void) {
    server_field_set = PySet_New(NULL);
    if (server_field_set == NULL)
        return NULL;
    for (int i = 0; i < SERVER_FIELD_COUNT; i++) {
        server_field_names[i] = PyUnicode_InternFromString(SERVER_FIELD_NAMES[i]);
        if (server_field_names[i] == NULL || PySet_Add(server_field_set, server_field_names[i]) < 0)
            return NULL;
    }
    uuid_key = PyUnicode_InternFromString("uuid");
    properties_key = PyUnicode_InternFromString("properties");
    ip_property_key = PyUnicode_InternFromString("$ip");
    if (uuid_key == NULL || properties_key == NULL || ip_property_key == NULL)
        return NULL;
    ip_property_set = PySet_New(NULL);
    if (ip_property_set == NULL || PySet_Add(ip_property_set, ip_property_key) < 0)
        return NULL;
    return PyModule_Create(&MODULE);
}
