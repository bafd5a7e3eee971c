/* Reads the common Celery envelope without making Python objects for it (see celery.py).

   `read_envelope(message, task)` answers (task id or None, body) for a kombu Redis envelope of
   Celery task protocol 2 that carries the task named `task`: valid JSON, every field the checked
   path requires, the body base64 in its strict form, decoded here. For anything else, valid or not,
   it answers None and the caller takes the checked path, which also words the errors. So this
   reader may refuse more than the checked path, never accept more: it refuses non-ASCII bytes,
   escapes in the strings it reads, a key it reads twice, nesting deeper than MAX_DEPTH.

   Its input is written by capture (ours or PostHog's): a client's bytes reach it only inside the
   base64 body, which is read with the alphabet's table and never past its end.
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

/* The keys an object's reader wants, and what it found under them. */
typedef struct {
    const char *const *names;
    Value *found;
    int count;
} Wanted;

/* An object at c->at; the values of the `wanted` keys (escape-free strings, null, or objects whose
   span is kept) into wanted->found. 0 when not valid, or when a wanted key comes twice or has a
   value this reader does not read. */
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
            } else if (c->at < c->end && *c->at == '{') {
                const unsigned char *start = c->at;
                if (!read_value(c, &value, depth))
                    return 0;
                wanted->found[slot].start = start;
                wanted->found[slot].length = c->at - start;
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

/* An object value found by read_object, read again for its own wanted keys. */
static int read_found_object(const Value *value, const Wanted *wanted) {
    Cursor c = {value->start, value->start + value->length};
    return value->kind == VALUE_OBJECT && read_object(&c, 1, wanted);
}

static signed char BASE64[256];

static void fill_base64_table(void) {
    const char *alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    memset(BASE64, -1, sizeof(BASE64));
    for (int i = 0; i < 64; i++)
        BASE64[(unsigned char)alphabet[i]] = (signed char)i;
}

/* The bytes of strict base64 (only the alphabet, whole quads, '=' only as the last quad's padding);
   NULL without an exception when the text is not in that form. */
static PyObject *decode_base64(const unsigned char *text, Py_ssize_t length) {
    if (length % 4 != 0)
        return NULL;
    Py_ssize_t padding = 0;
    if (length > 0 && text[length - 1] == '=')
        padding = (length > 1 && text[length - 2] == '=') ? 2 : 1;
    PyObject *decoded = PyBytes_FromStringAndSize(NULL, length / 4 * 3 - padding);
    if (decoded == NULL)
        return NULL;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(decoded);
    Py_ssize_t full = length - (padding ? 4 : 0);
    int invalid = 0; /* negative once a byte outside the alphabet was met */
    for (Py_ssize_t i = 0; i < full; i += 4) {
        int a = BASE64[text[i]], b = BASE64[text[i + 1]], c = BASE64[text[i + 2]], d = BASE64[text[i + 3]];
        invalid |= a | b | c | d;
        *out++ = (unsigned char)(a << 2 | b >> 4);
        *out++ = (unsigned char)(b << 4 | c >> 2);
        *out++ = (unsigned char)(c << 6 | d);
    }
    if (invalid < 0)
        goto refused;
    if (padding) {
        const unsigned char *last = text + full;
        int a = BASE64[last[0]], b = BASE64[last[1]];
        int c = padding == 1 ? BASE64[last[2]] : 0;
        if ((a | b | c) < 0)
            goto refused;
        *out++ = (unsigned char)(a << 2 | b >> 4);
        if (padding == 1)
            *out++ = (unsigned char)(b << 4 | c >> 2);
    }
    return decoded;
refused:
    Py_DECREF(decoded);
    return NULL;
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
    Wanted envelope_keys = {ENVELOPE_KEYS, envelope, 5};
    Wanted header_keys = {HEADER_KEYS, headers, 3};
    Wanted property_keys = {PROPERTY_KEYS, properties, 1};
    Cursor c = {message.buf, (const unsigned char *)message.buf + message.len};
    skip_space(&c);
    int readable = c.at < c.end && *c.at == '{' && read_object(&c, 1, &envelope_keys);
    skip_space(&c);
    readable = readable && c.at == c.end && equals(&envelope[CONTENT_TYPE], "application/json") &&
               equals(&envelope[CONTENT_ENCODING], "utf-8") && envelope[BODY].kind == VALUE_STRING &&
               read_found_object(&envelope[HEADERS], &header_keys) &&
               read_found_object(&envelope[PROPERTIES], &property_keys) &&
               equals(&properties[0], "base64") && headers[TASK].kind == VALUE_STRING &&
               headers[TASK].length == task.len &&
               memcmp(headers[TASK].start, task.buf, (size_t)task.len) == 0 &&
               (headers[COMPRESSION].start == NULL || headers[COMPRESSION].kind == VALUE_NULL) &&
               (headers[ID].start == NULL || headers[ID].kind == VALUE_STRING || headers[ID].kind == VALUE_NULL);
    if (!readable) {
        answer = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *body = decode_base64(envelope[BODY].start, envelope[BODY].length);
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
    fill_base64_table();
    return PyModule_Create(&MODULE);
}
