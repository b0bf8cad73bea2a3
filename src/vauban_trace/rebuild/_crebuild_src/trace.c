/* _crebuild: one trace: the analysis (one trace id, unique span ids, one root, no orphan, one
 * resource), the spans in (start, id) order, the resource and Trace.metadata, the assembled
 * Trace JSON and the summary tuple that rebuild_one returns.
 */
#include "crebuild.h"

static int cmp_span_order(const void *a, const void *b) {
    const Span *x = *(Span *const *)a, *y = *(Span *const *)b;
    if (x->start != y->start) return x->start < y->start ? -1 : 1;
    if (x->idkey != y->idkey) return x->idkey < y->idkey ? -1 : 1;
    return 0;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int cmp_str(const void *a, const void *b) {
    const Str *x = (const Str *)a, *y = (const Str *)b;
    if (x->n >= 8 && y->n >= 8) { /* the first 8 bytes as big-endian words order like memcmp */
        uint64_t u = __builtin_bswap64(crb_ld8(x->p)), v = __builtin_bswap64(crb_ld8(y->p));
        if (u != v) return u < v ? -1 : 1;
    }
    Py_ssize_t n = x->n < y->n ? x->n : y->n;
    int c = n ? memcmp(x->p, y->p, (size_t)n) : 0;
    if (c) return c;
    return x->n < y->n ? -1 : x->n > y->n;
}

/* Sorts of the few elements of a trace: insertion sort (the spans of a snapshot come in start
 * order, the ids nearly so: a linear pass then), qsort for long lists. Every comparison used is a
 * total order on the elements sorted (span ids are checked unique before the spans are ordered),
 * so the result is the one qsort gives. */
#define SMALL_SORT 48

static void sort_u64(uint64_t *v, int n) {
    if (n > SMALL_SORT) {
        qsort(v, (size_t)n, sizeof(uint64_t), cmp_u64);
        return;
    }
    for (int i = 1; i < n; i++) {
        uint64_t x = v[i];
        int j = i;
        for (; j > 0 && v[j - 1] > x; j--) v[j] = v[j - 1];
        v[j] = x;
    }
}

static void sort_spans(Span **v, int n) {
    if (n > SMALL_SORT) {
        qsort(v, (size_t)n, sizeof(Span *), cmp_span_order);
        return;
    }
    for (int i = 1; i < n; i++) {
        Span *x = v[i];
        int j = i;
        for (; j > 0 && cmp_span_order(&v[j - 1], &x) > 0; j--) v[j] = v[j - 1];
        v[j] = x;
    }
}

static void sort_strs(Str *v, int n) {
    if (n > SMALL_SORT) {
        qsort(v, (size_t)n, sizeof(Str), cmp_str);
        return;
    }
    for (int i = 1; i < n; i++) {
        Str x = v[i];
        int j = i;
        for (; j > 0 && cmp_str(&v[j - 1], &x) > 0; j--) v[j] = v[j - 1];
        v[j] = x;
    }
}

static uint64_t be64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
    return v;
}

static PyObject *scalar_obj(const Attr *a) {
    switch (a->type) {
    case V_STR: return crb_str_obj(a->s);
    case V_BOOL: return PyBool_FromLong((long)a->i);
    case V_INT: return PyLong_FromLongLong(a->i);
    case V_DBL: return PyFloat_FromDouble(a->d);
    default: Py_RETURN_NONE;
    }
}

/* The whole road; returns a new tuple, or NULL to bail (exception cleared by the caller). */
PyObject *crb_rebuild(Str data, int as_document) {
    crb_g.nattrs = crb_g.nevents = crb_g.nspans = crb_g.nscratch = 0;
    crb_g.has_spill = 0;
    crb_g.prev_span_an = crb_g.prev_ev_an = 0;
    if (crb_parse_traces_data(data) || crb_g.nspans == 0 || crb_g.has_spill) return NULL;
    int n = crb_g.nspans;
    Str trace_id = crb_g.spans[0].trace_id;
    if (trace_id.n != 16) return NULL;
    Span **order = (Span **)PyMem_RawMalloc(sizeof(Span *) * (size_t)n);
    uint64_t *ids = (uint64_t *)PyMem_RawMalloc(sizeof(uint64_t) * (size_t)n);
    Out o;
    memset(&o, 0, sizeof(o));
    o.head = crb_buf_take(KB_HEAD); /* handed back by crb_out_free */
    o.spans = crb_buf_take(KB_SPANS);
    o.arts = crb_buf_take(KB_ARTS);
    o.miss = crb_buf_take(KB_MISS);
    o.meta_extra = crb_buf_take(KB_META);
    PyObject *result = NULL;
    if (order == NULL || ids == NULL) goto out;
    Span *marked = NULL;
    for (int i = 0; i < n; i++) {
        Span *sp = &crb_g.spans[i];
        if (!str_eq(sp->trace_id, trace_id) || sp->span_id.n != 8) goto out;
        sp->idkey = be64(sp->span_id.p);
        ids[i] = sp->idkey;
        sp->parent_field_len = (int)sp->parent.n;
        if (sp->parent.n == 8) {
            sp->parentkey = be64(sp->parent.p);
            sp->has_parent = sp->parentkey != 0;
        } else if (sp->parent.n == 0) {
            sp->has_parent = 0;
        } else {
            goto out;
        }
        Attr *r = find_attr(sp->a0, sp->an, crb_cfg.trace_root);
        sp->marked = r != NULL && r->type == V_BOOL && r->i;
        if (sp->marked) {
            if (marked != NULL) goto out;
            marked = sp;
        }
        order[i] = sp;
    }
    sort_u64(ids, n);
    for (int i = 1; i < n; i++)
        if (ids[i] == ids[i - 1]) goto out;
    sort_spans(order, n);
    Span *root = marked;
    if (root == NULL) {
        for (int i = 0; i < n && root == NULL; i++)
            if (!order[i]->has_parent) root = order[i];
    }
    if (root == NULL) goto out;
    for (int i = 0; i < n; i++) {
        Span *sp = order[i];
        int present = sp->has_parent &&
                      bsearch(&sp->parentkey, ids, (size_t)n, sizeof(uint64_t), cmp_u64) != NULL;
        if (sp == root) {
            if (sp->has_parent) {
                if (present) goto out; /* a marked root under a received span: let Python decide */
                o.has_remote = 1;
                o.remote_parent = sp->parent;
            }
        } else if (!present) {
            goto out; /* a second parentless span, or an orphan */
        }
        if (sp->resource.p != root->resource.p && !str_eq(sp->resource, root->resource)) goto out;
    }
    /* root facts */
    crb_g.nstage = 0;
    if (crb_root_facts(&o, root, trace_id)) goto out;
    for (int i = 0; i < n; i++)
        if (crb_put_span(&o, order[i], order[i] == root)) goto out;
    /* artifact ids unique; every input id names an artifact */
    if (o.nart > 1) {
        sort_strs(o.art_ids, o.nart);
        for (int i = 1; i < o.nart; i++)
            if (str_eq(o.art_ids[i], o.art_ids[i - 1])) goto out;
    }
    for (int i = 0; i < o.ninputs; i++)
        if (o.nart == 0 || bsearch(&o.inputs[i], o.art_ids, (size_t)o.nart, sizeof(Str), cmp_str) == NULL) goto out;
    /* resource */
    Buf res = crb_buf_take(KB_RES);
    Attr *service = NULL;
    {
        int a0 = crb_g.nattrs;
        Str rm = root->resource;
        const uint8_t *p = rm.p, *end = rm.p + rm.n;
        int bad = 0;
        while (p < end && !bad) {
            uint32_t f;
            int wt;
            if (rd_tag(&p, end, &f, &wt)) { bad = 1; break; }
            if (f == 1) {
                Str s;
                if (rd_len(&p, end, &s) || crb_push_attr(s)) bad = 1;
            } else if (crb_skip_field(&p, end, wt)) {
                bad = 1;
            }
        }
        int an = crb_g.nattrs - a0;
        if (bad || crb_unique_keys(a0, an)) {
            crb_buf_give(KB_RES, &res);
            goto out;
        }
        crb_index_build(&crb_IL, a0, an);
        service = get(&crb_IL, crb_cfg.service_name);
        if (service != NULL && service->type != V_STR) {
            crb_buf_give(KB_RES, &res);
            goto out;
        }
        int rf;
        if (crb_put_merged(&res, NULL, &crb_IL, &rf) || PUTS(&res, "}")) {
            crb_buf_give(KB_RES, &res);
            goto out;
        }
    }
    /* metadata */
    Buf *m = &o.meta_extra;
    int mf;
    uint64_t min_start = 0, max_end = 0;
    for (int i = 0; i < n; i++) {
        Span *sp = order[i];
        if (sp->start && (min_start == 0 || sp->start < min_start)) min_start = sp->start;
        if (sp->end && sp->end > max_end) max_end = sp->end;
    }
    int rc = PUTS(m, "{");
    mf = 1;
    if (!rc && o.trace_meta != NULL) {
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (!rc && PyDict_Next(o.trace_meta, &pos, &k, &v)) {
            Py_ssize_t kn;
            const char *ks = PyUnicode_CheckExact(k) ? PyUnicode_AsUTF8AndSize(k, &kn) : NULL;
            if (ks == NULL) {
                rc = BAIL;
                break;
            }
            Str kk = {(const uint8_t *)ks, kn};
            rc = crb_put_key(m, &mf, kk) || crb_put_py(m, v, 0);
        }
    }
    if (!rc) {
        rc = put_keyc(m, &mf, "service_name") || (service ? crb_put_attr_str(m, service) : PUTS(m, "null")) ||
             put_keyc(m, &mf, "services") || PUTS(m, "[") || (service ? crb_put_attr_str(m, service) : 0) || PUTS(m, "]") ||
             put_keyc(m, &mf, "span_count") || crb_put_u64(m, (uint64_t)n) || put_keyc(m, &mf, "artifact_count") ||
             crb_put_u64(m, (uint64_t)o.nart) || put_keyc(m, &mf, "error_count") || crb_put_u64(m, (uint64_t)o.nerrors) ||
             put_keyc(m, &mf, "start_unix_nano") || (min_start ? crb_put_u64(m, min_start) : PUTS(m, "null")) ||
             put_keyc(m, &mf, "end_unix_nano") || (max_end ? crb_put_u64(m, max_end) : PUTS(m, "null")) ||
             put_keyc(m, &mf, "duration_s");
    }
    if (!rc) {
        if (min_start && max_end && max_end >= min_start) {
            if (max_end - min_start > ((uint64_t)1 << 53)) rc = BAIL;
            else rc = crb_put_double(m, (double)(max_end - min_start) / 1e9);
        } else {
            rc = PUTS(m, "null");
        }
    }
    if (!rc)
        rc = put_keyc(m, &mf, "root_span_id") || crb_put_hex(m, root->span_id) || put_keyc(m, &mf, "root_name") ||
             crb_put_jstr(m, root->name);
    if (!rc && o.ngen_ai) {
        rc = put_keyc(m, &mf, "gen_ai") || PUTS(m, "{");
        int gf = 1;
        for (int i = 0; !rc && i < o.ngen_ai; i++) {
            Attr *a = &crb_g.attrs[o.gen_ai[i]];
            Str short_key = {a->key.p + crb_cfg.gen_ai_prefix.n, a->key.n - crb_cfg.gen_ai_prefix.n};
            rc = crb_put_key(m, &gf, short_key) || crb_put_attr_value(m, a, 0);
        }
        if (!rc) rc = PUTS(m, "}");
    }
    if (!rc && (o.has_caps || o.has_version)) {
        int ef = 1;
        rc = put_keyc(m, &mf, "executor") || PUTS(m, "{") || put_keyc(m, &ef, "name") ||
             (o.has_caps ? crb_put_jstr(m, o.caps_executor) : PUTS(m, "null")) || put_keyc(m, &ef, "version") ||
             (o.has_version ? crb_put_jstr(m, o.exec_version) : PUTS(m, "null")) || PUTS(m, "}");
    }
    if (!rc) {
        int any = 0;
        for (int i = 0; i < crb_cfg.nsweep; i++) any |= o.sweep_attrs[i] != NULL;
        if (any) {
            rc = put_keyc(m, &mf, "sweep") || PUTS(m, "{");
            int sf = 1;
            for (int i = 0; !rc && i < crb_cfg.nsweep; i++) {
                if (o.sweep_attrs[i] == NULL) continue;
                rc = put_frag(m, &sf, crb_cfg.sweep_key[i]) || crb_put_attr_value(m, o.sweep_attrs[i], 0);
            }
            if (!rc) rc = PUTS(m, "}");
        }
    }
    if (!rc) rc = PUTS(m, "}");
    if (rc) {
        crb_buf_give(KB_RES, &res);
        goto out;
    }
    /* assemble: the pieces are copied once, straight into the str (ASCII by construction) */
    Buf pre = crb_buf_take(KB_PRE);
    rc = PUTS(&pre, "{\"id\": ") || crb_put_hex(&pre, trace_id) || PUTS(&pre, ", \"schema_version\": ") ||
         crb_put_jstr(&pre, o.has_schema ? o.schema_version : crb_cfg.schema_default);
    static const char S_SPANS[] = ", \"spans\": [", S_ARTS[] = "], \"artifacts\": [", S_MISS[] = "], \"missing\": [",
                      S_RES[] = "], \"complete\": true, \"problems\": [], \"resource\": ",
                      S_META[] = ", \"metadata\": ", S_END[] = "}";
    const struct {
        const char *p;
        size_t n;
    } piece[] = {{pre.p, pre.n}, {o.head.p, o.head.n}, {S_SPANS, sizeof(S_SPANS) - 1}, {o.spans.p, o.spans.n},
                 {S_ARTS, sizeof(S_ARTS) - 1}, {o.arts.p, o.arts.n}, {S_MISS, sizeof(S_MISS) - 1}, {o.miss.p, o.miss.n},
                 {S_RES, sizeof(S_RES) - 1}, {res.p, res.n}, {S_META, sizeof(S_META) - 1}, {m->p, m->n},
                 {S_END, sizeof(S_END) - 1}};
    PyObject *json = NULL;
    if (!rc) {
        size_t total = 0;
        for (size_t i = 0; i < sizeof(piece) / sizeof(piece[0]); i++) total += piece[i].n;
        json = PyUnicode_New((Py_ssize_t)total, 127);
        if (json != NULL) {
            char *w = (char *)PyUnicode_1BYTE_DATA(json);
            for (size_t i = 0; i < sizeof(piece) / sizeof(piece[0]); i++) {
                if (piece[i].n) memcpy(w, piece[i].p, piece[i].n);
                w += piece[i].n;
            }
        }
    }
    crb_buf_give(KB_PRE, &pre);
    crb_buf_give(KB_RES, &res);
    if (json == NULL) goto out;
    /* root labels by the collector's rule */
    Span *lroot = marked;
    for (int i = 0; i < n && lroot == NULL; i++)
        if (crb_g.spans[i].parent_field_len == 0) lroot = &crb_g.spans[i];
    PyObject *labels;
    if (lroot == NULL) {
        labels = Py_NewRef(Py_None);
    } else {
        crb_index_build(&crb_IS, lroot->a0, lroot->an);
        labels = PyTuple_New(3);
        for (int i = 0; labels != NULL && i < 3; i++) {
            Attr *a = get(&crb_IS, crb_cfg.label[i]);
            PyObject *v = a == NULL ? Py_NewRef(Py_None) : scalar_obj(a);
            if (v == NULL) {
                Py_CLEAR(labels);
                break;
            }
            PyTuple_SET_ITEM(labels, i, v);
        }
    }
    /* the stages tuple takes the StageObservations; it and the labels hold only untracked
     * records and atomic values, so the garbage collector need not track them (it would stop
     * tracking them at its next pass anyway) */
    PyObject *stages = labels == NULL ? NULL : PyTuple_New(crb_g.nstage);
    if (stages != NULL) {
        for (int i = 0; i < crb_g.nstage; i++) PyTuple_SET_ITEM(stages, i, crb_g.stage_v[i]);
        crb_g.nstage = 0;
        if (PyTuple_GET_SIZE(stages) > 0 && PyObject_GC_IsTracked(stages)) PyObject_GC_UnTrack(stages);
    }
    if (labels != NULL && PyTuple_Check(labels) && PyObject_GC_IsTracked(labels)) PyObject_GC_UnTrack(labels);
    if (labels == NULL || stages == NULL) {
        Py_DECREF(json);
        Py_XDECREF(labels);
        goto out;
    }
    PyObject *service_obj = service ? scalar_obj(service) : Py_NewRef(Py_None);
    if (as_document) { /* a TraceDocument: its fields in order, native=True last */
        PyObject *v[11] = {crb_hex_obj(trace_id), json, Py_NewRef(Py_True), service_obj, crb_str_obj(root->name),
                           PyLong_FromUnsignedLongLong(root->start), PyLong_FromUnsignedLongLong(root->end),
                           PyLong_FromSsize_t((Py_ssize_t)n), stages, labels, Py_NewRef(Py_True)};
        result = crb_make_record(crb_cfg.doc_cls, crb_cfg.doc_slots, crb_cfg.doc_offset, 11, v);
    } else {
        result = Py_BuildValue("(NNONNNNnNN)", crb_hex_obj(trace_id), json, Py_True, service_obj, crb_str_obj(root->name),
                               PyLong_FromUnsignedLongLong(root->start), PyLong_FromUnsignedLongLong(root->end),
                               (Py_ssize_t)n, stages, labels);
    }
out:
    PyMem_RawFree(order);
    PyMem_RawFree(ids);
    crb_out_free(&o);
    return result;
}
