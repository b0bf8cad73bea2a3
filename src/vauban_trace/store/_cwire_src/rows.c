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
CW_INLINE int next_ld(P *pp, P end, int *num, P *fstart, P *s, size_t *n) {
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

/* Strings shared between the rows of one split() call: the spans of a trace come together and
 * mostly share their parent, and names repeat, so equal ids and names are one str object (as
 * equal as separate ones: str is immutable). Holds a reference to each cached str. */
#define NAME_CACHE 8
#define NAME_MAX_CACHED 48
typedef struct {
    uint8_t tid[16];
    PyObject *tid_s;
    uint8_t parent[8];
    PyObject *parent_s;
    struct {
        size_t n;
        uint8_t b[NAME_MAX_CACHED];
        PyObject *s;
    } names[NAME_CACHE];
    int next_name;
} Shared;

static void shared_clear(Shared *sh) {
    Py_CLEAR(sh->tid_s);
    Py_CLEAR(sh->parent_s);
    for (int i = 0; i < NAME_CACHE; i++) Py_CLEAR(sh->names[i].s);
}

/* A new reference to the hex str of an 8- or 16-byte id, from *slot when its bytes are *key. */
CW_INLINE PyObject *shared_hex(P id, size_t n, uint8_t *key, PyObject **slot) {
    if (*slot && memcmp(key, id, n) == 0) {
        Py_INCREF(*slot);
        return *slot;
    }
    PyObject *s = hex_str(id, n);
    if (!s) return NULL;
    memcpy(key, id, n);
    Py_INCREF(s);
    Py_XSETREF(*slot, s);
    return s;
}

/* Are the n bytes at a and b equal (n <= NAME_MAX_CACHED)? Inline: names are short. */
CW_INLINE int same_bytes(P a, P b, size_t n) {
    uint64_t x, y;
    if (n < 8) {
        for (size_t i = 0; i < n; i++)
            if (a[i] != b[i]) return 0;
        return 1;
    }
    for (size_t i = 0; i + 8 < n; i += 8) {
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        if (x != y) return 0;
    }
    memcpy(&x, a + n - 8, 8);
    memcpy(&y, b + n - 8, 8);
    return x == y;
}

/* A new reference to the str of a span name (valid UTF-8, checked): the cache is searched in
 * order and filled round-robin. */
static PyObject *shared_name(Shared *sh, P p, size_t n) {
    if (n > NAME_MAX_CACHED) return PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)n, NULL);
    for (int i = 0; i < NAME_CACHE; i++) {
        if (sh->names[i].s && sh->names[i].n == n && same_bytes(sh->names[i].b, p, n)) {
            Py_INCREF(sh->names[i].s);
            return sh->names[i].s;
        }
    }
    PyObject *s = PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)n, NULL);
    if (!s) return NULL;
    int i = sh->next_name;
    sh->next_name = (i + 1) % NAME_CACHE;
    sh->names[i].n = n;
    memcpy(sh->names[i].b, p, n);
    Py_INCREF(s);
    Py_XSETREF(sh->names[i].s, s);
    return s;
}

/* A span's payload: res_prefix + LD(2, scope_prefix + LD(2, span) + scope_suffix) + res_suffix. */
static PyObject *make_payload(P rp, size_t rpn, P rs, size_t rsn, P sp, size_t spn, P ssx, size_t ssn, P s,
                              size_t n) {
    size_t ss = spn + 1 + varint_size(n) + n + ssn;
    size_t total = rpn + 1 + varint_size(ss) + ss + rsn;
    PyObject *payload = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (!payload) return NULL;
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
    return payload;
}

/* Append the row of one span to ``rows``: 1 = done, 0 = fall back (no error set), -1 = error. */
static int add_span(PyObject *rows, Shared *sh, P s, size_t n, P rp, size_t rpn, P rs, size_t rsn, P sp,
                    size_t spn, P ssx, size_t ssn, PyObject *service, PyObject *env) {
    SpanFields f;
    if (!cw_check_span(s, s + n, 1, &f)) return 0;
    /* ids and times as store._ingest.id_problem / collector._codec require them */
    if (f.trace_id_n != 16 || all_zero(f.trace_id, 16)) return 0;
    if (f.span_id_n != 8 || all_zero(f.span_id, 8)) return 0;
    if (f.parent && f.parent_n != 8) return 0;
    if (f.start >= MAX_TIME || f.end >= MAX_TIME) return 0;

    PyObject *tid = NULL, *sid = NULL, *parent = NULL, *name = NULL, *t0 = NULL, *t1 = NULL, *payload = NULL;
    tid = shared_hex(f.trace_id, 16, sh->tid, &sh->tid_s);
    sid = hex_str(f.span_id, 8);
    if (f.parent && !all_zero(f.parent, 8)) {
        parent = shared_hex(f.parent, 8, sh->parent, &sh->parent_s);
    } else {
        parent = Py_None;
        Py_INCREF(parent);
    }
    if (f.name)
        name = shared_name(sh, f.name, f.name_n);
    else
        name = PyUnicode_New(0, 0);
    t0 = PyLong_FromUnsignedLongLong(f.start);
    t1 = PyLong_FromUnsignedLongLong(f.end);
    payload = make_payload(rp, rpn, rs, rsn, sp, spn, ssx, ssn, s, n);
    if (!tid || !sid || !parent || !name || !t0 || !t1 || !payload) goto fail;

    /* the row, never tracked by the collector: its items (str, int, bytes, None, a tuple of
     * bytes) cannot form a cycle, as CPython decides itself for such tuples (and the envelope) */
    PyObject *row = (PyObject *)PyObject_GC_NewVar(PyTupleObject, (PyTypeObject *)row_type, 9);
    if (!row) goto fail;
#if PY_VERSION_HEX >= 0x030E0000
    ((PyTupleObject *)row)->ob_hash = -1; /* 3.14 tuples cache their hash: none yet */
#endif
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

/* The envelope tuple of the rows of one ScopeSpans (untracked: four bytes objects, no cycle). */
static PyObject *make_env(PyObject *res_prefix, PyObject *res_suffix, P sp, size_t spn, P sx, size_t sxn) {
    PyObject *env = PyTuple_New(4);
    if (!env) return NULL;
    PyObject *sp_b = PyBytes_FromStringAndSize((const char *)sp, (Py_ssize_t)spn);
    PyObject *sx_b = PyBytes_FromStringAndSize((const char *)sx, (Py_ssize_t)sxn);
    if (!sp_b || !sx_b) {
        Py_XDECREF(sp_b);
        Py_XDECREF(sx_b);
        Py_DECREF(env);
        return NULL;
    }
    Py_INCREF(res_prefix);
    Py_INCREF(res_suffix);
    PyTuple_SET_ITEM(env, 0, res_prefix);
    PyTuple_SET_ITEM(env, 1, res_suffix);
    PyTuple_SET_ITEM(env, 2, sp_b);
    PyTuple_SET_ITEM(env, 3, sx_b);
    PyObject_GC_UnTrack(env);
    return env;
}

/* The rows [first, len(rows)) were cut from the spans [span_first, span_end) of a ScopeSpans
 * without its schema_url: give them the payloads and envelope with the suffix [sx, sx + sxn).
 * They are new (only the list holds them), so their items are replaced in place. 1 or -1. */
static int refit_suffix(PyObject *rows, Py_ssize_t first, P span_first, P span_end, P rp, size_t rpn, P rs,
                        size_t rsn, P sp, size_t spn, P sx, size_t sxn, PyObject *res_prefix,
                        PyObject *res_suffix) {
    PyObject *env = make_env(res_prefix, res_suffix, sp, spn, sx, sxn);
    if (!env) return -1;
    P r = span_first, fstart, s;
    size_t n;
    int num;
    for (Py_ssize_t i = first; i < PyList_GET_SIZE(rows) && r < span_end; i++) {
        if (!next_ld(&r, span_end, &num, &fstart, &s, &n)) break; /* cannot fail: walked once already */
        PyObject *payload = make_payload(rp, rpn, rs, rsn, sp, spn, sx, sxn, s, n);
        if (!payload) {
            Py_DECREF(env);
            return -1;
        }
        PyObject *row = PyList_GET_ITEM(rows, i);
        Py_SETREF(((PyTupleObject *)row)->ob_item[R_PAYLOAD], payload);
        Py_INCREF(env);
        Py_SETREF(((PyTupleObject *)row)->ob_item[R_ENV], env);
    }
    Py_DECREF(env);
    return 1;
}

/* One ResourceSpans: 1 = done, 0 = fall back, -1 = error. */
static int add_resource_spans(PyObject *rows, Shared *sh, P p, P end) {
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
        /* ScopeSpans: scope = 1, spans = 2 (repeated), schema_url = 3. One pass: the spans are
         * checked and cut as they come, assuming no schema_url (the scope suffix of every
         * payload); one after them (rare) has those rows' payloads and envelope redone. */
        Py_ssize_t first_row = PyList_GET_SIZE(rows);
        PyObject *env = NULL;
        P r = ss;
        int slast = 0;
        while (r < ssend && rc == 1) {
            int sn;
            if (!next_ld(&r, ssend, &sn, &fstart, &s, &n) || sn < slast || (sn == slast && sn != 2)) {
                rc = 0;
                break;
            }
            slast = sn;
            if (sn == 1) {
                if (!cw_check_msg(T_SCOPE, s, s + n, 1, NULL)) rc = 0;
                sp = fstart;
                spn = (size_t)(r - fstart);
            } else if (sn == 2) {
                if (!env) {
                    env = make_env(res_prefix, res_suffix, sp, spn, sx, 0);
                    if (!env) {
                        rc = -1;
                        break;
                    }
                    span_first = fstart;
                }
                span_end = r;
                rc = add_span(rows, sh, s, n, rp, rpn, rs, rsn, sp, spn, sx, 0, service, env);
            } else {
                if (n == 0 || !utf8_ok(s, n)) rc = 0;
                sx = fstart;
                sxn = (size_t)(r - fstart);
            }
        }
        if (rc == 1 && env && sxn) rc = refit_suffix(rows, first_row, span_first, span_end, rp, rpn, rs, rsn, sp,
                                                     spn, sx, sxn, res_prefix, res_suffix);
        Py_XDECREF(env);
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
    /* out of the collector's sight while it fills (it holds only untracked rows): the
     * collections the row allocations trigger need not walk it */
    if (rows) PyObject_GC_UnTrack(rows);
    Shared sh;
    memset(&sh, 0, sizeof sh);
    while (p < end && rc == 1) {
        int num;
        P fstart, s;
        size_t n;
        if (!next_ld(&p, end, &num, &fstart, &s, &n) || num != 1) {
            rc = 0;
            break;
        }
        rc = add_resource_spans(rows, &sh, s, s + n);
    }
    shared_clear(&sh);
    PyBuffer_Release(&buf);
    if (rc == 1) {
        PyObject_GC_Track(rows);
        return rows;
    }
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
    {"group_rows", cw_group_rows, METH_O, "group_rows(rows) -> (groups, superseded, duplicates) | None (ingest.c)."},
    {"new_traces", cw_new_traces, METH_VARARGS, "new_traces(groups, snapshots) -> (blobs, nbytes, datas) | None (ingest.c)."},
    {"bookkeeping", cw_bookkeeping, METH_VARARGS, "bookkeeping(trace_id, rows, now) -> tuple | None (ingest.c)."},
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
