/* _crebuild: the contract records built from attributes and events.
 *
 * Device, TraceRequest (with interventions), Capabilities, the root span's facts (schema
 * version, trace metadata, sweep, gen_ai attributes), TraceArtifact and MissingArtifact, each
 * written in the field order of the Python rebuild and bailing on anything it would refuse.
 */
#include "crebuild.h"

void crb_out_free(Out *o) {
    crb_buf_give(KB_HEAD, &o->head);
    crb_buf_give(KB_SPANS, &o->spans);
    crb_buf_give(KB_ARTS, &o->arts);
    crb_buf_give(KB_MISS, &o->miss);
    crb_buf_give(KB_META, &o->meta_extra);
    PyMem_RawFree(o->art_ids);
    PyMem_RawFree(o->inputs);
    for (int i = 0; i < crb_g.nstage; i++) Py_DECREF(crb_g.stage_v[i]);
    crb_g.nstage = 0;
    Py_XDECREF(o->trace_meta);
}

/* the index of a string attribute's value in the vocabulary w, -1 when absent or not a word */
static int word_of(const Words *w, const Attr *a) { return a != NULL && a->type == V_STR ? words_find(w, a->s) : -1; }

/* device_of: (kind, label) strings or absent; writes the Device JSON or null. */
int crb_put_device(Buf *b, Index *ix) {
    Attr *kind = take(ix, crb_cfg.device_kind), *label = take(ix, crb_cfg.device_label);
    if (kind == NULL && label == NULL) return PUTS(b, "null");
    if ((kind != NULL && kind->type != V_STR) || (label != NULL && label->type != V_STR)) return BAIL;
    int first = 1;
    TRY(PUTS(b, "{"));
    TRY(put_keyc(b, &first, "kind"));
    if (kind != NULL) TRY(crb_put_attr_str(b, kind));
    else TRY(PUTS(b, "\"unknown\""));
    TRY(put_keyc(b, &first, "label"));
    if (label != NULL) TRY(crb_put_attr_str(b, label));
    else TRY(PUTS(b, "\"\""));
    return PUTS(b, "}");
}

int crb_elem_collect_str(const Attr *e, void *ud) {
    StrListCtx *lc = (StrListCtx *)ud;
    if (e->type != V_STR || lc->nitems >= lc->cap) return BAIL;
    lc->items[lc->nitems++] = e->s;
    return 0;
}

static int put_interventions(Buf *b, const Attr *a) {
    PyObject *list = crb_parse_json_value(a, 1);
    if (list == NULL) return BAIL;
    int r = BAIL;
    if (PUTS(b, "[")) goto done;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++) {
        PyObject *it = PyList_GET_ITEM(list, i);
        if (!PyDict_CheckExact(it)) goto done;
        PyObject *name = PyDict_GetItemString(it, "name");
        PyObject *layer = PyDict_GetItemString(it, "layer_index");
        PyObject *params = PyDict_GetItemString(it, "params");
        Py_ssize_t known = (name != NULL) + (layer != NULL) + (params != NULL);
        if (PyDict_GET_SIZE(it) != known || name == NULL || layer == NULL) goto done;
        if (!PyUnicode_CheckExact(name) || PyUnicode_GET_LENGTH(name) == 0) goto done;
        if (!PyLong_CheckExact(layer)) goto done;
        int overflow = 0;
        long long lv = PyLong_AsLongLongAndOverflow(layer, &overflow);
        if (overflow < 0 || (overflow == 0 && lv < 0)) goto done;
        if (params != NULL && params != Py_None && !PyDict_CheckExact(params)) goto done;
        if (i && PUTS(b, ", ")) goto done;
        int first = 1;
        if (PUTS(b, "{") || put_keyc(b, &first, "name") || crb_put_py(b, name, 0) || put_keyc(b, &first, "layer_index") ||
            crb_put_py(b, layer, 0) || put_keyc(b, &first, "params"))
            goto done;
        if (params == NULL || params == Py_None) {
            if (PUTS(b, "{}")) goto done;
        } else if (crb_put_py(b, params, 0)) {
            goto done;
        }
        if (PUTS(b, "}")) goto done;
    }
    r = PUTS(b, "]");
done:
    Py_DECREF(list);
    return r;
}

/* build_request -> o->head gets "request": {...} | null */
static int put_request(Out *o, Index *ix, Str trace_id) {
    Buf *b = &o->head;
    Attr *r[NREQ];
    int any = 0;
    for (int i = 0; i < NREQ; i++) {
        r[i] = take(ix, crb_cfg.req[i]);
        if (r[i] != NULL) any = 1;
    }
    if (!any) return PUTS(b, "null");
    if (r[RQ_TEXT] == NULL && r[RQ_PROMPT] == NULL && r[RQ_REF] == NULL) return BAIL;
    if ((r[RQ_TEXT] && r[RQ_TEXT]->type != V_STR) || (r[RQ_REF] && r[RQ_REF]->type != V_STR)) return BAIL;
    int bools[3] = {0, 0, 0};
    for (int i = 0; i < 3; i++) {
        Attr *a = r[RQ_CHAT + i];
        if (a != NULL) {
            if (a->type != V_BOOL) return BAIL;
            bools[i] = (int)a->i;
        }
    }
    if (bools[2] && !bools[1]) return BAIL;
    int first = 1;
    TRY(PUTS(b, "{"));
    TRY(put_keyc(b, &first, "trace_id"));
    TRY(crb_put_hex(b, trace_id));
    TRY(put_keyc(b, &first, "input_text"));
    TRY(r[RQ_TEXT] ? crb_put_attr_str(b, r[RQ_TEXT]) : PUTS(b, "null"));
    TRY(put_keyc(b, &first, "prompt_ids"));
    TRY(r[RQ_PROMPT] ? crb_put_nonneg_int_list(b, r[RQ_PROMPT]) : PUTS(b, "null"));
    TRY(put_keyc(b, &first, "input_ref"));
    TRY(r[RQ_REF] ? crb_put_attr_str(b, r[RQ_REF]) : PUTS(b, "null"));
    TRY(put_keyc(b, &first, "requested_artifacts"));
    if (r[RQ_ARTS]) {
        Str items[MAXLIST];
        int n = 0;
        TRY(crb_put_str_list(b, r[RQ_ARTS], items, &n, MAXLIST));
        for (int i = 0; i < n; i++) {
            if (words_find(&crb_cfg.kinds, items[i]) < 0) return BAIL;
            for (int j = 0; j < i; j++)
                if (str_eq(items[i], items[j])) return BAIL;
        }
    } else {
        TRY(PUTS(b, "[]"));
    }
    TRY(put_keyc(b, &first, "collect_layers"));
    TRY(r[RQ_LAYERS] ? crb_put_nonneg_int_list(b, r[RQ_LAYERS]) : PUTS(b, "[]"));
    TRY(put_keyc(b, &first, "interventions"));
    TRY(r[RQ_INTERV] ? put_interventions(b, r[RQ_INTERV]) : PUTS(b, "[]"));
    const char *bnames[3] = {"apply_chat_template", "return_logits", "return_logprobs"};
    for (int i = 0; i < 3; i++) {
        TRY(put_keyc(b, &first, bnames[i]));
        TRY(bools[i] ? PUTS(b, "true") : PUTS(b, "false"));
    }
    TRY(put_keyc(b, &first, "metadata"));
    if (r[RQ_META]) {
        PyObject *d = crb_parse_json_value(r[RQ_META], 0);
        if (d == NULL) return BAIL;
        int rc = crb_put_py(b, d, 0);
        Py_DECREF(d);
        TRY(rc);
    } else {
        TRY(PUTS(b, "{}"));
    }
    return PUTS(b, "}");
}

/* build_capabilities -> o->head gets "capabilities": {...} | null */
static int put_capabilities(Out *o, Index *ix) {
    Buf *b = &o->head;
    Attr *executor = take(ix, crb_cfg.executor_name);
    Attr *version = take(ix, crb_cfg.executor_version);
    Attr *levels[MAXLIST];
    int nlevels = 0;
    for (int i = 0; i < crb_cfg.ncaps; i++) {
        levels[i] = take(ix, crb_cfg.cap_attr[i]);
        if (levels[i] != NULL) nlevels++;
    }
    Attr *kinds = take(ix, crb_cfg.cap_device_kinds);
    Attr *notes = get(ix, crb_cfg.cap_notes);
    if (version != NULL) {
        if (version->type != V_STR) return BAIL;
        o->has_version = 1;
        o->exec_version = version->s;
    }
    if (executor == NULL && nlevels == 0 && kinds == NULL && notes == NULL) return PUTS(b, "null");
    if (executor != NULL && executor->type != V_STR) return BAIL;
    if (notes != NULL) notes->used = 1;
    int first = 1;
    TRY(PUTS(b, "{"));
    TRY(put_keyc(b, &first, "executor"));
    if (executor != NULL) {
        TRY(crb_put_attr_str(b, executor));
        o->caps_executor = executor->s;
    } else {
        static const uint8_t unknown[] = "unknown";
        o->caps_executor.p = unknown;
        o->caps_executor.n = 7;
        TRY(PUTS(b, "\"unknown\""));
    }
    o->has_caps = 1;
    TRY(put_keyc(b, &first, "device_kinds"));
    TRY(kinds ? crb_put_str_list(b, kinds, NULL, NULL, 0) : PUTS(b, "[]"));
    TRY(put_keyc(b, &first, "levels"));
    TRY(PUTS(b, "{"));
    int f2 = 1;
    for (int i = 0; i < crb_cfg.ncaps; i++) {
        TRY(put_frag(b, &f2, crb_cfg.cap_key[i]));
        if (levels[i] != NULL) {
            int w = word_of(&crb_cfg.levels, levels[i]);
            if (w < 0) return BAIL;
            TRY(put_str(b, crb_cfg.levels_json[w]));
        } else {
            TRY(put_str(b, crb_cfg.unsupported_json));
        }
    }
    TRY(PUTS(b, "}"));
    TRY(put_keyc(b, &first, "notes"));
    if (notes != NULL) {
        PyObject *d = crb_parse_json_value(notes, 0);
        if (d == NULL) return BAIL;
        int rc = PUTS(b, "{");
        int f3 = 1;
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (rc == 0 && PyDict_Next(d, &pos, &k, &v)) {
            Py_ssize_t n;
            const char *s = PyUnicode_CheckExact(k) ? PyUnicode_AsUTF8AndSize(k, &n) : NULL;
            if (s == NULL) {
                rc = BAIL;
                break;
            }
            Str ks = {(const uint8_t *)s, n};
            int known = 0;
            for (int i = 0; i < crb_cfg.ncaps; i++)
                if (str_eq(crb_cfg.cap_name[i], ks)) known = 1;
            if (!known) continue;
            rc = crb_put_key(b, &f3, ks);
            if (rc) break;
            if (PyUnicode_CheckExact(v)) {
                rc = crb_put_py(b, v, 0);
            } else {
                PyObject *sv = PyObject_Str(v);
                rc = sv == NULL ? BAIL : crb_put_py(b, sv, 0);
                Py_XDECREF(sv);
            }
        }
        if (rc == 0) rc = PUTS(b, "}");
        Py_DECREF(d);
        TRY(rc);
    } else {
        TRY(PUTS(b, "{}"));
    }
    return PUTS(b, "}");
}

/* _root_facts (+ the root's device) into o */
int crb_root_facts(Out *o, Span *root, Str trace_id) {
    Index *ix = &crb_IS;
    crb_index_build(ix, root->a0, root->an);
    Attr *v = take(ix, crb_cfg.schema_version);
    if (v != NULL) {
        if (v->type != V_STR) return BAIL;
        Py_ssize_t dot = 0;
        while (dot < v->s.n && v->s.p[dot] != '.') dot++;
        Str major = {v->s.p, dot};
        if (!str_eq(major, crb_cfg.schema_major)) return BAIL;
        o->schema_version = v->s;
        o->has_schema = 1;
    }
    TRY(PUTS(&o->head, ", \"request\": "));
    TRY(put_request(o, ix, trace_id));
    TRY(PUTS(&o->head, ", \"device\": "));
    /* device_of does not consume here for the span itself: the span pass takes them again */
    TRY(crb_put_device(&o->head, ix));
    TRY(PUTS(&o->head, ", \"capabilities\": "));
    TRY(put_capabilities(o, ix));
    Attr *tm = take(ix, crb_cfg.trace_metadata);
    if (tm != NULL) {
        o->trace_meta = crb_parse_json_value(tm, 0);
        if (o->trace_meta == NULL) return BAIL;
        for (int i = 0; i < crb_cfg.nmeta_keys; i++) {
            PyObject *k = PyUnicode_DecodeUTF8((const char *)crb_cfg.meta_keys[i].p, crb_cfg.meta_keys[i].n, "strict");
            if (k == NULL) return BAIL;
            int has = PyDict_Contains(o->trace_meta, k);
            Py_DECREF(k);
            if (has != 0) return BAIL;
        }
    }
    for (int i = 0; i < crb_cfg.nsweep; i++) o->sweep_attrs[i] = take(ix, crb_cfg.sweep_attr[i]);
    /* gen_ai: attributes left now (stage/device/root marker are not gen_ai names) */
    o->ngen_ai = 0;
    for (int i = root->a0; i < root->a0 + root->an; i++) {
        Attr *a = &crb_g.attrs[i];
        if (a->used || a->key.n < crb_cfg.gen_ai_prefix.n || memcmp(a->key.p, crb_cfg.gen_ai_prefix.p, (size_t)crb_cfg.gen_ai_prefix.n))
            continue;
        if (o->ngen_ai >= 256) return BAIL;
        o->gen_ai[o->ngen_ai++] = i;
    }
    return 0;
}
int crb_put_artifact(Out *o, int ev, Str producer) {
    Event *e = &crb_g.events[ev];
    Index *ix = &crb_IE;
    crb_index_build(ix, e->a0, e->an);
    Buf *b = &o->arts;
    Attr *id = take(ix, crb_cfg.art_id);
    if (id == NULL || id->type != V_STR || id->s.n == 0) return BAIL;
    Attr *kind = take(ix, crb_cfg.art_kind);
    int kind_w = word_of(&crb_cfg.kinds, kind);
    if (kind_w < 0) return BAIL;
    Attr *dtype = take(ix, crb_cfg.art_dtype), *digest = take(ix, crb_cfg.art_digest), *uri = take(ix, crb_cfg.art_uri),
         *media = take(ix, crb_cfg.art_media_type), *shape = take(ix, crb_cfg.art_shape), *size = take(ix, crb_cfg.art_byte_size),
         *layer = take(ix, crb_cfg.art_layer);
    if ((dtype && dtype->type != V_STR) || (digest && digest->type != V_STR) || (uri && uri->type != V_STR) ||
        (media && media->type != V_STR))
        return BAIL;
    if (digest != NULL && crb_valid_digest(digest->s) != 0) return BAIL;
    if ((size && (size->type != V_INT || size->i < 0)) || (layer && (layer->type != V_INT || layer->i < 0))) return BAIL;
    GROW(o->art_ids, o->nart, o->capart, Str);
    o->art_ids[o->nart++] = id->s;
    if (b->n) TRY(PUTS(b, ", "));
    int first = 1;
    TRY(PUTS(b, "{"));
    TRY(put_keyc(b, &first, "id"));
    TRY(crb_put_attr_str(b, id));
    TRY(put_keyc(b, &first, "kind"));
    TRY(put_str(b, crb_cfg.kinds_json[kind_w]));
    TRY(put_keyc(b, &first, "producer_span_id"));
    TRY(crb_put_hex(b, producer));
    TRY(put_keyc(b, &first, "shape"));
    TRY(shape ? crb_put_nonneg_int_list(b, shape) : PUTS(b, "[]"));
    const struct {
        const char *name;
        Attr *a;
    } text[] = {{"dtype", dtype}, {"digest", digest}, {"uri", uri}, {"media_type", media}};
    for (int i = 0; i < 4; i++) {
        TRY(put_keyc(b, &first, text[i].name));
        TRY(text[i].a ? crb_put_attr_str(b, text[i].a) : PUTS(b, "null"));
    }
    TRY(put_keyc(b, &first, "byte_size"));
    TRY(size ? crb_put_i64(b, size->i) : PUTS(b, "null"));
    TRY(put_keyc(b, &first, "layer"));
    TRY(layer ? crb_put_i64(b, layer->i) : PUTS(b, "null"));
    TRY(put_keyc(b, &first, "summary"));
    TRY(PUTS(b, "{"));
    int f2 = 1;
    for (int i = 0; i < crb_cfg.nsum; i++) {
        Attr *s = take(ix, crb_cfg.sum_attr[i]);
        if (s == NULL) continue;
        TRY(put_frag(b, &f2, crb_cfg.sum_json_key[i]));
        TRY(crb_put_attr_value(b, s, 0));
    }
    TRY(PUTS(b, "}"));
    TRY(put_keyc(b, &first, "metadata"));
    Attr *meta = take(ix, crb_cfg.art_metadata);
    PyObject *parsed = NULL;
    if (meta != NULL) {
        parsed = crb_parse_json_value(meta, 0);
        if (parsed == NULL) return BAIL;
    }
    int f3;
    int rc = crb_put_merged(b, parsed, ix, &f3);
    Py_XDECREF(parsed);
    TRY(rc);
    TRY(PUTS(b, "}"));
    return PUTS(b, "}");
}

int crb_put_missing(Out *o, int ev, Str span_id) {
    Event *e = &crb_g.events[ev];
    Index *ix = &crb_IE;
    crb_index_build(ix, e->a0, e->an);
    Buf *b = &o->miss;
    Attr *layer = take(ix, crb_cfg.art_layer), *kind = take(ix, crb_cfg.art_kind), *reason = take(ix, crb_cfg.missing_reason),
         *detail = take(ix, crb_cfg.missing_detail);
    int kind_w = word_of(&crb_cfg.kinds, kind), reason_w = word_of(&crb_cfg.reasons, reason);
    if (kind_w < 0 || reason_w < 0) return BAIL;
    if (detail != NULL && detail->type != V_STR) return BAIL;
    if (layer != NULL && (layer->type != V_INT || layer->i < 0)) return BAIL;
    if (b->n) TRY(PUTS(b, ", "));
    int first = 1;
    TRY(PUTS(b, "{"));
    TRY(put_keyc(b, &first, "kind"));
    TRY(put_str(b, crb_cfg.kinds_json[kind_w]));
    TRY(put_keyc(b, &first, "reason"));
    TRY(put_str(b, crb_cfg.reasons_json[reason_w]));
    TRY(put_keyc(b, &first, "detail"));
    TRY(detail ? crb_put_attr_str(b, detail) : PUTS(b, "\"\""));
    TRY(put_keyc(b, &first, "span_id"));
    TRY(crb_put_hex(b, span_id));
    TRY(put_keyc(b, &first, "layer"));
    TRY(layer ? crb_put_i64(b, layer->i) : PUTS(b, "null"));
    return PUTS(b, "}");
}

