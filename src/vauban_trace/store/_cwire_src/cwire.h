/* _cwire internal header: what the files of the store's C extension share.
 *
 * The byte-pointer type (P), the nesting bound, the message type numbers the outer walk asks
 * canonical.c to check, the Capture of a checked message's singular fields, the hot wire readers
 * (minimal varint, length prefix) and the UTF-8 check's ASCII fast path as static inline helpers,
 * and the prototypes of the cw_ functions. canonical.c holds the field tables and the canonical
 * checks; rows.c walks the outer messages, builds the rows and defines the module; snapshot.c
 * regroups rows; batch.c and batch_match.c are the span-batch codec (with its small helpers
 * below: varint writer, id parsing, bytes reader, BAD()). Not a public
 * API: only PyInit__cwire is exported from the module.
 */
#ifndef VAUBAN_CWIRE_H
#define VAUBAN_CWIRE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__)
#pragma GCC visibility push(hidden) /* the cw_ names are internal to the extension */
#endif

#define MAX_DEPTH 64

#if defined(__GNUC__)
#define CW_INLINE static inline __attribute__((always_inline)) /* the hot per-field helpers */
#else
#define CW_INLINE static inline
#endif

typedef const uint8_t *P;

/* Message types of the canonical checks (index into canonical.c's field tables). */
enum {
    T_KEYVALUE, T_ANYVALUE, T_ARRAY, T_KVLIST, T_ENTITYREF, T_RESOURCE, T_SCOPE, T_SPAN, T_EVENT,
    T_LINK, T_STATUS, T_COUNT
};

/* What cw_check_msg saw of the singular fields of the checked message (first 17 field numbers). */
typedef struct {
    P ptr[17];
    size_t len[17];
    uint64_t val[17];
    uint32_t seen; /* bit per field number */
} Capture;

/* ---------- wire primitives ---------- */

/* Minimal varint of at most 64 bits; 0 on failure. */
CW_INLINE int rd_varint(P *pp, P end, uint64_t *out) {
    P p = *pp;
    if (p < end && *p < 0x80) {
        *out = *p;
        *pp = p + 1;
        return 1;
    }
    uint64_t v = 0;
    for (int i = 0; i < 10; i++) {
        if (p >= end) return 0;
        uint8_t b = *p++;
        if (i == 9 && b > 1) return 0; /* over 64 bits */
        v |= (uint64_t)(b & 0x7F) << (7 * i);
        if (!(b & 0x80)) {
            if (b == 0 && i > 0) return 0; /* overlong */
            *out = v;
            *pp = p;
            return 1;
        }
    }
    return 0;
}

/* A length prefix: the payload [*pp, *pp + len) fits the input. */
CW_INLINE int rd_len(P *pp, P end, size_t *len) {
    uint64_t n;
    if (!rd_varint(pp, end, &n)) return 0;
    if (n > (uint64_t)(end - *pp)) return 0;
    *len = (size_t)n;
    return 1;
}

/* ---------- canonical.c ---------- */

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF), as upb checks it. */
int cw_utf8_slow(P p, size_t n);

CW_INLINE int utf8_ok(P p, size_t n) {
    /* ASCII fast path: OR every byte (words, the tail as an overlapping word) */
    uint64_t acc = 0, w;
    if (n >= 8) {
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            memcpy(&w, p + i, 8);
            acc |= w;
        }
        memcpy(&w, p + n - 8, 8);
        acc |= w;
    } else {
        for (size_t i = 0; i < n; i++) acc |= p[i];
    }
    if (!(acc & 0x8080808080808080ULL)) return 1;
    return cw_utf8_slow(p, n);
}

/* Is [p, end) a canonical serialization of message ``type``? Fills *cap when not NULL. */
int cw_check_msg(int type, P p, P end, int depth, Capture *cap);

/* What cw_check_span saw of a span: the ids and name (NULL when absent) and the times (0). */
typedef struct {
    P trace_id, span_id, parent, name;
    size_t trace_id_n, span_id_n, parent_n, name_n;
    uint64_t start, end;
} SpanFields;

/* cw_check_msg(T_SPAN, ...) specialised (same verdict), filling *f. */
int cw_check_span(P p, P end, int depth, SpanFields *f);

/* ---------- snapshot.c ---------- */

/* snapshot(rows) -> bytes | None: store._ingest.snapshot_bytes in C. */
PyObject *cw_snapshot(PyObject *self, PyObject *rows);

/* ---------- batch.c, batch_match.c ---------- */

#define MAX_ENVS 256 /* envelope entries the C batch codec handles (more: the Python reference) */

/* SpanRow item positions (store._rows.SpanRow) */
enum { R_SPAN_ID = 1, R_PARENT = 2, R_NAME = 3, R_SERVICE = 4, R_START = 5, R_END = 6, R_PAYLOAD = 7, R_ENV = 8 };

static inline size_t vlen(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static inline uint8_t *put_v(uint8_t *o, uint64_t v) {
    while (v >= 0x80) {
        *o++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *o++ = (uint8_t)v;
    return o;
}

static inline int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* 16 lowercase hex digits -> 8 bytes; 0: not. */
static inline int id_bytes(PyObject *s, uint8_t out[8]) {
    if (!PyUnicode_CheckExact(s) || !PyUnicode_IS_ASCII(s) || PyUnicode_GET_LENGTH(s) != 16) return 0;
    const char *p = (const char *)PyUnicode_1BYTE_DATA(s);
    for (int i = 0; i < 8; i++) {
        int hi = hexval(p[2 * i]), lo = hexval(p[2 * i + 1]);
        if (hi < 0 || lo < 0) return 0;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 1;
}

/* bytes(x): length varint then [*s, *s + *n) within the blob. */
static inline int rd_bytes(P *pp, P end, P *s, size_t *n) {
    if (!rd_len(pp, end, n)) return 0;
    *s = *pp;
    *pp += *n;
    return 1;
}

/* A fixed64 little-endian (the host's order: the module refuses big-endian hosts). */
static inline int rd_u64le(P *pp, P end, uint64_t *out) {
    if (end - *pp < 8) return 0;
    memcpy(out, *pp, 8);
    *pp += 8;
    return 1;
}

/* Decoding failed for a reason the Python reference reports (clears a Python error if any). */
#define BAD()                 \
    do {                      \
        PyErr_Clear();        \
        bad = 1;              \
        goto done;            \
    } while (0)

PyObject *cw_match_batch(PyObject *self, PyObject *args);

/* encode_batch(rows) -> bytes | None; decode_batch(trace_id, blob) -> list | None: store._batch in C. */
PyObject *cw_encode_batch(PyObject *self, PyObject *rows);
PyObject *cw_decode_batch(PyObject *self, PyObject *args);

/* ---------- ingest.c ---------- */

/* group_rows(rows), new_traces(groups, snapshots), bookkeeping(tid, rows, now): store_rows' hot path. */
PyObject *cw_group_rows(PyObject *self, PyObject *rows);
PyObject *cw_new_traces(PyObject *self, PyObject *args);
PyObject *cw_bookkeeping(PyObject *self, PyObject *args);

/* ---------- rows.c ---------- */

/* The SpanRow type set by configure() (borrowed), NULL before. */
PyObject *cw_row_type(void);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#endif /* VAUBAN_CWIRE_H */
