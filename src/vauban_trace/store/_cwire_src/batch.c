/* Span batches (store._batch) in C: encode_batch(rows) and decode_batch(trace_id, blob).
 *
 * encode_batch(rows) -> bytes, or None. The result is exactly store._batch.encode_batch_py(rows)
 * (the format is specified in _batch.py's docstring): version byte 1, the distinct (service,
 * envelope) pairs in order of first appearance, then per span its 8 id bytes, flags, parent
 * id, name, start and end (fixed64 little-endian), envelope index and the LD(2, span) field cut out of its payload.
 * It returns None (the Python reference then runs, and raises where a row is bad) for anything
 * unusual: rows not a list, a row not a 9-item tuple, a span or parent id that is not 16
 * lowercase hex digits, a name or service that is not a str encodable as UTF-8, a time not an
 * int in [0, 2^64), a payload or envelope item that is not bytes, an envelope not a 4-tuple, a
 * payload that is not res_prefix + 0x12 + varint(n) + scope_prefix + field + scope_suffix +
 * res_suffix with minimal varints (field = 0x12 + varint(len) + span), more than MAX_ENVS
 * envelope entries.
 *
 * decode_batch(trace_id, blob) -> list[SpanRow], or None. The rows are exactly
 * store._batch.decode_batch_py(trace_id, blob); None for a malformed blob (the Python reference
 * then raises the error naming the problem), a blob of more than MAX_ENVS envelopes, or before
 * configure() set the row type. Every read is bounded by the blob.
 */
#include "fastrow.h"

/* UTF-8 of a str (cached by CPython); NULL, error cleared: not usable. */
static const char *utf8_of(PyObject *s, Py_ssize_t *n) {
    if (!PyUnicode_CheckExact(s)) return NULL;
    const char *p = PyUnicode_AsUTF8AndSize(s, n);
    if (!p) PyErr_Clear();
    return p;
}

static int same(PyObject *a, PyObject *b) {
    Py_ssize_t n = PyBytes_GET_SIZE(a);
    return a == b || (n == PyBytes_GET_SIZE(b) && memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b), (size_t)n) == 0);
}

typedef struct {
    PyObject *service; /* borrowed: None or str */
    const char *svc;
    Py_ssize_t svc_len;
    PyObject *env; /* borrowed 4-tuple of bytes */
} Env;

typedef struct {
    uint8_t id[8], parent[8];
    int has_parent;
    const char *name;
    Py_ssize_t name_len;
    uint64_t start, end;
    int env;
    const uint8_t *field;
    size_t field_len;
} Item;

static int same_env(const Env *e, PyObject *service, const char *svc, Py_ssize_t svc_len, PyObject *env) {
    if (e->env != env)
        for (int k = 0; k < 4; k++)
            if (!same(PyTuple_GET_ITEM(e->env, k), PyTuple_GET_ITEM(env, k))) return 0;
    if (e->service == service) return 1;
    if (e->service == Py_None || service == Py_None) return 0;
    return e->svc_len == svc_len && memcmp(e->svc, svc, (size_t)svc_len) == 0;
}

/* The LD(2, span) field of the payload, checked against wrap_span's form; 0: not that form. */
static int cut_field(PyObject *payload, PyObject *env, Item *it) {
    PyObject *rp = PyTuple_GET_ITEM(env, 0), *rs = PyTuple_GET_ITEM(env, 1);
    PyObject *sp = PyTuple_GET_ITEM(env, 2), *ss = PyTuple_GET_ITEM(env, 3);
    size_t rpn = (size_t)PyBytes_GET_SIZE(rp), rsn = (size_t)PyBytes_GET_SIZE(rs);
    size_t spn = (size_t)PyBytes_GET_SIZE(sp), ssn = (size_t)PyBytes_GET_SIZE(ss);
    P p = (P)PyBytes_AS_STRING(payload), end = p + PyBytes_GET_SIZE(payload);
    if ((size_t)(end - p) < rpn + 1 || memcmp(p, PyBytes_AS_STRING(rp), rpn) != 0 || p[rpn] != 0x12) return 0;
    P q = p + rpn + 1;
    size_t inner;
    if (!rd_len(&q, end, &inner)) return 0; /* minimal varint, fits */
    if ((size_t)(end - q) != inner + rsn || inner < spn + ssn) return 0;
    if (memcmp(q, PyBytes_AS_STRING(sp), spn) != 0) return 0;
    if (memcmp(q + inner - ssn, PyBytes_AS_STRING(ss), ssn) != 0) return 0;
    if (memcmp(q + inner, PyBytes_AS_STRING(rs), rsn) != 0) return 0;
    P f = q + spn, fend = q + inner - ssn;
    if (fend - f < 2 || *f != 0x12) return 0;
    P g = f + 1;
    size_t n;
    if (!rd_len(&g, fend, &n) || g + n != fend) return 0;
    it->field = f;
    it->field_len = (size_t)(fend - f);
    return 1;
}

PyObject *cw_encode_batch(PyObject *self, PyObject *rows) {
    (void)self;
    if (!PyList_Check(rows)) Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(rows);
    Item *items = PyMem_Malloc(sizeof(Item) * (size_t)(n ? n : 1));
    Env *envs = PyMem_Malloc(sizeof(Env) * MAX_ENVS);
    if (!items || !envs) {
        PyMem_Free(items);
        PyMem_Free(envs);
        return PyErr_NoMemory();
    }
    int ne = 0, last = -1, ok = 1;
    size_t total = 1;
    for (Py_ssize_t i = 0; i < n && ok; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        Item *it = &items[i];
        ok = 0;
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != 9) break;
        PyObject *parent = PyTuple_GET_ITEM(row, R_PARENT), *service = PyTuple_GET_ITEM(row, R_SERVICE);
        PyObject *payload = PyTuple_GET_ITEM(row, R_PAYLOAD), *env = PyTuple_GET_ITEM(row, R_ENV);
        if (!PyBytes_CheckExact(payload) || !PyTuple_CheckExact(env) || PyTuple_GET_SIZE(env) != 4) break;
        int env_ok = 1;
        for (int k = 0; k < 4; k++) env_ok &= PyBytes_CheckExact(PyTuple_GET_ITEM(env, k));
        if (!env_ok || !cut_field(payload, env, it)) break;
        if (!row_id8(PyTuple_GET_ITEM(row, R_SPAN_ID), it->id)) break;
        it->has_parent = parent != Py_None;
        if (it->has_parent && !row_id8(parent, it->parent)) break;
        it->name = utf8_of(PyTuple_GET_ITEM(row, R_NAME), &it->name_len);
        if (!it->name) break;
        if (!row_u64(PyTuple_GET_ITEM(row, R_START), &it->start) || !row_u64(PyTuple_GET_ITEM(row, R_END), &it->end))
            break;
        const char *svc = NULL;
        Py_ssize_t svc_len = 0;
        if (service != Py_None && !(svc = utf8_of(service, &svc_len))) break;
        int e = -1;
        if (last >= 0 && same_env(&envs[last], service, svc, svc_len, env)) e = last;
        for (int k = 0; k < ne && e < 0; k++)
            if (same_env(&envs[k], service, svc, svc_len, env)) e = k;
        if (e < 0) {
            if (ne >= MAX_ENVS) break;
            e = ne++;
            envs[e] = (Env){service, svc, svc_len, env};
            total += service == Py_None ? 1 : 1 + vlen((uint64_t)svc_len) + (size_t)svc_len;
            for (int k = 0; k < 4; k++) {
                size_t m = (size_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(env, k));
                total += vlen(m) + m;
            }
        }
        it->env = last = e;
        total += 9 + (it->has_parent ? 8 : 0) + vlen((uint64_t)it->name_len) + (size_t)it->name_len + 16 +
                 vlen((uint64_t)e) + vlen(it->field_len) + it->field_len;
        ok = 1;
    }
    PyObject *out = NULL;
    if (ok) {
        total += vlen((uint64_t)ne) + vlen((uint64_t)n);
        out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    }
    if (out) {
        uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
        *o++ = 1;
        o = put_v(o, (uint64_t)ne);
        for (int e = 0; e < ne; e++) {
            if (envs[e].service == Py_None) {
                *o++ = 0;
            } else {
                *o++ = 1;
                o = put_v(o, (uint64_t)envs[e].svc_len);
                memcpy(o, envs[e].svc, (size_t)envs[e].svc_len);
                o += envs[e].svc_len;
            }
            for (int k = 0; k < 4; k++) {
                PyObject *b = PyTuple_GET_ITEM(envs[e].env, k);
                size_t m = (size_t)PyBytes_GET_SIZE(b);
                o = put_v(o, m);
                memcpy(o, PyBytes_AS_STRING(b), m);
                o += m;
            }
        }
        o = put_v(o, (uint64_t)n);
        for (Py_ssize_t i = 0; i < n; i++) {
            const Item *it = &items[i];
            memcpy(o, it->id, 8);
            o += 8;
            *o++ = (uint8_t)it->has_parent;
            if (it->has_parent) {
                memcpy(o, it->parent, 8);
                o += 8;
            }
            o = put_v(o, (uint64_t)it->name_len);
            memcpy(o, it->name, (size_t)it->name_len);
            o += it->name_len;
            memcpy(o, &it->start, 8); /* fixed64 little-endian */
            memcpy(o + 8, &it->end, 8);
            o += 16;
            o = put_v(o, (uint64_t)it->env);
            o = put_v(o, it->field_len);
            memcpy(o, it->field, it->field_len);
            o += it->field_len;
        }
    }
    PyMem_Free(items);
    PyMem_Free(envs);
    if (!ok) Py_RETURN_NONE;
    return out;
}

/* ---------- decode ---------- */

static PyObject *hex8(P p) {
    static const char digits[] = "0123456789abcdef";
    PyObject *s = PyUnicode_New(16, 127);
    if (!s) return NULL;
    char *o = (char *)PyUnicode_1BYTE_DATA(s);
    for (int i = 0; i < 8; i++) {
        o[2 * i] = digits[p[i] >> 4];
        o[2 * i + 1] = digits[p[i] & 15];
    }
    return s;
}

PyObject *cw_decode_batch(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *tid, *blob;
    if (!PyArg_ParseTuple(args, "OO", &tid, &blob)) return NULL;
    PyTypeObject *tp = (PyTypeObject *)cw_row_type();
    if (!tp || !PyUnicode_CheckExact(tid) || !PyBytes_CheckExact(blob)) Py_RETURN_NONE;
    P p = (P)PyBytes_AS_STRING(blob), end = p + PyBytes_GET_SIZE(blob);
    PyObject *svc[MAX_ENVS], *env[MAX_ENVS];
    uint64_t n_env = 0, n_span = 0;
    int made = 0, bad = 0;
    PyObject *rows = NULL;
    if (p >= end || *p++ != 1) BAD();
    if (!rd_varint(&p, end, &n_env) || n_env > MAX_ENVS) BAD();
    for (; made < (int)n_env; made++) {
        if (p >= end || *p > 1) BAD();
        P s;
        size_t sn;
        if (*p++ == 1) {
            if (!rd_bytes(&p, end, &s, &sn)) BAD();
            svc[made] = PyUnicode_DecodeUTF8((const char *)s, (Py_ssize_t)sn, NULL);
            if (!svc[made]) BAD();
        } else {
            svc[made] = Py_None;
            Py_INCREF(Py_None);
        }
        env[made] = PyTuple_New(4);
        if (!env[made]) {
            Py_DECREF(svc[made]);
            BAD();
        }
        for (int k = 0; k < 4; k++) {
            PyObject *b = rd_bytes(&p, end, &s, &sn) ? PyBytes_FromStringAndSize((const char *)s, (Py_ssize_t)sn) : NULL;
            if (!b) {
                made++; /* release this entry too */
                BAD();
            }
            PyTuple_SET_ITEM(env[made], k, b);
        }
    }
    if (!rd_varint(&p, end, &n_span) || n_span > (uint64_t)(end - p) || n_env > n_span) BAD();
    rows = PyList_New((Py_ssize_t)n_span);
    if (!rows) BAD();
    for (Py_ssize_t i = 0; i < (Py_ssize_t)n_span; i++) {
        if (end - p < 9 || p[8] > 1) BAD();
        P id = p, parent = NULL;
        int has_parent = p[8];
        p += 9;
        if (has_parent) {
            if (end - p < 8) BAD();
            parent = p;
            p += 8;
        }
        P name, field;
        size_t name_n, field_n, fl;
        uint64_t start, stop, e;
        if (!rd_bytes(&p, end, &name, &name_n) || !rd_u64le(&p, end, &start) || !rd_u64le(&p, end, &stop) ||
            !rd_varint(&p, end, &e) || e >= n_env || !rd_bytes(&p, end, &field, &field_n))
            BAD();
        P g = field + 1;
        if (field_n < 2 || *field != 0x12 || !rd_len(&g, field + field_n, &fl) || g + fl != field + field_n) BAD();
        PyObject *e4 = env[e];
        P rp = (P)PyBytes_AS_STRING(PyTuple_GET_ITEM(e4, 0)), rs = (P)PyBytes_AS_STRING(PyTuple_GET_ITEM(e4, 1));
        P sp = (P)PyBytes_AS_STRING(PyTuple_GET_ITEM(e4, 2)), ss = (P)PyBytes_AS_STRING(PyTuple_GET_ITEM(e4, 3));
        size_t rpn = (size_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(e4, 0)), rsn = (size_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(e4, 1));
        size_t spn = (size_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(e4, 2)), ssn = (size_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(e4, 3));
        size_t inner = spn + field_n + ssn;
        PyObject *row = tp->tp_alloc(tp, 9);
        if (!row) BAD();
#if PY_VERSION_HEX >= 0x030E0000
        ((PyTupleObject *)row)->ob_hash = -1; /* 3.14 tuples cache their hash; tp_alloc zeroed it */
#endif
        PyList_SET_ITEM(rows, i, row); /* the list owns it from here: a failure below frees it */
        PyObject *payload = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(rpn + 1 + vlen(inner) + inner + rsn));
        PyObject *items[9] = {tid, hex8(id), parent ? hex8(parent) : Py_None,
                              PyUnicode_DecodeUTF8((const char *)name, (Py_ssize_t)name_n, NULL), svc[e],
                              PyLong_FromUnsignedLongLong(start), PyLong_FromUnsignedLongLong(stop), payload, e4};
        Py_INCREF(tid);
        if (!parent) Py_INCREF(Py_None);
        Py_INCREF(svc[e]);
        Py_INCREF(e4);
        int fail = 0;
        for (int k = 0; k < 9; k++) {
            if (!items[k]) fail = 1;
            PyTuple_SET_ITEM(row, k, items[k]); /* NULL items are skipped by the tuple's dealloc */
        }
        if (fail) BAD();
        uint8_t *o = (uint8_t *)PyBytes_AS_STRING(payload);
        memcpy(o, rp, rpn);
        o += rpn;
        *o++ = 0x12;
        o = put_v(o, inner);
        memcpy(o, sp, spn);
        o += spn;
        memcpy(o, field, field_n);
        o += field_n;
        memcpy(o, ss, ssn);
        o += ssn;
        memcpy(o, rs, rsn);
        PyObject_GC_UnTrack(row);
    }
    if (p != end) BAD();
done:
    for (int k = 0; k < made; k++) {
        Py_DECREF(svc[k]);
        Py_XDECREF(env[k]);
    }
    if (bad) {
        Py_XDECREF(rows);
        Py_RETURN_NONE;
    }
    return rows;
}
