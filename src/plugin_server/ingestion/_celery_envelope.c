/* Reads the common Celery envelope without making Python objects for it (see celery.py).

   `read_envelope(message, task)` answers (task id or None, body) for a kombu Redis envelope of
   Celery task protocol 2 that carries the task named `task`: valid JSON, every field the checked
   path requires, the body's base64 decoded by the checked path's own decoder (pybase64, strict).
   For anything else, valid or not, it answers None and the caller takes the checked path, which
   also words the errors. So this
   reader may refuse more than the checked path, never accept more: it refuses non-ASCII bytes,
   escapes in the strings it reads, a key it reads twice, nesting deeper than MAX_DEPTH.

   Its input is written by capture (ours or PostHog's): a client's bytes reach it only inside the
   base64 body, which pybase64 decodes.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_DEPTH 32

typedef struct {
    const unsigned char *at;
    const unsigned char *end;
} Cursor;

typedef struct {
    const unsigned char *start; /* NULL: not seen */
    Py_ssize_t length;
    int kind; /* what the value is: one of the VALUE_ constants */
} Value;

enum { VALUE_OTHER, VALUE_STRING, VALUE_NULL, VALUE_OBJECT };

static void skip_space(Cursor *c) {
    while (c->at < c->end && (*c->at == ' ' || *c->at == '\t' || *c->at == '\n' || *c->at == '\r'))
        c->at++;
}

static int is_hex(unsigned char b) {
    return (b >= '0' && b <= '9') || (b >= 'a' && b <= 'f') || (b >= 'A' && b <= 'F');
}

/* A string at c->at (its opening quote); its contents' span into *value. 0 when not valid JSON or not
   ASCII; *escaped set when it holds an escape. */
static int read_string(Cursor *c, Value *value, int *escaped) {
    const unsigned char *start = ++c->at;
    *escaped = 0;
    /* Most strings (the body above all) hold nothing to look at: their end found by memchr, their
       bytes checked in a loop that the compiler vectorises. */
    const unsigned char *quote = memchr(start, '"', (size_t)(c->end - start));
    if (quote == NULL)
        return 0;
    unsigned char special = 0;
    for (const unsigned char *b = start; b < quote; b++)
        special |= (unsigned char)((*b < 0x20) | (*b >= 0x80) | (*b == '\\'));
    if (!special) {
        value->start = start;
        value->length = quote - start;
        value->kind = VALUE_STRING;
        c->at = quote + 1;
        return 1;
    }
    while (c->at < c->end) {
        unsigned char b = *c->at;
        if (b == '"') {
            value->start = start;
            value->length = c->at - start;
            value->kind = VALUE_STRING;
            c->at++;
            return 1;
        }
        if (b < 0x20 || b >= 0x80)
            return 0;
        if (b == '\\') {
            *escaped = 1;
            if (c->end - c->at < 2)
                return 0;
            unsigned char e = c->at[1];
            if (e == 'u') {
                if (c->end - c->at < 6 || !is_hex(c->at[2]) || !is_hex(c->at[3]) || !is_hex(c->at[4]) ||
                    !is_hex(c->at[5]))
                    return 0;
                c->at += 6;
                continue;
            }
            if (!strchr("\"\\/bfnrt", e) || e == '\0')
                return 0;
            c->at += 2;
            continue;
        }
        c->at++;
    }
    return 0;
}

static int read_digits(Cursor *c) {
    const unsigned char *start = c->at;
    while (c->at < c->end && *c->at >= '0' && *c->at <= '9')
        c->at++;
    return c->at > start;
}

static int read_number(Cursor *c) {
    if (*c->at == '-')
        c->at++;
    if (c->at < c->end && *c->at == '0')
        c->at++;
    else if (!read_digits(c))
        return 0;
    if (c->at < c->end && *c->at == '.') {
        c->at++;
        if (!read_digits(c))
            return 0;
    }
    if (c->at < c->end && (*c->at == 'e' || *c->at == 'E')) {
        c->at++;
        if (c->at < c->end && (*c->at == '+' || *c->at == '-'))
            c->at++;
        if (!read_digits(c))
            return 0;
    }
    return 1;
}

static int read_literal(Cursor *c, const char *word, Py_ssize_t length) {
    if (c->end - c->at < length || memcmp(c->at, word, (size_t)length) != 0)
        return 0;
    c->at += length;
    return 1;
}

static int read_value(Cursor *c, Value *value, int depth);

/* What follows an item of an array or object: its `close`ing bracket (CLOSED), a comma (MORE), or
   anything else (INVALID). */
enum { INVALID, MORE, CLOSED };
static int after_item(Cursor *c, unsigned char close) {
    skip_space(c);
    if (c->at >= c->end)
        return INVALID;
    if (*c->at == close) {
        c->at++;
        return CLOSED;
    }
    if (*c->at != ',')
        return INVALID;
    c->at++;
    return MORE;
}

/* An array at c->at, its values checked and passed over. */
static int read_array(Cursor *c, int depth) {
    Value item;
    c->at++;
    skip_space(c);
    if (c->at < c->end && *c->at == ']') {
        c->at++;
        return 1;
    }
    for (;;) {
        if (!read_value(c, &item, depth))
            return 0;
        int next = after_item(c, ']');
        if (next != MORE)
            return next == CLOSED;
    }
}

/* The keys an object's reader wants, what it found under them, and for a key whose value is an
   object read for keys of its own, those (`inner`, NULL for the others). */
typedef struct Wanted {
    const char *const *names;
    Value *found;
    const struct Wanted *const *inner;
    int count;
} Wanted;

/* An object at c->at; the values of the `wanted` keys (escape-free strings, null, or objects read for
   their own wanted keys) into wanted->found, in the one pass. 0 when not valid, or when a wanted key
   comes twice or has a value this reader does not read. */
static int read_object(Cursor *c, int depth, const Wanted *wanted) {
    Value key, value;
    int escaped;
    c->at++;
    skip_space(c);
    if (c->at < c->end && *c->at == '}') {
        c->at++;
        return 1;
    }
    for (;;) {
        if (c->at >= c->end || *c->at != '"' || !read_string(c, &key, &escaped))
            return 0;
        int slot = -1;
        for (int i = 0; wanted && i < wanted->count; i++) {
            if ((Py_ssize_t)strlen(wanted->names[i]) == key.length &&
                memcmp(wanted->names[i], key.start, (size_t)key.length) == 0)
                slot = i;
        }
        if (escaped && wanted)
            return 0; /* it might spell a wanted key */
        skip_space(c);
        if (c->at >= c->end || *c->at != ':')
            return 0;
        c->at++;
        skip_space(c);
        if (slot >= 0) {
            if (wanted->found[slot].start != NULL)
                return 0;
            if (c->at < c->end && *c->at == '"') {
                if (!read_string(c, &wanted->found[slot], &escaped) || escaped)
                    return 0;
            } else if (c->at < c->end && *c->at == 'n') {
                if (!read_literal(c, "null", 4))
                    return 0;
                wanted->found[slot].start = c->at;
                wanted->found[slot].kind = VALUE_NULL;
            } else if (c->at < c->end && *c->at == '{' && wanted->inner[slot] != NULL) {
                wanted->found[slot].start = c->at;
                if (depth + 1 >= MAX_DEPTH || !read_object(c, depth + 1, wanted->inner[slot]))
                    return 0;
                wanted->found[slot].kind = VALUE_OBJECT;
            } else {
                return 0;
            }
        } else if (!read_value(c, &value, depth)) {
            return 0;
        }
        int next = after_item(c, '}');
        if (next != MORE)
            return next == CLOSED;
        skip_space(c);
    }
}

static int read_value(Cursor *c, Value *value, int depth) {
    int escaped;
    skip_space(c);
    if (c->at >= c->end || depth >= MAX_DEPTH)
        return 0;
    value->kind = VALUE_OTHER;
    switch (*c->at) {
    case '"':
        return read_string(c, value, &escaped);
    case '{':
        return read_object(c, depth + 1, NULL);
    case '[':
        return read_array(c, depth + 1);
    case 't':
        return read_literal(c, "true", 4);
    case 'f':
        return read_literal(c, "false", 5);
    case 'n':
        return read_literal(c, "null", 4);
    default:
        return (*c->at == '-' || (*c->at >= '0' && *c->at <= '9')) && read_number(c);
    }
}

static int equals(const Value *value, const char *text) {
    return value->kind == VALUE_STRING && value->length == (Py_ssize_t)strlen(text) &&
           memcmp(value->start, text, (size_t)value->length) == 0;
}

static PyObject *b64decode; /* pybase64.b64decode, the checked path's decoder */

/* The bytes of the body's base64, decoded as the checked path decodes it (strict: validate=True);
   NULL without an exception when it is not valid base64, so that the checked path words the error. */
static PyObject *decode_body(const Value *body) {
    PyObject *text = PyMemoryView_FromMemory((char *)body->start, body->length, PyBUF_READ);
    if (text == NULL)
        return NULL;
    PyObject *call[] = {text, Py_None, Py_True};
    PyObject *decoded = PyObject_Vectorcall(b64decode, call, 3, NULL);
    Py_DECREF(text);
    if (decoded == NULL && PyErr_ExceptionMatches(PyExc_ValueError))
        PyErr_Clear(); /* binascii.Error */
    return decoded;
}

static const char *const ENVELOPE_KEYS[] = {"body", "content-type", "content-encoding", "headers", "properties"};
enum { BODY, CONTENT_TYPE, CONTENT_ENCODING, HEADERS, PROPERTIES };
static const char *const HEADER_KEYS[] = {"task", "id", "compression"};
enum { TASK, ID, COMPRESSION };
static const char *const PROPERTY_KEYS[] = {"body_encoding"};

static PyObject *read_envelope(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    Py_buffer message, task;
    PyObject *answer = NULL;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "read_envelope(message, task) takes two bytes objects");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &message, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &task, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&message);
        return NULL;
    }
    Value envelope[5] = {{0}}, headers[3] = {{0}}, properties[1] = {{0}};
    const Wanted *no_inner[3] = {NULL, NULL, NULL};
    const Wanted header_keys = {HEADER_KEYS, headers, no_inner, 3};
    const Wanted property_keys = {PROPERTY_KEYS, properties, no_inner, 1};
    const Wanted *envelope_inner[5] = {[HEADERS] = &header_keys, [PROPERTIES] = &property_keys};
    const Wanted envelope_keys = {ENVELOPE_KEYS, envelope, envelope_inner, 5};
    Cursor c = {message.buf, (const unsigned char *)message.buf + message.len};
    skip_space(&c);
    int readable = c.at < c.end && *c.at == '{' && read_object(&c, 1, &envelope_keys);
    skip_space(&c);
    readable = readable && c.at == c.end && equals(&envelope[CONTENT_TYPE], "application/json") &&
               equals(&envelope[CONTENT_ENCODING], "utf-8") && envelope[BODY].kind == VALUE_STRING &&
               envelope[HEADERS].kind == VALUE_OBJECT && envelope[PROPERTIES].kind == VALUE_OBJECT &&
               equals(&properties[0], "base64") && headers[TASK].kind == VALUE_STRING &&
               headers[TASK].length == task.len &&
               memcmp(headers[TASK].start, task.buf, (size_t)task.len) == 0 &&
               (headers[COMPRESSION].start == NULL || headers[COMPRESSION].kind == VALUE_NULL) &&
               (headers[ID].start == NULL || headers[ID].kind == VALUE_STRING || headers[ID].kind == VALUE_NULL);
    if (!readable) {
        answer = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *body = decode_body(&envelope[BODY]);
    if (body == NULL) {
        answer = PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
        goto done;
    }
    PyObject *task_id = headers[ID].kind == VALUE_STRING
                            ? PyUnicode_DecodeASCII((const char *)headers[ID].start, headers[ID].length, NULL)
                            : Py_NewRef(Py_None);
    if (task_id == NULL) {
        Py_DECREF(body);
        goto done;
    }
    answer = PyTuple_Pack(2, task_id, body);
    Py_DECREF(task_id);
    Py_DECREF(body);
done:
    PyBuffer_Release(&task);
    PyBuffer_Release(&message);
    return answer;
}

static PyMethodDef METHODS[] = {
    {"read_envelope", (PyCFunction)(void (*)(void))read_envelope, METH_FASTCALL,
     "read_envelope(message, task) -> (task id or None, body) | None\n\n"
     "The task id and decoded body of a protocol 2 envelope carrying `task`, or None (see celery.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, "_celery_envelope", NULL, 0, METHODS, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__celery_envelope(void) {
    PyObject *pybase64 = PyImport_ImportModule("pybase64");
    if (pybase64 == NULL)
        return NULL;
    b64decode = PyObject_GetAttrString(pybase64, "b64decode");
    Py_DECREF(pybase64);
    return b64decode == NULL ? NULL : PyModule_Create(&MODULE);
}
