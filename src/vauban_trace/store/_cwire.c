/* Cut a serialized OTLP ExportTraceServiceRequest into the store's per-span rows, in C.
 *
 * split(data) -> list of SpanRow, or None.
 *
 * The rows are exactly those of store._ingest.extract_rows over upb's parse of ``data``:
 * the payload of a span is a one-span ResourceSpans built from the resource, scope and span
 * bytes that upb's deterministic serialization would write. Instead of re-serializing, the
 * input is sliced, which is only identical when every sliced message is canonical: known
 * fields only, field numbers ascending (repeated fields contiguous), every singular field at
 * most once, no default-valued proto3 scalar outside a oneof, minimal varints, 32-bit
 * integers as upb writes them, valid UTF-8 in strings. Every message of the request is
 * checked against those rules; anything else (and any span whose ids or times the Python
 * path would reject, malformed bytes, nesting deeper than MAX_DEPTH) returns None, and the
 * caller uses the Python path. All reads are bounded by the input: arbitrary bytes are safe.
 *
 * configure(service_key, row_type) must be called once before split(): the resource
 * attribute key naming the service, and the SpanRow class (a tuple subclass of 9 items).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_DEPTH 64
#define MAX_TIME 0x8000000000000000ULL

typedef const uint8_t *P;

/* ---------- field tables ---------- */

enum { K_NONE = 0, K_STR, K_BYTES, K_MSG, K_I32, K_U32, K_I64, K_BOOL, K_F64, K_F32 };
enum {
    T_KEYVALUE, T_ANYVALUE, T_ARRAY, T_KVLIST, T_ENTITYREF, T_RESOURCE, T_SCOPE, T_SPAN, T_EVENT,
    T_LINK, T_STATUS, T_COUNT
};

typedef struct {
    uint8_t kind;
    uint8_t rep;   /* repeated */
    uint8_t oneof; /* member of the message's (only) oneof */
    uint8_t sub;   /* message type for K_MSG */
} Field;

typedef struct {
    int max;
    Field f[17];
} Msg;

#define F(k) {k, 0, 0, 0}
#define R(k) {k, 1, 0, 0}
#define M(t) {K_MSG, 0, 0, t}
#define RM(t) {K_MSG, 1, 0, t}
#define O(k) {k, 0, 1, 0}
#define OM(t) {K_MSG, 0, 1, t}
#define NO {K_NONE, 0, 0, 0}

static const Msg MSGS[T_COUNT] = {
    [T_KEYVALUE] = {3, {NO, F(K_STR), M(T_ANYVALUE), F(K_I32)}},
    [T_ANYVALUE] = {8, {NO, O(K_STR), O(K_BOOL), O(K_I64), O(K_F64), OM(T_ARRAY), OM(T_KVLIST), O(K_BYTES),
                        O(K_I32)}},
    [T_ARRAY] = {1, {NO, RM(T_ANYVALUE)}},
    [T_KVLIST] = {1, {NO, RM(T_KEYVALUE)}},
    [T_ENTITYREF] = {4, {NO, F(K_STR), F(K_STR), R(K_STR), R(K_STR)}},
    [T_RESOURCE] = {3, {NO, RM(T_KEYVALUE), F(K_U32), RM(T_ENTITYREF)}},
    [T_SCOPE] = {4, {NO, F(K_STR), F(K_STR), RM(T_KEYVALUE), F(K_U32)}},
    [T_SPAN] = {16, {NO, F(K_BYTES), F(K_BYTES), F(K_STR), F(K_BYTES), F(K_STR), F(K_I32), F(K_F64), F(K_F64),
                     RM(T_KEYVALUE), F(K_U32), RM(T_EVENT), F(K_U32), RM(T_LINK), F(K_U32), M(T_STATUS),
                     F(K_F32)}},
    [T_EVENT] = {4, {NO, F(K_F64), F(K_STR), RM(T_KEYVALUE), F(K_U32)}},
    [T_LINK] = {6, {NO, F(K_BYTES), F(K_BYTES), F(K_STR), RM(T_KEYVALUE), F(K_U32), F(K_F32)}},
    [T_STATUS] = {3, {NO, NO, F(K_STR), F(K_I32)}},
};

/* ---------- wire primitives ---------- */

/* Minimal varint of at most 64 bits; 0 on failure. */
static inline int rd_varint(P *pp, P end, uint64_t *out) {
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
static inline int rd_len(P *pp, P end, size_t *len) {
    uint64_t n;
    if (!rd_varint(pp, end, &n)) return 0;
    if (n > (uint64_t)(end - *pp)) return 0;
    *len = (size_t)n;
    return 1;
}

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF), as upb checks it. */
static int utf8_slow(P p, size_t n);

static inline int utf8_ok(P p, size_t n) {
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
    return utf8_slow(p, n);
}

static int utf8_slow(P p, size_t n) {
    P end = p + n;
    while (p < end) {
        if (end - p >= 8) {
            uint64_t w;
            memcpy(&w, p, 8);
            if (!(w & 0x8080808080808080ULL)) {
                p += 8;
                continue;
            }
        }
        uint8_t c = *p;
        if (c < 0x80) {
            p++;
        } else if (c >= 0xC2 && c <= 0xDF) {
            if (end - p < 2 || (p[1] & 0xC0) != 0x80) return 0;
            p += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            if (end - p < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return 0;
            if (c == 0xE0 && p[1] < 0xA0) return 0;
            if (c == 0xED && p[1] > 0x9F) return 0;
            p += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            if (end - p < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80) return 0;
            if (c == 0xF0 && p[1] < 0x90) return 0;
            if (c == 0xF4 && p[1] > 0x8F) return 0;
            p += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

/* What check_msg saw of the singular fields of the checked message (first 17 field numbers). */
typedef struct {
    P ptr[17];
    size_t len[17];
    uint64_t val[17];
    uint32_t seen; /* bit per field number */
} Capture;

static int check_msg(int type, P p, P end, int depth, Capture *cap);

static int check_field(const Field *fd, int wire, P *pp, P end, int depth, int num, Capture *cap) {
    P p = *pp;
    uint64_t v = 0;
    size_t n = 0;
    P start;
    switch (fd->kind) {
    case K_STR:
    case K_BYTES:
    case K_MSG:
        if (wire != 2 || !rd_len(&p, end, &n)) return 0;
        start = p;
        p += n;
        if (fd->kind == K_STR) {
            if (n == 0 && !fd->rep && !fd->oneof) return 0;
            if (!utf8_ok(start, n)) return 0;
        } else if (fd->kind == K_BYTES) {
            if (n == 0 && !fd->rep && !fd->oneof) return 0;
        } else {
            if (depth >= MAX_DEPTH) return 0;
            if (!check_msg(fd->sub, start, p, depth + 1, NULL)) return 0;
        }
        if (cap && !fd->rep) {
            cap->ptr[num] = start;
            cap->len[num] = n;
        }
        break;
    case K_I32:
    case K_U32:
    case K_I64:
    case K_BOOL:
        if (wire != 0 || !rd_varint(&p, end, &v)) return 0;
        if (fd->kind == K_I32 && v != (uint64_t)(int64_t)(int32_t)(uint32_t)v) return 0;
        if (fd->kind == K_U32 && v > 0xFFFFFFFFULL) return 0;
        if (fd->kind == K_BOOL && v > 1) return 0;
        if (v == 0 && !fd->oneof) return 0;
        break;
    case K_F64:
        if (wire != 1 || end - p < 8) return 0;
        memcpy(&v, p, 8); /* little-endian hosts only (checked at import) */
        p += 8;
        if (v == 0 && !fd->oneof) return 0;
        break;
    case K_F32: {
        uint32_t w;
        if (wire != 5 || end - p < 4) return 0;
        memcpy(&w, p, 4);
        p += 4;
        v = w;
        if (v == 0 && !fd->oneof) return 0;
        break;
    }
    default:
        return 0;
    }
    if (cap) cap->val[num] = v;
    *pp = p;
    return 1;
}

/* Hand-specialised checks of the hot messages (same rules as check_msg's tables): a KeyValue
 * and an AnyValue. Tags of fields 1..15 are one byte when minimal, so comparing that byte is
 * the whole tag check. */
static int check_any(P p, P end, int depth);

static int check_kv(P p, P end, int depth) {
    size_t n;
    uint64_t v;
    if (p < end && *p == 0x0a) { /* key */
        p++;
        if (!rd_len(&p, end, &n) || n == 0 || !utf8_ok(p, n)) return 0;
        p += n;
    }
    if (p < end && *p == 0x12) { /* value */
        p++;
        if (!rd_len(&p, end, &n)) return 0;
        P a = p, a_end = p + n;
        p = a_end;
        /* inline the common scalar values; the rest (and anything odd) goes to check_any */
        if (n >= 2 && *a == 0x0a && a[1] < 0x80 && (size_t)a[1] == n - 2) {
            if (!utf8_ok(a + 2, n - 2)) return 0;
        } else if (n == 2 && *a == 0x18 && a[1] < 0x80) {
        } else if (n == 9 && *a == 0x21) {
        } else if (n == 2 && *a == 0x10 && a[1] <= 1) {
        } else if (depth >= MAX_DEPTH || !check_any(a, a_end, depth + 1)) {
            return 0;
        }
    }
    if (p < end && *p == 0x18) { /* key_strindex */
        p++;
        if (!rd_varint(&p, end, &v) || v == 0 || v != (uint64_t)(int64_t)(int32_t)(uint32_t)v) return 0;
    }
    return p == end;
}

static int check_any(P p, P end, int depth) {
    size_t n;
    uint64_t v;
    if (p == end) return 1; /* no value set */
    switch (*p++) {
    case 0x0a: /* string_value */
        if (!rd_len(&p, end, &n) || !utf8_ok(p, n)) return 0;
        p += n;
        break;
    case 0x10: /* bool_value */
        if (!rd_varint(&p, end, &v) || v > 1) return 0;
        break;
    case 0x18: /* int_value */
        if (!rd_varint(&p, end, &v)) return 0;
        break;
    case 0x21: /* double_value */
        if (end - p < 8) return 0;
        p += 8;
        break;
    case 0x2a: /* array_value: values = 1 (AnyValue) */
    case 0x32: { /* kvlist_value: values = 1 (KeyValue) */
        int kv = p[-1] == 0x32;
        if (!rd_len(&p, end, &n) || depth >= MAX_DEPTH) return 0;
        P q = p, qend = p + n;
        p = qend;
        while (q < qend) {
            size_t m;
            if (*q++ != 0x0a || !rd_len(&q, qend, &m)) return 0;
            if (kv ? !check_kv(q, q + m, depth + 1) : !check_any(q, q + m, depth + 1)) return 0;
            q += m;
        }
        break;
    }
    case 0x3a: /* bytes_value */
        if (!rd_len(&p, end, &n)) return 0;
        p += n;
        break;
    case 0x40: /* string_value_strindex */
        if (!rd_varint(&p, end, &v) || v != (uint64_t)(int64_t)(int32_t)(uint32_t)v) return 0;
        break;
    default:
        return 0;
    }
    return p == end;
}

/* Is [p, end) a canonical serialization of message ``type``? */
static int check_msg(int type, P p, P end, int depth, Capture *cap) {
    if (type == T_KEYVALUE) return check_kv(p, end, depth);
    if (type == T_ANYVALUE) return check_any(p, end, depth);
    const Msg *m = &MSGS[type];
    int last = 0, oneof_seen = 0;
    while (p < end) {
        uint64_t key;
        if (!rd_varint(&p, end, &key)) return 0;
        uint64_t num = key >> 3;
        int wire = (int)(key & 7);
        if (num == 0 || num > (uint64_t)m->max) return 0;
        const Field *fd = &m->f[num];
        if (fd->kind == K_NONE) return 0;
        if ((int)num < last || ((int)num == last && !fd->rep)) return 0;
        if (fd->oneof) {
            if (oneof_seen) return 0;
            oneof_seen = 1;
        }
        last = (int)num;
        if (cap) cap->seen |= 1u << num;
        if (!check_field(fd, wire, &p, end, depth, (int)num, cap)) return 0;
        if (fd->sub == T_KEYVALUE && fd->kind == K_MSG && num < 16) {
            /* the rest of a run of attributes: same one-byte tag, straight to check_kv */
            const uint8_t tag = (uint8_t)key;
            while (p < end && *p == tag) {
                size_t n;
                p++;
                if (!rd_len(&p, end, &n) || depth >= MAX_DEPTH || !check_kv(p, p + n, depth + 1)) return 0;
                p += n;
            }
        }
    }
    return 1;
}

/* ---------- outer messages ---------- */

static PyObject *service_key = NULL; /* bytes */
static PyObject *row_type = NULL;    /* SpanRow */
static char HEX[256][2];

/* A length-delimited field of an outer message (request, ResourceSpans, ScopeSpans):
 * field number in *num, whole field (tag included) from *fstart, payload [*s, *s + *n). */
static int next_ld(P *pp, P end, int *num, P *fstart, P *s, size_t *n) {
    *fstart = *pp;
    uint64_t key;
    if (!rd_varint(pp, end, &key)) return 0;
    if ((key & 7) != 2 || (key >> 3) == 0 || (key >> 3) > 3) return 0;
    *num = (int)(key >> 3);
    if (!rd_len(pp, end, n)) return 0;
    *s = *pp;
    *pp += *n;
    return 1;
}

/* The resource's service.name string (first string-valued one), Py_None if none; NULL on error. */
static PyObject *service_of(P p, P end) {
    const char *want = PyBytes_AS_STRING(service_key);
    size_t want_n = (size_t)PyBytes_GET_SIZE(service_key);
    while (p < end) {
        uint64_t key;
        size_t n;
        if (!rd_varint(&p, end, &key)) return NULL;
        if ((key & 7) == 0) { /* dropped_attributes_count */
            uint64_t v;
            if (!rd_varint(&p, end, &v)) return NULL;
            continue;
        }
        if (!rd_len(&p, end, &n)) return NULL;
        P kv = p, kv_end = p + n;
        p = kv_end;
        if ((key >> 3) != 1) continue;
        /* KeyValue (already checked canonical): key = 1, value = 2 */
        P k = NULL;
        size_t kn = 0;
        while (kv < kv_end) {
            uint64_t kk;
            size_t ln;
            if (!rd_varint(&kv, kv_end, &kk)) return NULL;
            if ((kk & 7) == 0) {
                uint64_t v;
                if (!rd_varint(&kv, kv_end, &v)) return NULL;
                continue;
            }
            if (!rd_len(&kv, kv_end, &ln)) return NULL;
            if ((kk >> 3) == 1) {
                k = kv;
                kn = ln;
            } else if ((kk >> 3) == 2) {
                if (kn != want_n || (kn && memcmp(k, want, kn) != 0)) break;
                /* AnyValue: string_value is field 1, the oneof holds one member */
                P a = kv, a_end = kv + ln;
                uint64_t ak;
                size_t an;
                if (a < a_end && rd_varint(&a, a_end, &ak) && ak == ((1 << 3) | 2) && rd_len(&a, a_end, &an))
                    return PyUnicode_DecodeUTF8((const char *)a, (Py_ssize_t)an, NULL);
                break;
            }
            kv += ln;
        }
    }
    Py_RETURN_NONE;
}

static inline size_t varint_size(size_t v) {
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static inline uint8_t *put_varint(uint8_t *o, size_t v) {
    while (v >= 0x80) {
        *o++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *o++ = (uint8_t)v;
    return o;
}

static PyObject *hex_str(P p, size_t n) {
    PyObject *s = PyUnicode_New((Py_ssize_t)(2 * n), 127);
    if (!s) return NULL;
    char *o = (char *)PyUnicode_1BYTE_DATA(s);
    for (size_t i = 0; i < n; i++) {
        o[2 * i] = HEX[p[i]][0];
        o[2 * i + 1] = HEX[p[i]][1];
    }
    return s;
}

static int all_zero(P p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i]) return 0;
    return 1;
}

/* Append the row of one span to ``rows``: 1 = done, 0 = fall back (no error set), -1 = error. */
static int add_span(PyObject *rows, P s, size_t n, P rp, size_t rpn, P rs, size_t rsn, P sp, size_t spn, P ssx,
                    size_t ssn, PyObject *service, PyObject *env) {
    Capture cap;
    cap.seen = 0;
    if (!check_msg(T_SPAN, s, s + n, 1, &cap)) return 0;
    /* ids and times as store._ingest.id_problem / collector._codec require them */
    if (!(cap.seen & (1u << 1)) || cap.len[1] != 16 || all_zero(cap.ptr[1], 16)) return 0;
    if (!(cap.seen & (1u << 2)) || cap.len[2] != 8 || all_zero(cap.ptr[2], 8)) return 0;
    int has_parent = (cap.seen & (1u << 4)) != 0;
    if (has_parent && cap.len[4] != 8) return 0;
    uint64_t start = (cap.seen & (1u << 7)) ? cap.val[7] : 0;
    uint64_t stop = (cap.seen & (1u << 8)) ? cap.val[8] : 0;
    if (start >= MAX_TIME || stop >= MAX_TIME) return 0;

    PyObject *tid = NULL, *sid = NULL, *parent = NULL, *name = NULL, *t0 = NULL, *t1 = NULL, *payload = NULL;
    tid = hex_str(cap.ptr[1], 16);
    sid = hex_str(cap.ptr[2], 8);
    if (has_parent && !all_zero(cap.ptr[4], 8)) {
        parent = hex_str(cap.ptr[4], 8);
    } else {
        parent = Py_None;
        Py_INCREF(parent);
    }
    if (cap.seen & (1u << 5))
        name = PyUnicode_DecodeUTF8((const char *)cap.ptr[5], (Py_ssize_t)cap.len[5], NULL);
    else
        name = PyUnicode_New(0, 0);
    t0 = PyLong_FromUnsignedLongLong(start);
    t1 = PyLong_FromUnsignedLongLong(stop);
    /* payload = res_prefix + LD(2, scope_prefix + LD(2, span) + scope_suffix) + res_suffix */
    size_t ss = spn + 1 + varint_size(n) + n + ssn;
    size_t total = rpn + 1 + varint_size(ss) + ss + rsn;
    payload = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (!tid || !sid || !parent || !name || !t0 || !t1 || !payload) goto fail;
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(payload);
    memcpy(o, rp, rpn);
    o += rpn;
    *o++ = 0x12;
    o = put_varint(o, ss);
    memcpy(o, sp, spn);
    o += spn;
    *o++ = 0x12;
    o = put_varint(o, n);
    memcpy(o, s, n);
    o += n;
    memcpy(o, ssx, ssn);
    o += ssn;
    memcpy(o, rs, rsn);

    PyTypeObject *tp = (PyTypeObject *)row_type;
    PyObject *row = tp->tp_alloc(tp, 9);
    if (!row) goto fail;
    Py_INCREF(service);
    Py_INCREF(env);
    PyTuple_SET_ITEM(row, 0, tid);
    PyTuple_SET_ITEM(row, 1, sid);
    PyTuple_SET_ITEM(row, 2, parent);
    PyTuple_SET_ITEM(row, 3, name);
    PyTuple_SET_ITEM(row, 4, service);
    PyTuple_SET_ITEM(row, 5, t0);
    PyTuple_SET_ITEM(row, 6, t1);
    PyTuple_SET_ITEM(row, 7, payload);
    PyTuple_SET_ITEM(row, 8, env);
    /* its items (str, int, bytes, None, a tuple of bytes) cannot form a cycle: keep it (and
     * the envelope) out of the collector's way, as CPython does itself for such tuples */
    PyObject_GC_UnTrack(row);
    if (PyObject_GC_IsTracked(env)) PyObject_GC_UnTrack(env);
    int rc = PyList_Append(rows, row);
    Py_DECREF(row);
    return rc < 0 ? -1 : 1;
fail:
    Py_XDECREF(tid);
    Py_XDECREF(sid);
    Py_XDECREF(parent);
    Py_XDECREF(name);
    Py_XDECREF(t0);
    Py_XDECREF(t1);
    Py_XDECREF(payload);
    return -1;
}

/* One ResourceSpans: 1 = done, 0 = fall back, -1 = error. */
static int add_resource_spans(PyObject *rows, P p, P end) {
    /* first pass: resource and schema_url (which follows the scope spans), order checks */
    P rp = p, rs = p, fstart, s, ss_first = NULL, ss_end = NULL;
    size_t rpn = 0, rsn = 0, n;
    int num, last = 0, has_resource = 0;
    P res = NULL;
    size_t resn = 0;
    P q = p;
    while (q < end) {
        if (!next_ld(&q, end, &num, &fstart, &s, &n)) return 0;
        if (num < last || (num == last && num != 2)) return 0;
        last = num;
        if (num == 1) {
            if (!check_msg(T_RESOURCE, s, s + n, 1, NULL)) return 0;
            has_resource = 1;
            rp = fstart;
            rpn = (size_t)(q - fstart);
            res = s;
            resn = n;
        } else if (num == 2) {
            if (!ss_first) ss_first = fstart;
            ss_end = q;
        } else {
            if (n == 0 || !utf8_ok(s, n)) return 0;
            rs = fstart;
            rsn = (size_t)(q - fstart);
        }
    }
    if (!ss_first) return 1; /* no spans */
    PyObject *service = has_resource ? service_of(res, res + resn) : (Py_INCREF(Py_None), Py_None);
    if (!service) return PyErr_Occurred() ? -1 : 0;
    PyObject *res_prefix = PyBytes_FromStringAndSize((const char *)rp, (Py_ssize_t)rpn);
    PyObject *res_suffix = PyBytes_FromStringAndSize((const char *)rs, (Py_ssize_t)rsn);
    int rc = 1;
    if (!res_prefix || !res_suffix) {
        rc = -1;
        goto done;
    }
    q = ss_first;
    while (q < ss_end && rc == 1) {
        P ss, ssend, span_first = NULL, span_end = NULL, sp = q, sx = q;
        size_t spn = 0, sxn = 0, ssn;
        if (!next_ld(&q, ss_end, &num, &fstart, &ss, &ssn)) {
            rc = 0;
            break;
        }
        ssend = ss + ssn;
        /* ScopeSpans: scope = 1, spans = 2 (repeated), schema_url = 3 */
        P r = ss;
        int slast = 0;
        while (r < ssend) {
            int sn;
            if (!next_ld(&r, ssend, &sn, &fstart, &s, &n) || sn < slast || (sn == slast && sn != 2)) {
                rc = 0;
                break;
            }
            slast = sn;
            if (sn == 1) {
                if (!check_msg(T_SCOPE, s, s + n, 1, NULL)) {
                    rc = 0;
                    break;
                }
                sp = fstart;
                spn = (size_t)(r - fstart);
            } else if (sn == 2) {
                if (!span_first) span_first = fstart;
                span_end = r;
            } else {
                if (n == 0 || !utf8_ok(s, n)) {
                    rc = 0;
                    break;
                }
                sx = fstart;
                sxn = (size_t)(r - fstart);
            }
        }
        if (rc != 1 || !span_first) continue;
        PyObject *env = PyTuple_New(4);
        if (!env) {
            rc = -1;
            break;
        }
        PyObject *sp_b = PyBytes_FromStringAndSize((const char *)sp, (Py_ssize_t)spn);
        PyObject *sx_b = PyBytes_FromStringAndSize((const char *)sx, (Py_ssize_t)sxn);
        if (!sp_b || !sx_b) {
            Py_XDECREF(sp_b);
            Py_XDECREF(sx_b);
            Py_DECREF(env);
            rc = -1;
            break;
        }
        Py_INCREF(res_prefix);
        Py_INCREF(res_suffix);
        PyTuple_SET_ITEM(env, 0, res_prefix);
        PyTuple_SET_ITEM(env, 1, res_suffix);
        PyTuple_SET_ITEM(env, 2, sp_b);
        PyTuple_SET_ITEM(env, 3, sx_b);
        r = span_first;
        while (r < span_end && rc == 1) {
            int sn;
            if (!next_ld(&r, span_end, &sn, &fstart, &s, &n)) {
                rc = 0;
                break;
            }
            rc = add_span(rows, s, n, rp, rpn, rs, rsn, sp, spn, sx, sxn, service, env);
        }
        Py_DECREF(env);
    }
done:
    Py_XDECREF(res_prefix);
    Py_XDECREF(res_suffix);
    Py_DECREF(service);
    return rc;
}

static PyObject *split(PyObject *self, PyObject *arg) {
    if (!service_key || !row_type) {
        PyErr_SetString(PyExc_RuntimeError, "_cwire.split: call configure() first");
        return NULL;
    }
    Py_buffer buf;
    if (PyObject_GetBuffer(arg, &buf, PyBUF_SIMPLE) < 0) return NULL;
    P p = (P)buf.buf, end = p + buf.len;
    PyObject *rows = PyList_New(0);
    int rc = rows ? 1 : -1;
    while (p < end && rc == 1) {
        int num;
        P fstart, s;
        size_t n;
        if (!next_ld(&p, end, &num, &fstart, &s, &n) || num != 1) {
            rc = 0;
            break;
        }
        rc = add_resource_spans(rows, s, s + n);
    }
    PyBuffer_Release(&buf);
    if (rc == 1) return rows;
    Py_XDECREF(rows);
    if (rc < 0) {
        /* a failed decode (cannot happen after the UTF-8 check) or memory: let the caller decide */
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) PyErr_Clear();
        else return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *key, *tp;
    if (!PyArg_ParseTuple(args, "UO!", &key, &PyType_Type, &tp)) return NULL;
    PyTypeObject *t = (PyTypeObject *)tp;
    if (!PyType_IsSubtype(t, &PyTuple_Type) || t->tp_basicsize != PyTuple_Type.tp_basicsize ||
        t->tp_itemsize != PyTuple_Type.tp_itemsize) {
        PyErr_SetString(PyExc_TypeError, "_cwire.configure: row_type must be a plain tuple subclass (NamedTuple)");
        return NULL;
    }
    PyObject *kb = PyUnicode_AsUTF8String(key);
    if (!kb) return NULL;
    Py_XSETREF(service_key, kb);
    Py_INCREF(tp);
    Py_XSETREF(row_type, tp);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"split", split, METH_O, "split(data) -> list[SpanRow] | None: the store's rows of a serialized request."},
    {"configure", configure, METH_VARARGS, "configure(service_key, row_type): set before split()."},
    {NULL, NULL, 0, NULL},
};
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_cwire", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__cwire(void) {
    const uint16_t probe = 1;
    if (*(const uint8_t *)&probe != 1) {
        PyErr_SetString(PyExc_ImportError, "_cwire: little-endian hosts only");
        return NULL;
    }
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 256; i++) {
        HEX[i][0] = digits[i >> 4];
        HEX[i][1] = digits[i & 15];
    }
    return PyModule_Create(&mod);
}
