/* Fast readers of SpanRow items for the durable write's C (batch.c, snapshot.c, ingest.c).
 *
 * row_u64: an exact int in [0, 2^64) as uint64_t. PyLong_AsUnsignedLongLong goes through
 * _PyLong_AsByteArray for every int of more than one digit (each nanosecond timestamp), which cost
 * more than the rest of a span's encoding; PyLong_AsLongAndOverflow walks the digits inline, and
 * the slow call is left for [2^63, 2^64) and errors (same answers, same refusals).
 *
 * row_id8: 16 lowercase hex digits (an exact ASCII str) as 8 bytes, through a table instead of
 * two compare-and-branch ranges per digit; same refusals as cwire.h's id_bytes.
 */
#ifndef VAUBAN_FASTROW_H
#define VAUBAN_FASTROW_H

#include "cwire.h"

static inline int row_u64(PyObject *v, uint64_t *out) {
    if (!PyLong_CheckExact(v)) return 0;
    int overflow = 0;
    long x = PyLong_AsLongAndOverflow(v, &overflow);
    if (!overflow && x >= 0 && !(x == -1 && PyErr_Occurred())) {
        *out = (uint64_t)x;
        return 1;
    }
    if (x == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (overflow < 0 || (!overflow && x < 0)) return 0; /* negative */
    unsigned long long u = PyLong_AsUnsignedLongLong(v);
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear(); /* 2^64 and over */
        return 0;
    }
    *out = u;
    return 1;
}

/* value of a lowercase hex digit, 0xff for any other byte */
#define HX(c) ((c) >= '0' && (c) <= '9' ? (c) - '0' : (c) >= 'a' && (c) <= 'f' ? (c) - 'a' + 10 : 0xff)
#define HX16(b) HX(b), HX(b + 1), HX(b + 2), HX(b + 3), HX(b + 4), HX(b + 5), HX(b + 6), HX(b + 7), HX(b + 8), \
    HX(b + 9), HX(b + 10), HX(b + 11), HX(b + 12), HX(b + 13), HX(b + 14), HX(b + 15)
static const uint8_t HEXV[256] = {HX16(0),   HX16(16),  HX16(32),  HX16(48),  HX16(64),  HX16(80),
                                  HX16(96),  HX16(112), HX16(128), HX16(144), HX16(160), HX16(176),
                                  HX16(192), HX16(208), HX16(224), HX16(240)};
#undef HX16
#undef HX

static inline int row_id8(PyObject *s, uint8_t out[8]) {
    if (!PyUnicode_CheckExact(s) || !PyUnicode_IS_ASCII(s) || PyUnicode_GET_LENGTH(s) != 16) return 0;
    const uint8_t *p = (const uint8_t *)PyUnicode_1BYTE_DATA(s);
    unsigned bad = 0;
    for (int i = 0; i < 8; i++) {
        unsigned hi = HEXV[p[2 * i]], lo = HEXV[p[2 * i + 1]];
        bad |= hi | lo;
        out[i] = (uint8_t)(hi << 4 | (lo & 15));
    }
    return !(bad & 0xf0);
}

#endif /* VAUBAN_FASTROW_H */
