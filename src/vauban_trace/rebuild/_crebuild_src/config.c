/* _crebuild: the vocabulary from configure(cfg).
 *
 * configure(), which fills crb_cfg from the dict that _documents.py builds out of
 * vauban_trace.semconv and vauban_trace.contract (interning the attribute names in names.c's
 * table), checks the contract's record field tuples against the ones this accelerator writes,
 * and prepares the JSON fragments of the vocabulary.
 */
#include "crebuild.h"

#if PY_VERSION_HEX >= 0x030c0000
#define CRB_T_OBJECT_EX Py_T_OBJECT_EX
#define CRB_READONLY Py_READONLY
#else
#include <structmember.h>
#define CRB_T_OBJECT_EX T_OBJECT_EX
#define CRB_READONLY READONLY
#endif

CrbConfig crb_cfg;

static Str own_bytes(const char *s, Py_ssize_t n) {
    uint8_t *c = (uint8_t *)PyMem_RawMalloc((size_t)n + 1);
    Str r = {NULL, 0};
    if (c == NULL) return r;
    memcpy(c, s, (size_t)n);
    c[n] = 0;
    r.p = c;
    r.n = n;
    return r;
}

static int cfg_str(PyObject *cfg, const char *name, Str *out) {
    PyObject *v = PyDict_GetItemString(cfg, name);
    if (v == NULL || !PyUnicode_Check(v)) {
        PyErr_Format(PyExc_KeyError, "configure: missing string %s", name);
        return -1;
    }
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(v, &n);
    if (s == NULL) return -1;
    *out = own_bytes(s, n);
    if (out->p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static int str_key(PyObject *v, int *out) {
    if (!PyUnicode_Check(v)) {
        PyErr_SetString(PyExc_TypeError, "configure: expected a str");
        return -1;
    }
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(v, &n);
    if (s == NULL) return -1;
    *out = crb_intern_key(s, n);
    return *out < 0 ? -1 : 0;
}

static int cfg_key(PyObject *cfg, const char *name, int *out) {
    PyObject *v = PyDict_GetItemString(cfg, name);
    if (v == NULL) {
        PyErr_Format(PyExc_KeyError, "configure: missing key %s", name);
        return -1;
    }
    return str_key(v, out);
}

static PyObject *cfg_seq(PyObject *cfg, const char *name) {
    PyObject *v = PyDict_GetItemString(cfg, name);
    if (v == NULL || !PyTuple_Check(v) || PyTuple_GET_SIZE(v) > MAXLIST) {
        PyErr_Format(PyExc_KeyError, "configure: missing tuple %s", name);
        return NULL;
    }
    return v;
}

static int cfg_words(PyObject *cfg, const char *name, Words *w) {
    PyObject *t = cfg_seq(cfg, name);
    if (t == NULL) return -1;
    w->n = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(t); i++) {
        PyObject *it = PyTuple_GET_ITEM(t, i);
        if (!PyUnicode_Check(it)) {
            PyErr_SetString(PyExc_TypeError, "configure: word must be str");
            return -1;
        }
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(it, &n);
        if (s == NULL) return -1;
        w->w[w->n] = own_bytes(s, n);
        if (w->w[w->n].p == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        w->n++;
    }
    return 0;
}

/* (attr, short) pairs -> parallel arrays */
static int cfg_pairs(PyObject *cfg, const char *name, int *n, int *attr, Str *shortname) {
    PyObject *t = cfg_seq(cfg, name);
    if (t == NULL) return -1;
    *n = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(t); i++) {
        PyObject *it = PyTuple_GET_ITEM(t, i);
        if (!PyTuple_Check(it) || PyTuple_GET_SIZE(it) != 2) {
            PyErr_SetString(PyExc_TypeError, "configure: expected pairs");
            return -1;
        }
        if (str_key(PyTuple_GET_ITEM(it, 0), &attr[i]) < 0) return -1;
        Py_ssize_t m;
        PyObject *s2 = PyTuple_GET_ITEM(it, 1);
        if (!PyUnicode_Check(s2)) {
            PyErr_SetString(PyExc_TypeError, "configure: expected str");
            return -1;
        }
        const char *s = PyUnicode_AsUTF8AndSize(s2, &m);
        if (s == NULL) return -1;
        shortname[i] = own_bytes(s, m);
        if (shortname[i].p == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        (*n)++;
    }
    return 0;
}

/* The record field tuples this code writes; configure refuses a contract that differs. */
static const char *const F_TRACE[] = {"id", "schema_version", "request", "device", "capabilities", "spans",
                                      "artifacts", "missing", "complete", "problems", "resource", "metadata", NULL};
static const char *const F_SPAN[] = {"id", "name", "stage", "parent_id", "start_unix_nano", "end_unix_nano", "status",
                                     "error", "profile", "input_artifact_ids", "output_artifact_ids", "metadata", NULL};
static const char *const F_ART[] = {"id", "kind", "producer_span_id", "shape", "dtype", "digest", "uri",
                                    "media_type", "byte_size", "layer", "summary", "metadata", NULL};
static const char *const F_MISS[] = {"kind", "reason", "detail", "span_id", "layer", NULL};
static const char *const F_REQ[] = {"trace_id", "input_text", "prompt_ids", "input_ref", "requested_artifacts",
                                    "collect_layers", "interventions", "apply_chat_template", "return_logits",
                                    "return_logprobs", "metadata", NULL};
static const char *const F_DEV[] = {"kind", "label", NULL};
static const char *const F_CAPS[] = {"executor", "device_kinds", "levels", "notes", NULL};
static const char *const F_INTERV[] = {"name", "layer_index", "params", NULL};
static const char *const META_KEYS[] = {"service_name", "services", "span_count", "artifact_count", "error_count",
                                        "start_unix_nano", "end_unix_nano", "duration_s", "root_span_id",
                                        "root_name", "gen_ai", "executor", "sweep", NULL};

static int check_fields(PyObject *fields, const char *rec, const char *const *expected) {
    PyObject *t = PyDict_GetItemString(fields, rec);
    if (t == NULL || !PyTuple_Check(t)) {
        PyErr_Format(PyExc_KeyError, "configure: no fields for %s", rec);
        return -1;
    }
    Py_ssize_t i = 0;
    for (; expected[i] != NULL; i++) {
        if (i >= PyTuple_GET_SIZE(t) || !PyUnicode_Check(PyTuple_GET_ITEM(t, i)) ||
            PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(t, i), expected[i]) != 0) {
            PyErr_Format(PyExc_ValueError, "configure: %s fields differ from what the accelerator writes", rec);
            return -1;
        }
    }
    if (i != PyTuple_GET_SIZE(t)) {
        PyErr_Format(PyExc_ValueError, "configure: %s has more fields than the accelerator writes", rec);
        return -1;
    }
    return 0;
}

static int counter_index(const char *name) {
    for (int i = 0; i < crb_cfg.ncounters; i++)
        if ((size_t)crb_cfg.cnt_name[i].n == strlen(name) && memcmp(crb_cfg.cnt_name[i].p, name, strlen(name)) == 0)
            return i;
    return -1;
}

/* s as a JSON string, followed by ": " when it is a key; owned (an earlier configure's are leaked,
 * like the vocabulary strings) */
static int fragment(Str s, int key, Str *out) {
    Buf b = {NULL, 0, 0};
    if (crb_put_jstr(&b, s) || (key && PUTS(&b, ": "))) {
        PyMem_RawFree(b.p);
        PyErr_SetString(PyExc_ValueError, "configure: a name cannot be written as JSON");
        return -1;
    }
    out->p = (const uint8_t *)b.p;
    out->n = (Py_ssize_t)b.n;
    return 0;
}

static int fragments(const Str *s, int n, int key, Str *out) {
    for (int i = 0; i < n; i++)
        if (fragment(s[i], key, &out[i]) < 0) return -1;
    return 0;
}

static int make_fragments(void) {
    CrbConfig *c = &crb_cfg;
    if (fragments(c->cnt_name, c->ncounters, 1, c->cnt_key) < 0 || fragments(c->prov.w, c->prov.n, 0, c->prov_json) < 0 ||
        fragments(c->status_word, 3, 0, c->status_json) < 0 || fragments(c->cap_name, c->ncaps, 1, c->cap_key) < 0 ||
        fragments(c->sum_key, c->nsum, 1, c->sum_json_key) < 0 || fragments(c->pm_short, c->npm, 1, c->pm_key) < 0 ||
        fragments(c->sweep_short, c->nsweep, 1, c->sweep_key) < 0 ||
        fragments(c->kinds.w, c->kinds.n, 0, c->kinds_json) < 0 || fragments(c->levels.w, c->levels.n, 0, c->levels_json) < 0 ||
        fragments(c->reasons.w, c->reasons.n, 0, c->reasons_json) < 0 || fragment(c->unsupported, 0, &c->unsupported_json) < 0)
        return -1;
    Buf runs = {NULL, 0, 0};
    for (int i = 0; i < c->nprofile_fields; i++) {
        c->null_off[i] = runs.n;
        int code = c->profile_field[i];
        if (code >= 0 && (PUTS(&runs, ", ") || put_str(&runs, c->cnt_key[code]) || PUTS(&runs, "null"))) {
            PyMem_RawFree(runs.p);
            PyErr_NoMemory();
            return -1;
        }
    }
    c->null_off[c->nprofile_fields] = runs.n;
    c->null_runs = runs.p; /* (an earlier configure's is leaked, like the fragments) */
    return 0;
}

/* A slots class whose instances the C road makes itself (StageObservation, TraceDocument): its
 * class and the slot descriptors of its nfields fields, in field order, and where each plain
 * read-write object slot lives in the object (-1: set through the descriptor). Neither key in
 * cfg: no class (plain tuples). Returns -1 with an exception set when the class does not fit. */
static int config_record(PyObject *cfg, const char *cls_key, const char *fields_key, int nfields, PyTypeObject **cls,
                         PyObject **slots, Py_ssize_t *offset) {
    Py_CLEAR(*cls);
    for (int i = 0; i < nfields; i++) Py_CLEAR(slots[i]);
    PyObject *sc = PyDict_GetItemString(cfg, cls_key);
    PyObject *sf = PyDict_GetItemString(cfg, fields_key);
    if (sc == NULL || sf == NULL) return 0;
    if (!PyType_Check(sc) || !PyTuple_Check(sf) || PyTuple_GET_SIZE(sf) != nfields) {
        PyErr_Format(PyExc_TypeError, "configure: %s / %s", cls_key, fields_key);
        return -1;
    }
    for (int i = 0; i < nfields; i++) {
        PyObject *d = PyObject_GetAttr(sc, PyTuple_GET_ITEM(sf, i));
        if (d == NULL) return -1;
        if (!Py_IS_TYPE(d, &PyMemberDescr_Type)) {
            Py_DECREF(d);
            PyErr_Format(PyExc_TypeError, "configure: %s fields must be slots", cls_key);
            return -1;
        }
        slots[i] = d;
        /* a plain read-write object slot can be filled directly (what its setter does) */
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        offset[i] = m->type == CRB_T_OBJECT_EX && !(m->flags & CRB_READONLY) ? m->offset : -1;
    }
    Py_INCREF(sc);
    *cls = (PyTypeObject *)sc;
    return 0;
}

PyObject *crb_configure(PyObject *self, PyObject *cfg) {
    if (!PyDict_Check(cfg)) {
        PyErr_SetString(PyExc_TypeError, "configure takes a dict");
        return NULL;
    }
    crb_cfg.ready = 0;
    crb_names_reset();
    /* (the small owned vocabulary strings of an earlier configure are leaked: configure runs once) */
    struct {
        const char *name;
        int *slot;
    } keys[] = {
        {"stage", &crb_cfg.stage}, {"spill_of", &crb_cfg.spill_of}, {"device_kind", &crb_cfg.device_kind},
        {"device_label", &crb_cfg.device_label}, {"trace_root", &crb_cfg.trace_root},
        {"schema_version_attr", &crb_cfg.schema_version}, {"trace_metadata", &crb_cfg.trace_metadata},
        {"span_input_ids", &crb_cfg.span_input_ids}, {"span_metadata", &crb_cfg.span_metadata},
        {"error_type", &crb_cfg.error_type}, {"memory_method", &crb_cfg.memory_method},
        {"service_name", &crb_cfg.service_name}, {"executor_name", &crb_cfg.executor_name},
        {"executor_version", &crb_cfg.executor_version}, {"cap_device_kinds", &crb_cfg.cap_device_kinds},
        {"cap_notes", &crb_cfg.cap_notes}, {"req_input_text", &crb_cfg.req[RQ_TEXT]},
        {"req_input_ref", &crb_cfg.req[RQ_REF]}, {"req_prompt_ids", &crb_cfg.req[RQ_PROMPT]},
        {"req_requested_artifacts", &crb_cfg.req[RQ_ARTS]}, {"req_layers", &crb_cfg.req[RQ_LAYERS]},
        {"req_interventions", &crb_cfg.req[RQ_INTERV]}, {"req_apply_chat_template", &crb_cfg.req[RQ_CHAT]},
        {"req_return_logits", &crb_cfg.req[RQ_LOGITS]}, {"req_return_logprobs", &crb_cfg.req[RQ_LOGPROBS]},
        {"req_metadata", &crb_cfg.req[RQ_META]}, {"art_id", &crb_cfg.art_id}, {"art_kind", &crb_cfg.art_kind},
        {"art_digest", &crb_cfg.art_digest}, {"art_uri", &crb_cfg.art_uri},
        {"art_media_type", &crb_cfg.art_media_type}, {"art_dtype", &crb_cfg.art_dtype},
        {"art_shape", &crb_cfg.art_shape}, {"art_byte_size", &crb_cfg.art_byte_size},
        {"art_layer", &crb_cfg.art_layer}, {"art_metadata", &crb_cfg.art_metadata},
        {"missing_reason", &crb_cfg.missing_reason}, {"missing_detail", &crb_cfg.missing_detail},
        {"exc_type", &crb_cfg.exc_type}, {"exc_message", &crb_cfg.exc_message},
    };
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (cfg_key(cfg, keys[i].name, keys[i].slot) < 0) return NULL;
    if (crb_intern_key("events", 6) < 0) return NULL;
    crb_cfg.k_events = crb_lookup_key((const uint8_t *)"events", 6);
    crb_cfg.k_remote_parent = crb_intern_key("remote_parent_id", 16);
    if (crb_cfg.k_remote_parent < 0) return NULL;
    PyObject *labels = cfg_seq(cfg, "label_keys");
    if (labels == NULL || PyTuple_GET_SIZE(labels) != 3) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "configure: label_keys must have 3 names");
        return NULL;
    }
    for (int i = 0; i < 3; i++)
        if (str_key(PyTuple_GET_ITEM(labels, i), &crb_cfg.label[i]) < 0) return NULL;
    PyObject *counters = cfg_seq(cfg, "counters");
    if (counters == NULL) return NULL;
    crb_cfg.ncounters = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(counters); i++) {
        PyObject *it = PyTuple_GET_ITEM(counters, i);
        if (!PyTuple_Check(it) || PyTuple_GET_SIZE(it) != 4) {
            PyErr_SetString(PyExc_TypeError, "configure: counters are (name, value attr, provenance attr, is_float)");
            return NULL;
        }
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(it, 0), &n);
        if (s == NULL) return NULL;
        crb_cfg.cnt_name[i] = own_bytes(s, n);
        if (str_key(PyTuple_GET_ITEM(it, 1), &crb_cfg.cnt_v[i]) < 0) return NULL;
        if (str_key(PyTuple_GET_ITEM(it, 2), &crb_cfg.cnt_p[i]) < 0) return NULL;
        crb_cfg.cnt_float[i] = PyObject_IsTrue(PyTuple_GET_ITEM(it, 3));
        crb_cfg.ncounters++;
    }
    crb_cfg.c_duration = counter_index("duration_s");
    crb_cfg.c_input_bytes = counter_index("input_bytes");
    crb_cfg.c_output_bytes = counter_index("output_bytes");
    crb_cfg.c_sync_points = counter_index("sync_points");
    if (crb_cfg.c_duration < 0 || crb_cfg.c_input_bytes < 0 || crb_cfg.c_output_bytes < 0 || crb_cfg.c_sync_points < 0) {
        PyErr_SetString(PyExc_ValueError, "configure: counters lack a name the summary needs");
        return NULL;
    }
    if (cfg_pairs(cfg, "capabilities", &crb_cfg.ncaps, crb_cfg.cap_attr, crb_cfg.cap_name) < 0) return NULL;
    if (cfg_pairs(cfg, "summary", &crb_cfg.nsum, crb_cfg.sum_attr, crb_cfg.sum_key) < 0) return NULL;
    if (cfg_pairs(cfg, "profile_meta", &crb_cfg.npm, crb_cfg.pm_attr, crb_cfg.pm_short) < 0) return NULL;
    if (cfg_pairs(cfg, "sweep", &crb_cfg.nsweep, crb_cfg.sweep_attr, crb_cfg.sweep_short) < 0) return NULL;
    if (cfg_str(cfg, "event_artifact", &crb_cfg.ev_artifact) < 0 ||
        cfg_str(cfg, "event_missing", &crb_cfg.ev_missing) < 0 ||
        cfg_str(cfg, "event_exception", &crb_cfg.ev_exception) < 0 ||
        cfg_str(cfg, "gen_ai_prefix", &crb_cfg.gen_ai_prefix) < 0 ||
        cfg_str(cfg, "schema_major", &crb_cfg.schema_major) < 0 ||
        cfg_str(cfg, "schema_version", &crb_cfg.schema_default) < 0 || cfg_str(cfg, "measured", &crb_cfg.measured) < 0 ||
        cfg_str(cfg, "unavailable", &crb_cfg.unavailable) < 0 || cfg_str(cfg, "unsupported", &crb_cfg.unsupported) < 0)
        return NULL;
    if (cfg_words(cfg, "provenance_words", &crb_cfg.prov) < 0 || cfg_words(cfg, "artifact_kinds", &crb_cfg.kinds) < 0 ||
        cfg_words(cfg, "missing_reasons", &crb_cfg.reasons) < 0 || cfg_words(cfg, "support_levels", &crb_cfg.levels) < 0)
        return NULL;
    Words st;
    if (cfg_words(cfg, "status_words", &st) < 0) return NULL;
    if (st.n != 3) {
        PyErr_SetString(PyExc_ValueError, "configure: status_words are (unset, ok, error)");
        return NULL;
    }
    for (int i = 0; i < 3; i++) crb_cfg.status_word[i] = st.w[i];
    PyObject *digests = cfg_seq(cfg, "digests");
    if (digests == NULL) return NULL;
    crb_cfg.digest_alg.n = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(digests); i++) {
        PyObject *it = PyTuple_GET_ITEM(digests, i);
        Py_ssize_t n;
        if (!PyTuple_Check(it) || PyTuple_GET_SIZE(it) != 2) {
            PyErr_SetString(PyExc_TypeError, "configure: digests are (algorithm, hex length)");
            return NULL;
        }
        const char *s = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(it, 0), &n);
        if (s == NULL) return NULL;
        crb_cfg.digest_alg.w[i] = own_bytes(s, n);
        crb_cfg.digest_len[i] = (int)PyLong_AsLong(PyTuple_GET_ITEM(it, 1));
        if (PyErr_Occurred()) return NULL;
        crb_cfg.digest_alg.n++;
    }
    PyObject *fields = PyDict_GetItemString(cfg, "fields");
    if (fields == NULL || !PyDict_Check(fields)) {
        PyErr_SetString(PyExc_KeyError, "configure: missing fields");
        return NULL;
    }
    if (check_fields(fields, "Trace", F_TRACE) < 0 || check_fields(fields, "TraceSpan", F_SPAN) < 0 ||
        check_fields(fields, "TraceArtifact", F_ART) < 0 || check_fields(fields, "MissingArtifact", F_MISS) < 0 ||
        check_fields(fields, "TraceRequest", F_REQ) < 0 || check_fields(fields, "Device", F_DEV) < 0 ||
        check_fields(fields, "Capabilities", F_CAPS) < 0 || check_fields(fields, "Intervention", F_INTERV) < 0)
        return NULL;
    PyObject *pf = PyDict_GetItemString(fields, "StageProfile");
    if (pf == NULL || !PyTuple_Check(pf) || PyTuple_GET_SIZE(pf) > MAXLIST) {
        PyErr_SetString(PyExc_KeyError, "configure: missing StageProfile fields");
        return NULL;
    }
    crb_cfg.nprofile_fields = 0;
    int seen_counters = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(pf); i++) {
        PyObject *f = PyTuple_GET_ITEM(pf, i);
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(f, &n);
        if (s == NULL) return NULL;
        int code;
        if (strcmp(s, "name") == 0) code = -1;
        else if (strcmp(s, "device") == 0) code = -2;
        else if (strcmp(s, "memory_method") == 0) code = -3;
        else if (strcmp(s, "provenance") == 0) code = -4;
        else if (strcmp(s, "metadata") == 0) code = -5;
        else {
            code = counter_index(s);
            if (code < 0) {
                PyErr_Format(PyExc_ValueError, "configure: StageProfile field %s is unknown here", s);
                return NULL;
            }
            seen_counters++;
        }
        crb_cfg.profile_field[crb_cfg.nprofile_fields++] = code;
    }
    if (seen_counters != crb_cfg.ncounters) {
        PyErr_SetString(PyExc_ValueError, "configure: StageProfile lacks a counter field");
        return NULL;
    }
    crb_cfg.nmeta_keys = 0;
    for (int i = 0; META_KEYS[i] != NULL; i++)
        crb_cfg.meta_keys[crb_cfg.nmeta_keys++] = own_bytes(META_KEYS[i], strlen(META_KEYS[i]));
    if (make_fragments() < 0 || crb_names_pack() < 0) return NULL;
    PyObject *pj = PyDict_GetItemString(cfg, "parse_json");
    if (pj == NULL || !PyCallable_Check(pj)) {
        PyErr_SetString(PyExc_KeyError, "configure: missing parse_json callable");
        return NULL;
    }
    Py_XDECREF(crb_cfg.parse_json);
    Py_INCREF(pj);
    crb_cfg.parse_json = pj;
    if (config_record(cfg, "stage_class", "stage_fields", 7, &crb_cfg.stage_cls, crb_cfg.stage_slots,
                      crb_cfg.stage_offset) ||
        config_record(cfg, "document_class", "document_fields", 11, &crb_cfg.doc_cls, crb_cfg.doc_slots,
                      crb_cfg.doc_offset))
        return NULL;
    crb_cfg.ready = 1;
    Py_RETURN_NONE;
}
