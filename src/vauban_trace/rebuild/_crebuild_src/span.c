/* _crebuild: one TraceSpan: its error text, its StageProfile (counters with provenance), its
 * input / output artifact ids, its metadata and other events; plus the StageObservation that
 * the summary carries for it.
 */
#include "crebuild.h"

typedef struct {
    int ev;
    uint64_t time;
} EvRef;

static int cmp_evref(const void *a, const void *b) {
    const EvRef *x = (const EvRef *)a, *y = (const EvRef *)b;
    if (x->time != y->time) return x->time < y->time ? -1 : 1;
    return x->ev - y->ev;
}

/* events by (time, position): insertion sort, since they nearly always come in time order (a
 * linear pass then); qsort for long lists that do not */
static void sort_events(EvRef *r, int n) {
    if (n > 64) {
        qsort(r, (size_t)n, sizeof(EvRef), cmp_evref);
        return;
    }
    for (int i = 1; i < n; i++) {
        EvRef x = r[i];
        int j = i;
        while (j > 0 && cmp_evref(&r[j - 1], &x) > 0) {
            r[j] = r[j - 1];
            j--;
        }
        r[j] = x;
    }
}

/* _error_text for a span with status error */
static int put_error(Buf *b, Span *sp) {
    if (sp->status_msg.n > 0) return crb_put_jstr(b, sp->status_msg);
    for (int k = sp->e0; k < sp->e0 + sp->en; k++) {
        Event *e = &crb_g.events[k];
        if (!str_eq(e->name, crb_cfg.ev_exception)) continue;
        crb_index_build(&crb_IE, e->a0, e->an);
        Attr *t = get(&crb_IE, crb_cfg.exc_type), *m = get(&crb_IE, crb_cfg.exc_message);
        if ((t && t->type != V_STR && t->type != V_NONE) || (m && m->type != V_STR && m->type != V_NONE)) return BAIL;
        int ht = t && t->type == V_STR && t->s.n > 0, hm = m && m->type == V_STR && m->s.n > 0;
        if (!ht && !hm) continue;
        /* join with ": " */
        Buf tmp = {NULL, 0, 0};
        int rc = 0;
        if (ht) rc = put(&tmp, (const char *)t->s.p, (size_t)t->s.n);
        if (!rc && ht && hm) rc = PUTS(&tmp, ": ");
        if (!rc && hm) rc = put(&tmp, (const char *)m->s.p, (size_t)m->s.n);
        if (!rc) {
            Str s = {(const uint8_t *)tmp.p, (Py_ssize_t)tmp.n};
            rc = crb_put_jstr(b, s);
        }
        PyMem_RawFree(tmp.p);
        return rc;
    }
    crb_index_build(&crb_IS, sp->a0, sp->an); /* (caller re-indexes after) */
    Attr *et = get(&crb_IS, crb_cfg.error_type);
    if (et == NULL || et->type == V_NONE) return PUTS(b, "null");
    if (et->type != V_STR) return BAIL;
    return crb_put_attr_str(b, et);
}

/* A record of a configured slots class (StageObservation, TraceDocument) from its n field values
 * (references stolen, NULL ones allowed: then NULL back): allocated and filled as the dataclass
 * __init__ would with object.__setattr__, minus the Python frames: straight into the slots when
 * configure found plain object slots, else through the slot descriptors; and not tracked by the
 * garbage collector: it holds only str, int, float, None and tuples of them and is frozen, so it
 * can never be part of a reference cycle (as the collector stops tracking such tuples). Without
 * a class, an n-tuple. */
PyObject *crb_make_record(PyTypeObject *cls, PyObject **slots, const Py_ssize_t *offset, int n, PyObject **v) {
    PyObject *obj = NULL;
    for (int i = 0; i < n; i++)
        if (v[i] == NULL) goto fail;
    if (cls == NULL) {
        obj = PyTuple_New(n);
        if (obj == NULL) goto fail;
        for (int i = 0; i < n; i++) PyTuple_SET_ITEM(obj, i, v[i]);
        return obj;
    }
    obj = cls->tp_alloc(cls, 0); /* zeroed: every slot empty */
    if (obj == NULL) goto fail;
    for (int i = 0; i < n; i++) {
        if (offset[i] >= 0) {
            *(PyObject **)((char *)obj + offset[i]) = v[i]; /* the reference moves into the slot */
            v[i] = NULL;
        } else {
            PyObject *d = slots[i];
            if (Py_TYPE(d)->tp_descr_set(d, obj, v[i]) < 0) goto fail;
            Py_CLEAR(v[i]);
        }
    }
    if (PyObject_IS_GC(obj)) PyObject_GC_UnTrack(obj);
    return obj;
fail:
    Py_XDECREF(obj);
    for (int i = 0; i < n; i++) Py_XDECREF(v[i]);
    return NULL;
}

/* crb_str_obj's cache: two-way set-associative on the name hash of the value (the most
 * recently made str of a pair first) */
#define STR_CACHE 128
#define STR_CACHE_BITS 7
#define STR_CACHE_MAXLEN 64
static PyObject *str_cache[STR_CACHE];

/* a cached str is compact ASCII: its 1-byte data are its UTF-8 bytes */
static inline int cached_is(PyObject *c, const uint8_t *p, Py_ssize_t n) {
    return c != NULL && PyUnicode_GET_LENGTH(c) == n && crb_same_name(PyUnicode_1BYTE_DATA(c), p, n);
}

PyObject *crb_str_obj(Str s) {
    const uint8_t *p = s.p;
    Py_ssize_t n = s.n;
    if (n == 0 || n > STR_CACHE_MAXLEN)
        return PyUnicode_DecodeUTF8((const char *)p, n, "strict");
    unsigned h = (crb_key_hash(p, n) >> (32 - STR_CACHE_BITS)) & ~1u;
    if (cached_is(str_cache[h], p, n)) return Py_NewRef(str_cache[h]);
    if (cached_is(str_cache[h + 1], p, n)) return Py_NewRef(str_cache[h + 1]);
    PyObject *u = PyUnicode_DecodeUTF8((const char *)p, n, "strict");
    if (u != NULL && PyUnicode_IS_ASCII(u) && PyUnicode_CheckExact(u)) {
        Py_XSETREF(str_cache[h + 1], str_cache[h]);
        str_cache[h] = Py_NewRef(u);
    }
    return u;
}

PyObject *crb_hex_obj(Str id) {
    PyObject *u = PyUnicode_New(2 * id.n, 127);
    if (u == NULL) return NULL;
    crb_hex_into((char *)PyUnicode_1BYTE_DATA(u), id);
    return u;
}

static PyObject *make_stage(PyObject *v[7]) {
    return crb_make_record(crb_cfg.stage_cls, crb_cfg.stage_slots, crb_cfg.stage_offset, 7, v);
}

typedef struct {
    int has;
    int is_int;
    int64_t i;
    double d;
} CVal;

/* int objects of the counters the summary carries (byte counts, sync points): CPython keeps the
 * small ones; larger ones repeat within a trace (the same tensor sizes step after step), so the
 * last few are kept, direct-mapped on a hash of the value (ints are immutable: one object serves
 * every equal value) */
#define INT_CACHE 32
static struct {
    int64_t v;
    PyObject *o;
} int_cache[INT_CACHE];

static PyObject *int_obj(int64_t v) {
    if (v >= -5 && v <= 256) return PyLong_FromLongLong(v);
    unsigned h = (unsigned)(((uint64_t)v * 0x9e3779b97f4a7c15ull) >> 59); /* 5 bits: INT_CACHE */
    if (int_cache[h].o != NULL && int_cache[h].v == v) return Py_NewRef(int_cache[h].o);
    PyObject *o = PyLong_FromLongLong(v);
    if (o != NULL) {
        Py_XSETREF(int_cache[h].o, Py_NewRef(o));
        int_cache[h].v = v;
    }
    return o;
}

static PyObject *cval_obj(const CVal *v) {
    if (!v->has) Py_RETURN_NONE;
    return v->is_int ? int_obj(v->i) : PyFloat_FromDouble(v->d);
}

int crb_put_span(Out *o, Span *sp, int is_root) {
    Buf *b = &o->spans;
    Index *ix = &crb_IS;
    /* error text first (it re-indexes IS) */
    Buf err = crb_buf_take(KB_ERR);
    if (sp->status == 2) {
        if (put_error(&err, sp)) {
            crb_buf_give(KB_ERR, &err);
            return BAIL;
        }
    }
    crb_index_build(ix, sp->a0, sp->an);
    int rc = BAIL;
    PyObject *span_meta = NULL;
    Attr *stage = take(ix, crb_cfg.stage);
    if (stage != NULL && stage->type != V_STR) goto done;
    Buf dev = crb_buf_take(KB_DEV);
    if (crb_put_device(&dev, ix)) {
        crb_buf_give(KB_DEV, &dev);
        goto done;
    }
    if (is_root) take(ix, crb_cfg.trace_root);
    int has_dur = sp->end > 0 && sp->end >= sp->start;
    if (has_dur && sp->end - sp->start > ((uint64_t)1 << 53)) {
        crb_buf_give(KB_DEV, &dev);
        goto done;
    }
    double dur = has_dur ? (double)(sp->end - sp->start) / 1e9 : 0.0;
    /* build_profile */
    CVal val[MAXLIST];
    int prov[MAXLIST], prov_order[MAXLIST + 1], nprov = 0;
    memset(val, 0, sizeof(CVal) * (size_t)crb_cfg.ncounters);
    for (int c = 0; c < crb_cfg.ncounters; c++) {
        prov[c] = -1;
        Attr *raw = take(ix, crb_cfg.cnt_v[c]), *word = take(ix, crb_cfg.cnt_p[c]);
        if (raw == NULL && word == NULL) continue;
        if (word != NULL) {
            int w = word->type == V_STR ? words_find(&crb_cfg.prov, word->s) : -1;
            if (w < 0) goto bad_profile;
            prov[c] = w;
            prov_order[nprov++] = c;
        }
        if (raw == NULL || raw->type == V_NONE) continue;
        CVal *v = &val[c];
        if (crb_cfg.cnt_float[c]) {
            if (raw->type == V_INT) v->d = (double)raw->i;
            else if (raw->type == V_DBL) v->d = raw->d;
            else goto bad_profile;
            if (v->d < 0) goto bad_profile;
        } else {
            v->is_int = 1;
            if (raw->type == V_INT) v->i = raw->i;
            else if (raw->type == V_DBL && raw->d == floor(raw->d) && fabs(raw->d) < 9.2e18) v->i = (int64_t)raw->d;
            else goto bad_profile;
            if (v->i < 0) goto bad_profile;
        }
        if (prov[c] >= 0 && str_eq(crb_cfg.prov.w[prov[c]], crb_cfg.unavailable)) goto bad_profile;
        v->has = 1;
    }
    if (!val[crb_cfg.c_duration].has && prov[crb_cfg.c_duration] < 0 && has_dur) {
        val[crb_cfg.c_duration].has = 1;
        val[crb_cfg.c_duration].d = dur;
        prov[crb_cfg.c_duration] = words_find(&crb_cfg.prov, crb_cfg.measured);
        if (prov[crb_cfg.c_duration] < 0) goto bad_profile;
        prov_order[nprov++] = crb_cfg.c_duration;
    }
    Attr *method = take(ix, crb_cfg.memory_method);
    if (method != NULL && method->type != V_STR) goto bad_profile;
    Attr *pm[MAXLIST];
    for (int i = 0; i < crb_cfg.npm; i++) pm[i] = take(ix, crb_cfg.pm_attr[i]);
    Attr *inputs = take(ix, crb_cfg.span_input_ids);
    Attr *smeta = take(ix, crb_cfg.span_metadata);
    if (smeta != NULL) {
        span_meta = crb_parse_json_value(smeta, 0);
        if (span_meta == NULL) goto bad_profile;
    }
    /* the span's artifact / missing / other events */
    EvRef arts[512], miss[512];
    int na = 0, nm = 0, nother = 0;
    for (int k = sp->e0; k < sp->e0 + sp->en; k++) {
        Event *e = &crb_g.events[k];
        if (str_eq(e->name, crb_cfg.ev_artifact)) {
            if (na >= 512) goto bad_profile;
            arts[na].ev = k;
            arts[na++].time = e->time;
        } else if (str_eq(e->name, crb_cfg.ev_missing)) {
            if (nm >= 512) goto bad_profile;
            miss[nm].ev = k;
            miss[nm++].time = e->time;
        } else {
            nother++;
        }
    }
    sort_events(arts, na);
    sort_events(miss, nm);
    /* metadata keys the rebuild assigns after the attributes must not collide */
    if ((is_root && o->has_remote && crb_has_key(span_meta, ix, crb_cfg.k_remote_parent, "remote_parent_id")) ||
        (nother && crb_has_key(span_meta, ix, crb_cfg.k_events, "events")))
        goto bad_profile;

    /* ---- write the span ---- */
    if (b->n && PUTS(b, ", ")) goto bad_profile;
    int first = 1;
    if (PUTS(b, "{") || put_keyc(b, &first, "id") || crb_put_hex(b, sp->span_id) || put_keyc(b, &first, "name") ||
        crb_put_jstr(b, sp->name) || put_keyc(b, &first, "stage") || (stage ? crb_put_attr_str(b, stage) : PUTS(b, "null")) ||
        put_keyc(b, &first, "parent_id") || (sp->has_parent && !is_root ? crb_put_hex(b, sp->parent) : PUTS(b, "null")) ||
        put_keyc(b, &first, "start_unix_nano") || crb_put_u64(b, sp->start) || put_keyc(b, &first, "end_unix_nano") ||
        crb_put_u64(b, sp->end) || put_keyc(b, &first, "status") || put_str(b, crb_cfg.status_json[sp->status]) ||
        put_keyc(b, &first, "error") || (sp->status == 2 ? put(b, err.p, err.n) : PUTS(b, "null")) ||
        put_keyc(b, &first, "profile") || PUTS(b, "{"))
        goto bad_profile;
    int pf = 1;
    for (int i = 0; i < crb_cfg.nprofile_fields; i++) {
        int code = crb_cfg.profile_field[i];
        if (code == -1) {
            if (put_keyc(b, &pf, "name") || (stage ? crb_put_attr_str(b, stage) : crb_put_jstr(b, sp->name))) goto bad_profile;
        } else if (code == -2) {
            if (put_keyc(b, &pf, "device") || put(b, dev.p, dev.n)) goto bad_profile;
        } else if (code == -3) {
            if (put_keyc(b, &pf, "memory_method") || (method ? crb_put_attr_str(b, method) : PUTS(b, "null")))
                goto bad_profile;
        } else if (code == -4) {
            if (put_keyc(b, &pf, "provenance") || PUTS(b, "{")) goto bad_profile;
            int f2 = 1;
            for (int j = 0; j < nprov; j++) {
                int c = prov_order[j];
                if (put_frag(b, &f2, crb_cfg.cnt_key[c]) || put_str(b, crb_cfg.prov_json[prov[c]])) goto bad_profile;
            }
            if (PUTS(b, "}")) goto bad_profile;
        } else if (code == -5) {
            if (put_keyc(b, &pf, "metadata") || PUTS(b, "{")) goto bad_profile;
            int f2 = 1;
            for (int j = 0; j < crb_cfg.npm; j++) {
                if (pm[j] == NULL) continue;
                if (put_frag(b, &f2, crb_cfg.pm_key[j]) || crb_put_attr_value(b, pm[j], 0)) goto bad_profile;
            }
            if (PUTS(b, "}")) goto bad_profile;
        } else if (!val[code].has) {
            /* this counter and the ones right after it without a value: one copy of their text */
            int j = i + 1;
            while (j < crb_cfg.nprofile_fields && crb_cfg.profile_field[j] >= 0 && !val[crb_cfg.profile_field[j]].has) j++;
            const char *t = crb_cfg.null_runs + crb_cfg.null_off[i];
            size_t len = crb_cfg.null_off[j] - crb_cfg.null_off[i];
            if (pf) { /* (never: the name comes first) no ", " before the first member */
                t += 2;
                len -= 2;
                pf = 0;
            }
            if (put(b, t, len)) goto bad_profile;
            i = j - 1;
        } else {
            CVal *v = &val[code];
            if (put_frag(b, &pf, crb_cfg.cnt_key[code])) goto bad_profile;
            if (v->is_int ? crb_put_i64(b, v->i) : crb_put_double(b, v->d)) goto bad_profile;
        }
    }
    if (PUTS(b, "}") || put_keyc(b, &first, "input_artifact_ids") || PUTS(b, "[")) goto bad_profile;
    if (inputs != NULL) {
        StrListCtx lc = {NULL, 1, NULL, 0, 0};
        Str items[256];
        lc.items = items;
        lc.cap = 256;
        if (inputs->type == V_STR) {
            items[0] = inputs->s;
            lc.nitems = 1;
        } else if (inputs->type != V_ARR || crb_each_elem(inputs, crb_elem_collect_str, &lc)) {
            goto bad_profile;
        }
        for (int j = 0; j < lc.nitems; j++) {
            if ((j && PUTS(b, ", ")) || crb_put_jstr(b, items[j])) goto bad_profile;
            GROW(o->inputs, o->ninputs, o->capinputs, Str);
            o->inputs[o->ninputs++] = items[j];
        }
    }
    if (PUTS(b, "]") || put_keyc(b, &first, "output_artifact_ids") || PUTS(b, "[")) goto bad_profile;
    for (int j = 0; j < na; j++) {
        Event *e = &crb_g.events[arts[j].ev];
        Attr *id = find_attr(e->a0, e->an, crb_cfg.art_id);
        if (id == NULL || id->type != V_STR) goto bad_profile;
        if ((j && PUTS(b, ", ")) || crb_put_attr_str(b, id)) goto bad_profile;
    }
    if (PUTS(b, "]") || put_keyc(b, &first, "metadata")) goto bad_profile;
    int mf;
    if (crb_put_merged(b, span_meta, ix, &mf)) goto bad_profile;
    if (is_root && o->has_remote) {
        if (put_keyc(b, &mf, "remote_parent_id") || crb_put_hex(b, o->remote_parent)) goto bad_profile;
    }
    if (nother) {
        if (put_keyc(b, &mf, "events") || PUTS(b, "[")) goto bad_profile;
        int ef = 1;
        for (int k = sp->e0; k < sp->e0 + sp->en; k++) {
            Event *e = &crb_g.events[k];
            if (str_eq(e->name, crb_cfg.ev_artifact) || str_eq(e->name, crb_cfg.ev_missing)) continue;
            if (!ef && PUTS(b, ", ")) goto bad_profile;
            ef = 0;
            int f4 = 1;
            if (PUTS(b, "{") || put_keyc(b, &f4, "name") || crb_put_jstr(b, e->name) ||
                put_keyc(b, &f4, "time_unix_nano") || crb_put_u64(b, e->time) || put_keyc(b, &f4, "attributes"))
                goto bad_profile;
            crb_index_build(&crb_IE, e->a0, e->an);
            int f5;
            if (crb_put_merged(b, NULL, &crb_IE, &f5) || PUTS(b, "}}")) goto bad_profile;
        }
        if (PUTS(b, "]")) goto bad_profile;
    }
    if (PUTS(b, "}}")) goto bad_profile;
    /* artifacts and missing records of this span */
    for (int j = 0; j < na; j++)
        if (crb_put_artifact(o, arts[j].ev, sp->span_id)) goto bad_profile;
    for (int j = 0; j < nm; j++)
        if (crb_put_missing(o, miss[j].ev, sp->span_id)) goto bad_profile;
    if (sp->status == 2) o->nerrors++;
    if (stage != NULL) {
        CVal *d = &val[crb_cfg.c_duration];
        PyObject *dur_obj;
        if (d->has) dur_obj = PyFloat_FromDouble(d->d);
        else if (sp->end >= sp->start && sp->start > 0) dur_obj = PyFloat_FromDouble((double)(sp->end - sp->start) / 1e9);
        else dur_obj = Py_NewRef(Py_None);
        PyObject *sync_prov;
        if (prov[crb_cfg.c_sync_points] >= 0) sync_prov = crb_str_obj(crb_cfg.prov.w[prov[crb_cfg.c_sync_points]]);
        else sync_prov = Py_NewRef(Py_None);
        PyObject *fields[7] = {crb_hex_obj(sp->span_id),
                               crb_str_obj(stage->s),
                               dur_obj,
                               cval_obj(&val[crb_cfg.c_input_bytes]),
                               cval_obj(&val[crb_cfg.c_output_bytes]),
                               cval_obj(&val[crb_cfg.c_sync_points]),
                               sync_prov};
        PyObject *t = make_stage(fields);
        if (t == NULL) goto bad_profile;
        if (crb_g.nstage >= crb_g.capstage) {
            int nc = crb_g.capstage ? 2 * crb_g.capstage : 64;
            PyObject **nv = (PyObject **)PyMem_RawRealloc(crb_g.stage_v, sizeof(PyObject *) * (size_t)nc);
            if (nv == NULL) {
                Py_DECREF(t);
                goto bad_profile;
            }
            crb_g.stage_v = nv;
            crb_g.capstage = nc;
        }
        crb_g.stage_v[crb_g.nstage++] = t;
    }
    rc = 0;
bad_profile:
    crb_buf_give(KB_DEV, &dev);
done:
    crb_buf_give(KB_ERR, &err);
    Py_XDECREF(span_meta);
    return rc;
}

/* group_stages(per_stage, seqs, observable) -> int | None: the stage histograms' values of the
 * StageObservations in seqs (a list of tuples or lists of them), appended to per_stage[stage] =
 * (durations, input bytes, output bytes, sync points), four bytearrays of native doubles, exactly
 * as the Python reference (_documents.python_group_stage_values, into array('d')) does, in order:
 * a stage that is None or "" is skipped, a None value is not appended, sync points only when their
 * provenance is in observable (a tuple); a value is converted as float() would. Returns the number
 * of values appended; None (nothing appended) when anything is not a plain StageObservation of
 * configure's class holding str stages and int or float values, so that the reference runs instead. */
enum { SO_STAGE = 1, SO_DURATION, SO_INPUT, SO_OUTPUT, SO_SYNC, SO_SYNC_PROV };

static PyObject *slot(PyObject *obj, int i) { return *(PyObject **)((char *)obj + crb_cfg.stage_offset[i]); }

static int plain_number(PyObject *v) {
    return v == NULL || v == Py_None || PyFloat_CheckExact(v) || PyLong_CheckExact(v);
}

static int append_value(PyObject *lists, int k, PyObject *v, Py_ssize_t *n) {
    if (v == NULL || v == Py_None) return 0;
    double d = PyFloat_CheckExact(v) ? PyFloat_AS_DOUBLE(v) : PyLong_AsDouble(v);
    if (d == -1.0 && PyErr_Occurred()) return -1; /* an int past the double range: float() raises too */
    PyObject *buf = PyTuple_GET_ITEM(lists, k);
    Py_ssize_t size = PyByteArray_GET_SIZE(buf);
    if (PyByteArray_Resize(buf, size + (Py_ssize_t)sizeof(double)) < 0) return -1;
    memcpy(PyByteArray_AS_STRING(buf) + size, &d, sizeof(double));
    ++*n;
    return 0;
}

static int valid_lists(PyObject *lists) {
    if (!PyTuple_CheckExact(lists) || PyTuple_GET_SIZE(lists) != 4) return 0;
    for (int k = 0; k < 4; k++)
        if (!PyByteArray_CheckExact(PyTuple_GET_ITEM(lists, k))) return 0;
    return 1;
}

static int str_or_none(PyObject *v) { return v == NULL || v == Py_None || PyUnicode_CheckExact(v); }

/* A StageObservation of configure's class whose stage and provenance are exact str (or None) and
 * whose values are exact int or float (or None): nothing about it can run Python code. */
static int plain_observation(PyObject *obs, PyTypeObject *cls) {
    return Py_IS_TYPE(obs, cls) && str_or_none(slot(obs, SO_STAGE)) && str_or_none(slot(obs, SO_SYNC_PROV)) &&
           plain_number(slot(obs, SO_DURATION)) && plain_number(slot(obs, SO_INPUT)) &&
           plain_number(slot(obs, SO_OUTPUT)) && plain_number(slot(obs, SO_SYNC));
}

/* The four packed-double buffers of one stage in per_stage (made when absent): a new reference. */
static PyObject *stage_lists(PyObject *per_stage, PyObject *stage) {
    PyObject *lists = PyDict_GetItemWithError(per_stage, stage);
    if (lists != NULL) {
        if (!valid_lists(lists)) {
            PyErr_SetString(PyExc_TypeError, "group_stages: per_stage values must be 4-tuples of bytearrays");
            return NULL;
        }
        return Py_NewRef(lists);
    }
    if (PyErr_Occurred()) return NULL;
    lists = PyTuple_New(4);
    if (lists == NULL) return NULL;
    for (int k = 0; k < 4; k++) {
        PyObject *b = PyByteArray_FromStringAndSize(NULL, 0);
        if (b == NULL) {
            Py_DECREF(lists);
            return NULL;
        }
        PyTuple_SET_ITEM(lists, k, b);
    }
    if (PyDict_SetItem(per_stage, stage, lists) < 0) {
        Py_DECREF(lists);
        return NULL;
    }
    return lists;
}

/* One observation's values appended; last_stage / last_lists: strong references to the stage seen
 * last and its buffers (a trace's spans often repeat a stage). */
static int group_one(PyObject *per_stage, PyObject *obs, PyTypeObject *cls, PyObject *observable,
                     PyObject **last_stage, PyObject **last_lists, Py_ssize_t *values) {
    if (!plain_observation(obs, cls)) { /* checked before: only a finalizer could have changed it */
        PyErr_SetString(PyExc_RuntimeError, "group_stages: an observation changed while it was grouped");
        return -1;
    }
    PyObject *stage = slot(obs, SO_STAGE);
    if (stage == NULL || stage == Py_None || PyUnicode_GET_LENGTH(stage) == 0) return 0;
    if (stage != *last_stage) {
        Py_INCREF(stage);
        PyObject *lists = stage_lists(per_stage, stage);
        if (lists == NULL) {
            Py_DECREF(stage);
            return -1;
        }
        Py_XSETREF(*last_stage, stage);
        Py_XSETREF(*last_lists, lists);
    }
    PyObject *lists = *last_lists;
    if (append_value(lists, 0, slot(obs, SO_DURATION), values) || append_value(lists, 1, slot(obs, SO_INPUT), values) ||
        append_value(lists, 2, slot(obs, SO_OUTPUT), values))
        return -1;
    PyObject *sync = slot(obs, SO_SYNC), *prov = slot(obs, SO_SYNC_PROV);
    if (sync != NULL && sync != Py_None && prov != NULL) {
        int in = PySequence_Contains(observable, prov); /* str against str: no Python code */
        if (in < 0) return -1;
        if (in && append_value(lists, 3, sync, values)) return -1;
    }
    return 0;
}

/* Every comparison made while grouping is str against str (stages, provenances and the observable
 * words are checked to be exact str first), so no Python code runs while the sequences are walked;
 * each sequence, observation and the current stage's buffers are still held by a strong reference
 * and the sizes re-read, so that not even a finalizer run by an allocation can leave a dangling
 * pointer behind (it can only make the call raise). */
PyObject *crb_group_stages(PyObject *self, PyObject *args) {
    PyObject *per_stage, *seqs, *observable;
    if (!PyArg_ParseTuple(args, "O!O!O!", &PyDict_Type, &per_stage, &PyList_Type, &seqs, &PyTuple_Type, &observable))
        return NULL;
    PyTypeObject *cls = crb_cfg.stage_cls;
    if (!crb_cfg.ready || cls == NULL) Py_RETURN_NONE;
    for (int i = 0; i < 7; i++)
        if (crb_cfg.stage_offset[i] < 0) Py_RETURN_NONE;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(observable); i++)
        if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(observable, i))) Py_RETURN_NONE;
    /* first every item checked, so that nothing is appended when the reference must run */
    Py_ssize_t nseq = PyList_GET_SIZE(seqs);
    for (Py_ssize_t s = 0; s < nseq; s++) {
        PyObject *seq = PyList_GET_ITEM(seqs, s);
        if (!PyTuple_CheckExact(seq) && !PyList_CheckExact(seq)) Py_RETURN_NONE;
        Py_ssize_t m = PySequence_Fast_GET_SIZE(seq);
        PyObject **items = PySequence_Fast_ITEMS(seq);
        for (Py_ssize_t j = 0; j < m; j++)
            if (!plain_observation(items[j], cls)) Py_RETURN_NONE;
    }
    Py_ssize_t values = 0;
    PyObject *last_stage = NULL, *last_lists = NULL, *result = NULL;
    for (Py_ssize_t s = 0; s < PyList_GET_SIZE(seqs); s++) {
        PyObject *seq = Py_NewRef(PyList_GET_ITEM(seqs, s));
        int rc = 0;
        if (!PyTuple_CheckExact(seq) && !PyList_CheckExact(seq)) {
            PyErr_SetString(PyExc_RuntimeError, "group_stages: the sequences changed while they were grouped");
            rc = -1;
        }
        for (Py_ssize_t j = 0; rc == 0 && j < PySequence_Fast_GET_SIZE(seq); j++) {
            PyObject *obs = Py_NewRef(PySequence_Fast_ITEMS(seq)[j]);
            rc = group_one(per_stage, obs, cls, observable, &last_stage, &last_lists, &values);
            Py_DECREF(obs);
        }
        Py_DECREF(seq);
        if (rc < 0) goto done;
    }
    result = PyLong_FromSsize_t(values);
done:
    Py_XDECREF(last_stage);
    Py_XDECREF(last_lists);
    return result;
}
