/* One trace's rows regrouped into a serialized TracesData, in C.
 *
 * snapshot(rows) -> bytes, or None.
 *
 * The result is exactly store._ingest.snapshot_bytes_py(rows) (what TraceStore.spans_for_bytes
 * reads back for those spans):
 *
 * 1. the rows sorted by (start, span_id), a stable sort (equal keys keep their input order);
 * 2. grouped by resource envelope (res_prefix, res_suffix), then by scope envelope
 *    (scope_prefix, scope_suffix), each group in order of first appearance in the sorted rows,
 *    envelopes compared by value;
 * 3. each row's payload is res_prefix + LD(2, scope_prefix + LD(2, span) + scope_suffix) +
 *    res_suffix: the LD(2, span) field is cut out of it (after the res_prefix, the scope_spans
 *    tag byte and its length varint, then the scope_prefix) without parsing the span;
 * 4. out = concat(LD(1, res_prefix + concat(LD(2, scope_prefix + fields + scope_suffix)) +
 *    res_suffix)) with single-byte tags 0x0a / 0x12 and minimal length varints.
 *
 * It returns None, and the caller runs the Python function (which gives the same bytes or
 * raises the same error as before), for anything unusual: a row that is not a 9-item tuple, a
 * start that is not an int in [0, 2^64), a span id that is not an ASCII str, a payload or an
 * envelope item that is not bytes, an envelope that is not a 4-tuple, a payload too short for
 * its envelope, more than MAX_GROUPS scope groups. Reads are bounded by each payload.
 */
#include "fastrow.h"

#define MAX_GROUPS 256

/* SpanRow item positions: R_* in cwire.h */
enum { R_FIELDS = 9 };

typedef struct {
    uint64_t start;
    const char *sid;
    Py_ssize_t sid_len;
    Py_ssize_t index; /* input position: the stable tie-break */
    PyObject *env;    /* borrowed 4-tuple of bytes */
    PyObject *payload;
    Py_ssize_t view_start, view_len;
    Py_ssize_t next; /* next entry of the same scope group, in sorted order (-1: last) */
} Entry;

typedef struct {
    PyObject *rp, *rs, *sp, *ss; /* borrowed envelope bytes */
    int res;                     /* index of the first group with the same resource envelope */
    Py_ssize_t head, tail;       /* entries (sorted positions) */
    size_t content;              /* scope_prefix + fields + scope_suffix */
} Group;

static int cmp_entry(const void *a, const void *b) {
    const Entry *x = (const Entry *)a, *y = (const Entry *)b;
    if (x->start != y->start) return x->start < y->start ? -1 : 1;
    Py_ssize_t n = x->sid_len < y->sid_len ? x->sid_len : y->sid_len;
    int c = memcmp(x->sid, y->sid, (size_t)n);
    if (c) return c;
    if (x->sid_len != y->sid_len) return x->sid_len < y->sid_len ? -1 : 1;
    return x->index < y->index ? -1 : (x->index > y->index);
}

static int same_bytes(PyObject *a, PyObject *b) {
    Py_ssize_t n = PyBytes_GET_SIZE(a);
    return a == b || (n == PyBytes_GET_SIZE(b) && memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b), (size_t)n) == 0);
}

static size_t varint_len(size_t v) {
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static uint8_t *put_ld(uint8_t *o, uint8_t tag, size_t len) {
    *o++ = tag;
    while (len >= 0x80) {
        *o++ = (uint8_t)(len | 0x80);
        len >>= 7;
    }
    *o++ = (uint8_t)len;
    return o;
}

static uint8_t *put_bytes(uint8_t *o, PyObject *b) {
    Py_ssize_t n = PyBytes_GET_SIZE(b);
    memcpy(o, PyBytes_AS_STRING(b), (size_t)n);
    return o + n;
}

/* Fill e from row i; 0: not handled here (Python decides). */
static int read_row(PyObject *row, Py_ssize_t i, Entry *e) {
    if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) < R_FIELDS) return 0;
    PyObject *start = PyTuple_GET_ITEM(row, R_START), *sid = PyTuple_GET_ITEM(row, R_SPAN_ID);
    PyObject *payload = PyTuple_GET_ITEM(row, R_PAYLOAD), *env = PyTuple_GET_ITEM(row, R_ENV);
    if (!PyLong_CheckExact(start) || !PyUnicode_Check(sid) || !PyUnicode_IS_ASCII(sid)) return 0;
    if (!PyBytes_CheckExact(payload) || !PyTuple_Check(env) || PyTuple_GET_SIZE(env) != 4) return 0;
    for (int k = 0; k < 4; k++)
        if (!PyBytes_CheckExact(PyTuple_GET_ITEM(env, k))) return 0;
    if (!row_u64(start, &e->start)) return 0; /* negative or 2^64 and over: Python compares them */
    e->sid = (const char *)PyUnicode_DATA(sid);
    e->sid_len = PyUnicode_GET_LENGTH(sid);
    e->index = i;
    e->env = env;
    e->payload = payload;
    e->next = -1;
    return 1;
}

/* The LD(2, span) field inside e's payload (as the Python slice would give it); 0: unusual. */
static int cut_view(Entry *e) {
    PyObject *env = e->env;
    Py_ssize_t len = PyBytes_GET_SIZE(e->payload);
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(e->payload);
    Py_ssize_t i = PyBytes_GET_SIZE(PyTuple_GET_ITEM(env, 0)) + 1; /* res_prefix, scope_spans tag */
    while (i < len && (p[i] & 0x80)) i++;                               /* to the varint's last byte */
    if (i >= len) return 0;
    Py_ssize_t from = i + PyBytes_GET_SIZE(PyTuple_GET_ITEM(env, 2)) + 1;
    Py_ssize_t to = len - PyBytes_GET_SIZE(PyTuple_GET_ITEM(env, 1)) - PyBytes_GET_SIZE(PyTuple_GET_ITEM(env, 3));
    if (to < 0 || from > to) return 0;
    e->view_start = from;
    e->view_len = to - from;
    return 1;
}

/* The group of e's envelope (appended when new); -1: too many groups. */
static int group_of(Group *g, int *ng, PyObject *env) {
    PyObject *rp = PyTuple_GET_ITEM(env, 0), *rs = PyTuple_GET_ITEM(env, 1);
    PyObject *sp = PyTuple_GET_ITEM(env, 2), *ss = PyTuple_GET_ITEM(env, 3);
    int res = -1;
    for (int k = 0; k < *ng; k++) {
        if (g[k].res != k || !same_bytes(g[k].rp, rp) || !same_bytes(g[k].rs, rs)) continue;
        res = k;
        break;
    }
    if (res >= 0)
        for (int k = res; k < *ng; k++)
            if (g[k].res == res && same_bytes(g[k].sp, sp) && same_bytes(g[k].ss, ss)) return k;
    if (*ng >= MAX_GROUPS) return -1;
    Group *n = &g[*ng];
    n->rp = rp;
    n->rs = rs;
    n->sp = sp;
    n->ss = ss;
    n->res = res >= 0 ? res : *ng;
    n->head = n->tail = -1;
    n->content = (size_t)(PyBytes_GET_SIZE(sp) + PyBytes_GET_SIZE(ss));
    return (*ng)++;
}

PyObject *cw_snapshot(PyObject *self, PyObject *rows) {
    (void)self;
    if (!PyList_Check(rows)) Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(rows);
    Entry *ents = PyMem_Malloc(sizeof(Entry) * (size_t)(n ? n : 1));
    Group *groups = PyMem_Malloc(sizeof(Group) * MAX_GROUPS);
    PyObject *out = NULL;
    if (!ents || !groups) {
        PyMem_Free(ents);
        PyMem_Free(groups);
        return PyErr_NoMemory();
    }
    int ng = 0, ok = 1;
    for (Py_ssize_t i = 0; i < n && ok; i++) ok = read_row(PyList_GET_ITEM(rows, i), i, &ents[i]);
    if (ok) qsort(ents, (size_t)n, sizeof(Entry), cmp_entry);
    PyObject *last_env = NULL;
    int gi = -1;
    for (Py_ssize_t i = 0; i < n && ok; i++) {
        Entry *e = &ents[i];
        if (e->env != last_env) {
            gi = group_of(groups, &ng, e->env);
            last_env = e->env;
        }
        if (gi < 0 || !cut_view(e)) {
            ok = 0;
            break;
        }
        Group *g = &groups[gi];
        if (g->tail < 0) g->head = i;
        else ents[g->tail].next = i;
        g->tail = i;
        g->content += (size_t)e->view_len;
    }
    if (ok) {
        /* sizes: scope fields per resource group, then the whole output */
        size_t total = 0;
        for (int r = 0; r < ng; r++) {
            if (groups[r].res != r) continue;
            size_t content = (size_t)(PyBytes_GET_SIZE(groups[r].rp) + PyBytes_GET_SIZE(groups[r].rs));
            for (int k = r; k < ng; k++)
                if (groups[k].res == r) content += 1 + varint_len(groups[k].content) + groups[k].content;
            total += 1 + varint_len(content) + content;
        }
        out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
        if (out) {
            uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
            for (int r = 0; r < ng; r++) {
                if (groups[r].res != r) continue;
                size_t content = (size_t)(PyBytes_GET_SIZE(groups[r].rp) + PyBytes_GET_SIZE(groups[r].rs));
                for (int k = r; k < ng; k++)
                    if (groups[k].res == r) content += 1 + varint_len(groups[k].content) + groups[k].content;
                o = put_ld(o, 0x0a, content);
                o = put_bytes(o, groups[r].rp);
                for (int k = r; k < ng; k++) {
                    if (groups[k].res != r) continue;
                    o = put_ld(o, 0x12, groups[k].content);
                    o = put_bytes(o, groups[k].sp);
                    for (Py_ssize_t j = groups[k].head; j >= 0; j = ents[j].next) {
                        memcpy(o, PyBytes_AS_STRING(ents[j].payload) + ents[j].view_start, (size_t)ents[j].view_len);
                        o += ents[j].view_len;
                    }
                    o = put_bytes(o, groups[k].ss);
                }
                o = put_bytes(o, groups[r].rs);
            }
        }
    }
    PyMem_Free(ents);
    PyMem_Free(groups);
    if (!ok) Py_RETURN_NONE;
    return out;
}
