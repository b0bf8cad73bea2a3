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
 *
 * This file walks the outer messages (request, ResourceSpans, ScopeSpans), builds the rows and
 * defines the module (split, configure, PyInit__cwire); the canonical checks are in canonical.c,
 * the shared wire readers in cwire.h.
 */
#include "cwire.h"

#define MAX_TIME 0x8000000000000000ULL

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
    if (!cw_check_msg(T_SPAN, s, s + n, 1, &cap)) return 0;
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
            if (!cw_check_msg(T_RESOURCE, s, s + n, 1, NULL)) return 0;
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
                if (!cw_check_msg(T_SCOPE, s, s + n, 1, NULL)) {
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

PyObject *cw_row_type(void) { return row_type; }

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
    {"snapshot", cw_snapshot, METH_O, "snapshot(rows) -> bytes | None: one trace's rows as serialized TracesData."},
    {"encode_batch", cw_encode_batch, METH_O, "encode_batch(rows) -> bytes | None: store._batch's blob of one trace's rows."},
    {"decode_batch", cw_decode_batch, METH_VARARGS, "decode_batch(trace_id, blob) -> list[SpanRow] | None."},
    {"match_batch", cw_match_batch, METH_VARARGS, "match_batch(trace_id, blob, incoming) -> (count, {id: equal}) | None."},
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
