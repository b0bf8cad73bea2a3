/* vauban_trace.rebuild._crebuild: serialized OTLP protobuf of ONE clean trace -> the exact
 * ``Trace.to_json()`` text of ``rebuild_traces`` plus a small summary.
 *
 * This is an accelerator of the Python rebuild (the reference implementation), never a second
 * road: it handles only the clean common case and returns None for anything else, so that the
 * caller falls back to ``rebuild_traces``. Bailing is always safe; a wrong document is a bug.
 *
 * Every attribute name and vocabulary word comes from ``configure(cfg)`` (taken from
 * ``vauban_trace.semconv`` and ``vauban_trace.contract`` by ``_documents.py``): nothing here
 * spells an attribute name. The JSON field names of the contract records are checked against the
 * dataclass field tuples passed in ``cfg`` (a mismatch makes ``configure`` raise, and the caller
 * then runs without the accelerator).
 *
 * Layout: wire parsing (validating UTF-8, refusing bytes values, non-finite doubles, repeated
 * keys, repeated singular fields, links, string-index fields) -> trace analysis (one trace id,
 * unique span ids, one root, no orphan, one resource) -> JSON emission in the Python rebuild's
 * exact key order, bailing on every value the Python road would refuse or report.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const uint8_t *p;
    Py_ssize_t n;
} Str;

#define BAIL (-1)
#define TRY(x)                  \
    do {                        \
        if ((x) != 0) return BAIL; \
    } while (0)

static int str_eq(Str a, Str b) { return a.n == b.n && (a.n == 0 || memcmp(a.p, b.p, (size_t)a.n) == 0); }

/* ------------------------------------------------------------------------------------------ */
/* configuration                                                                              */
/* ------------------------------------------------------------------------------------------ */

#define MAXKEYS 512
#define HSIZE 2048
static Str key_names[MAXKEYS];
static int nkeys;
static int htab[HSIZE];

static uint32_t hash_bytes(const uint8_t *p, Py_ssize_t n) {
    /* word-at-a-time multiply-xor (keys share long prefixes: every byte counts) */
    uint64_t h = 0x9e3779b97f4a7c15ull ^ (uint64_t)n;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 29;
    }
    if (i < n) {
        uint64_t w = 0;
        memcpy(&w, p + i, (size_t)(n - i));
        h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
    }
    h ^= h >> 32;
    return (uint32_t)h;
}

static int lookup_key(const uint8_t *p, Py_ssize_t n) {
    uint32_t h = hash_bytes(p, n) & (HSIZE - 1);
    while (htab[h] >= 0) {
        Str k = key_names[htab[h]];
        if (k.n == n && memcmp(k.p, p, (size_t)n) == 0) return htab[h];
        h = (h + 1) & (HSIZE - 1);
    }
    return -1;
}

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

/* Intern a key; returns its id or -1 (with an exception set). */
static int intern_key(const char *s, Py_ssize_t n) {
    int id = lookup_key((const uint8_t *)s, n);
    if (id >= 0) return id;
    if (nkeys >= MAXKEYS) {
        PyErr_SetString(PyExc_ValueError, "too many attribute names");
        return -1;
    }
    Str o = own_bytes(s, n);
    if (o.p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    id = nkeys++;
    key_names[id] = o;
    uint32_t h = hash_bytes(o.p, n) & (HSIZE - 1);
    while (htab[h] >= 0) h = (h + 1) & (HSIZE - 1);
    htab[h] = id;
    return id;
}

#define MAXLIST 64
typedef struct {
    int n;
    Str w[MAXLIST];
} Words;

static int words_find(const Words *w, Str s) {
    for (int i = 0; i < w->n; i++)
        if (str_eq(w->w[i], s)) return i;
    return -1;
}

enum { NREQ = 10 };
enum { RQ_TEXT, RQ_REF, RQ_PROMPT, RQ_ARTS, RQ_LAYERS, RQ_INTERV, RQ_CHAT, RQ_LOGITS, RQ_LOGPROBS, RQ_META };

static struct {
    int stage, spill_of, device_kind, device_label, trace_root, schema_version, trace_metadata;
    int span_input_ids, span_metadata, error_type, memory_method, service_name;
    int executor_name, executor_version, cap_device_kinds, cap_notes;
    int req[NREQ];
    int art_id, art_kind, art_digest, art_uri, art_media_type, art_dtype, art_shape, art_byte_size, art_layer,
        art_metadata, missing_reason, missing_detail, exc_type, exc_message;
    int label[3];
    int k_events, k_remote_parent;
    int ncounters;
    int cnt_v[MAXLIST], cnt_p[MAXLIST], cnt_float[MAXLIST];
    Str cnt_name[MAXLIST];
    int c_duration, c_input_bytes, c_output_bytes, c_sync_points;
    int ncaps;
    int cap_attr[MAXLIST];
    Str cap_name[MAXLIST];
    int nsum;
    int sum_attr[MAXLIST];
    Str sum_key[MAXLIST];
    int npm;
    int pm_attr[MAXLIST];
    Str pm_short[MAXLIST];
    int nsweep;
    int sweep_attr[MAXLIST];
    Str sweep_short[MAXLIST];
    int nprofile_fields;
    int profile_field[MAXLIST]; /* >= 0 counter index; -1 name, -2 device, -3 memory_method, -4 provenance, -5 metadata */
    Str ev_artifact, ev_missing, ev_exception, gen_ai_prefix, schema_major, schema_default, measured, unavailable,
        unsupported;
    Words prov, kinds, reasons, levels, digest_alg;
    int digest_len[MAXLIST];
    Str status_word[3];
    Str meta_keys[16]; /* the keys the rebuild computes in Trace.metadata */
    int nmeta_keys;
    PyObject *parse_json; /* parse_json_attr: str -> (value, error | None) */
    PyTypeObject *stage_cls; /* StageObservation (slots dataclass), or NULL: plain tuples */
    PyObject *stage_slots[8];
    int ready;
} C;

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
    *out = intern_key(s, n);
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
    for (int i = 0; i < C.ncounters; i++)
        if ((size_t)C.cnt_name[i].n == strlen(name) && memcmp(C.cnt_name[i].p, name, strlen(name)) == 0) return i;
    return -1;
}

static PyObject *configure(PyObject *self, PyObject *cfg) {
    if (!PyDict_Check(cfg)) {
        PyErr_SetString(PyExc_TypeError, "configure takes a dict");
        return NULL;
    }
    C.ready = 0;
    for (int i = 0; i < nkeys; i++) PyMem_RawFree((void *)key_names[i].p);
    nkeys = 0;
    for (int i = 0; i < HSIZE; i++) htab[i] = -1;
    /* (the small owned vocabulary strings of an earlier configure are leaked: configure runs once) */
    struct {
        const char *name;
        int *slot;
    } keys[] = {
        {"stage", &C.stage}, {"spill_of", &C.spill_of}, {"device_kind", &C.device_kind},
        {"device_label", &C.device_label}, {"trace_root", &C.trace_root}, {"schema_version_attr", &C.schema_version},
        {"trace_metadata", &C.trace_metadata}, {"span_input_ids", &C.span_input_ids},
        {"span_metadata", &C.span_metadata}, {"error_type", &C.error_type}, {"memory_method", &C.memory_method},
        {"service_name", &C.service_name}, {"executor_name", &C.executor_name},
        {"executor_version", &C.executor_version}, {"cap_device_kinds", &C.cap_device_kinds},
        {"cap_notes", &C.cap_notes}, {"req_input_text", &C.req[RQ_TEXT]}, {"req_input_ref", &C.req[RQ_REF]},
        {"req_prompt_ids", &C.req[RQ_PROMPT]}, {"req_requested_artifacts", &C.req[RQ_ARTS]},
        {"req_layers", &C.req[RQ_LAYERS]}, {"req_interventions", &C.req[RQ_INTERV]},
        {"req_apply_chat_template", &C.req[RQ_CHAT]}, {"req_return_logits", &C.req[RQ_LOGITS]},
        {"req_return_logprobs", &C.req[RQ_LOGPROBS]}, {"req_metadata", &C.req[RQ_META]},
        {"art_id", &C.art_id}, {"art_kind", &C.art_kind}, {"art_digest", &C.art_digest}, {"art_uri", &C.art_uri},
        {"art_media_type", &C.art_media_type}, {"art_dtype", &C.art_dtype}, {"art_shape", &C.art_shape},
        {"art_byte_size", &C.art_byte_size}, {"art_layer", &C.art_layer}, {"art_metadata", &C.art_metadata},
        {"missing_reason", &C.missing_reason}, {"missing_detail", &C.missing_detail},
        {"exc_type", &C.exc_type}, {"exc_message", &C.exc_message},
    };
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (cfg_key(cfg, keys[i].name, keys[i].slot) < 0) return NULL;
    if (intern_key("events", 6) < 0) return NULL;
    C.k_events = lookup_key((const uint8_t *)"events", 6);
    C.k_remote_parent = intern_key("remote_parent_id", 16);
    if (C.k_remote_parent < 0) return NULL;
    PyObject *labels = cfg_seq(cfg, "label_keys");
    if (labels == NULL || PyTuple_GET_SIZE(labels) != 3) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "configure: label_keys must have 3 names");
        return NULL;
    }
    for (int i = 0; i < 3; i++)
        if (str_key(PyTuple_GET_ITEM(labels, i), &C.label[i]) < 0) return NULL;
    PyObject *counters = cfg_seq(cfg, "counters");
    if (counters == NULL) return NULL;
    C.ncounters = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(counters); i++) {
        PyObject *it = PyTuple_GET_ITEM(counters, i);
        if (!PyTuple_Check(it) || PyTuple_GET_SIZE(it) != 4) {
            PyErr_SetString(PyExc_TypeError, "configure: counters are (name, value attr, provenance attr, is_float)");
            return NULL;
        }
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(it, 0), &n);
        if (s == NULL) return NULL;
        C.cnt_name[i] = own_bytes(s, n);
        if (str_key(PyTuple_GET_ITEM(it, 1), &C.cnt_v[i]) < 0) return NULL;
        if (str_key(PyTuple_GET_ITEM(it, 2), &C.cnt_p[i]) < 0) return NULL;
        C.cnt_float[i] = PyObject_IsTrue(PyTuple_GET_ITEM(it, 3));
        C.ncounters++;
    }
    C.c_duration = counter_index("duration_s");
    C.c_input_bytes = counter_index("input_bytes");
    C.c_output_bytes = counter_index("output_bytes");
    C.c_sync_points = counter_index("sync_points");
    if (C.c_duration < 0 || C.c_input_bytes < 0 || C.c_output_bytes < 0 || C.c_sync_points < 0) {
        PyErr_SetString(PyExc_ValueError, "configure: counters lack a name the summary needs");
        return NULL;
    }
    if (cfg_pairs(cfg, "capabilities", &C.ncaps, C.cap_attr, C.cap_name) < 0) return NULL;
    if (cfg_pairs(cfg, "summary", &C.nsum, C.sum_attr, C.sum_key) < 0) return NULL;
    if (cfg_pairs(cfg, "profile_meta", &C.npm, C.pm_attr, C.pm_short) < 0) return NULL;
    if (cfg_pairs(cfg, "sweep", &C.nsweep, C.sweep_attr, C.sweep_short) < 0) return NULL;
    if (cfg_str(cfg, "event_artifact", &C.ev_artifact) < 0 || cfg_str(cfg, "event_missing", &C.ev_missing) < 0 ||
        cfg_str(cfg, "event_exception", &C.ev_exception) < 0 || cfg_str(cfg, "gen_ai_prefix", &C.gen_ai_prefix) < 0 ||
        cfg_str(cfg, "schema_major", &C.schema_major) < 0 || cfg_str(cfg, "schema_version", &C.schema_default) < 0 || cfg_str(cfg, "measured", &C.measured) < 0 ||
        cfg_str(cfg, "unavailable", &C.unavailable) < 0 || cfg_str(cfg, "unsupported", &C.unsupported) < 0)
        return NULL;
    if (cfg_words(cfg, "provenance_words", &C.prov) < 0 || cfg_words(cfg, "artifact_kinds", &C.kinds) < 0 ||
        cfg_words(cfg, "missing_reasons", &C.reasons) < 0 || cfg_words(cfg, "support_levels", &C.levels) < 0)
        return NULL;
    Words st;
    if (cfg_words(cfg, "status_words", &st) < 0) return NULL;
    if (st.n != 3) {
        PyErr_SetString(PyExc_ValueError, "configure: status_words are (unset, ok, error)");
        return NULL;
    }
    for (int i = 0; i < 3; i++) C.status_word[i] = st.w[i];
    PyObject *digests = cfg_seq(cfg, "digests");
    if (digests == NULL) return NULL;
    C.digest_alg.n = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(digests); i++) {
        PyObject *it = PyTuple_GET_ITEM(digests, i);
        Py_ssize_t n;
        if (!PyTuple_Check(it) || PyTuple_GET_SIZE(it) != 2) {
            PyErr_SetString(PyExc_TypeError, "configure: digests are (algorithm, hex length)");
            return NULL;
        }
        const char *s = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(it, 0), &n);
        if (s == NULL) return NULL;
        C.digest_alg.w[i] = own_bytes(s, n);
        C.digest_len[i] = (int)PyLong_AsLong(PyTuple_GET_ITEM(it, 1));
        if (PyErr_Occurred()) return NULL;
        C.digest_alg.n++;
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
    C.nprofile_fields = 0;
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
        C.profile_field[C.nprofile_fields++] = code;
    }
    if (seen_counters != C.ncounters) {
        PyErr_SetString(PyExc_ValueError, "configure: StageProfile lacks a counter field");
        return NULL;
    }
    C.nmeta_keys = 0;
    for (int i = 0; META_KEYS[i] != NULL; i++) C.meta_keys[C.nmeta_keys++] = own_bytes(META_KEYS[i], strlen(META_KEYS[i]));
    PyObject *pj = PyDict_GetItemString(cfg, "parse_json");
    if (pj == NULL || !PyCallable_Check(pj)) {
        PyErr_SetString(PyExc_KeyError, "configure: missing parse_json callable");
        return NULL;
    }
    Py_XDECREF(C.parse_json);
    Py_INCREF(pj);
    C.parse_json = pj;
    Py_CLEAR(C.stage_cls);
    for (int i = 0; i < 7; i++) Py_CLEAR(C.stage_slots[i]);
    PyObject *sc = PyDict_GetItemString(cfg, "stage_class");
    PyObject *sf = PyDict_GetItemString(cfg, "stage_fields");
    if (sc != NULL && sf != NULL) {
        if (!PyType_Check(sc) || !PyTuple_Check(sf) || PyTuple_GET_SIZE(sf) != 7) {
            PyErr_SetString(PyExc_TypeError, "configure: stage_class / stage_fields");
            return NULL;
        }
        for (int i = 0; i < 7; i++) {
            PyObject *d = PyObject_GetAttr(sc, PyTuple_GET_ITEM(sf, i));
            if (d == NULL) return NULL;
            if (!Py_IS_TYPE(d, &PyMemberDescr_Type)) {
                Py_DECREF(d);
                PyErr_SetString(PyExc_TypeError, "configure: stage_class fields must be slots");
                return NULL;
            }
            C.stage_slots[i] = d;
        }
        Py_INCREF(sc);
        C.stage_cls = (PyTypeObject *)sc;
    }
    C.ready = 1;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------------------------ */
/* output buffer and JSON text                                                                */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    char *p;
    size_t n, cap;
} Buf;

static int buf_reserve(Buf *b, size_t extra) {
    if (b->n + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + extra) cap *= 2;
    char *p = (char *)PyMem_RawRealloc(b->p, cap);
    if (p == NULL) return BAIL;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int put(Buf *b, const char *s, size_t n) {
    if (n == 0) return 0;
    TRY(buf_reserve(b, n));
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}
#define PUTS(b, lit) put((b), (lit), sizeof(lit) - 1)

static int put_u64(Buf *b, uint64_t v) {
    char tmp[24];
    int i = 24;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return put(b, tmp + i, (size_t)(24 - i));
}

static int put_i64(Buf *b, int64_t v) {
    if (v < 0) {
        TRY(PUTS(b, "-"));
        return put_u64(b, (uint64_t)0 - (uint64_t)v);
    }
    return put_u64(b, (uint64_t)v);
}

static int put_double(Buf *b, double x) {
    if (!isfinite(x)) return BAIL;
    char *s = PyOS_double_to_string(x, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (s == NULL) return BAIL;
    int r = put(b, s, strlen(s));
    PyMem_Free(s);
    return r;
}

static const char HEX[] = "0123456789abcdef";

static int put_u16esc(Buf *b, unsigned c) {
    char t[6] = {'\\', 'u', HEX[(c >> 12) & 15], HEX[(c >> 8) & 15], HEX[(c >> 4) & 15], HEX[c & 15]};
    return put(b, t, 6);
}

/* bytes json.dumps copies as they are: printable ASCII but the quote and the backslash */
static uint8_t PLAIN[256];

static void init_plain(void) {
    for (int c = 0x20; c <= 0x7e; c++) PLAIN[c] = 1;
    PLAIN['"'] = PLAIN['\\'] = 0;
}

/* first byte at or after p that json.dumps escapes (end if none): 8 bytes at a time */
static const uint8_t *plain_run(const uint8_t *q, const uint8_t *end) {
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    while (end - q >= 8) {
        uint64_t x;
        memcpy(&x, q, 8);
        uint64_t quote = x ^ (ones * '"'), bslash = x ^ (ones * '\\'), del = x ^ (ones * 0x7f);
        uint64_t bad = ((x - ones * 0x20) & ~x) | x | ((quote - ones) & ~quote) | ((bslash - ones) & ~bslash) |
                       ((del - ones) & ~del);
        if (bad & highs) break;
        q += 8;
    }
    while (q < end && PLAIN[*q]) q++;
    return q;
}

/* A JSON string (json.dumps, ensure_ascii=True) from valid UTF-8. */
static int put_jstr(Buf *b, Str s) {
    TRY(buf_reserve(b, (size_t)s.n + 2));
    b->p[b->n++] = '"';
    const uint8_t *p = s.p, *end = s.p + s.n;
    {
        const uint8_t *q = plain_run(p, end);
        if (q == end) { /* the common case: nothing to escape */
            if (s.n) memcpy(b->p + b->n, p, (size_t)s.n);
            b->n += (size_t)s.n;
            b->p[b->n++] = '"';
            return 0;
        }
    }
    while (p < end) {
        const uint8_t *q = plain_run(p, end);
        if (q > p) TRY(put(b, (const char *)p, (size_t)(q - p)));
        if (q >= end) break;
        unsigned c = *q;
        p = q + 1;
        if (c < 0x80) {
            switch (c) {
            case '"': TRY(PUTS(b, "\\\"")); break;
            case '\\': TRY(PUTS(b, "\\\\")); break;
            case '\n': TRY(PUTS(b, "\\n")); break;
            case '\r': TRY(PUTS(b, "\\r")); break;
            case '\t': TRY(PUTS(b, "\\t")); break;
            case '\b': TRY(PUTS(b, "\\b")); break;
            case '\f': TRY(PUTS(b, "\\f")); break;
            default: TRY(put_u16esc(b, c));
            }
            continue;
        }
        uint32_t cp;
        int extra;
        if (c >= 0xf0) { cp = c & 0x07; extra = 3; }
        else if (c >= 0xe0) { cp = c & 0x0f; extra = 2; }
        else { cp = c & 0x1f; extra = 1; }
        if (end - p < extra) return BAIL;
        for (int i = 0; i < extra; i++) cp = (cp << 6) | (p[i] & 0x3f);
        p += extra;
        if (cp >= 0x10000) {
            cp -= 0x10000;
            TRY(put_u16esc(b, 0xd800 | (cp >> 10)));
            TRY(put_u16esc(b, 0xdc00 | (cp & 0x3ff)));
        } else {
            TRY(put_u16esc(b, cp));
        }
    }
    TRY(buf_reserve(b, 1));
    b->p[b->n++] = '"';
    return 0;
}

static int put_hex(Buf *b, Str id) {
    TRY(buf_reserve(b, (size_t)id.n * 2 + 2));
    b->p[b->n++] = '"';
    for (Py_ssize_t i = 0; i < id.n; i++) {
        b->p[b->n++] = HEX[id.p[i] >> 4];
        b->p[b->n++] = HEX[id.p[i] & 15];
    }
    b->p[b->n++] = '"';
    return 0;
}

/* key of an object member: writes ", " unless first, then "key": */
static int put_key(Buf *b, int *first, Str k) {
    if (!*first) TRY(PUTS(b, ", "));
    *first = 0;
    TRY(put_jstr(b, k));
    return PUTS(b, ": ");
}

/* a literal key of this file (plain ASCII: written without escaping) */
static int put_keyc(Buf *b, int *first, const char *k) {
    size_t n = strlen(k); /* a constant: folded by the compiler after inlining */
    TRY(buf_reserve(b, n + 6));
    char *w = b->p + b->n;
    if (!*first) {
        *w++ = ',';
        *w++ = ' ';
    }
    *first = 0;
    *w++ = '"';
    memcpy(w, k, n);
    w += n;
    *w++ = '"';
    *w++ = ':';
    *w++ = ' ';
    b->n = (size_t)(w - b->p);
    return 0;
}

/* Python value (as json.loads + json_safe made it) -> JSON text, exactly as json.dumps. */
static int put_py(Buf *b, PyObject *v, int depth) {
    if (depth > 64) return BAIL;
    if (v == Py_None) return PUTS(b, "null");
    if (v == Py_True) return PUTS(b, "true");
    if (v == Py_False) return PUTS(b, "false");
    if (PyUnicode_CheckExact(v)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(v, &n);
        if (s == NULL) return BAIL; /* lone surrogates: let Python do it */
        Str t = {(const uint8_t *)s, n};
        return put_jstr(b, t);
    }
    if (PyLong_CheckExact(v)) {
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (!overflow) {
            if (x == -1 && PyErr_Occurred()) return BAIL;
            return put_i64(b, x);
        }
        PyObject *s = PyObject_Str(v);
        if (s == NULL) return BAIL;
        Py_ssize_t n;
        const char *c = PyUnicode_AsUTF8AndSize(s, &n);
        int r = c == NULL ? BAIL : put(b, c, (size_t)n);
        Py_DECREF(s);
        return r;
    }
    if (PyFloat_CheckExact(v)) return put_double(b, PyFloat_AS_DOUBLE(v));
    if (PyList_CheckExact(v) || PyTuple_CheckExact(v)) {
        TRY(PUTS(b, "["));
        Py_ssize_t n = PySequence_Fast_GET_SIZE(v);
        for (Py_ssize_t i = 0; i < n; i++) {
            if (i) TRY(PUTS(b, ", "));
            /* the list may not change under us: no Python code runs while writing */
            TRY(put_py(b, PySequence_Fast_GET_ITEM(v, i), depth + 1));
        }
        return PUTS(b, "]");
    }
    if (PyDict_CheckExact(v)) {
        TRY(PUTS(b, "{"));
        Py_ssize_t pos = 0;
        PyObject *k, *val;
        int first = 1;
        while (PyDict_Next(v, &pos, &k, &val)) {
            if (!PyUnicode_CheckExact(k)) return BAIL;
            Py_ssize_t n;
            const char *s = PyUnicode_AsUTF8AndSize(k, &n);
            if (s == NULL) return BAIL;
            Str ks = {(const uint8_t *)s, n};
            TRY(put_key(b, &first, ks));
            TRY(put_py(b, val, depth + 1));
        }
        return PUTS(b, "}");
    }
    return BAIL;
}

/* ------------------------------------------------------------------------------------------ */
/* protobuf wire parsing                                                                      */
/* ------------------------------------------------------------------------------------------ */

enum { V_NONE, V_STR, V_BOOL, V_INT, V_DBL, V_ARR, V_KVL };

typedef struct {
    Str key;
    Str s; /* string value, or the raw ArrayValue / KeyValueList message */
    int64_t i;
    double d;
    int kid;
    uint8_t type;
    uint8_t used, merged;
} Attr;

typedef struct {
    uint64_t time;
    Str name;
    int a0, an;
} Event;

typedef struct {
    Str trace_id, span_id, parent, name, status_msg, resource;
    uint64_t start, end, idkey, parentkey;
    int has_parent, parent_field_len, status;
    int a0, an, e0, en;
    int seq, marked;
} Span;

typedef struct {
    Attr *attrs;
    int nattrs, capattrs;
    Event *events;
    int nevents, capevents;
    Span *spans;
    int nspans, capspans;
    Str *scratch; /* kvlist key stack */
    int nscratch, capscratch;
    int has_spill;
} Ctx;

static Ctx G;
static int busy;

#define GROW(arr, n, cap, T)                                                  \
    do {                                                                      \
        if ((n) >= (cap)) {                                                   \
            int nc = (cap) ? (cap) * 2 : 64;                                  \
            T *np = (T *)PyMem_RawRealloc((arr), sizeof(T) * (size_t)nc);     \
            if (np == NULL) return BAIL;                                      \
            (arr) = np;                                                       \
            (cap) = nc;                                                       \
        }                                                                     \
    } while (0)

static int rd_varint(const uint8_t **pp, const uint8_t *end, uint64_t *out) {
    const uint8_t *p = *pp;
    uint64_t v = 0;
    for (int i = 0; i < 10; i++) {
        if (p >= end) return BAIL;
        uint8_t c = *p++;
        if (i == 9 && c > 1) return BAIL;
        v |= (uint64_t)(c & 0x7f) << (7 * i);
        if (!(c & 0x80)) {
            *pp = p;
            *out = v;
            return 0;
        }
    }
    return BAIL;
}

static int rd_tag(const uint8_t **pp, const uint8_t *end, uint32_t *field, int *wt) {
    uint64_t t;
    TRY(rd_varint(pp, end, &t));
    if (t > 0xffffffffu) return BAIL;
    *field = (uint32_t)(t >> 3);
    *wt = (int)(t & 7);
    if (*field == 0) return BAIL;
    return 0;
}

static int rd_len(const uint8_t **pp, const uint8_t *end, Str *out) {
    uint64_t n;
    TRY(rd_varint(pp, end, &n));
    if (n > (uint64_t)(end - *pp)) return BAIL;
    out->p = *pp;
    out->n = (Py_ssize_t)n;
    *pp += n;
    return 0;
}

static int rd_fixed64(const uint8_t **pp, const uint8_t *end, uint64_t *out) {
    if (end - *pp < 8) return BAIL;
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | (*pp)[i];
    *pp += 8;
    *out = v;
    return 0;
}

static int skip_field(const uint8_t **pp, const uint8_t *end, int wt) {
    uint64_t v;
    Str s;
    switch (wt) {
    case 0: return rd_varint(pp, end, &v);
    case 1: return rd_fixed64(pp, end, &v);
    case 2: return rd_len(pp, end, &s);
    case 5:
        if (end - *pp < 4) return BAIL;
        *pp += 4;
        return 0;
    default: return BAIL; /* groups and invalid wire types */
    }
}

static int valid_utf8(Str s) {
    const uint8_t *p = s.p, *end = s.p + s.n;
    while (end - p >= 8) { /* ASCII fast path */
        uint64_t w;
        memcpy(&w, p, 8);
        if (w & 0x8080808080808080ull) break;
        p += 8;
    }
    while (p < end) {
        uint8_t c = *p;
        if (c < 0x80) {
            p++;
            continue;
        }
        int n;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) { n = 1; cp = c & 0x1f; }
        else if (c >= 0xe0 && c <= 0xef) { n = 2; cp = c & 0x0f; }
        else if (c >= 0xf0 && c <= 0xf4) { n = 3; cp = c & 0x07; }
        else return BAIL;
        if (end - p <= n) return BAIL;
        for (int i = 1; i <= n; i++) {
            if ((p[i] & 0xc0) != 0x80) return BAIL;
            cp = (cp << 6) | (p[i] & 0x3f);
        }
        if ((n == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)))
            return BAIL;
        p += n + 1;
    }
    return 0;
}

static int rd_string(const uint8_t **pp, const uint8_t *end, Str *out) {
    TRY(rd_len(pp, end, out));
    return valid_utf8(*out);
}

static int parse_kv(Str m, Attr *a, int depth);

/* AnyValue -> a (type + value); validates nested arrays / kvlists fully. */
static int parse_any(Str m, Attr *a, int depth) {
    if (depth > 24) return BAIL;
    const uint8_t *p = m.p, *end = m.p + m.n;
    int set = 0;
    a->type = V_NONE;
    while (p < end) {
        uint32_t f;
        int wt;
        TRY(rd_tag(&p, end, &f, &wt));
        uint64_t v;
        Str s;
        switch (f) {
        case 1:
            if (wt != 2 || set++) return BAIL;
            TRY(rd_string(&p, end, &a->s));
            a->type = V_STR;
            break;
        case 2:
            if (wt != 0 || set++) return BAIL;
            TRY(rd_varint(&p, end, &v));
            if (v > 1) return BAIL;
            a->type = V_BOOL;
            a->i = (int64_t)v;
            break;
        case 3:
            if (wt != 0 || set++) return BAIL;
            TRY(rd_varint(&p, end, &v));
            a->type = V_INT;
            a->i = (int64_t)v;
            break;
        case 4:
            if (wt != 1 || set++) return BAIL;
            TRY(rd_fixed64(&p, end, &v));
            memcpy(&a->d, &v, 8);
            if (!isfinite(a->d)) return BAIL;
            a->type = V_DBL;
            break;
        case 5: { /* ArrayValue: 1 repeated AnyValue */
            if (wt != 2 || set++) return BAIL;
            TRY(rd_len(&p, end, &s));
            a->type = V_ARR;
            a->s = s;
            const uint8_t *q = s.p, *qe = s.p + s.n;
            while (q < qe) {
                uint32_t f2;
                int wt2;
                TRY(rd_tag(&q, qe, &f2, &wt2));
                if (f2 == 1) {
                    Str e;
                    Attr tmp;
                    if (wt2 != 2) return BAIL;
                    TRY(rd_len(&q, qe, &e));
                    TRY(parse_any(e, &tmp, depth + 1));
                } else {
                    TRY(skip_field(&q, qe, wt2));
                }
            }
            break;
        }
        case 6: { /* KeyValueList: 1 repeated KeyValue, keys unique */
            if (wt != 2 || set++) return BAIL;
            TRY(rd_len(&p, end, &s));
            a->type = V_KVL;
            a->s = s;
            int base = G.nscratch;
            const uint8_t *q = s.p, *qe = s.p + s.n;
            while (q < qe) {
                uint32_t f2;
                int wt2;
                TRY(rd_tag(&q, qe, &f2, &wt2));
                if (f2 == 1) {
                    Str e;
                    Attr tmp;
                    if (wt2 != 2) return BAIL;
                    TRY(rd_len(&q, qe, &e));
                    TRY(parse_kv(e, &tmp, depth + 1));
                    for (int i = base; i < G.nscratch; i++)
                        if (str_eq(G.scratch[i], tmp.key)) return BAIL;
                    GROW(G.scratch, G.nscratch, G.capscratch, Str);
                    G.scratch[G.nscratch++] = tmp.key;
                } else {
                    TRY(skip_field(&q, qe, wt2));
                }
            }
            G.nscratch = base;
            break;
        }
        case 7: /* bytes */
        case 8: /* string_value_strindex */
            return BAIL;
        default: TRY(skip_field(&p, end, wt));
        }
    }
    return 0;
}

static int parse_kv(Str m, Attr *a, int depth) {
    const uint8_t *p = m.p, *end = m.p + m.n;
    int seen_key = 0, seen_val = 0;
    a->key.p = m.p;
    a->key.n = 0;
    a->type = V_NONE;
    a->used = a->merged = 0;
    while (p < end) {
        uint32_t f;
        int wt;
        TRY(rd_tag(&p, end, &f, &wt));
        if (f == 1) {
            if (wt != 2 || seen_key++) return BAIL;
            TRY(rd_string(&p, end, &a->key));
        } else if (f == 2) {
            Str v;
            if (wt != 2 || seen_val++) return BAIL;
            TRY(rd_len(&p, end, &v));
            TRY(parse_any(v, a, depth + 1));
        } else if (f == 3) {
            return BAIL; /* key_strindex */
        } else {
            TRY(skip_field(&p, end, wt));
        }
    }
    a->kid = lookup_key(a->key.p, a->key.n);
    return 0;
}

/* Append one KeyValue to G.attrs. */
static int push_attr(Str m) {
    GROW(G.attrs, G.nattrs, G.capattrs, Attr);
    Attr *a = &G.attrs[G.nattrs];
    TRY(parse_kv(m, a, 0));
    G.nattrs++;
    return 0;
}

/* No key twice in attrs[a0 .. a0+an) (attributes() is a dict comprehension). */
static int unique_keys(int a0, int an) {
    for (int i = a0 + 1; i < a0 + an; i++) {
        const Attr *x = &G.attrs[i];
        for (int j = a0; j < i; j++) {
            const Attr *y = &G.attrs[j];
            /* interned names are unique: known keys compare by id */
            if (x->kid >= 0 || y->kid >= 0) {
                if (x->kid == y->kid) return BAIL;
            } else if (str_eq(x->key, y->key)) {
                return BAIL;
            }
        }
    }
    return 0;
}

/* a message holding KeyValues at field `kvfield`; strings at the fields of the mask
 * `strmask`; varints at `varmask`; anything in `bailmask` makes us bail. */
static int validate_msg(Str m, uint32_t kvfield, uint32_t strmask, uint32_t varmask, uint32_t bailmask) {
    const uint8_t *p = m.p, *end = m.p + m.n;
    uint32_t seen = 0;
    while (p < end) {
        uint32_t f;
        int wt;
        TRY(rd_tag(&p, end, &f, &wt));
        if (f < 32 && (bailmask & (1u << f))) return BAIL;
        if (f == kvfield) {
            Str s;
            Attr tmp;
            if (wt != 2) return BAIL;
            TRY(rd_len(&p, end, &s));
            TRY(parse_kv(s, &tmp, 0));
        } else if (f < 32 && (strmask & (1u << f))) {
            Str s;
            if (wt != 2 || (seen & (1u << f))) return BAIL;
            seen |= 1u << f;
            TRY(rd_string(&p, end, &s));
        } else if (f < 32 && (varmask & (1u << f))) {
            uint64_t v;
            if (wt != 0 || (seen & (1u << f))) return BAIL;
            seen |= 1u << f;
            TRY(rd_varint(&p, end, &v));
        } else {
            TRY(skip_field(&p, end, wt));
        }
    }
    return 0;
}

static int parse_event(Str m) {
    GROW(G.events, G.nevents, G.capevents, Event);
    Event *e = &G.events[G.nevents];
    memset(e, 0, sizeof(*e));
    e->a0 = G.nattrs;
    const uint8_t *p = m.p, *end = m.p + m.n;
    uint32_t seen = 0;
    while (p < end) {
        uint32_t f;
        int wt;
        TRY(rd_tag(&p, end, &f, &wt));
        Str s;
        uint64_t v;
        switch (f) {
        case 1:
            if (wt != 1 || (seen & 2)) return BAIL;
            seen |= 2;
            TRY(rd_fixed64(&p, end, &v));
            G.events[G.nevents].time = v;
            break;
        case 2:
            if (wt != 2 || (seen & 4)) return BAIL;
            seen |= 4;
            TRY(rd_string(&p, end, &s));
            G.events[G.nevents].name = s;
            break;
        case 3:
            if (wt != 2) return BAIL;
            TRY(rd_len(&p, end, &s));
            TRY(push_attr(s));
            break;
        case 4:
            if (wt != 0 || (seen & 16)) return BAIL;
            seen |= 16;
            TRY(rd_varint(&p, end, &v));
            break;
        default: TRY(skip_field(&p, end, wt));
        }
    }
    e = &G.events[G.nevents];
    e->an = G.nattrs - e->a0;
    TRY(unique_keys(e->a0, e->an));
    G.nevents++;
    return 0;
}

static int parse_status(Str m, Span *sp) {
    const uint8_t *p = m.p, *end = m.p + m.n;
    int seen_msg = 0, seen_code = 0;
    while (p < end) {
        uint32_t f;
        int wt;
        TRY(rd_tag(&p, end, &f, &wt));
        if (f == 2) {
            if (wt != 2 || seen_msg++) return BAIL;
            TRY(rd_string(&p, end, &sp->status_msg));
        } else if (f == 3) {
            uint64_t v;
            if (wt != 0 || seen_code++) return BAIL;
            TRY(rd_varint(&p, end, &v));
            if (v > 2) return BAIL;
            sp->status = (int)v;
        } else {
            TRY(skip_field(&p, end, wt));
        }
    }
    return 0;
}

static int parse_span(Str m, Str resource, int seq) {
    GROW(G.spans, G.nspans, G.capspans, Span);
    Span sp;
    memset(&sp, 0, sizeof(sp));
    sp.resource = resource;
    sp.seq = seq;
    sp.a0 = G.nattrs;
    sp.e0 = G.nevents;
    const uint8_t *p = m.p, *end = m.p + m.n;
    uint32_t seen = 0;
    int attrs_done = 0; /* attributes must be contiguous in G.attrs: events push their own */
    int in_attrs = 0;
    (void)in_attrs;
    /* Two passes: attributes first (contiguous), then events (each pushes its attributes). */
    while (p < end) {
        uint32_t f;
        int wt;
        TRY(rd_tag(&p, end, &f, &wt));
        Str s;
        uint64_t v;
        if (f <= 16 && f != 9 && f != 11 && f != 13) {
            if (seen & (1u << f)) return BAIL;
            seen |= 1u << f;
        }
        switch (f) {
        case 1: if (wt != 2) return BAIL; TRY(rd_len(&p, end, &sp.trace_id)); break;
        case 2: if (wt != 2) return BAIL; TRY(rd_len(&p, end, &sp.span_id)); break;
        case 3: if (wt != 2) return BAIL; TRY(rd_string(&p, end, &s)); break;
        case 4: if (wt != 2) return BAIL; TRY(rd_len(&p, end, &sp.parent)); break;
        case 5: if (wt != 2) return BAIL; TRY(rd_string(&p, end, &sp.name)); break;
        case 6: case 10: case 12: case 14:
            if (wt != 0) return BAIL;
            TRY(rd_varint(&p, end, &v));
            break;
        case 7: if (wt != 1) return BAIL; TRY(rd_fixed64(&p, end, &sp.start)); break;
        case 8: if (wt != 1) return BAIL; TRY(rd_fixed64(&p, end, &sp.end)); break;
        case 9:
            if (wt != 2) return BAIL;
            TRY(rd_len(&p, end, &s));
            TRY(push_attr(s));
            break;
        case 11:
            if (wt != 2) return BAIL;
            TRY(rd_len(&p, end, &s));
            break; /* second pass */
        case 13: return BAIL; /* links: rare, ignored by the rebuild; let Python validate them */
        case 15:
            if (wt != 2) return BAIL;
            TRY(rd_len(&p, end, &s));
            TRY(parse_status(s, &sp));
            break;
        case 16:
            if (wt != 5) return BAIL;
            TRY(skip_field(&p, end, wt));
            break;
        default: TRY(skip_field(&p, end, wt));
        }
    }
    sp.an = G.nattrs - sp.a0;
    attrs_done = 1;
    (void)attrs_done;
    TRY(unique_keys(sp.a0, sp.an));
    for (int i = sp.a0; i < sp.a0 + sp.an; i++)
        if (G.attrs[i].kid == C.spill_of) G.has_spill = 1;
    p = m.p;
    while (p < end) {
        uint32_t f;
        int wt;
        TRY(rd_tag(&p, end, &f, &wt));
        if (f == 11) {
            Str s;
            TRY(rd_len(&p, end, &s));
            TRY(parse_event(s));
        } else {
            TRY(skip_field(&p, end, wt));
        }
    }
    sp.en = G.nevents - sp.e0;
    G.spans[G.nspans++] = sp;
    return 0;
}

static int parse_scope_spans(Str m, Str resource, int *seq) {
    const uint8_t *p = m.p, *end = m.p + m.n;
    int seen_scope = 0, seen_url = 0;
    while (p < end) {
        uint32_t f;
        int wt;
        TRY(rd_tag(&p, end, &f, &wt));
        Str s;
        if (f == 1) {
            if (wt != 2 || seen_scope++) return BAIL;
            TRY(rd_len(&p, end, &s));
            TRY(validate_msg(s, 3, (1u << 1) | (1u << 2), 1u << 4, 0));
        } else if (f == 2) {
            if (wt != 2) return BAIL;
            TRY(rd_len(&p, end, &s));
            TRY(parse_span(s, resource, (*seq)++));
        } else if (f == 3) {
            if (wt != 2 || seen_url++) return BAIL;
            TRY(rd_string(&p, end, &s));
        } else {
            TRY(skip_field(&p, end, wt));
        }
    }
    return 0;
}

static int parse_resource_spans(Str m, int *seq) {
    const uint8_t *p = m.p, *end = m.p + m.n;
    Str resource = {m.p, 0};
    int seen_res = 0, seen_url = 0;
    while (p < end) { /* pass 1: resource, schema_url */
        uint32_t f;
        int wt;
        TRY(rd_tag(&p, end, &f, &wt));
        Str s;
        if (f == 1) {
            if (wt != 2 || seen_res++) return BAIL;
            TRY(rd_len(&p, end, &resource));
            TRY(validate_msg(resource, 1, 0, 1u << 2, 1u << 3)); /* entity_refs: bail */
        } else if (f == 3) {
            if (wt != 2 || seen_url++) return BAIL;
            TRY(rd_string(&p, end, &s));
        } else if (f == 2) {
            if (wt != 2) return BAIL;
            TRY(rd_len(&p, end, &s));
        } else {
            TRY(skip_field(&p, end, wt));
        }
    }
    p = m.p;
    while (p < end) {
        uint32_t f;
        int wt;
        TRY(rd_tag(&p, end, &f, &wt));
        if (f == 2) {
            Str s;
            TRY(rd_len(&p, end, &s));
            TRY(parse_scope_spans(s, resource, seq));
        } else {
            TRY(skip_field(&p, end, wt));
        }
    }
    return 0;
}

static int parse_traces_data(Str m) {
    const uint8_t *p = m.p, *end = m.p + m.n;
    int seq = 0;
    while (p < end) {
        uint32_t f;
        int wt;
        TRY(rd_tag(&p, end, &f, &wt));
        if (f == 1) {
            Str s;
            if (wt != 2) return BAIL;
            TRY(rd_len(&p, end, &s));
            TRY(parse_resource_spans(s, &seq));
        } else {
            TRY(skip_field(&p, end, wt));
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* attribute index (generation-stamped, one for span attributes, one for event attributes)    */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    int idx[MAXKEYS];
    unsigned gen[MAXKEYS];
    unsigned g;
    int a0, an;
} Index;

static Index IS, IE, IL;

static void index_build(Index *ix, int a0, int an) {
    ix->g++;
    if (ix->g == 0) {
        memset(ix->gen, 0, sizeof(ix->gen));
        ix->g = 1;
    }
    ix->a0 = a0;
    ix->an = an;
    for (int i = a0; i < a0 + an; i++) {
        int k = G.attrs[i].kid;
        if (k >= 0) {
            ix->idx[k] = i;
            ix->gen[k] = ix->g;
        }
    }
}

static Attr *get(Index *ix, int kid) {
    if (kid < 0 || ix->gen[kid] != ix->g) return NULL;
    return &G.attrs[ix->idx[kid]];
}

/* consume: get + mark used */
static Attr *take(Index *ix, int kid) {
    Attr *a = get(ix, kid);
    if (a != NULL) a->used = 1;
    return a;
}

/* ------------------------------------------------------------------------------------------ */
/* wire values -> JSON                                                                        */
/* ------------------------------------------------------------------------------------------ */

static int put_attr_value(Buf *b, const Attr *a, int depth);

static int put_array_msg(Buf *b, Str m, int depth) {
    TRY(PUTS(b, "["));
    const uint8_t *q = m.p, *qe = m.p + m.n;
    int first = 1;
    while (q < qe) {
        uint32_t f;
        int wt;
        TRY(rd_tag(&q, qe, &f, &wt));
        if (f == 1) {
            Str e;
            Attr tmp;
            TRY(rd_len(&q, qe, &e));
            TRY(parse_any(e, &tmp, depth + 1));
            if (!first) TRY(PUTS(b, ", "));
            first = 0;
            TRY(put_attr_value(b, &tmp, depth + 1));
        } else {
            TRY(skip_field(&q, qe, wt));
        }
    }
    return PUTS(b, "]");
}

static int put_kvlist_msg(Buf *b, Str m, int depth) {
    TRY(PUTS(b, "{"));
    const uint8_t *q = m.p, *qe = m.p + m.n;
    int first = 1;
    while (q < qe) {
        uint32_t f;
        int wt;
        TRY(rd_tag(&q, qe, &f, &wt));
        if (f == 1) {
            Str e;
            Attr tmp;
            TRY(rd_len(&q, qe, &e));
            TRY(parse_kv(e, &tmp, depth + 1));
            TRY(put_key(b, &first, tmp.key));
            TRY(put_attr_value(b, &tmp, depth + 1));
        } else {
            TRY(skip_field(&q, qe, wt));
        }
    }
    return PUTS(b, "}");
}

static int put_attr_value(Buf *b, const Attr *a, int depth) {
    switch (a->type) {
    case V_NONE: return PUTS(b, "null");
    case V_STR: return put_jstr(b, a->s);
    case V_BOOL: return a->i ? PUTS(b, "true") : PUTS(b, "false");
    case V_INT: return put_i64(b, a->i);
    case V_DBL: return put_double(b, a->d);
    case V_ARR: return put_array_msg(b, a->s, depth);
    case V_KVL: return put_kvlist_msg(b, a->s, depth);
    }
    return BAIL;
}

/* Iterate the elements of an ArrayValue attribute: calls back with each element. */
typedef int (*ElemFn)(const Attr *e, void *ud);
static int each_elem(const Attr *a, ElemFn fn, void *ud) {
    const uint8_t *q = a->s.p, *qe = a->s.p + a->s.n;
    while (q < qe) {
        uint32_t f;
        int wt;
        TRY(rd_tag(&q, qe, &f, &wt));
        if (f == 1) {
            Str e;
            Attr tmp;
            TRY(rd_len(&q, qe, &e));
            TRY(parse_any(e, &tmp, 1));
            TRY(fn(&tmp, ud));
        } else {
            TRY(skip_field(&q, qe, wt));
        }
    }
    return 0;
}

/* list of non-negative ints -> JSON */
typedef struct {
    Buf *b;
    int first;
} ListCtx;

static int elem_nonneg_int(const Attr *e, void *ud) {
    ListCtx *lc = (ListCtx *)ud;
    if (e->type != V_INT || e->i < 0) return BAIL;
    if (!lc->first) TRY(PUTS(lc->b, ", "));
    lc->first = 0;
    return put_i64(lc->b, e->i);
}

static int put_nonneg_int_list(Buf *b, const Attr *a) {
    if (a->type != V_ARR) return BAIL;
    ListCtx lc = {b, 1};
    TRY(PUTS(b, "["));
    TRY(each_elem(a, elem_nonneg_int, &lc));
    return PUTS(b, "]");
}

/* _str_list: a str is [str]; an array must hold only strings. */
typedef struct {
    Buf *b;
    int first;
    Str *items;
    int nitems, cap;
} StrListCtx;

static int elem_str(const Attr *e, void *ud) {
    StrListCtx *lc = (StrListCtx *)ud;
    if (e->type != V_STR) return BAIL;
    if (lc->items != NULL) {
        if (lc->nitems >= lc->cap) return BAIL;
        lc->items[lc->nitems++] = e->s;
    }
    if (!lc->first) TRY(PUTS(lc->b, ", "));
    lc->first = 0;
    return put_jstr(lc->b, e->s);
}

static int put_str_list(Buf *b, const Attr *a, Str *items, int *nitems, int cap) {
    StrListCtx lc = {b, 1, items, 0, cap};
    TRY(PUTS(b, "["));
    if (a->type == V_STR) TRY(elem_str(a, &lc));
    else if (a->type == V_ARR) TRY(each_elem(a, elem_str, &lc));
    else return BAIL;
    if (nitems != NULL) *nitems = lc.nitems;
    return PUTS(b, "]");
}

/* parse_json_attr on a string attribute: a new reference to the parsed dict (or list when
 * want_list), NULL to bail. */
static PyObject *parse_json_value(const Attr *a, int want_list) {
    if (a->type != V_STR) return NULL;
    PyObject *text = PyUnicode_DecodeUTF8((const char *)a->s.p, a->s.n, "strict");
    if (text == NULL) return NULL;
    PyObject *res = PyObject_CallOneArg(C.parse_json, text);
    Py_DECREF(text);
    if (res == NULL) return NULL;
    if (!PyTuple_Check(res) || PyTuple_GET_SIZE(res) != 2 || PyTuple_GET_ITEM(res, 1) != Py_None) {
        Py_DECREF(res);
        return NULL;
    }
    PyObject *v = PyTuple_GET_ITEM(res, 0);
    if (want_list ? !PyList_CheckExact(v) : !PyDict_CheckExact(v)) {
        Py_DECREF(res);
        return NULL;
    }
    Py_INCREF(v);
    Py_DECREF(res);
    return v;
}

/* metadata object: `parsed` (may be NULL) updated with the unused attributes of ix's list.
 * Leaves the object open (no closing brace); *first tells whether anything was written. */
static int put_merged(Buf *b, PyObject *parsed, Index *ix, int *first) {
    TRY(PUTS(b, "{"));
    *first = 1;
    if (parsed != NULL) {
        Py_ssize_t pos = 0;
        PyObject *k, *val;
        while (PyDict_Next(parsed, &pos, &k, &val)) {
            if (!PyUnicode_CheckExact(k)) return BAIL;
            Py_ssize_t n;
            const char *s = PyUnicode_AsUTF8AndSize(k, &n);
            if (s == NULL) return BAIL;
            Str ks = {(const uint8_t *)s, n};
            TRY(put_key(b, first, ks));
            Attr *hit = NULL;
            for (int i = ix->a0; i < ix->a0 + ix->an; i++) {
                Attr *a = &G.attrs[i];
                if (!a->used && !a->merged && str_eq(a->key, ks)) {
                    hit = a;
                    break;
                }
            }
            if (hit != NULL) {
                hit->merged = 1;
                TRY(put_attr_value(b, hit, 0));
            } else {
                TRY(put_py(b, val, 0));
            }
        }
    }
    for (int i = ix->a0; i < ix->a0 + ix->an; i++) {
        Attr *a = &G.attrs[i];
        if (a->used || a->merged) continue;
        TRY(put_key(b, first, a->key));
        TRY(put_attr_value(b, a, 0));
    }
    return 0;
}

/* a parsed dict or the remaining attributes hold key k: used to refuse collisions with the keys
 * the rebuild adds afterwards (dict assignment would keep the earlier position). */
static int has_key(PyObject *parsed, Index *ix, int kid, const char *k) {
    if (parsed != NULL && PyDict_GetItemString(parsed, k) != NULL) return 1;
    Attr *a = get(ix, kid);
    return a != NULL && !a->used;
}

static int valid_digest(Str d) {
    for (int i = 0; i < C.digest_alg.n; i++) {
        Str alg = C.digest_alg.w[i];
        if (d.n == alg.n + 1 + C.digest_len[i] && memcmp(d.p, alg.p, (size_t)alg.n) == 0 && d.p[alg.n] == ':') {
            for (Py_ssize_t j = alg.n + 1; j < d.n; j++) {
                uint8_t c = d.p[j];
                if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return BAIL;
            }
            return 0;
        }
    }
    return BAIL;
}

/* ------------------------------------------------------------------------------------------ */
/* the trace                                                                                  */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    Buf head;  /* "request", "device", "capabilities" members */
    Buf spans, arts, miss, meta_extra;
    Str *art_ids;
    int nart, capart;
    Str *inputs; /* every input artifact id, checked at the end */
    int ninputs, capinputs;
    int nerrors;
    PyObject *stages; /* list */
    /* root facts */
    Str schema_version;
    int has_schema;
    PyObject *trace_meta;
    int root_idx;
    Str remote_parent;
    int has_remote;
    int has_caps, has_version;
    Str caps_executor, exec_version;
    Attr *exec_version_attr;
    Attr *sweep_attrs[MAXLIST];
    int gen_ai[256];
    int ngen_ai;
} Out;

static void out_free(Out *o) {
    PyMem_RawFree(o->head.p);
    PyMem_RawFree(o->spans.p);
    PyMem_RawFree(o->arts.p);
    PyMem_RawFree(o->miss.p);
    PyMem_RawFree(o->meta_extra.p);
    PyMem_RawFree(o->art_ids);
    PyMem_RawFree(o->inputs);
    Py_XDECREF(o->stages);
    Py_XDECREF(o->trace_meta);
}

static int is_word(const Words *w, const Attr *a) { return a != NULL && a->type == V_STR && words_find(w, a->s) >= 0; }

/* device_of: (kind, label) strings or absent; writes the Device JSON or null. */
static int put_device(Buf *b, Index *ix) {
    Attr *kind = take(ix, C.device_kind), *label = take(ix, C.device_label);
    if (kind == NULL && label == NULL) return PUTS(b, "null");
    if ((kind != NULL && kind->type != V_STR) || (label != NULL && label->type != V_STR)) return BAIL;
    int first = 1;
    TRY(PUTS(b, "{"));
    TRY(put_keyc(b, &first, "kind"));
    if (kind != NULL) TRY(put_jstr(b, kind->s));
    else TRY(PUTS(b, "\"unknown\""));
    TRY(put_keyc(b, &first, "label"));
    if (label != NULL) TRY(put_jstr(b, label->s));
    else TRY(PUTS(b, "\"\""));
    return PUTS(b, "}");
}

static int elem_collect_str(const Attr *e, void *ud) {
    StrListCtx *lc = (StrListCtx *)ud;
    if (e->type != V_STR || lc->nitems >= lc->cap) return BAIL;
    lc->items[lc->nitems++] = e->s;
    return 0;
}

static int put_interventions(Buf *b, const Attr *a) {
    PyObject *list = parse_json_value(a, 1);
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
        if (PUTS(b, "{") || put_keyc(b, &first, "name") || put_py(b, name, 0) || put_keyc(b, &first, "layer_index") ||
            put_py(b, layer, 0) || put_keyc(b, &first, "params"))
            goto done;
        if (params == NULL || params == Py_None) {
            if (PUTS(b, "{}")) goto done;
        } else if (put_py(b, params, 0)) {
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
        r[i] = take(ix, C.req[i]);
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
    TRY(put_hex(b, trace_id));
    TRY(put_keyc(b, &first, "input_text"));
    TRY(r[RQ_TEXT] ? put_jstr(b, r[RQ_TEXT]->s) : PUTS(b, "null"));
    TRY(put_keyc(b, &first, "prompt_ids"));
    TRY(r[RQ_PROMPT] ? put_nonneg_int_list(b, r[RQ_PROMPT]) : PUTS(b, "null"));
    TRY(put_keyc(b, &first, "input_ref"));
    TRY(r[RQ_REF] ? put_jstr(b, r[RQ_REF]->s) : PUTS(b, "null"));
    TRY(put_keyc(b, &first, "requested_artifacts"));
    if (r[RQ_ARTS]) {
        Str items[MAXLIST];
        int n = 0;
        TRY(put_str_list(b, r[RQ_ARTS], items, &n, MAXLIST));
        for (int i = 0; i < n; i++) {
            if (words_find(&C.kinds, items[i]) < 0) return BAIL;
            for (int j = 0; j < i; j++)
                if (str_eq(items[i], items[j])) return BAIL;
        }
    } else {
        TRY(PUTS(b, "[]"));
    }
    TRY(put_keyc(b, &first, "collect_layers"));
    TRY(r[RQ_LAYERS] ? put_nonneg_int_list(b, r[RQ_LAYERS]) : PUTS(b, "[]"));
    TRY(put_keyc(b, &first, "interventions"));
    TRY(r[RQ_INTERV] ? put_interventions(b, r[RQ_INTERV]) : PUTS(b, "[]"));
    const char *bnames[3] = {"apply_chat_template", "return_logits", "return_logprobs"};
    for (int i = 0; i < 3; i++) {
        TRY(put_keyc(b, &first, bnames[i]));
        TRY(bools[i] ? PUTS(b, "true") : PUTS(b, "false"));
    }
    TRY(put_keyc(b, &first, "metadata"));
    if (r[RQ_META]) {
        PyObject *d = parse_json_value(r[RQ_META], 0);
        if (d == NULL) return BAIL;
        int rc = put_py(b, d, 0);
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
    Attr *executor = take(ix, C.executor_name);
    Attr *version = take(ix, C.executor_version);
    Attr *levels[MAXLIST];
    int nlevels = 0;
    for (int i = 0; i < C.ncaps; i++) {
        levels[i] = take(ix, C.cap_attr[i]);
        if (levels[i] != NULL) nlevels++;
    }
    Attr *kinds = take(ix, C.cap_device_kinds);
    Attr *notes = get(ix, C.cap_notes);
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
        TRY(put_jstr(b, executor->s));
        o->caps_executor = executor->s;
    } else {
        static const uint8_t unknown[] = "unknown";
        o->caps_executor.p = unknown;
        o->caps_executor.n = 7;
        TRY(PUTS(b, "\"unknown\""));
    }
    o->has_caps = 1;
    TRY(put_keyc(b, &first, "device_kinds"));
    TRY(kinds ? put_str_list(b, kinds, NULL, NULL, 0) : PUTS(b, "[]"));
    TRY(put_keyc(b, &first, "levels"));
    TRY(PUTS(b, "{"));
    int f2 = 1;
    for (int i = 0; i < C.ncaps; i++) {
        TRY(put_key(b, &f2, C.cap_name[i]));
        if (levels[i] != NULL) {
            if (!is_word(&C.levels, levels[i])) return BAIL;
            TRY(put_jstr(b, levels[i]->s));
        } else {
            TRY(put_jstr(b, C.unsupported));
        }
    }
    TRY(PUTS(b, "}"));
    TRY(put_keyc(b, &first, "notes"));
    if (notes != NULL) {
        PyObject *d = parse_json_value(notes, 0);
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
            for (int i = 0; i < C.ncaps; i++)
                if (str_eq(C.cap_name[i], ks)) known = 1;
            if (!known) continue;
            rc = put_key(b, &f3, ks);
            if (rc) break;
            if (PyUnicode_CheckExact(v)) {
                rc = put_py(b, v, 0);
            } else {
                PyObject *sv = PyObject_Str(v);
                rc = sv == NULL ? BAIL : put_py(b, sv, 0);
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
static int root_facts(Out *o, Span *root, Str trace_id) {
    Index *ix = &IS;
    index_build(ix, root->a0, root->an);
    Attr *v = take(ix, C.schema_version);
    if (v != NULL) {
        if (v->type != V_STR) return BAIL;
        Py_ssize_t dot = 0;
        while (dot < v->s.n && v->s.p[dot] != '.') dot++;
        Str major = {v->s.p, dot};
        if (!str_eq(major, C.schema_major)) return BAIL;
        o->schema_version = v->s;
        o->has_schema = 1;
    }
    TRY(PUTS(&o->head, ", \"request\": "));
    TRY(put_request(o, ix, trace_id));
    TRY(PUTS(&o->head, ", \"device\": "));
    /* device_of does not consume here for the span itself: the span pass takes them again */
    TRY(put_device(&o->head, ix));
    TRY(PUTS(&o->head, ", \"capabilities\": "));
    TRY(put_capabilities(o, ix));
    Attr *tm = take(ix, C.trace_metadata);
    if (tm != NULL) {
        o->trace_meta = parse_json_value(tm, 0);
        if (o->trace_meta == NULL) return BAIL;
        for (int i = 0; i < C.nmeta_keys; i++) {
            PyObject *k = PyUnicode_DecodeUTF8((const char *)C.meta_keys[i].p, C.meta_keys[i].n, "strict");
            if (k == NULL) return BAIL;
            int has = PyDict_Contains(o->trace_meta, k);
            Py_DECREF(k);
            if (has != 0) return BAIL;
        }
    }
    for (int i = 0; i < C.nsweep; i++) o->sweep_attrs[i] = take(ix, C.sweep_attr[i]);
    /* gen_ai: attributes left now (stage/device/root marker are not gen_ai names) */
    o->ngen_ai = 0;
    for (int i = root->a0; i < root->a0 + root->an; i++) {
        Attr *a = &G.attrs[i];
        if (a->used || a->key.n < C.gen_ai_prefix.n || memcmp(a->key.p, C.gen_ai_prefix.p, (size_t)C.gen_ai_prefix.n))
            continue;
        if (o->ngen_ai >= 256) return BAIL;
        o->gen_ai[o->ngen_ai++] = i;
    }
    return 0;
}

typedef struct {
    int ev;
    uint64_t time;
} EvRef;

static int cmp_evref(const void *a, const void *b) {
    const EvRef *x = (const EvRef *)a, *y = (const EvRef *)b;
    if (x->time != y->time) return x->time < y->time ? -1 : 1;
    return x->ev - y->ev;
}

static int put_artifact(Out *o, int ev, Str producer) {
    Event *e = &G.events[ev];
    Index *ix = &IE;
    index_build(ix, e->a0, e->an);
    Buf *b = &o->arts;
    Attr *id = take(ix, C.art_id);
    if (id == NULL || id->type != V_STR || id->s.n == 0) return BAIL;
    Attr *kind = take(ix, C.art_kind);
    if (!is_word(&C.kinds, kind)) return BAIL;
    Attr *dtype = take(ix, C.art_dtype), *digest = take(ix, C.art_digest), *uri = take(ix, C.art_uri),
         *media = take(ix, C.art_media_type), *shape = take(ix, C.art_shape), *size = take(ix, C.art_byte_size),
         *layer = take(ix, C.art_layer);
    if ((dtype && dtype->type != V_STR) || (digest && digest->type != V_STR) || (uri && uri->type != V_STR) ||
        (media && media->type != V_STR))
        return BAIL;
    if (digest != NULL && valid_digest(digest->s) != 0) return BAIL;
    if ((size && (size->type != V_INT || size->i < 0)) || (layer && (layer->type != V_INT || layer->i < 0))) return BAIL;
    GROW(o->art_ids, o->nart, o->capart, Str);
    o->art_ids[o->nart++] = id->s;
    if (b->n) TRY(PUTS(b, ", "));
    int first = 1;
    TRY(PUTS(b, "{"));
    TRY(put_keyc(b, &first, "id"));
    TRY(put_jstr(b, id->s));
    TRY(put_keyc(b, &first, "kind"));
    TRY(put_jstr(b, kind->s));
    TRY(put_keyc(b, &first, "producer_span_id"));
    TRY(put_hex(b, producer));
    TRY(put_keyc(b, &first, "shape"));
    TRY(shape ? put_nonneg_int_list(b, shape) : PUTS(b, "[]"));
    const struct {
        const char *name;
        Attr *a;
    } text[] = {{"dtype", dtype}, {"digest", digest}, {"uri", uri}, {"media_type", media}};
    for (int i = 0; i < 4; i++) {
        TRY(put_keyc(b, &first, text[i].name));
        TRY(text[i].a ? put_jstr(b, text[i].a->s) : PUTS(b, "null"));
    }
    TRY(put_keyc(b, &first, "byte_size"));
    TRY(size ? put_i64(b, size->i) : PUTS(b, "null"));
    TRY(put_keyc(b, &first, "layer"));
    TRY(layer ? put_i64(b, layer->i) : PUTS(b, "null"));
    TRY(put_keyc(b, &first, "summary"));
    TRY(PUTS(b, "{"));
    int f2 = 1;
    for (int i = 0; i < C.nsum; i++) {
        Attr *s = take(ix, C.sum_attr[i]);
        if (s == NULL) continue;
        TRY(put_key(b, &f2, C.sum_key[i]));
        TRY(put_attr_value(b, s, 0));
    }
    TRY(PUTS(b, "}"));
    TRY(put_keyc(b, &first, "metadata"));
    Attr *meta = take(ix, C.art_metadata);
    PyObject *parsed = NULL;
    if (meta != NULL) {
        parsed = parse_json_value(meta, 0);
        if (parsed == NULL) return BAIL;
    }
    int f3;
    int rc = put_merged(b, parsed, ix, &f3);
    Py_XDECREF(parsed);
    TRY(rc);
    TRY(PUTS(b, "}"));
    return PUTS(b, "}");
}

static int put_missing(Out *o, int ev, Str span_id) {
    Event *e = &G.events[ev];
    Index *ix = &IE;
    index_build(ix, e->a0, e->an);
    Buf *b = &o->miss;
    Attr *layer = take(ix, C.art_layer), *kind = take(ix, C.art_kind), *reason = take(ix, C.missing_reason),
         *detail = take(ix, C.missing_detail);
    if (!is_word(&C.kinds, kind) || !is_word(&C.reasons, reason)) return BAIL;
    if (detail != NULL && detail->type != V_STR) return BAIL;
    if (layer != NULL && (layer->type != V_INT || layer->i < 0)) return BAIL;
    if (b->n) TRY(PUTS(b, ", "));
    int first = 1;
    TRY(PUTS(b, "{"));
    TRY(put_keyc(b, &first, "kind"));
    TRY(put_jstr(b, kind->s));
    TRY(put_keyc(b, &first, "reason"));
    TRY(put_jstr(b, reason->s));
    TRY(put_keyc(b, &first, "detail"));
    TRY(detail ? put_jstr(b, detail->s) : PUTS(b, "\"\""));
    TRY(put_keyc(b, &first, "span_id"));
    TRY(put_hex(b, span_id));
    TRY(put_keyc(b, &first, "layer"));
    TRY(layer ? put_i64(b, layer->i) : PUTS(b, "null"));
    return PUTS(b, "}");
}

/* _error_text for a span with status error */
static int put_error(Buf *b, Span *sp) {
    if (sp->status_msg.n > 0) return put_jstr(b, sp->status_msg);
    for (int k = sp->e0; k < sp->e0 + sp->en; k++) {
        Event *e = &G.events[k];
        if (!str_eq(e->name, C.ev_exception)) continue;
        index_build(&IE, e->a0, e->an);
        Attr *t = get(&IE, C.exc_type), *m = get(&IE, C.exc_message);
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
            rc = put_jstr(b, s);
        }
        PyMem_RawFree(tmp.p);
        return rc;
    }
    index_build(&IS, sp->a0, sp->an); /* (caller re-indexes after) */
    Attr *et = get(&IS, C.error_type);
    if (et == NULL || et->type == V_NONE) return PUTS(b, "null");
    if (et->type != V_STR) return BAIL;
    return put_jstr(b, et->s);
}

/* A StageObservation from the 7-tuple t: allocated and filled through its slot descriptors
 * (what the dataclass __init__ does with object.__setattr__, minus the Python frames). */
static PyObject *make_slotted(PyObject *t) {
    PyTypeObject *cls = C.stage_cls;
    PyObject *obj = cls->tp_alloc(cls, 0);
    if (obj == NULL) return NULL;
    for (int i = 0; i < 7; i++) {
        PyObject *d = C.stage_slots[i];
        if (Py_TYPE(d)->tp_descr_set(d, obj, PyTuple_GET_ITEM(t, i)) < 0) {
            Py_DECREF(obj);
            return NULL;
        }
    }
    return obj;
}

typedef struct {
    int has;
    int is_int;
    int64_t i;
    double d;
} CVal;

static PyObject *cval_obj(const CVal *v) {
    if (!v->has) Py_RETURN_NONE;
    return v->is_int ? PyLong_FromLongLong(v->i) : PyFloat_FromDouble(v->d);
}

static int put_span(Out *o, Span *sp, int is_root) {
    Buf *b = &o->spans;
    Index *ix = &IS;
    /* error text first (it re-indexes IS) */
    Buf err = {NULL, 0, 0};
    if (sp->status == 2) {
        if (put_error(&err, sp)) {
            PyMem_RawFree(err.p);
            return BAIL;
        }
    }
    index_build(ix, sp->a0, sp->an);
    int rc = BAIL;
    PyObject *span_meta = NULL;
    Attr *stage = take(ix, C.stage);
    if (stage != NULL && stage->type != V_STR) goto done;
    Buf dev = {NULL, 0, 0};
    if (put_device(&dev, ix)) {
        PyMem_RawFree(dev.p);
        goto done;
    }
    if (is_root) take(ix, C.trace_root);
    int has_dur = sp->end > 0 && sp->end >= sp->start;
    if (has_dur && sp->end - sp->start > ((uint64_t)1 << 53)) {
        PyMem_RawFree(dev.p);
        goto done;
    }
    double dur = has_dur ? (double)(sp->end - sp->start) / 1e9 : 0.0;
    /* build_profile */
    CVal val[MAXLIST];
    int prov[MAXLIST], prov_order[MAXLIST + 1], nprov = 0;
    memset(val, 0, sizeof(val));
    for (int c = 0; c < C.ncounters; c++) {
        prov[c] = -1;
        Attr *raw = take(ix, C.cnt_v[c]), *word = take(ix, C.cnt_p[c]);
        if (raw == NULL && word == NULL) continue;
        if (word != NULL) {
            int w = word->type == V_STR ? words_find(&C.prov, word->s) : -1;
            if (w < 0) goto bad_profile;
            prov[c] = w;
            prov_order[nprov++] = c;
        }
        if (raw == NULL || raw->type == V_NONE) continue;
        CVal *v = &val[c];
        if (C.cnt_float[c]) {
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
        if (prov[c] >= 0 && str_eq(C.prov.w[prov[c]], C.unavailable)) goto bad_profile;
        v->has = 1;
    }
    if (!val[C.c_duration].has && prov[C.c_duration] < 0 && has_dur) {
        val[C.c_duration].has = 1;
        val[C.c_duration].d = dur;
        prov[C.c_duration] = words_find(&C.prov, C.measured);
        if (prov[C.c_duration] < 0) goto bad_profile;
        prov_order[nprov++] = C.c_duration;
    }
    Attr *method = take(ix, C.memory_method);
    if (method != NULL && method->type != V_STR) goto bad_profile;
    Attr *pm[MAXLIST];
    for (int i = 0; i < C.npm; i++) pm[i] = take(ix, C.pm_attr[i]);
    Attr *inputs = take(ix, C.span_input_ids);
    Attr *smeta = take(ix, C.span_metadata);
    if (smeta != NULL) {
        span_meta = parse_json_value(smeta, 0);
        if (span_meta == NULL) goto bad_profile;
    }
    /* the span's artifact / missing / other events */
    EvRef arts[512], miss[512];
    int na = 0, nm = 0, nother = 0;
    for (int k = sp->e0; k < sp->e0 + sp->en; k++) {
        Event *e = &G.events[k];
        if (str_eq(e->name, C.ev_artifact)) {
            if (na >= 512) goto bad_profile;
            arts[na].ev = k;
            arts[na++].time = e->time;
        } else if (str_eq(e->name, C.ev_missing)) {
            if (nm >= 512) goto bad_profile;
            miss[nm].ev = k;
            miss[nm++].time = e->time;
        } else {
            nother++;
        }
    }
    qsort(arts, (size_t)na, sizeof(EvRef), cmp_evref);
    qsort(miss, (size_t)nm, sizeof(EvRef), cmp_evref);
    /* metadata keys the rebuild assigns after the attributes must not collide */
    if ((is_root && o->has_remote && has_key(span_meta, ix, C.k_remote_parent, "remote_parent_id")) ||
        (nother && has_key(span_meta, ix, C.k_events, "events")))
        goto bad_profile;

    /* ---- write the span ---- */
    if (b->n && PUTS(b, ", ")) goto bad_profile;
    int first = 1;
    if (PUTS(b, "{") || put_keyc(b, &first, "id") || put_hex(b, sp->span_id) || put_keyc(b, &first, "name") ||
        put_jstr(b, sp->name) || put_keyc(b, &first, "stage") || (stage ? put_jstr(b, stage->s) : PUTS(b, "null")) ||
        put_keyc(b, &first, "parent_id") || (sp->has_parent && !is_root ? put_hex(b, sp->parent) : PUTS(b, "null")) ||
        put_keyc(b, &first, "start_unix_nano") || put_u64(b, sp->start) || put_keyc(b, &first, "end_unix_nano") ||
        put_u64(b, sp->end) || put_keyc(b, &first, "status") || put_jstr(b, C.status_word[sp->status]) ||
        put_keyc(b, &first, "error") || (sp->status == 2 ? put(b, err.p, err.n) : PUTS(b, "null")) ||
        put_keyc(b, &first, "profile") || PUTS(b, "{"))
        goto bad_profile;
    int pf = 1;
    for (int i = 0; i < C.nprofile_fields; i++) {
        int code = C.profile_field[i];
        if (code == -1) {
            if (put_keyc(b, &pf, "name") || put_jstr(b, stage ? stage->s : sp->name)) goto bad_profile;
        } else if (code == -2) {
            if (put_keyc(b, &pf, "device") || put(b, dev.p, dev.n)) goto bad_profile;
        } else if (code == -3) {
            if (put_keyc(b, &pf, "memory_method") || (method ? put_jstr(b, method->s) : PUTS(b, "null")))
                goto bad_profile;
        } else if (code == -4) {
            if (put_keyc(b, &pf, "provenance") || PUTS(b, "{")) goto bad_profile;
            int f2 = 1;
            for (int j = 0; j < nprov; j++) {
                int c = prov_order[j];
                if (put_key(b, &f2, C.cnt_name[c]) || put_jstr(b, C.prov.w[prov[c]])) goto bad_profile;
            }
            if (PUTS(b, "}")) goto bad_profile;
        } else if (code == -5) {
            if (put_keyc(b, &pf, "metadata") || PUTS(b, "{")) goto bad_profile;
            int f2 = 1;
            for (int j = 0; j < C.npm; j++) {
                if (pm[j] == NULL) continue;
                if (put_key(b, &f2, C.pm_short[j]) || put_attr_value(b, pm[j], 0)) goto bad_profile;
            }
            if (PUTS(b, "}")) goto bad_profile;
        } else {
            CVal *v = &val[code];
            if (put_key(b, &pf, C.cnt_name[code])) goto bad_profile;
            if (!v->has ? PUTS(b, "null") : v->is_int ? put_i64(b, v->i) : put_double(b, v->d)) goto bad_profile;
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
        } else if (inputs->type != V_ARR || each_elem(inputs, elem_collect_str, &lc)) {
            goto bad_profile;
        }
        for (int j = 0; j < lc.nitems; j++) {
            if ((j && PUTS(b, ", ")) || put_jstr(b, items[j])) goto bad_profile;
            GROW(o->inputs, o->ninputs, o->capinputs, Str);
            o->inputs[o->ninputs++] = items[j];
        }
    }
    if (PUTS(b, "]") || put_keyc(b, &first, "output_artifact_ids") || PUTS(b, "[")) goto bad_profile;
    for (int j = 0; j < na; j++) {
        Event *e = &G.events[arts[j].ev];
        index_build(&IE, e->a0, e->an);
        Attr *id = get(&IE, C.art_id);
        if (id == NULL || id->type != V_STR) goto bad_profile;
        if ((j && PUTS(b, ", ")) || put_jstr(b, id->s)) goto bad_profile;
    }
    if (PUTS(b, "]") || put_keyc(b, &first, "metadata")) goto bad_profile;
    int mf;
    if (put_merged(b, span_meta, ix, &mf)) goto bad_profile;
    if (is_root && o->has_remote) {
        if (put_keyc(b, &mf, "remote_parent_id") || put_hex(b, o->remote_parent)) goto bad_profile;
    }
    if (nother) {
        if (put_keyc(b, &mf, "events") || PUTS(b, "[")) goto bad_profile;
        int ef = 1;
        for (int k = sp->e0; k < sp->e0 + sp->en; k++) {
            Event *e = &G.events[k];
            if (str_eq(e->name, C.ev_artifact) || str_eq(e->name, C.ev_missing)) continue;
            if (!ef && PUTS(b, ", ")) goto bad_profile;
            ef = 0;
            int f4 = 1;
            if (PUTS(b, "{") || put_keyc(b, &f4, "name") || put_jstr(b, e->name) ||
                put_keyc(b, &f4, "time_unix_nano") || put_u64(b, e->time) || put_keyc(b, &f4, "attributes"))
                goto bad_profile;
            index_build(&IE, e->a0, e->an);
            int f5;
            if (put_merged(b, NULL, &IE, &f5) || PUTS(b, "}}")) goto bad_profile;
        }
        if (PUTS(b, "]")) goto bad_profile;
    }
    if (PUTS(b, "}}")) goto bad_profile;
    /* artifacts and missing records of this span */
    for (int j = 0; j < na; j++)
        if (put_artifact(o, arts[j].ev, sp->span_id)) goto bad_profile;
    for (int j = 0; j < nm; j++)
        if (put_missing(o, miss[j].ev, sp->span_id)) goto bad_profile;
    if (sp->status == 2) o->nerrors++;
    if (stage != NULL) {
        CVal *d = &val[C.c_duration];
        PyObject *dur_obj;
        if (d->has) dur_obj = PyFloat_FromDouble(d->d);
        else if (sp->end >= sp->start && sp->start > 0) dur_obj = PyFloat_FromDouble((double)(sp->end - sp->start) / 1e9);
        else dur_obj = Py_NewRef(Py_None);
        PyObject *sync_prov;
        if (prov[C.c_sync_points] >= 0) {
            Str w = C.prov.w[prov[C.c_sync_points]];
            sync_prov = PyUnicode_DecodeUTF8((const char *)w.p, w.n, "strict");
        } else {
            sync_prov = Py_NewRef(Py_None);
        }
        char sid[16];
        for (int j = 0; j < 8; j++) {
            sid[2 * j] = HEX[sp->span_id.p[j] >> 4];
            sid[2 * j + 1] = HEX[sp->span_id.p[j] & 15];
        }
        PyObject *t = Py_BuildValue("(NNNNNNN)", PyUnicode_DecodeASCII(sid, 16, "strict"),
                                    PyUnicode_DecodeUTF8((const char *)stage->s.p, stage->s.n, "strict"), dur_obj,
                                    cval_obj(&val[C.c_input_bytes]), cval_obj(&val[C.c_output_bytes]),
                                    cval_obj(&val[C.c_sync_points]), sync_prov);
        if (t == NULL) goto bad_profile;
        if (C.stage_cls != NULL) { /* the StageObservation itself, filled through its slots */
            PyObject *obj = make_slotted(t);
            Py_DECREF(t);
            if (obj == NULL) goto bad_profile;
            t = obj;
        }
        int ar = PyList_Append(o->stages, t);
        Py_DECREF(t);
        if (ar) goto bad_profile;
    }
    rc = 0;
bad_profile:
    PyMem_RawFree(dev.p);
done:
    PyMem_RawFree(err.p);
    Py_XDECREF(span_meta);
    return rc;
}

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
    Py_ssize_t n = x->n < y->n ? x->n : y->n;
    int c = n ? memcmp(x->p, y->p, (size_t)n) : 0;
    if (c) return c;
    return x->n < y->n ? -1 : x->n > y->n;
}

static uint64_t be64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
    return v;
}

static PyObject *scalar_obj(const Attr *a) {
    switch (a->type) {
    case V_STR: return PyUnicode_DecodeUTF8((const char *)a->s.p, a->s.n, "strict");
    case V_BOOL: return PyBool_FromLong((long)a->i);
    case V_INT: return PyLong_FromLongLong(a->i);
    case V_DBL: return PyFloat_FromDouble(a->d);
    default: Py_RETURN_NONE;
    }
}

/* The whole road; returns a new tuple, or NULL to bail (exception cleared by the caller). */
static PyObject *rebuild(Str data) {
    G.nattrs = G.nevents = G.nspans = G.nscratch = 0;
    G.has_spill = 0;
    if (parse_traces_data(data) || G.nspans == 0 || G.has_spill) return NULL;
    int n = G.nspans;
    Str trace_id = G.spans[0].trace_id;
    if (trace_id.n != 16) return NULL;
    Span **order = (Span **)PyMem_RawMalloc(sizeof(Span *) * (size_t)n);
    uint64_t *ids = (uint64_t *)PyMem_RawMalloc(sizeof(uint64_t) * (size_t)n);
    Out o;
    memset(&o, 0, sizeof(o));
    PyObject *result = NULL;
    if (order == NULL || ids == NULL) goto out;
    Span *marked = NULL;
    for (int i = 0; i < n; i++) {
        Span *sp = &G.spans[i];
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
        index_build(&IS, sp->a0, sp->an);
        Attr *r = get(&IS, C.trace_root);
        sp->marked = r != NULL && r->type == V_BOOL && r->i;
        if (sp->marked) {
            if (marked != NULL) goto out;
            marked = sp;
        }
        order[i] = sp;
    }
    qsort(ids, (size_t)n, sizeof(uint64_t), cmp_u64);
    for (int i = 1; i < n; i++)
        if (ids[i] == ids[i - 1]) goto out;
    qsort(order, (size_t)n, sizeof(Span *), cmp_span_order);
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
    o.stages = PyList_New(0);
    if (o.stages == NULL) goto out;
    if (root_facts(&o, root, trace_id)) goto out;
    for (int i = 0; i < n; i++)
        if (put_span(&o, order[i], order[i] == root)) goto out;
    /* artifact ids unique; every input id names an artifact */
    if (o.nart > 1) {
        qsort(o.art_ids, (size_t)o.nart, sizeof(Str), cmp_str);
        for (int i = 1; i < o.nart; i++)
            if (str_eq(o.art_ids[i], o.art_ids[i - 1])) goto out;
    }
    for (int i = 0; i < o.ninputs; i++)
        if (o.nart == 0 || bsearch(&o.inputs[i], o.art_ids, (size_t)o.nart, sizeof(Str), cmp_str) == NULL) goto out;
    /* resource */
    Buf res = {NULL, 0, 0};
    Attr *service = NULL;
    {
        int a0 = G.nattrs;
        Str rm = root->resource;
        const uint8_t *p = rm.p, *end = rm.p + rm.n;
        int bad = 0;
        while (p < end && !bad) {
            uint32_t f;
            int wt;
            if (rd_tag(&p, end, &f, &wt)) { bad = 1; break; }
            if (f == 1) {
                Str s;
                if (rd_len(&p, end, &s) || push_attr(s)) bad = 1;
            } else if (skip_field(&p, end, wt)) {
                bad = 1;
            }
        }
        int an = G.nattrs - a0;
        if (bad || unique_keys(a0, an)) goto out;
        index_build(&IL, a0, an);
        service = get(&IL, C.service_name);
        if (service != NULL && service->type != V_STR) goto out;
        int rf;
        if (put_merged(&res, NULL, &IL, &rf) || PUTS(&res, "}")) {
            PyMem_RawFree(res.p);
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
            rc = put_key(m, &mf, kk) || put_py(m, v, 0);
        }
    }
    if (!rc) {
        rc = put_keyc(m, &mf, "service_name") || (service ? put_jstr(m, service->s) : PUTS(m, "null")) ||
             put_keyc(m, &mf, "services") || PUTS(m, "[") || (service ? put_jstr(m, service->s) : 0) || PUTS(m, "]") ||
             put_keyc(m, &mf, "span_count") || put_u64(m, (uint64_t)n) || put_keyc(m, &mf, "artifact_count") ||
             put_u64(m, (uint64_t)o.nart) || put_keyc(m, &mf, "error_count") || put_u64(m, (uint64_t)o.nerrors) ||
             put_keyc(m, &mf, "start_unix_nano") || (min_start ? put_u64(m, min_start) : PUTS(m, "null")) ||
             put_keyc(m, &mf, "end_unix_nano") || (max_end ? put_u64(m, max_end) : PUTS(m, "null")) ||
             put_keyc(m, &mf, "duration_s");
    }
    if (!rc) {
        if (min_start && max_end && max_end >= min_start) {
            if (max_end - min_start > ((uint64_t)1 << 53)) rc = BAIL;
            else rc = put_double(m, (double)(max_end - min_start) / 1e9);
        } else {
            rc = PUTS(m, "null");
        }
    }
    if (!rc)
        rc = put_keyc(m, &mf, "root_span_id") || put_hex(m, root->span_id) || put_keyc(m, &mf, "root_name") ||
             put_jstr(m, root->name);
    if (!rc && o.ngen_ai) {
        rc = put_keyc(m, &mf, "gen_ai") || PUTS(m, "{");
        int gf = 1;
        for (int i = 0; !rc && i < o.ngen_ai; i++) {
            Attr *a = &G.attrs[o.gen_ai[i]];
            Str short_key = {a->key.p + C.gen_ai_prefix.n, a->key.n - C.gen_ai_prefix.n};
            rc = put_key(m, &gf, short_key) || put_attr_value(m, a, 0);
        }
        if (!rc) rc = PUTS(m, "}");
    }
    if (!rc && (o.has_caps || o.has_version)) {
        int ef = 1;
        rc = put_keyc(m, &mf, "executor") || PUTS(m, "{") || put_keyc(m, &ef, "name") ||
             (o.has_caps ? put_jstr(m, o.caps_executor) : PUTS(m, "null")) || put_keyc(m, &ef, "version") ||
             (o.has_version ? put_jstr(m, o.exec_version) : PUTS(m, "null")) || PUTS(m, "}");
    }
    if (!rc) {
        int any = 0;
        for (int i = 0; i < C.nsweep; i++) any |= o.sweep_attrs[i] != NULL;
        if (any) {
            rc = put_keyc(m, &mf, "sweep") || PUTS(m, "{");
            int sf = 1;
            for (int i = 0; !rc && i < C.nsweep; i++) {
                if (o.sweep_attrs[i] == NULL) continue;
                rc = put_key(m, &sf, C.sweep_short[i]) || put_attr_value(m, o.sweep_attrs[i], 0);
            }
            if (!rc) rc = PUTS(m, "}");
        }
    }
    if (!rc) rc = PUTS(m, "}");
    if (rc) {
        PyMem_RawFree(res.p);
        goto out;
    }
    /* assemble */
    Buf all = {NULL, 0, 0};
    rc = PUTS(&all, "{\"id\": ") || put_hex(&all, trace_id) || PUTS(&all, ", \"schema_version\": ") ||
         put_jstr(&all, o.has_schema ? o.schema_version : C.schema_default) || put(&all, o.head.p, o.head.n) ||
         PUTS(&all, ", \"spans\": [") || put(&all, o.spans.p, o.spans.n) || PUTS(&all, "], \"artifacts\": [") ||
         put(&all, o.arts.p, o.arts.n) || PUTS(&all, "], \"missing\": [") || put(&all, o.miss.p, o.miss.n) ||
         PUTS(&all, "], \"complete\": true, \"problems\": [], \"resource\": ") || put(&all, res.p, res.n) ||
         PUTS(&all, ", \"metadata\": ") || put(&all, m->p, m->n) || PUTS(&all, "}");
    PyMem_RawFree(res.p);
    if (rc) {
        PyMem_RawFree(all.p);
        goto out;
    }
    PyObject *json = PyUnicode_New((Py_ssize_t)all.n, 127); /* the text is ASCII by construction */
    if (json != NULL) memcpy(PyUnicode_1BYTE_DATA(json), all.p, all.n);
    PyMem_RawFree(all.p);
    if (json == NULL) goto out;
    /* root labels by the collector's rule */
    Span *lroot = marked;
    for (int i = 0; i < n && lroot == NULL; i++)
        if (G.spans[i].parent_field_len == 0) lroot = &G.spans[i];
    PyObject *labels;
    if (lroot == NULL) {
        labels = Py_NewRef(Py_None);
    } else {
        index_build(&IS, lroot->a0, lroot->an);
        labels = PyTuple_New(3);
        for (int i = 0; labels != NULL && i < 3; i++) {
            Attr *a = get(&IS, C.label[i]);
            PyObject *v = a == NULL ? Py_NewRef(Py_None) : scalar_obj(a);
            if (v == NULL) {
                Py_CLEAR(labels);
                break;
            }
            PyTuple_SET_ITEM(labels, i, v);
        }
    }
    PyObject *stages = labels == NULL ? NULL : PyList_AsTuple(o.stages);
    if (labels == NULL || stages == NULL) {
        Py_DECREF(json);
        Py_XDECREF(labels);
        goto out;
    }
    char tid[32];
    for (int i = 0; i < 16; i++) {
        tid[2 * i] = HEX[trace_id.p[i] >> 4];
        tid[2 * i + 1] = HEX[trace_id.p[i] & 15];
    }
    PyObject *service_obj = service ? scalar_obj(service) : Py_NewRef(Py_None);
    result = Py_BuildValue("(s#NONNNNnNN)", tid, (Py_ssize_t)32, json, Py_True, service_obj,
                           PyUnicode_DecodeUTF8((const char *)root->name.p, root->name.n, "strict"),
                           PyLong_FromUnsignedLongLong(root->start), PyLong_FromUnsignedLongLong(root->end),
                           (Py_ssize_t)n, stages, labels);
out:
    PyMem_RawFree(order);
    PyMem_RawFree(ids);
    out_free(&o);
    return result;
}

static PyObject *rebuild_one(PyObject *self, PyObject *arg) {
    if (!C.ready || busy) Py_RETURN_NONE;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) { /* not contiguous bytes: the Python road */
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    busy = 1;
    Str data = {(const uint8_t *)view.buf, view.len};
    PyObject *r = rebuild(data);
    busy = 0;
    PyBuffer_Release(&view);
    if (r == NULL) {
        if (PyErr_Occurred()) {
            /* KeyboardInterrupt & co. (raised in a json.loads call) and MemoryError propagate;
             * anything else only means "not the clean case": the Python road reproduces it */
            if (!PyErr_ExceptionMatches(PyExc_Exception) || PyErr_ExceptionMatches(PyExc_MemoryError)) return NULL;
            PyErr_Clear();
        }
        Py_RETURN_NONE;
    }
    return r;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_O, "configure(cfg: dict) -> None: attribute names and vocabularies."},
    {"rebuild_one", rebuild_one, METH_O,
     "rebuild_one(data) -> (trace_id, json, complete, service, root_name, start, end, span_count, stages, "
     "root_labels) | None (None: not the clean one-trace case; use the Python rebuild). stages is a tuple of "
     "StageObservation when configure() was given stage_class, else of 7-tuples."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_crebuild", "Native accelerator of rebuild_traces.", -1,
                                 methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__crebuild(void) {
    for (int i = 0; i < HSIZE; i++) htab[i] = -1;
    init_plain();
    return PyModule_Create(&mod);
}
