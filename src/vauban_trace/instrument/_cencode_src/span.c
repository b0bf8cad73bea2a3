/* span.c: one SDK span (ReadableSpan) as an OTLP Span message, with its attributes, events,
 * links and status, field for field what the official encoder's _encode_span builds and upb
 * serialises (fields in number order, proto3 defaults left out, oneof members and set
 * submessages always written). Anything else declines (see cencode.h). */
#include "cencode.h"

/* str -> UTF-8 field; optional: None and "" write nothing (a plain proto3 string field). */
int ce_str_field(Buf *b, uint32_t field, PyObject *s, int optional) {
    if (s == Py_None && optional) return 0;
    if (!PyUnicode_Check(s)) return -1;
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(s, &n);
    if (u == NULL) return -1; /* lone surrogates: protobuf refuses them too */
    if (n == 0 && optional) return 0;
    return ce_bytes_field(b, field, u, (size_t)n);
}

/* A Python int in [lo, hi] (unsigned 64-bit when unsig). */
static int get_u64(PyObject *o, uint64_t max, uint64_t *out) {
    if (!PyLong_Check(o) || PyBool_Check(o)) return -1;
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    if ((uint64_t)v > max) return -1;
    *out = (uint64_t)v;
    return 0;
}

static int attr_u64(PyObject *obj, PyObject *name, uint64_t max, int none_ok, uint64_t *out) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL) return -1;
    int rc;
    if (v == Py_None && none_ok) {
        *out = 0;
        rc = 0;
    } else {
        rc = get_u64(v, max, out);
    }
    Py_DECREF(v);
    return rc;
}

static int any_value(Buf *b, uint32_t field, PyObject *v, int depth, int level);

static int key_value(Buf *b, uint32_t field, PyObject *key, PyObject *value, int depth, int level) {
    size_t body = ce_begin(b, field);
    if (body == (size_t)-1 || ce_str_field(b, 1, key, 1) < 0) return -1;
    if (any_value(b, 2, value, depth, level) < 0) return -1;
    return ce_end(b, body);
}

/* AnyValue as _encode_value picks its member: None, bool, str, int, float, bytes, list/tuple, dict.
 *
 * No user code runs here: scalars (subclasses included: np.float64, np.str_) are read at the C
 * level, as upb reads them for the official encoder (PyUnicode_AsUTF8AndSize, PyLong_AsLongLong,
 * PyFloat_AS_DOUBLE, the bytes buffer: none calls __str__/__index__/__float__); containers must be
 * exactly list, tuple or dict, and a dict's keys exactly str, since a subclass's __iter__ /
 * items() or a key's __str__ would run user code (twice, once more in the official encoder after
 * a decline; and it may change what is being walked). Everything else declines. So the walk is
 * atomic under the GIL: no other thread runs while a container is read. */
static int any_value(Buf *b, uint32_t field, PyObject *v, int depth, int level) {
    if (depth > CE_MAX_DEPTH || level > CE_MAX_LEVEL) return -1;
    size_t body = ce_begin(b, field);
    if (body == (size_t)-1) return -1;
    if (v == Py_None) {
        /* empty AnyValue */
    } else if (PyBool_Check(v)) {
        if (ce_uint_field(b, 2, v == Py_True) < 0) return -1;
    } else if (PyUnicode_Check(v)) {
        if (ce_str_field(b, 1, v, 0) < 0) return -1;
    } else if (PyLong_Check(v)) {
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow || (x == -1 && PyErr_Occurred())) return -1;
        if (ce_uint_field(b, 3, (uint64_t)x) < 0) return -1;
    } else if (PyFloat_Check(v)) {
        double d = PyFloat_AS_DOUBLE(v);
        uint64_t bits;
        memcpy(&bits, &d, 8);
        if (ce_fixed64(b, 4, bits) < 0) return -1;
    } else if (PyBytes_Check(v)) {
        if (ce_bytes_field(b, 7, PyBytes_AS_STRING(v), (size_t)PyBytes_GET_SIZE(v)) < 0) return -1;
    } else if (PyList_CheckExact(v) || PyTuple_CheckExact(v)) {
        size_t arr = ce_begin(b, 5);
        if (arr == (size_t)-1) return -1;
        PyObject *seq = PySequence_Fast(v, "sequence");
        if (seq == NULL) return -1;
        /* The size is read again for every item and each item is owned while it is written: a
         * list can change under any code that runs meanwhile. */
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
            PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
            Py_INCREF(item);
            int rc = any_value(b, 1, item, depth + 1, level + 2); /* ArrayValue, AnyValue */
            Py_DECREF(item);
            if (rc < 0) {
                Py_DECREF(seq);
                return -1;
            }
        }
        Py_DECREF(seq);
        if (ce_end(b, arr) < 0) return -1;
    } else if (PyDict_CheckExact(v)) {
        size_t kvl = ce_begin(b, 6);
        if (kvl == (size_t)-1) return -1;
        Py_ssize_t pos = 0;
        PyObject *k, *val;
        Py_ssize_t size = PyDict_GET_SIZE(v);
        while (PyDict_Next(v, &pos, &k, &val)) {
            if (!PyUnicode_CheckExact(k)) return -1; /* str(k) is k only for an exact str */
            Py_INCREF(k);
            Py_INCREF(val);
            int rc = key_value(b, 1, k, val, depth + 1, level + 3); /* KeyValueList, KeyValue, AnyValue */
            Py_DECREF(val);
            Py_DECREF(k);
            if (rc < 0 || PyDict_GET_SIZE(v) != size) return -1;
        }
        if (ce_end(b, kvl) < 0) return -1;
    } else {
        return -1; /* other sequences / mappings, or a type the official encoder drops */
    }
    return ce_end(b, body);
}

static int dict_attributes(Buf *b, uint32_t field, PyObject *d, int level) {
    Py_ssize_t pos = 0, size = PyDict_GET_SIZE(d);
    PyObject *k, *v;
    while (PyDict_Next(d, &pos, &k, &v)) {
        if (!PyUnicode_Check(k)) return -1;
        Py_INCREF(k);
        Py_INCREF(v);
        int rc = key_value(b, field, k, v, 0, level);
        Py_DECREF(v);
        Py_DECREF(k);
        if (rc < 0 || PyDict_GET_SIZE(d) != size) return -1;
    }
    return 0;
}

/* BoundedAttributes, exactly (a subclass may iterate otherwise): its _dict, which its items()
 * walks. Its writers change _dict under its lock, which the official encoder's iteration takes and
 * this walk does not: it runs no Python code, so no other thread runs while it reads, and on
 * CPython 3.11 a writer never yields the GIL between its steps (tested with a writer thread in
 * test_instrument_encode_safety). On a free-threaded CPython this still holds: the module does not
 * declare that it runs without the GIL (no PyUnstable_Module_SetGIL), so importing it turns the
 * GIL back on. Declaring it would need this walk to take the lock. 1: not read that way (the
 * generic path reads it). */
static int bounded_attributes(Buf *b, uint32_t field, PyObject *attrs, int level) {
    PyObject *inner = PyObject_GetAttr(attrs, ce_s__dict);
    if (inner == NULL) return -1;
    int rc = PyDict_CheckExact(inner) ? dict_attributes(b, field, inner, level) : 1;
    Py_DECREF(inner);
    return rc;
}

/* Repeated KeyValue of an attributes mapping (None, dict, BoundedAttributes or any mapping), in
 * its items() order, as _encode_attributes reads it: `if not attributes`, then items(). level:
 * the depth of each value's AnyValue below the ResourceSpans (see CE_MAX_LEVEL). */
int ce_attributes(Buf *b, uint32_t field, PyObject *attrs, int level) {
    if (attrs == Py_None) return 0;
    if (PyDict_CheckExact(attrs)) return dict_attributes(b, field, attrs, level);
    if (Py_TYPE(attrs) == ce_t_bounded_attributes) {
        int rc = bounded_attributes(b, field, attrs, level);
        if (rc <= 0) return rc;
    }
    int truth = PyObject_IsTrue(attrs);
    if (truth <= 0) return truth;
    PyObject *items = PyMapping_Items(attrs); /* a new list (of the items() it calls): ours */
    if (items == NULL) return -1;
    int rc = 0;
    for (Py_ssize_t i = 0; rc == 0 && i < PyList_GET_SIZE(items); i++) {
        PyObject *kv = PyList_GET_ITEM(items, i);
        rc = PyTuple_Check(kv) && PyTuple_GET_SIZE(kv) == 2 && PyUnicode_Check(PyTuple_GET_ITEM(kv, 0))
                 ? key_value(b, field, PyTuple_GET_ITEM(kv, 0), PyTuple_GET_ITEM(kv, 1), 0, level)
                 : -1;
    }
    Py_DECREF(items);
    return rc;
}

static int attr_attributes(Buf *b, uint32_t field, PyObject *obj, PyObject *name, int level) {
    PyObject *a = PyObject_GetAttr(obj, name);
    if (a == NULL) return -1;
    int rc = ce_attributes(b, field, a, level);
    Py_DECREF(a);
    return rc;
}

/* trace_id (16 bytes) or span_id (8 bytes), big-endian, as int.to_bytes (which refuses negative
 * and too large ids: declined); an exact int only (bool and subclasses decline). */
static int id_field(Buf *b, uint32_t field, PyObject *ctx, PyObject *name, int nbytes) {
    PyObject *v = PyObject_GetAttr(ctx, name);
    if (v == NULL) return -1;
    uint8_t out[16];
    uint64_t hi = 0, lo = 0;
    int rc = -1;
    if (!PyLong_CheckExact(v)) goto done; /* a subclass may define its own to_bytes / >> */
    if (nbytes == 8) {
        lo = PyLong_AsUnsignedLongLong(v);
        if (lo == (uint64_t)-1 && PyErr_Occurred()) goto done;
    } else {
        PyObject *h = PyNumber_Rshift(v, ce_sixty_four);
        if (h == NULL) goto done;
        hi = PyLong_AsUnsignedLongLong(h);
        Py_DECREF(h);
        if (hi == (uint64_t)-1 && PyErr_Occurred()) goto done;
        lo = PyLong_AsUnsignedLongLongMask(v);
        if (lo == (uint64_t)-1 && PyErr_Occurred()) goto done;
    }
    int k = 0;
    if (nbytes == 16)
        for (int i = 7; i >= 0; i--) out[k++] = (uint8_t)(hi >> (8 * i));
    for (int i = 7; i >= 0; i--) out[k++] = (uint8_t)(lo >> (8 * i));
    rc = ce_bytes_field(b, field, out, (size_t)nbytes);
done:
    Py_DECREF(v);
    return rc;
}

/* 0x100 (has is_remote) | 0x200 when the context is remote. */
static int context_flags(PyObject *ctx, uint32_t *flags) {
    *flags = 0x100;
    if (ctx == Py_None) return 0;
    int truth = PyObject_IsTrue(ctx);
    if (truth < 0) return -1;
    if (!truth) return 0;
    PyObject *r = PyObject_GetAttr(ctx, ce_s_is_remote);
    if (r == NULL) return -1;
    int remote = PyObject_IsTrue(r);
    Py_DECREF(r);
    if (remote < 0) return -1;
    if (remote) *flags |= 0x200;
    return 0;
}

/* ",".join(f"{k}={v}") of a TraceState; written only when not empty. */
static int trace_state(Buf *b, PyObject *ctx) {
    PyObject *ts = PyObject_GetAttr(ctx, ce_s_trace_state);
    if (ts == NULL) return -1;
    if (ts == Py_None) {
        Py_DECREF(ts);
        return 0;
    }
    Py_ssize_t n = PyObject_Length(ts);
    if (n <= 0) {
        Py_DECREF(ts);
        return n < 0 ? -1 : 0;
    }
    PyObject *items = PyMapping_Items(ts);
    Py_DECREF(ts);
    if (items == NULL) return -1;
    PyObject *parts = PyList_New(0);
    int rc = -1;
    if (parts == NULL) goto done;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *kv = PyList_GET_ITEM(items, i);
        if (!PyTuple_Check(kv) || PyTuple_GET_SIZE(kv) != 2 || !PyUnicode_CheckExact(PyTuple_GET_ITEM(kv, 0)) ||
            !PyUnicode_CheckExact(PyTuple_GET_ITEM(kv, 1)))
            goto done;
        PyObject *s = PyUnicode_FromFormat("%U=%U", PyTuple_GET_ITEM(kv, 0), PyTuple_GET_ITEM(kv, 1));
        if (s == NULL) goto done;
        int ap = PyList_Append(parts, s);
        Py_DECREF(s);
        if (ap < 0) goto done;
    }
    PyObject *sep = PyUnicode_FromString(",");
    if (sep == NULL) goto done;
    PyObject *joined = PyUnicode_Join(sep, parts);
    Py_DECREF(sep);
    if (joined == NULL) goto done;
    rc = ce_str_field(b, 3, joined, 1);
    Py_DECREF(joined);
done:
    Py_XDECREF(parts);
    Py_DECREF(items);
    return rc;
}

static int one_event(Buf *b, PyObject *ev) {
    size_t body = ce_begin(b, 11);
    if (body == (size_t)-1) return -1;
    uint64_t t, dropped;
    if (attr_u64(ev, ce_s_timestamp, UINT64_MAX, 1, &t) < 0) return -1;
    if (t && ce_fixed64(b, 1, t) < 0) return -1;
    PyObject *name = PyObject_GetAttr(ev, ce_s_name);
    if (name == NULL) return -1;
    int rc = ce_str_field(b, 2, name, 1);
    Py_DECREF(name);
    if (rc < 0 || attr_attributes(b, 3, ev, ce_s_attributes, 5) < 0) return -1; /* Span 2, Event 3, KeyValue 4 */
    if (attr_u64(ev, ce_s_dropped_attributes, UINT32_MAX, 1, &dropped) < 0) return -1;
    if (dropped && ce_uint_field(b, 4, dropped) < 0) return -1;
    return ce_end(b, body);
}

static int one_link(Buf *b, PyObject *ln) {
    size_t body = ce_begin(b, 13);
    if (body == (size_t)-1) return -1;
    PyObject *ctx = PyObject_GetAttr(ln, ce_s_context);
    if (ctx == NULL) return -1;
    uint32_t flags;
    int rc = -1;
    if (ctx != Py_None && id_field(b, 1, ctx, ce_s_trace_id, 16) == 0 && id_field(b, 2, ctx, ce_s_span_id, 8) == 0 &&
        context_flags(ctx, &flags) == 0)
        rc = 0;
    Py_DECREF(ctx);
    if (rc < 0 || attr_attributes(b, 4, ln, ce_s_attributes, 5) < 0) return -1; /* Span 2, Link 3, KeyValue 4 */
    uint64_t dropped;
    if (attr_u64(ln, ce_s_dropped_attributes, UINT32_MAX, 1, &dropped) < 0) return -1;
    if (dropped && ce_uint_field(b, 5, dropped) < 0) return -1;
    if (ce_fixed32(b, 6, flags) < 0) return -1;
    return ce_end(b, body);
}

static int status(Buf *b, PyObject *span) {
    PyObject *st = PyObject_GetAttr(span, ce_s_status);
    if (st == NULL) return -1;
    if (st == Py_None) {
        Py_DECREF(st);
        return 0;
    }
    int rc = -1;
    uint64_t code;
    PyObject *desc = NULL, *sc = NULL;
    size_t body = ce_begin(b, 15);
    if (body == (size_t)-1) goto done;
    if ((desc = PyObject_GetAttr(st, ce_s_description)) == NULL || ce_str_field(b, 2, desc, 1) < 0) goto done;
    if ((sc = PyObject_GetAttr(st, ce_s_status_code)) == NULL || attr_u64(sc, ce_s_value, INT32_MAX, 0, &code) < 0)
        goto done;
    if (code && ce_uint_field(b, 3, code) < 0) goto done;
    rc = ce_end(b, body);
done:
    Py_XDECREF(desc);
    Py_XDECREF(sc);
    Py_DECREF(st);
    return rc;
}

static int sequence_of(Buf *b, PyObject *span, PyObject *name, int (*one)(Buf *, PyObject *)) {
    PyObject *seq = PyObject_GetAttr(span, name);
    if (seq == NULL) return -1;
    PyObject *fast = PySequence_Tuple(seq); /* a snapshot that owns the events / links */
    Py_DECREF(seq);
    if (fast == NULL) return -1;
    int rc = 0;
    for (Py_ssize_t i = 0; rc == 0 && i < PyTuple_GET_SIZE(fast); i++) rc = one(b, PyTuple_GET_ITEM(fast, i));
    Py_DECREF(fast);
    return rc;
}

/* The span's own attributes. For an SDK ReadableSpan exactly, whose ``attributes`` property is a
 * read-only view of ``_attributes or {}``, _attributes is read without the view (same items, same
 * order); any other span (a subclass may override the property) is read through ``attributes``. */
static int span_attributes(Buf *b, PyObject *span) {
    return attr_attributes(b, 9, span, Py_TYPE(span) == ce_t_readable_span ? ce_s__attributes : ce_s_attributes,
                           4); /* ScopeSpans 1, Span 2, KeyValue 3 */
}

int ce_span(Buf *b, uint32_t field, PyObject *span) {
    size_t body = ce_begin(b, field);
    if (body == (size_t)-1) return -1;
    PyObject *ctx = PyObject_CallMethodNoArgs(span, ce_s_get_span_context);
    if (ctx == NULL) return -1;
    int ok = ctx != Py_None && id_field(b, 1, ctx, ce_s_trace_id, 16) == 0 && id_field(b, 2, ctx, ce_s_span_id, 8) == 0 &&
             trace_state(b, ctx) == 0;
    Py_DECREF(ctx);
    if (!ok) return -1;
    PyObject *parent = PyObject_GetAttr(span, ce_s_parent);
    if (parent == NULL) return -1;
    uint32_t flags = 0x100;
    if (parent != Py_None) {
        int truth = PyObject_IsTrue(parent);
        ok = truth >= 0 && (!truth || id_field(b, 4, parent, ce_s_span_id, 8) == 0) && context_flags(parent, &flags) == 0;
    }
    Py_DECREF(parent);
    if (!ok) return -1;
    PyObject *name = PyObject_GetAttr(span, ce_s_name);
    if (name == NULL) return -1;
    int rc = ce_str_field(b, 5, name, 1);
    Py_DECREF(name);
    if (rc < 0) return -1;
    PyObject *kind = PyObject_GetAttr(span, ce_s_kind);
    if (kind == NULL) return -1;
    uint64_t kv = 0, t;
    /* _SPAN_KIND_MAP[kind]: a SpanKind member (value 0-4) -> value + 1; anything else declines */
    rc = Py_TYPE(kind) == ce_t_span_kind ? attr_u64(kind, ce_s_value, 4, 0, &kv) : -1;
    Py_DECREF(kind);
    if (rc < 0 || ce_uint_field(b, 6, kv + 1) < 0) return -1;
    if (attr_u64(span, ce_s_start_time, UINT64_MAX, 1, &t) < 0 || (t && ce_fixed64(b, 7, t) < 0)) return -1;
    if (attr_u64(span, ce_s_end_time, UINT64_MAX, 1, &t) < 0 || (t && ce_fixed64(b, 8, t) < 0)) return -1;
    if (span_attributes(b, span) < 0) return -1;
    if (attr_u64(span, ce_s_dropped_attributes, UINT32_MAX, 0, &t) < 0 || (t && ce_uint_field(b, 10, t) < 0)) return -1;
    if (sequence_of(b, span, ce_s_events, one_event) < 0) return -1;
    if (attr_u64(span, ce_s_dropped_events, UINT32_MAX, 0, &t) < 0 || (t && ce_uint_field(b, 12, t) < 0)) return -1;
    if (sequence_of(b, span, ce_s_links, one_link) < 0) return -1;
    if (attr_u64(span, ce_s_dropped_links, UINT32_MAX, 0, &t) < 0 || (t && ce_uint_field(b, 14, t) < 0)) return -1;
    if (status(b, span) < 0 || ce_fixed32(b, 16, flags) < 0) return -1;
    return ce_end(b, body);
}
