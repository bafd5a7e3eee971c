/* The text of a time-ordered uuid (see uuidt.py): made here because in Python the bytes, the bit
   twiddling and the dashed hex took about 1 µs, once for every event that arrives without a uuid
   and every event captured.

   `uuidt_text(unix_ms, tail)`: 48 bits of `unix_ms` (its low 48), then the first 10 bytes of `tail`,
   with the version (7) and the RFC 4122 variant set, as 8-4-4-4-12 lower-case hex.

   `uuidt_for_message(unix_ms, message_id)`: `uuidt_text(unix_ms, blake2b(message_id in UTF-8,
   digest_size=10))`, the uuid of an event that arrived without one (uuidt.py). hashlib's blake2b took
   0.5 µs for it (its object, its lock, the keyword); BLAKE2b (RFC 7693, unkeyed, 10-byte digest) is
   computed here, and tests check it against hashlib.

   `is_uuid_text(value)`: whether `value` is a uuid's text, 8-4-4-4-12 hex digits of either case (what
   a regular expression checked in 0.31 µs, for every event).
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static const char HEX[] = "0123456789abcdef";

/* The uuid's text: the low 48 bits of `ms`, then `tail`'s 10 bytes, version 7 and variant set. */
static PyObject *uuidt_from(uint64_t ms, const unsigned char *tail) {
    unsigned char raw[16];
    for (int i = 0; i < 6; i++)
        raw[i] = (unsigned char)(ms >> (8 * (5 - i)));
    memcpy(raw + 6, tail, 10);
    raw[6] = (unsigned char)((raw[6] & 0x0F) | 0x70); /* version 7 */
    raw[8] = (unsigned char)((raw[8] & 0x3F) | 0x80); /* RFC 4122 variant */
    PyObject *text = PyUnicode_New(36, 127);
    if (text == NULL)
        return NULL;
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(text);
    for (int i = 0, at = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[at++] = '-';
        out[at++] = (Py_UCS1)HEX[raw[i] >> 4];
        out[at++] = (Py_UCS1)HEX[raw[i] & 0x0F];
    }
    return text;
}

/* The low 48 bits of an int, of a negative one too (two's complement), as Python's `& 0xFFFF_FFFF_FFFF`;
   (uint64_t)-1 with an exception set when it is not an int. */
static uint64_t unix_ms_of(PyObject *value) {
    if (!PyLong_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "unix_ms must be an int");
        return (uint64_t)-1;
    }
    return (uint64_t)PyLong_AsUnsignedLongLongMask(value);
}

static PyObject *uuidt_text(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "uuidt_text(unix_ms: int, tail: bytes)");
        return NULL;
    }
    if (PyBytes_GET_SIZE(args[1]) < 10) {
        PyErr_SetString(PyExc_ValueError, "the tail must have at least 10 bytes");
        return NULL;
    }
    uint64_t ms = unix_ms_of(args[0]);
    if (ms == (uint64_t)-1 && PyErr_Occurred())
        return NULL;
    return uuidt_from(ms, (const unsigned char *)PyBytes_AS_STRING(args[1]));
}

/* ---- BLAKE2b (RFC 7693), unkeyed */

static const uint64_t BLAKE2B_IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

/* The message words' order in each round; rounds 10 and 11 take rounds 0 and 1's. */
static const uint8_t BLAKE2B_SIGMA[10][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
};

#define ROTR64(x, n) (((x) >> (n)) | ((x) << (64 - (n))))
#define BLAKE2B_G(a, b, c, d, x, y)                                                                    \
    do {                                                                                           \
        v[a] = v[a] + v[b] + (x);                                                                  \
        v[d] = ROTR64(v[d] ^ v[a], 32);                                                            \
        v[c] = v[c] + v[d];                                                                        \
        v[b] = ROTR64(v[b] ^ v[c], 24);                                                            \
        v[a] = v[a] + v[b] + (y);                                                                  \
        v[d] = ROTR64(v[d] ^ v[a], 16);                                                            \
        v[c] = v[c] + v[d];                                                                        \
        v[b] = ROTR64(v[b] ^ v[c], 63);                                                            \
    } while (0)

static uint64_t load_le64(const uint8_t *p) {
    uint64_t value = 0;
    for (int i = 7; i >= 0; i--)
        value = (value << 8) | p[i];
    return value;
}

/* One block into the state; `counter` is the bytes taken so far (inputs here are far below 2^64). */
static void blake2b_compress(uint64_t h[8], const uint8_t block[128], uint64_t counter, int last) {
    uint64_t m[16], v[16];
    for (int i = 0; i < 16; i++)
        m[i] = load_le64(block + 8 * i);
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = BLAKE2B_IV[i];
    }
    v[12] ^= counter;
    if (last)
        v[14] = ~v[14];
    /* the twelve rounds written out, so that every word's index is a constant (a loop over them took a
       sixth longer) */
#define BLAKE2B_ROUND(r)                                                                           \
    do {                                                                                           \
        const uint8_t *s = BLAKE2B_SIGMA[r];                                                       \
        BLAKE2B_G(0, 4, 8, 12, m[s[0]], m[s[1]]);                                                  \
        BLAKE2B_G(1, 5, 9, 13, m[s[2]], m[s[3]]);                                                  \
        BLAKE2B_G(2, 6, 10, 14, m[s[4]], m[s[5]]);                                                 \
        BLAKE2B_G(3, 7, 11, 15, m[s[6]], m[s[7]]);                                                 \
        BLAKE2B_G(0, 5, 10, 15, m[s[8]], m[s[9]]);                                                 \
        BLAKE2B_G(1, 6, 11, 12, m[s[10]], m[s[11]]);                                               \
        BLAKE2B_G(2, 7, 8, 13, m[s[12]], m[s[13]]);                                                \
        BLAKE2B_G(3, 4, 9, 14, m[s[14]], m[s[15]]);                                                \
    } while (0)
    BLAKE2B_ROUND(0);
    BLAKE2B_ROUND(1);
    BLAKE2B_ROUND(2);
    BLAKE2B_ROUND(3);
    BLAKE2B_ROUND(4);
    BLAKE2B_ROUND(5);
    BLAKE2B_ROUND(6);
    BLAKE2B_ROUND(7);
    BLAKE2B_ROUND(8);
    BLAKE2B_ROUND(9);
    BLAKE2B_ROUND(0);
    BLAKE2B_ROUND(1);
#undef BLAKE2B_ROUND
    for (int i = 0; i < 8; i++)
        h[i] ^= v[i] ^ v[i + 8];
}

/* The `digest_size`-byte (1..64) BLAKE2b digest of `data`, as hashlib.blake2b(data, digest_size=...). */
static void blake2b(uint8_t *digest, size_t digest_size, const uint8_t *data, size_t size) {
    uint64_t h[8];
    memcpy(h, BLAKE2B_IV, sizeof h);
    h[0] ^= 0x01010000ULL ^ (uint64_t)digest_size; /* depth 1, fanout 1, no key */
    uint64_t counter = 0;
    while (size > 128) { /* the last block, full or not, is compressed as the last */
        counter += 128;
        blake2b_compress(h, data, counter, 0);
        data += 128;
        size -= 128;
    }
    uint8_t block[128] = {0};
    memcpy(block, data, size);
    counter += size;
    blake2b_compress(h, block, counter, 1);
    for (size_t i = 0; i < digest_size; i++)
        digest[i] = (uint8_t)(h[i / 8] >> (8 * (i % 8)));
}

static PyObject *uuidt_for_message(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyUnicode_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "uuidt_for_message(unix_ms: int, message_id: str)");
        return NULL;
    }
    uint64_t ms = unix_ms_of(args[0]);
    if (ms == (uint64_t)-1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t size;
    const char *utf8 = PyUnicode_AsUTF8AndSize(args[1], &size); /* raises for lone surrogates, as encode() */
    if (utf8 == NULL)
        return NULL;
    uint8_t digest[10];
    blake2b(digest, sizeof digest, (const uint8_t *)utf8, (size_t)size);
    return uuidt_from(ms, digest);
}

static PyObject *is_uuid_text(PyObject *Py_UNUSED(module), PyObject *value) {
    if (!PyUnicode_Check(value) || PyUnicode_GET_LENGTH(value) != 36 || PyUnicode_KIND(value) != PyUnicode_1BYTE_KIND)
        Py_RETURN_FALSE;
    const Py_UCS1 *text = PyUnicode_1BYTE_DATA(value);
    for (int i = 0; i < 36; i++) {
        Py_UCS1 c = text[i], lower = (Py_UCS1)(c | 0x20);
        int dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? c != '-' : !((c >= '0' && c <= '9') || (lower >= 'a' && lower <= 'f')))
            Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

static PyMethodDef METHODS[] = {
    {"uuidt_text", (PyCFunction)(void (*)(void))uuidt_text, METH_FASTCALL,
     "uuidt_text(unix_ms, tail) -> str\n\nA time-ordered uuid's text (see uuidt.py)."},
    {"uuidt_for_message", (PyCFunction)(void (*)(void))uuidt_for_message, METH_FASTCALL,
     "uuidt_for_message(unix_ms, message_id) -> str\n\nThe uuid of a message's event (see uuidt.py)."},
    {"is_uuid_text", is_uuid_text, METH_O,
     "is_uuid_text(value) -> bool\n\nWhether value is a uuid's text, hex digits of either case."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, "_uuid_text", NULL, 0, METHODS, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__uuid_text(void) { return PyModule_Create(&MODULE); }
