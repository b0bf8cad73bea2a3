/* module.c: the _cencode extension. ``encode_spans(spans)`` returns the serialized
 * ExportTraceServiceRequest of a sequence of SDK ReadableSpans, the bytes
 * ``opentelemetry.exporter.otlp.proto.common.trace_encoder.encode_spans(spans).SerializeToString()``
 * gives, or None when it declines (see cencode.h): the caller then uses the official encoder.
 *
 * Grouping: spans are grouped by resource, then by instrumentation scope, groups in order of first
 * appearance, as the official encoder's dicts do: a span joins a group whose resource (scope) is
 * the same object, or has the same hash and compares equal (a dict's lookup: Resource({"n": 1})
 * == Resource({"n": True}) but their hashes differ, so they are two groups). The hash of each
 * distinct object is computed once per batch, not once per span as the dict does (Resource hashes
 * a JSON dump of its attributes: most of what this module saves); a batch's spans nearly always
 * share their provider's one Resource and their tracer's one scope.
 */
#include "cencode.h"

PyObject *ce_s_attributes, *ce_s__attributes, *ce_s__dict, *ce_s_name, *ce_s_version, *ce_s_schema_url,
    *ce_s_resource, *ce_s_instrumentation_scope, *ce_s_trace_id, *ce_s_span_id, *ce_s_trace_state,
    *ce_s_is_remote, *ce_s_parent, *ce_s_kind, *ce_s_value, *ce_s_start_time, *ce_s_end_time, *ce_s_events,
    *ce_s_links, *ce_s_status, *ce_s_status_code, *ce_s_description, *ce_s_dropped_attributes,
    *ce_s_dropped_events, *ce_s_dropped_links, *ce_s_timestamp, *ce_s_context, *ce_s_items,
    *ce_s_get_span_context, *ce_sixty_four;
PyTypeObject *ce_t_bounded_attributes, *ce_t_readable_span, *ce_t_span_kind;

/* Protobuf refuses to serialize a message over 2 GiB (upb: a length over INT32_MAX; the official
 * encoder then drops the attribute or raises): a request longer than this is declined, and the
 * buffer never grows past it (plus the few bytes a reservation asks beyond what it writes). Tests
 * lower it with _set_max_size. */
static size_t ce_max_size = INT32_MAX;
#define CE_SLACK 32

int ce_grow(Buf *b, size_t need) {
    if (need > ce_max_size + CE_SLACK || b->len > ce_max_size + CE_SLACK - need) return -1;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + need) cap *= 2; /* <= 2 * (INT32_MAX + CE_SLACK): no overflow */
    if (cap > ce_max_size + CE_SLACK) cap = ce_max_size + CE_SLACK;
    uint8_t *d = PyMem_Realloc(b->data, cap);
    if (d == NULL) return -1;
    b->data = d;
    b->cap = cap;
    return 0;
}

int ce_end(Buf *b, size_t body) {
    if (body == (size_t)-1 || body > b->len) return -1;
    size_t n = b->len - body;
    if (n < 0x80) {
        b->data[body - 1] = (uint8_t)n;
        return 0;
    }
    uint8_t tmp[10];
    int k = 0;
    uint64_t v = n;
    while (v >= 0x80) {
        tmp[k++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    tmp[k++] = (uint8_t)v;
    if (ce_reserve(b, (size_t)(k - 1)) < 0) return -1;
    memmove(b->data + body + k - 1, b->data + body, n);
    memcpy(b->data + body - 1, tmp, (size_t)k);
    b->len += (size_t)(k - 1);
    return 0;
}

/* Index of key in keys, as the official encoder's dict finds it: the same object, or an equal one
 * of the same hash (hashes[i]: hash(keys[i]), a Python int); appended when absent; -1 on error.
 * keys and hashes are private lists: the __hash__ / __eq__ that run here cannot change them. */
static Py_ssize_t group_index(PyObject *keys, PyObject *hashes, PyObject *key, int *added) {
    Py_ssize_t n = PyList_GET_SIZE(keys);
    *added = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (PyList_GET_ITEM(keys, i) == key) return i;
    Py_hash_t h = PyObject_Hash(key); /* unhashable: the dict raises, the official encoder too */
    if (h == -1 && PyErr_Occurred()) return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyLong_AsSsize_t(PyList_GET_ITEM(hashes, i)) != h) continue;
        int eq = PyObject_RichCompareBool(PyList_GET_ITEM(keys, i), key, Py_EQ);
        if (eq < 0) return -1;
        if (eq) return i;
    }
    PyObject *hv = PyLong_FromSsize_t(h);
    int rc = hv == NULL || PyList_Append(hashes, hv) < 0 || PyList_Append(keys, key) < 0 ? -1 : 0;
    Py_XDECREF(hv);
    if (rc < 0) return -1;
    *added = 1;
    return n;
}

static int scope_message(Buf *b, PyObject *scope) {
    size_t body = ce_begin(b, 1);
    if (body == (size_t)-1) return -1;
    if (scope != Py_None) {
        PyObject *name = PyObject_GetAttr(scope, ce_s_name), *version = NULL, *attrs = NULL;
        int ok = name != NULL && ce_str_field(b, 1, name, 1) == 0 &&
                 (version = PyObject_GetAttr(scope, ce_s_version)) != NULL && ce_str_field(b, 2, version, 1) == 0 &&
                 (attrs = PyObject_GetAttr(scope, ce_s_attributes)) != NULL && ce_attributes(b, 3, attrs, 4) == 0; /* ScopeSpans 1, scope 2, KeyValue 3 */
        Py_XDECREF(name);
        Py_XDECREF(version);
        Py_XDECREF(attrs);
        if (!ok) return -1;
    }
    return ce_end(b, body);
}

static int schema_url(Buf *b, uint32_t field, PyObject *obj) {
    if (obj == Py_None) return 0;
    PyObject *url = PyObject_GetAttr(obj, ce_s_schema_url);
    if (url == NULL) return -1;
    int rc = ce_str_field(b, field, url, 1);
    Py_DECREF(url);
    return rc;
}

/* resources: [resource]; scopes: [[scope] per resource]; members: [[[span] per scope] per resource]. */
static int write_request(Buf *b, PyObject *resources, PyObject *scopes, PyObject *members) {
    for (Py_ssize_t r = 0; r < PyList_GET_SIZE(resources); r++) {
        PyObject *resource = PyList_GET_ITEM(resources, r);
        size_t rs = ce_begin(b, 1);
        size_t res = ce_begin(b, 1);
        if (rs == (size_t)-1 || res == (size_t)-1) return -1;
        PyObject *attrs = PyObject_GetAttr(resource, ce_s_attributes);
        if (attrs == NULL) return -1;
        int rc = ce_attributes(b, 1, attrs, 3); /* Resource 1, KeyValue 2 */
        Py_DECREF(attrs);
        if (rc < 0 || ce_end(b, res) < 0) return -1;
        PyObject *rscopes = PyList_GET_ITEM(scopes, r), *rmembers = PyList_GET_ITEM(members, r);
        for (Py_ssize_t s = 0; s < PyList_GET_SIZE(rscopes); s++) {
            PyObject *scope = PyList_GET_ITEM(rscopes, s), *spans = PyList_GET_ITEM(rmembers, s);
            size_t ss = ce_begin(b, 2);
            if (ss == (size_t)-1 || scope_message(b, scope) < 0) return -1;
            for (Py_ssize_t i = 0; i < PyList_GET_SIZE(spans); i++)
                if (ce_span(b, 2, PyList_GET_ITEM(spans, i)) < 0) return -1;
            if (schema_url(b, 3, scope) < 0 || ce_end(b, ss) < 0) return -1;
        }
        if (schema_url(b, 3, resource) < 0 || ce_end(b, rs) < 0) return -1;
    }
    return 0;
}

/* fast: the private list of spans (see encode_spans): it owns every span while they are read.
 * hashes: [[hash(resource) per resource], [[hash(scope) per scope] per resource]]. */
static int group(PyObject *fast, PyObject *resources, PyObject *scopes, PyObject *members, PyObject *hashes) {
    PyObject *rhashes = PyList_GET_ITEM(hashes, 0), *shashes = PyList_GET_ITEM(hashes, 1);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(fast); i++) {
        PyObject *span = PyList_GET_ITEM(fast, i);
        PyObject *resource = PyObject_GetAttr(span, ce_s_resource);
        if (resource == NULL) return -1;
        PyObject *scope = PyObject_GetAttr(span, ce_s_instrumentation_scope);
        if (scope == NULL) {
            Py_DECREF(resource);
            return -1;
        }
        int truth = PyObject_IsTrue(scope); /* `instrumentation_scope or None` */
        if (truth <= 0) {
            Py_DECREF(scope);
            if (truth < 0) {
                Py_DECREF(resource);
                return -1;
            }
            scope = Py_NewRef(Py_None);
        }
        int added = 0, rc = -1;
        Py_ssize_t r = group_index(resources, rhashes, resource, &added), s;
        if (r < 0) goto next;
        if (added) {
            PyObject *a = PyList_New(0), *m = PyList_New(0), *h = PyList_New(0);
            int ok = a != NULL && m != NULL && h != NULL && PyList_Append(scopes, a) == 0 &&
                     PyList_Append(members, m) == 0 && PyList_Append(shashes, h) == 0;
            Py_XDECREF(a);
            Py_XDECREF(m);
            Py_XDECREF(h);
            if (!ok) goto next;
        }
        s = group_index(PyList_GET_ITEM(scopes, r), PyList_GET_ITEM(shashes, r), scope, &added);
        if (s < 0) goto next;
        if (added) {
            PyObject *l = PyList_New(0);
            int ok = l != NULL && PyList_Append(PyList_GET_ITEM(members, r), l) == 0;
            Py_XDECREF(l);
            if (!ok) goto next;
        }
        rc = PyList_Append(PyList_GET_ITEM(PyList_GET_ITEM(members, r), s), span);
    next:
        Py_DECREF(resource);
        Py_DECREF(scope);
        if (rc < 0) return -1;
    }
    return 0;
}

static PyObject *encode_spans(PyObject *self, PyObject *spans) {
    /* A private copy of the batch: code that runs while the spans are read (a property of a span
     * subclass, a resource's __eq__) cannot shrink or free what is being walked. */
    PyObject *fast = PySequence_List(spans);
    if (fast == NULL) return NULL;
    PyObject *resources = PyList_New(0), *scopes = PyList_New(0), *members = PyList_New(0);
    PyObject *hashes = Py_BuildValue("[[][]]");
    Buf b = {NULL, 0, 0};
    PyObject *out = NULL;
    if (resources != NULL && scopes != NULL && members != NULL && hashes != NULL &&
        group(fast, resources, scopes, members, hashes) == 0 &&
        ce_reserve(&b, 1) == 0 && write_request(&b, resources, scopes, members) == 0 && b.len <= ce_max_size)
        out = PyBytes_FromStringAndSize((const char *)b.data, (Py_ssize_t)b.len);
    PyMem_Free(b.data);
    Py_XDECREF(resources);
    Py_XDECREF(scopes);
    Py_XDECREF(members);
    Py_XDECREF(hashes);
    Py_DECREF(fast);
    if (out == NULL) { /* declined: the official encoder takes the batch */
        /* ...unless code that ran here raised KeyboardInterrupt / SystemExit (a signal handler in the
         * main thread, a span property): not an encoding problem, the caller's to see */
        if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception)) return NULL;
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return out;
}

/* _set_max_size(n) -> the previous limit: for tests (n in [0, INT32_MAX]). */
static PyObject *set_max_size(PyObject *self, PyObject *arg) {
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 0 || n > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "_set_max_size: the limit must be in [0, 2**31 - 1]");
        return NULL;
    }
    size_t old = ce_max_size;
    ce_max_size = (size_t)n;
    return PyLong_FromSize_t(old);
}

static PyMethodDef methods[] = {
    {"encode_spans", encode_spans, METH_O,
     "encode_spans(spans) -> bytes | None: the serialized ExportTraceServiceRequest of SDK spans, "
     "byte for byte what the official OTLP encoder produces; None when declined."},
    {"_set_max_size", set_max_size, METH_O,
     "_set_max_size(n) -> int: sets the longest request encoded (default and maximum 2**31 - 1, "
     "protobuf's limit; longer ones are declined) and returns the previous one. For tests."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_cencode", "OTLP span encoder (C)", -1, methods, NULL, NULL, NULL, NULL};

static PyTypeObject *import_type(const char *module, const char *name) {
    PyObject *m = PyImport_ImportModule(module);
    if (m == NULL) return NULL;
    PyObject *t = PyObject_GetAttrString(m, name);
    Py_DECREF(m);
    if (t != NULL && !PyType_Check(t)) {
        PyErr_Format(PyExc_ImportError, "_cencode: %s.%s is not a type", module, name);
        Py_CLEAR(t);
    }
    return (PyTypeObject *)t; /* kept for the life of the process */
}

#define INTERN(var, text) \
    if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL;

PyMODINIT_FUNC PyInit__cencode(void) {
    INTERN(ce_s_attributes, "attributes");
    INTERN(ce_s__attributes, "_attributes");
    INTERN(ce_s__dict, "_dict");
    INTERN(ce_s_name, "name");
    INTERN(ce_s_version, "version");
    INTERN(ce_s_schema_url, "schema_url");
    INTERN(ce_s_resource, "resource");
    INTERN(ce_s_instrumentation_scope, "instrumentation_scope");
    INTERN(ce_s_trace_id, "trace_id");
    INTERN(ce_s_span_id, "span_id");
    INTERN(ce_s_trace_state, "trace_state");
    INTERN(ce_s_is_remote, "is_remote");
    INTERN(ce_s_parent, "parent");
    INTERN(ce_s_kind, "kind");
    INTERN(ce_s_value, "value");
    INTERN(ce_s_start_time, "start_time");
    INTERN(ce_s_end_time, "end_time");
    INTERN(ce_s_events, "events");
    INTERN(ce_s_links, "links");
    INTERN(ce_s_status, "status");
    INTERN(ce_s_status_code, "status_code");
    INTERN(ce_s_description, "description");
    INTERN(ce_s_dropped_attributes, "dropped_attributes");
    INTERN(ce_s_dropped_events, "dropped_events");
    INTERN(ce_s_dropped_links, "dropped_links");
    INTERN(ce_s_timestamp, "timestamp");
    INTERN(ce_s_context, "context");
    INTERN(ce_s_items, "items");
    INTERN(ce_s_get_span_context, "get_span_context");
    if ((ce_sixty_four = PyLong_FromLong(64)) == NULL) return NULL;
    if ((ce_t_bounded_attributes = import_type("opentelemetry.attributes", "BoundedAttributes")) == NULL ||
        (ce_t_readable_span = import_type("opentelemetry.sdk.trace", "ReadableSpan")) == NULL ||
        (ce_t_span_kind = import_type("opentelemetry.trace", "SpanKind")) == NULL)
        return NULL;
    return PyModule_Create(&moduledef);
}
