/* posthog_event rows in the binary format of Postgres's COPY (see postgres.py).

   `event_rows(events, hashes, created_at, json_bytes)` answers the whole COPY payload (header, one
   row per event, trailer) for the columns uuid, event, distinct_id, properties, team_id, timestamp,
   created_at, elements, elements_hash, site_url. Binary, because Postgres then reads uuids, integers
   and times as they are stored instead of parsing text, and text needs no escaping; in C, because
   Python spent more on packing the fields than Postgres saves (benchmarks/README.md).

   `created_at` is microseconds since 2000-01-01 UTC (Postgres's epoch); an event's timestamp is a
   datetime, naive meaning UTC; JSON columns are written by `json_bytes`, as the text format's were,
   with their objects' keys in the order jsonb keeps them (see jsonb_ordered).
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <stdint.h>
#include <string.h>

#define COLUMNS 10

typedef struct {
    char *data;
    Py_ssize_t length;
    Py_ssize_t capacity;
} Buffer;

static int reserve(Buffer *buffer, Py_ssize_t more) {
    if (buffer->length + more <= buffer->capacity)
        return 0;
    Py_ssize_t capacity = buffer->capacity ? buffer->capacity : 1 << 16;
    while (capacity < buffer->length + more)
        capacity *= 2;
    char *grown = PyMem_Realloc(buffer->data, (size_t)capacity);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    buffer->data = grown;
    buffer->capacity = capacity;
    return 0;
}

static int put(Buffer *buffer, const void *bytes, Py_ssize_t length) {
    if (reserve(buffer, length) < 0)
        return -1;
    memcpy(buffer->data + buffer->length, bytes, (size_t)length);
    buffer->length += length;
    return 0;
}

/* An integer of `size` bytes in network order (two's complement for negative ones). */
static int put_integer(Buffer *buffer, int64_t value, int size) {
    uint64_t v = (uint64_t)value;
    unsigned char big[8];
    for (int i = size - 1; i >= 0; i--, v >>= 8)
        big[i] = (unsigned char)v;
    return put(buffer, big, size);
}

static int put_int16(Buffer *buffer, int16_t value) { return put_integer(buffer, value, 2); }
static int put_int32(Buffer *buffer, int32_t value) { return put_integer(buffer, value, 4); }
static int put_int64(Buffer *buffer, int64_t value) { return put_integer(buffer, value, 8); }

/* A field's length, which COPY takes as a 32-bit integer. */
static int put_length(Buffer *buffer, Py_ssize_t length) {
    if (length > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "a field of more than 2 GB cannot be copied");
        return -1;
    }
    return put_int32(buffer, (int32_t)length);
}

/* A field: its length, then its bytes. */
static int put_field(Buffer *buffer, const void *bytes, Py_ssize_t length) {
    return put_length(buffer, length) < 0 ? -1 : put(buffer, bytes, length);
}

static int put_text(Buffer *buffer, PyObject *text) {
    if (text == Py_None)
        return put_int32(buffer, -1);
    Py_ssize_t length;
    const char *utf8 = PyUnicode_AsUTF8AndSize(text, &length);
    return utf8 == NULL ? -1 : put_field(buffer, utf8, length);
}

/* jsonb: its format version (1), then the JSON text. */
static int put_jsonb(Buffer *buffer, const char *json, Py_ssize_t length) {
    if (put_length(buffer, length + 1) < 0 || put(buffer, "\1", 1) < 0)
        return -1;
    return put(buffer, json, length);
}

static int hex_value(int c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A uuid's 8-4-4-4-12 text as its 16 bytes. */
static int put_uuid(Buffer *buffer, PyObject *text) {
    Py_ssize_t length;
    const char *chars = PyUnicode_Check(text) ? PyUnicode_AsUTF8AndSize(text, &length) : NULL;
    if (chars == NULL || length != 36)
        goto invalid;
    unsigned char bytes[16];
    int at = 0;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (chars[i] != '-')
                goto invalid;
            continue;
        }
        int high = hex_value(chars[i]), low = hex_value(chars[i + 1]);
        if (high < 0 || low < 0)
            goto invalid;
        bytes[at++] = (unsigned char)(high << 4 | low);
        i++;
    }
    return put_field(buffer, bytes, 16);
invalid:
    if (!PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "an event's uuid is not a uuid's text");
    return -1;
}

/* Days from 2000-01-01 to a date of the proleptic Gregorian calendar. */
static int64_t days_since_2000(int year, int month, int day) {
    year -= month <= 2;
    int64_t era = (year >= 0 ? year : year - 399) / 400;
    int64_t year_of_era = year - era * 400;
    int64_t day_of_year = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1;
    int64_t day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    return era * 146097 + day_of_era - 719468 - 10957; /* days from 1970, then from 2000 */
}

/* timestamptz: microseconds since 2000-01-01 UTC. */
static int put_timestamp(Buffer *buffer, PyObject *moment) {
    if (!PyDateTime_Check(moment)) {
        PyErr_SetString(PyExc_TypeError, "an event's timestamp is not a datetime");
        return -1;
    }
    int64_t seconds = days_since_2000(PyDateTime_GET_YEAR(moment), PyDateTime_GET_MONTH(moment),
                                      PyDateTime_GET_DAY(moment)) * 86400 +
                      PyDateTime_DATE_GET_HOUR(moment) * 3600 + PyDateTime_DATE_GET_MINUTE(moment) * 60 +
                      PyDateTime_DATE_GET_SECOND(moment);
    int64_t micro = PyDateTime_DATE_GET_MICROSECOND(moment);
    PyObject *zone = PyDateTime_DATE_GET_TZINFO(moment);
    if (zone != Py_None && zone != PyDateTime_TimeZone_UTC) {
        PyObject *offset = PyObject_CallMethod(moment, "utcoffset", NULL);
        if (offset == NULL)
            return -1;
        if (PyDelta_Check(offset)) {
            seconds -= (int64_t)PyDateTime_DELTA_GET_DAYS(offset) * 86400 + PyDateTime_DELTA_GET_SECONDS(offset);
            micro -= PyDateTime_DELTA_GET_MICROSECONDS(offset);
        }
        Py_DECREF(offset);
    }
    return put_int32(buffer, 8) < 0 ? -1 : put_int64(buffer, seconds * 1000000 + micro);
}

/* jsonb keeps an object's keys shorter first, then by their bytes, and puts every object it reads into
   that order with a sort: about 3 us of Postgres's CPU per event of ~18 properties, which keys given in
   that order save (Postgres's sort then finds them sorted in one pass). */

typedef struct {
    PyObject *key;   /* borrowed from the dict */
    PyObject *value; /* a new reference: the value, itself in jsonb's order */
    const char *utf8;
    Py_ssize_t length;
} Member;

/* Objects nested deeper than this are left as they are: Postgres orders them itself. */
#define ORDERED_DEPTH 32

static int jsonb_compare(const void *a, const void *b) {
    const Member *left = a, *right = b;
    if (left->length != right->length)
        return left->length < right->length ? -1 : 1;
    return memcmp(left->utf8, right->utf8, (size_t)left->length);
}

/* Insertion sort for the few keys most objects have (no call per comparison), qsort for many. */
static void sort_members(Member *members, Py_ssize_t count) {
    if (count > 24) {
        qsort(members, (size_t)count, sizeof(Member), jsonb_compare);
        return;
    }
    for (Py_ssize_t i = 1; i < count; i++) {
        Member moving = members[i];
        Py_ssize_t j = i;
        for (; j > 0 && jsonb_compare(&members[j - 1], &moving) > 0; j--)
            members[j] = members[j - 1];
        members[j] = moving;
    }
}

static PyObject *jsonb_ordered(PyObject *value, int depth);

static void release_members(Member *members, Py_ssize_t count) {
    for (Py_ssize_t i = 0; i < count; i++)
        Py_DECREF(members[i].value);
    PyMem_Free(members);
}

/* A dict with text keys, in jsonb's order at every level: itself when it is so already, else a new dict
   (the event keeps its own order). Other keys are left to json_bytes, as they are. */
static PyObject *jsonb_ordered_dict(PyObject *dict, int depth) {
    Py_ssize_t count = PyDict_GET_SIZE(dict), filled = 0, position = 0;
    Member *members = PyMem_Malloc((size_t)(count ? count : 1) * sizeof(Member));
    if (members == NULL)
        return PyErr_NoMemory();
    int changed = 0;
    PyObject *key, *value;
    while (PyDict_Next(dict, &position, &key, &value)) {
        Member *member = &members[filled];
        member->utf8 = PyUnicode_CheckExact(key) ? PyUnicode_AsUTF8AndSize(key, &member->length) : NULL;
        if (member->utf8 == NULL) {
            PyErr_Clear(); /* not text, or not UTF-8 (a lone surrogate): json_bytes decides */
            release_members(members, filled);
            return Py_NewRef(dict);
        }
        member->key = key;
        if ((member->value = jsonb_ordered(value, depth + 1)) == NULL) {
            release_members(members, filled);
            return NULL;
        }
        changed |= member->value != value;
        changed |= filled > 0 && jsonb_compare(&members[filled - 1], member) > 0;
        filled++;
    }
    PyObject *ordered = NULL;
    if (!changed) {
        ordered = Py_NewRef(dict);
    } else {
        sort_members(members, filled);
        ordered = PyDict_New();
        for (Py_ssize_t i = 0; ordered != NULL && i < filled; i++) {
            if (PyDict_SetItem(ordered, members[i].key, members[i].value) < 0)
                Py_CLEAR(ordered);
        }
    }
    release_members(members, filled);
    return ordered;
}

/* A list whose objects are in jsonb's order: itself when they are so already, else a new list. */
static PyObject *jsonb_ordered_list(PyObject *list, int depth) {
    PyObject *ordered = NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++) {
        PyObject *item = PyList_GET_ITEM(list, i);
        PyObject *ordered_item = jsonb_ordered(item, depth + 1);
        if (ordered_item == NULL) {
            Py_XDECREF(ordered);
            return NULL;
        }
        if (ordered_item != item && ordered == NULL) { /* the first item that changed: copy the list */
            if ((ordered = PyList_GetSlice(list, 0, PyList_GET_SIZE(list))) == NULL) {
                Py_DECREF(ordered_item);
                return NULL;
            }
        }
        if (ordered != NULL)
            PyList_SetItem(ordered, i, ordered_item); /* steals the reference */
        else
            Py_DECREF(ordered_item);
    }
    return ordered != NULL ? ordered : Py_NewRef(list);
}

/* `value` with its objects' keys in jsonb's order (a new reference); anything but plain dicts and lists as
   it is. */
static PyObject *jsonb_ordered(PyObject *value, int depth) {
    if (depth >= ORDERED_DEPTH)
        return Py_NewRef(value);
    if (PyDict_CheckExact(value))
        return jsonb_ordered_dict(value, depth);
    if (PyList_CheckExact(value))
        return jsonb_ordered_list(value, depth);
    return Py_NewRef(value);
}

static PyObject *UUID, *EVENT, *DISTINCT_ID, *PROPERTIES, *TEAM_ID, *TIMESTAMP, *ELEMENTS, *SITE_URL;

/* A JSON column: the attribute `name` of the event as `json_bytes` writes it; with `empty_as_list`,
   an empty or missing value is an empty list (the elements of an event without any). */
static int put_json_column(Buffer *buffer, PyObject *event, PyObject *name, PyObject *json_bytes, int empty_as_list) {
    PyObject *value = PyObject_GetAttr(event, name);
    if (value == NULL)
        return -1;
    int done = -1;
    int truth = empty_as_list ? PyObject_IsTrue(value) : 1;
    if (truth == 0) {
        done = put_jsonb(buffer, "[]", 2);
    } else if (truth > 0) {
        PyObject *ordered = jsonb_ordered(value, 0);
        PyObject *json = ordered == NULL ? NULL : PyObject_CallOneArg(json_bytes, ordered);
        Py_XDECREF(ordered);
        if (json != NULL && !PyBytes_Check(json))
            PyErr_SetString(PyExc_TypeError, "json_bytes must return bytes");
        else if (json != NULL)
            done = put_jsonb(buffer, PyBytes_AS_STRING(json), PyBytes_GET_SIZE(json));
        Py_XDECREF(json);
    }
    Py_DECREF(value);
    return done;
}

static int put_row(Buffer *buffer, PyObject *event, PyObject *digest, int64_t created_at, PyObject *json_bytes) {
    PyObject *uuid = NULL, *name = NULL, *distinct_id = NULL, *team_id = NULL, *timestamp = NULL, *site_url = NULL;
    int done = -1;
    if ((uuid = PyObject_GetAttr(event, UUID)) == NULL || (name = PyObject_GetAttr(event, EVENT)) == NULL ||
        (distinct_id = PyObject_GetAttr(event, DISTINCT_ID)) == NULL ||
        (team_id = PyObject_GetAttr(event, TEAM_ID)) == NULL ||
        (timestamp = PyObject_GetAttr(event, TIMESTAMP)) == NULL ||
        (site_url = PyObject_GetAttr(event, SITE_URL)) == NULL)
        goto done;
    long team = PyLong_AsLong(team_id);
    if (team == -1 && PyErr_Occurred())
        goto done;
    if (team < INT32_MIN || team > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "an event's team_id does not fit Postgres's integer");
        goto done;
    }
    if (put_int16(buffer, COLUMNS) < 0 || put_uuid(buffer, uuid) < 0 || put_text(buffer, name) < 0 ||
        put_text(buffer, distinct_id) < 0 || put_json_column(buffer, event, PROPERTIES, json_bytes, 0) < 0 ||
        put_int32(buffer, 4) < 0 || put_int32(buffer, (int32_t)team) < 0 || put_timestamp(buffer, timestamp) < 0 ||
        put_int32(buffer, 8) < 0 || put_int64(buffer, created_at) < 0 ||
        put_json_column(buffer, event, ELEMENTS, json_bytes, 1) < 0 || put_text(buffer, digest) < 0 ||
        put_text(buffer, site_url) < 0)
        goto done;
    done = 0;
done:
    Py_XDECREF(uuid);
    Py_XDECREF(name);
    Py_XDECREF(distinct_id);
    Py_XDECREF(team_id);
    Py_XDECREF(timestamp);
    Py_XDECREF(site_url);
    return done;
}

static const char SIGNATURE[] = "PGCOPY\n\377\r\n";

static PyObject *event_rows(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "event_rows(events, hashes, created_at, json_bytes)");
        return NULL;
    }
    PyObject *events = PySequence_Fast(args[0], "events must be a sequence");
    if (events == NULL)
        return NULL;
    PyObject *hashes = PySequence_Fast(args[1], "hashes must be a sequence");
    if (hashes == NULL) {
        Py_DECREF(events);
        return NULL;
    }
    PyObject *rows = NULL;
    Buffer buffer = {NULL, 0, 0};
    int64_t created_at = PyLong_AsLongLong(args[2]);
    Py_ssize_t count = PySequence_Fast_GET_SIZE(events);
    if (created_at == -1 && PyErr_Occurred())
        goto done;
    if (PySequence_Fast_GET_SIZE(hashes) != count) {
        PyErr_SetString(PyExc_ValueError, "one hash per event");
        goto done;
    }
    if (put(&buffer, SIGNATURE, 11) < 0 || put_int32(&buffer, 0) < 0 || put_int32(&buffer, 0) < 0)
        goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (put_row(&buffer, PySequence_Fast_GET_ITEM(events, i), PySequence_Fast_GET_ITEM(hashes, i), created_at,
                    args[3]) < 0)
            goto done;
    }
    if (put_int16(&buffer, -1) < 0)
        goto done;
    rows = PyBytes_FromStringAndSize(buffer.data, buffer.length);
done:
    PyMem_Free(buffer.data);
    Py_DECREF(events);
    Py_DECREF(hashes);
    return rows;
}

static PyMethodDef METHODS[] = {
    {"event_rows", (PyCFunction)(void (*)(void))event_rows, METH_FASTCALL,
     "event_rows(events, hashes, created_at, json_bytes) -> bytes\n\n"
     "The events' rows of posthog_event as a binary COPY payload (see postgres.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, "_copy_binary", NULL, 0, METHODS, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__copy_binary(void) {
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL)
        return NULL;
    if ((UUID = PyUnicode_InternFromString("uuid")) == NULL || (EVENT = PyUnicode_InternFromString("event")) == NULL ||
        (DISTINCT_ID = PyUnicode_InternFromString("distinct_id")) == NULL ||
        (PROPERTIES = PyUnicode_InternFromString("properties")) == NULL ||
        (TEAM_ID = PyUnicode_InternFromString("team_id")) == NULL ||
        (TIMESTAMP = PyUnicode_InternFromString("timestamp")) == NULL ||
        (ELEMENTS = PyUnicode_InternFromString("elements")) == NULL ||
        (SITE_URL = PyUnicode_InternFromString("site_url")) == NULL)
        return NULL;
    return PyModule_Create(&MODULE);
}
