/* The durable write's per-request work on the rows (store._ingest.store_rows) in C.
 *
 * group_rows(rows) -> (groups, superseded, duplicates), or None.
 *
 *   groups: dict trace id -> list of the trace's rows, exactly what store_rows' Python loop
 *   builds (store._ingest._group_rows_py): traces in order of first appearance, a trace's rows
 *   in order of the first appearance of each span id, each holding the LAST copy of that span
 *   id in ``rows``; a copy whose payload equals the one it would replace is a duplicate (counted,
 *   dropped), one with another payload replaces it and counts as superseded. Trace and span ids
 *   are compared by value.
 *
 * new_traces(groups, snapshots) -> (blobs, nbytes, datas), or None.
 *
 *   For each (trace id, rows) of ``groups`` (a dict, in its order) of traces with no stored span:
 *   the span batch blob (store._batch.encode_batch of the rows), the bytes of the rows'
 *   payloads (SpanSnapshot.nbytes) and, with ``snapshots``, the rows' serialized TracesData
 *   (snapshot.c: store._ingest.snapshot_bytes), built while the payloads are still in the cache
 *   (None where snapshot.c declines, and always without ``snapshots``).
 *
 * bookkeeping(trace_id, rows, now) -> tuple, or None.
 *
 *   The parameters of the traces upsert for a trace with no stored span:
 *   store._ingest._bookkeeping(trace_id, None, rows, now) (service, root span id, name and
 *   start, min start, max end, span count, has_root, now, now).
 *
 * Each returns None, and the Python reference then runs (and raises where a row is bad), for
 * anything unusual: rows not a list, a row not a tuple of 9 items, a trace or span id not an
 * exact str, a payload not bytes, a parent not None or a str, a start or end not an int in
 * [0, 2^64), a span id that is not ASCII, a row encode_batch declines.
 */
#include "fastrow.h"

typedef struct {
    PyObject *group; /* borrowed list: the trace's rows */
    PyObject *sid;   /* borrowed span id (str) */
    Py_hash_t hash;
    Py_ssize_t pos; /* index in group; -1: empty slot */
} Slot;

static int same_str(PyObject *a, PyObject *b) {
    if (a == b) return 1;
    if (PyUnicode_IS_ASCII(a) && PyUnicode_IS_ASCII(b)) {
        Py_ssize_t n = PyUnicode_GET_LENGTH(a);
        return n == PyUnicode_GET_LENGTH(b) && memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)n) == 0;
    }
    return PyUnicode_Compare(a, b) == 0;
}

static int same_payload(PyObject *a, PyObject *b) {
    Py_ssize_t n = PyBytes_GET_SIZE(a);
    return a == b || (n == PyBytes_GET_SIZE(b) && memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b), (size_t)n) == 0);
}

PyObject *cw_group_rows(PyObject *self, PyObject *rows) {
    (void)self;
    if (!PyList_Check(rows)) Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(rows);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != 9 || !PyUnicode_CheckExact(PyTuple_GET_ITEM(row, 0)) ||
            !PyUnicode_CheckExact(PyTuple_GET_ITEM(row, R_SPAN_ID)) || !PyBytes_CheckExact(PyTuple_GET_ITEM(row, R_PAYLOAD)))
            Py_RETURN_NONE;
    }
    size_t cap = 16;
    while (cap < (size_t)n * 2) cap <<= 1;
    Slot *slots = PyMem_Malloc(sizeof(Slot) * cap);
    /* a reference to every row, taken before the first tracked allocation (the dict, the group
     * lists): a collection there can run a finalizer that changes ``rows``, and the slots
     * borrow the rows' span ids */
    PyObject **held = PyMem_Malloc(sizeof(PyObject *) * (size_t)(n ? n : 1));
    if (!slots || !held) {
        PyMem_Free(slots);
        PyMem_Free(held);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        held[i] = PyList_GET_ITEM(rows, i);
        Py_INCREF(held[i]);
    }
    PyObject *groups = PyDict_New();
    if (!groups) goto fail;
    for (size_t k = 0; k < cap; k++) slots[k].pos = -1;
    Py_ssize_t superseded = 0, duplicates = 0;
    PyObject *last_tid = NULL, *group = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = held[i];
        PyObject *tid = PyTuple_GET_ITEM(row, 0), *sid = PyTuple_GET_ITEM(row, R_SPAN_ID);
        if (tid != last_tid) { /* the rows of a trace mostly come together */
            group = PyDict_GetItemWithError(groups, tid);
            if (!group) {
                if (PyErr_Occurred()) goto fail;
                group = PyList_New(0);
                if (!group) goto fail;
                int err = PyDict_SetItem(groups, tid, group);
                Py_DECREF(group); /* the dict holds it */
                if (err) goto fail;
            }
            last_tid = tid;
        }
        Py_hash_t h = PyObject_Hash(sid);
        if (h == -1) goto fail;
        size_t k = ((size_t)h ^ ((size_t)group >> 4)) & (cap - 1);
        for (;; k = (k + 1) & (cap - 1)) {
            Slot *s = &slots[k];
            if (s->pos < 0) {
                s->group = group;
                s->sid = sid;
                s->hash = h;
                s->pos = PyList_GET_SIZE(group);
                if (PyList_Append(group, row)) goto fail;
                break;
            }
            if (s->group == group && s->hash == h && same_str(s->sid, sid)) {
                PyObject *earlier = PyList_GET_ITEM(group, s->pos);
                if (same_payload(PyTuple_GET_ITEM(earlier, R_PAYLOAD), PyTuple_GET_ITEM(row, R_PAYLOAD))) {
                    duplicates++; /* the same span twice in one request */
                } else {
                    superseded++; /* the later copy is stored, at the first copy's place */
                    Py_INCREF(row);
                    PyList_SetItem(group, s->pos, row);
                }
                break;
            }
        }
    }
    PyMem_Free(slots);
    for (Py_ssize_t i = 0; i < n; i++) Py_DECREF(held[i]);
    PyMem_Free(held);
    return Py_BuildValue("(Nnn)", groups, superseded, duplicates);
fail:
    PyMem_Free(slots);
    for (Py_ssize_t i = 0; i < n; i++) Py_DECREF(held[i]);
    PyMem_Free(held);
    Py_XDECREF(groups);
    return NULL;
}

/* (start, span id) of a < that of b, span ids ASCII. */
static int before(uint64_t sa, PyObject *ia, uint64_t sb, PyObject *ib) {
    if (sa != sb) return sa < sb;
    Py_ssize_t na = PyUnicode_GET_LENGTH(ia), nb = PyUnicode_GET_LENGTH(ib);
    int c = memcmp(PyUnicode_DATA(ia), PyUnicode_DATA(ib), (size_t)(na < nb ? na : nb));
    return c < 0 || (c == 0 && na < nb);
}

/* The upsert parameters of a new trace (store._ingest._bookkeeping with no stored row); Py_None:
 * unusual rows; NULL: an error. The rows are tuples of 9 items with an exact str span id. */
static PyObject *bookkeeping(PyObject *tid, PyObject *group, PyObject *now) {
    Py_ssize_t n = PyList_GET_SIZE(group);
    PyObject *root = NULL, *lo_obj = NULL, *hi_obj = NULL, *service = Py_None;
    uint64_t lo = 0, hi = 0, root_start = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = PyList_GET_ITEM(group, i);
        PyObject *sid = PyTuple_GET_ITEM(row, R_SPAN_ID), *parent = PyTuple_GET_ITEM(row, R_PARENT);
        PyObject *start_obj = PyTuple_GET_ITEM(row, R_START), *end_obj = PyTuple_GET_ITEM(row, R_END);
        PyObject *svc = PyTuple_GET_ITEM(row, R_SERVICE);
        uint64_t start, end;
        if (!row_u64(start_obj, &start) || !row_u64(end_obj, &end) || !PyUnicode_IS_ASCII(sid)) Py_RETURN_NONE;
        if (parent != Py_None && !PyUnicode_CheckExact(parent)) Py_RETURN_NONE;
        if (!lo_obj || start < lo) { /* min(): the first of equal values */
            lo = start;
            lo_obj = start_obj;
        }
        if (!hi_obj || end > hi) {
            hi = end;
            hi_obj = end_obj;
        }
        if (parent == Py_None && (!root || before(start, sid, root_start, PyTuple_GET_ITEM(root, R_SPAN_ID)))) {
            root = row;
            root_start = start;
        }
        if (service == Py_None) service = svc;
    }
    if (root && PyTuple_GET_ITEM(root, R_SERVICE) != Py_None) service = PyTuple_GET_ITEM(root, R_SERVICE);
    /* own the items before Py_BuildValue allocates the tuple: a collection there can run a
     * finalizer that drops the rows they are borrowed from */
    PyObject *own[6] = {service, root ? PyTuple_GET_ITEM(root, R_SPAN_ID) : Py_None,
                        root ? PyTuple_GET_ITEM(root, R_NAME) : Py_None,
                        root ? PyTuple_GET_ITEM(root, R_START) : Py_None, lo_obj ? lo_obj : Py_None,
                        hi_obj ? hi_obj : Py_None};
    for (int k = 0; k < 6; k++) Py_INCREF(own[k]);
    return Py_BuildValue("(ONNNNNNniOO)", tid, own[0], own[1], own[2], own[3], own[4], own[5], n, root != NULL,
                         now, now);
}

PyObject *cw_bookkeeping(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *tid, *rows, *now;
    if (!PyArg_ParseTuple(args, "OOO", &tid, &rows, &now)) return NULL;
    if (!PyList_CheckExact(rows)) Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(rows);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != 9 || !PyUnicode_CheckExact(PyTuple_GET_ITEM(row, R_SPAN_ID)))
            Py_RETURN_NONE;
    }
    return bookkeeping(tid, rows, now);
}

PyObject *cw_new_traces(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *groups;
    int snapshots;
    if (!PyArg_ParseTuple(args, "Op", &groups, &snapshots)) return NULL;
    if (!PyDict_CheckExact(groups)) Py_RETURN_NONE;
    Py_ssize_t n = PyDict_GET_SIZE(groups);
    PyObject *blobs = PyList_New(n), *sizes = PyList_New(n), *datas = PyList_New(n);
    if (!blobs || !sizes || !datas) goto fail;
    Py_ssize_t pos = 0, i = 0;
    PyObject *tid, *group;
    while (PyDict_Next(groups, &pos, &tid, &group)) {
        if (i >= n || !PyList_CheckExact(group)) goto none;
        Py_ssize_t nbytes = 0;
        for (Py_ssize_t k = 0; k < PyList_GET_SIZE(group); k++) {
            PyObject *row = PyList_GET_ITEM(group, k);
            if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != 9 || !PyBytes_CheckExact(PyTuple_GET_ITEM(row, R_PAYLOAD)))
                goto none;
            nbytes += PyBytes_GET_SIZE(PyTuple_GET_ITEM(row, R_PAYLOAD));
        }
        PyObject *blob = cw_encode_batch(NULL, group);
        if (!blob) goto fail;
        PyList_SET_ITEM(blobs, i, blob);
        if (blob == Py_None) goto none;
        PyObject *size = PyLong_FromSsize_t(nbytes);
        if (!size) goto fail;
        PyList_SET_ITEM(sizes, i, size);
        PyObject *data = Py_None;
        if (snapshots) {
            data = cw_snapshot(NULL, group);
            if (!data) goto fail;
        } else {
            Py_INCREF(data);
        }
        PyList_SET_ITEM(datas, i, data);
        i++;
    }
    if (i != n) goto none;
    return Py_BuildValue("(NNN)", blobs, sizes, datas);
none:
    Py_DECREF(blobs);
    Py_DECREF(sizes);
    Py_DECREF(datas);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(blobs);
    Py_XDECREF(sizes);
    Py_XDECREF(datas);
    return NULL;
}
