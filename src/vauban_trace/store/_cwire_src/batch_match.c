/* match_batch in C: which incoming span ids a stored span batch holds, and with equal payloads.
 *
 * The store's write path for a trace it already holds (late spans, client retries) needs, per
 * incoming span id, whether a stored copy exists and whether its payload is the same; building
 * every stored row (decode_batch) for that costs a string, an int and a payload per stored span.
 * This scans the blob once with no allocation per stored span: the incoming ids go into a small
 * open-addressing table of their 8 id bytes, and a stored span whose id is there has its payload
 * compared with the incoming one piece by piece (rebuilt virtually from its envelope entry and
 * field). Format: store/_batch.py's docstring; the helpers are in cwire.h.
 */
#include "cwire.h"

/* match_batch(trace_id, blob, incoming) -> (span count, {span_id: stored payload == incoming payload})
 * for the span ids of ``incoming`` (dict span_id -> SpanRow) present in ``blob``, or None: exactly
 * store._batch.match_batch_py, without building the stored rows. The blob is checked as
 * decode_batch checks it (UTF-8 included); None for anything the reference might raise on. */
PyObject *cw_match_batch(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *tid, *blob, *incoming;
    if (!PyArg_ParseTuple(args, "OOO", &tid, &blob, &incoming)) return NULL;
    if (!PyUnicode_CheckExact(tid) || !PyBytes_CheckExact(blob) || !PyDict_CheckExact(incoming)) Py_RETURN_NONE;
    /* the result dict first: a collection at this tracked allocation can run a finalizer that
     * changes ``incoming``, whose keys and payloads are borrowed below (none allocated after) */
    PyObject *found = PyDict_New();
    if (!found) return NULL;
    Py_ssize_t k = PyDict_GET_SIZE(incoming), cap = 8;
    while (cap < 2 * k) cap *= 2;
    uint64_t *keys = PyMem_Malloc(sizeof(uint64_t) * (size_t)cap);
    Py_ssize_t *slot = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)cap);
    PyObject **ids = PyMem_Malloc(sizeof(PyObject *) * (size_t)(k ? k : 1));
    PyObject **pay = PyMem_Malloc(sizeof(PyObject *) * (size_t)(k ? k : 1));
    signed char *res = PyMem_Malloc((size_t)(k ? k : 1));
    PyObject *out = NULL;
    int bad = 0;
    if (!keys || !slot || !ids || !pay || !res) {
        PyErr_NoMemory();
        goto end;
    }
    for (Py_ssize_t i = 0; i < cap; i++) slot[i] = -1;
    Py_ssize_t pos = 0, j = 0;
    PyObject *key, *val;
    while (PyDict_Next(incoming, &pos, &key, &val)) {
        uint8_t b[8];
        uint64_t h;
        if (!id_bytes(key, b) || !PyTuple_Check(val) || PyTuple_GET_SIZE(val) != 9 ||
            !PyBytes_CheckExact(PyTuple_GET_ITEM(val, R_PAYLOAD))) {
            bad = 1;
            goto end;
        }
        memcpy(&h, b, 8);
        Py_ssize_t s = (Py_ssize_t)((h * 0x9E3779B97F4A7C15ULL) >> 32) & (cap - 1);
        while (slot[s] >= 0) s = (s + 1) & (cap - 1);
        slot[s] = j;
        keys[s] = h;
        ids[j] = key;
        pay[j] = PyTuple_GET_ITEM(val, R_PAYLOAD);
        res[j++] = -1;
    }
    P p = (P)PyBytes_AS_STRING(blob), end = p + PyBytes_GET_SIZE(blob);
    P ep[MAX_ENVS][4];
    size_t en[MAX_ENVS][4];
    uint64_t n_env, n_span;
    if (p >= end || *p++ != 1 || !rd_varint(&p, end, &n_env) || n_env > MAX_ENVS) BAD();
    for (uint64_t e = 0; e < n_env; e++) {
        P s;
        size_t sn;
        if (p >= end || *p > 1) BAD();
        if (*p++ == 1 && (!rd_bytes(&p, end, &s, &sn) || !utf8_ok(s, sn))) BAD();
        for (int q = 0; q < 4; q++)
            if (!rd_bytes(&p, end, &ep[e][q], &en[e][q])) BAD();
    }
    if (!rd_varint(&p, end, &n_span) || n_span > (uint64_t)(end - p) || n_env > n_span) BAD();
    for (uint64_t i = 0; i < n_span; i++) {
        if (end - p < 9 || p[8] > 1) BAD();
        P id = p;
        p += 9;
        if (id[8]) {
            if (end - p < 8) BAD();
            p += 8;
        }
        P name, field;
        size_t name_n, field_n, fl;
        uint64_t t, e;
        if (!rd_bytes(&p, end, &name, &name_n) || !utf8_ok(name, name_n) || !rd_u64le(&p, end, &t) ||
            !rd_u64le(&p, end, &t) || !rd_varint(&p, end, &e) || e >= n_env || !rd_bytes(&p, end, &field, &field_n))
            BAD();
        P g = field + 1;
        if (field_n < 2 || *field != 0x12 || !rd_len(&g, field + field_n, &fl) || g + fl != field + field_n) BAD();
        uint64_t h;
        memcpy(&h, id, 8);
        Py_ssize_t s = (Py_ssize_t)((h * 0x9E3779B97F4A7C15ULL) >> 32) & (cap - 1);
        while (slot[s] >= 0 && keys[s] != h) s = (s + 1) & (cap - 1);
        if (slot[s] < 0) continue;
        /* stored payload = rp + 0x12 + varint(inner) + sp + field + ss + rs, compared piece by piece */
        const size_t *n4 = en[e];
        size_t inner = n4[2] + field_n + n4[3];
        P x = (P)PyBytes_AS_STRING(pay[slot[s]]), xe = x + PyBytes_GET_SIZE(pay[slot[s]]);
        uint8_t head[11];
        size_t hn = (size_t)(put_v(head + 1, inner) - head);
        head[0] = 0x12;
        int eq = (size_t)(xe - x) == n4[0] + hn + inner + n4[1];
        if (eq) {
            P parts[6] = {ep[e][0], head, ep[e][2], field, ep[e][3], ep[e][1]};
            size_t lens[6] = {n4[0], hn, n4[2], field_n, n4[3], n4[1]};
            for (int q = 0; q < 6 && eq; q++) {
                eq = memcmp(x, parts[q], lens[q]) == 0;
                x += lens[q];
            }
        }
        res[slot[s]] = (signed char)eq;
    }
    if (p != end) BAD();
    for (Py_ssize_t i = 0; i < j; i++) {
        if (res[i] >= 0 && PyDict_SetItem(found, ids[i], res[i] ? Py_True : Py_False) < 0) goto end;
    }
    out = Py_BuildValue("(KN)", (unsigned long long)n_span, found);
    found = NULL; /* given to out (or freed by Py_BuildValue's failure) */
done:
end:
    Py_XDECREF(found);
    PyMem_Free(keys);
    PyMem_Free(slot);
    PyMem_Free(ids);
    PyMem_Free(pay);
    PyMem_Free(res);
    if (bad) Py_RETURN_NONE;
    return out;
}
