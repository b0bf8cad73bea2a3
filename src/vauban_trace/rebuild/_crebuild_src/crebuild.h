/* _crebuild internal header: what the files of the native rebuild share.
 *
 * The byte-string view (Str) and the bail convention (BAIL / TRY: any nonzero result means "not
 * the clean case, let the Python road do it"), the vocabulary from configure (crb_cfg), the output
 * buffer with its small inline writers, the wire-reading types and the per-call arrays (crb_g), the
 * attribute indexes, the trace-level output (Out), and the prototypes of every crb_ function.
 * Hot helpers that used to be file-local stay static inline here; everything else is static in its
 * own file. Not a public API: only PyInit__crebuild is exported from the module.
 */
#ifndef VAUBAN_CREBUILD_H
#define VAUBAN_CREBUILD_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__)
#pragma GCC visibility push(hidden) /* the crb_ names are internal to the extension */
#endif

typedef struct {
    const uint8_t *p;
    Py_ssize_t n;
} Str;

#define BAIL (-1)
#define TRY(x)                  \
    do {                        \
        if ((x) != 0) return BAIL; \
    } while (0)

static inline uint64_t crb_ld8(const uint8_t *p) {
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

static inline uint32_t crb_ld4(const uint8_t *p) {
    uint32_t w;
    memcpy(&w, p, 4);
    return w;
}

/* names shorter than 8 bytes as one word: every byte is in it (so equal words and lengths mean
 * equal names) */
static inline uint64_t crb_small_word(const uint8_t *p, Py_ssize_t n) {
    if (n >= 4) return crb_ld4(p) | ((uint64_t)crb_ld4(p + n - 4) << 32);
    if (n > 0) return (uint64_t)p[0] | ((uint64_t)p[n >> 1] << 8) | ((uint64_t)p[n - 1] << 16);
    return 0;
}

/* equal names, of the same length n: a fixed set of (overlapping) word loads per length class
 * that covers every byte, OR-ed together, so that the only branch is the class */
static inline int crb_same_name(const uint8_t *x, const uint8_t *y, Py_ssize_t n) {
    if (n < 8) return crb_small_word(x, n) == crb_small_word(y, n);
    uint64_t d = (crb_ld8(x) ^ crb_ld8(y)) | (crb_ld8(x + n - 8) ^ crb_ld8(y + n - 8));
    if (n <= 16) return d == 0;
    d |= (crb_ld8(x + 8) ^ crb_ld8(y + 8)) | (crb_ld8(x + n - 16) ^ crb_ld8(y + n - 16));
    if (n <= 32) return d == 0;
    d |= (crb_ld8(x + 16) ^ crb_ld8(y + 16)) | (crb_ld8(x + 24) ^ crb_ld8(y + 24)) |
         (crb_ld8(x + n - 32) ^ crb_ld8(y + n - 32)) | (crb_ld8(x + n - 24) ^ crb_ld8(y + n - 24));
    if (n <= 64) return d == 0;
    for (Py_ssize_t i = 32; d == 0 && i < n - 32; i += 8) d |= crb_ld8(x + i) ^ crb_ld8(y + i);
    return d == 0;
}

/* equal strings (event names, vocabulary words, ids): word compares, no call */
static inline int str_eq(Str a, Str b) { return a.n == b.n && crb_same_name(a.p, b.p, a.n); }

/* ---- configuration (config.c) ---- */

#define MAXKEYS 512
#define MAXLIST 64

/* empty the interned-name table (module init, and configure before it interns): names.c */
void crb_names_reset(void);

typedef struct {
    int n;
    Str w[MAXLIST];
} Words;

static inline int words_find(const Words *w, Str s) {
    for (int i = 0; i < w->n; i++)
        if (str_eq(w->w[i], s)) return i;
    return -1;
}

enum { NREQ = 10 };
enum { RQ_TEXT, RQ_REF, RQ_PROMPT, RQ_ARTS, RQ_LAYERS, RQ_INTERV, RQ_CHAT, RQ_LOGITS, RQ_LOGPROBS, RQ_META };

typedef struct {
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
    /* JSON fragments written as they are (escaped once, by configure): keys end with ": " */
    Str cnt_key[MAXLIST], prov_json[MAXLIST], status_json[3], cap_key[MAXLIST], sum_json_key[MAXLIST],
        pm_key[MAXLIST], sweep_key[MAXLIST], kinds_json[MAXLIST], levels_json[MAXLIST], reasons_json[MAXLIST],
        unsupported_json;
    /* `, "<counter>": null` for every counter field of StageProfile, in field order (non-counter
     * fields add nothing): a run of counters without a value is one copy, from null_off[i] to
     * null_off[j] */
    char *null_runs;
    size_t null_off[MAXLIST + 1];
    PyObject *parse_json; /* parse_json_attr: str -> (value, error | None) */
    PyTypeObject *stage_cls; /* StageObservation (slots dataclass), or NULL: plain tuples */
    PyObject *stage_slots[8];
    Py_ssize_t stage_offset[8]; /* where each slot lives in the object (plain object slots), or -1 */
    PyTypeObject *doc_cls;   /* TraceDocument (slots dataclass), or NULL: rebuild_document declines */
    PyObject *doc_slots[11];
    Py_ssize_t doc_offset[11];
    int ready;
} CrbConfig;

extern CrbConfig crb_cfg;

/* ---- interned attribute names (names.c; the lookup is here, inline) ---- */

#define CRB_KMAXBITS 10     /* 2 * MAXKEYS entries */
#define CRB_KMAXLEN 0xffff  /* a name's length fits the 16 bits of its entry */
#define CRB_KARENA (1 << 15)

/* entries: the name's hash (top 32 bits), its length (16), its id + 1 (16); 0 is empty */
extern uint64_t crb_ktab[1 << CRB_KMAXBITS];
extern int crb_kbits;
extern uint32_t crb_koff[MAXKEYS]; /* where each id's name starts in crb_karena */
extern uint8_t crb_karena[CRB_KARENA];

static inline uint64_t crb_rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

/* The name hash reads at most three words of the name instead of every byte: names of the
 * vocabulary share long prefixes ("vauban.usl.") and suffixes (".provenance") but differ in
 * length or in the first, middle or last 8 bytes (names agreeing on all of these only share a
 * probe chain). One multiply on the XOR of the rotated words: the top bits of the product
 * depend on every input bit, so the stored hash and the slot index are both taken from the top. */
static inline uint32_t crb_key_hash(const uint8_t *p, Py_ssize_t n) {
    uint64_t x = (uint64_t)n * 0x9e3779b97f4a7c15ull;
    if (n < 8) {
        x ^= crb_small_word(p, n);
    } else {
        x ^= crb_ld8(p) ^ crb_rotl(crb_ld8(p + n - 8), 29);
        if (n > 16) x ^= crb_rotl(crb_ld8(p + (n >> 1) - 4), 47);
    }
    return (uint32_t)((x * 0xff51afd7ed558ccdull) >> 32);
}

static inline uint64_t crb_kentry(uint32_t h, Py_ssize_t n, int id) {
    return ((uint64_t)h << 32) | ((uint64_t)n << 16) | (uint64_t)(id + 1);
}

/* interned id of an attribute name, -1 if configure did not name it */
static inline int crb_lookup_key(const uint8_t *p, Py_ssize_t n) {
    if (n > CRB_KMAXLEN) return -1;
    uint32_t h = crb_key_hash(p, n), i = h >> (32 - crb_kbits), mask = (1u << crb_kbits) - 1;
    uint64_t want = crb_kentry(h, n, -1); /* hash and length; id bits 0 */
    for (;;) {
        uint64_t e = crb_ktab[i];
        if (e == 0) return -1;
        if ((e & ~(uint64_t)0xffff) == want) {
            int id = (int)(e & 0xffff) - 1;
            if (crb_same_name(crb_karena + crb_koff[id], p, n)) return id;
        }
        i = (i + 1) & mask;
    }
}
/* intern a name (configure): its id, or -1 with an exception set */
int crb_intern_key(const char *s, Py_ssize_t n);
/* after the last crb_intern_key: the table packed to its working size */
int crb_names_pack(void);


PyObject *crb_configure(PyObject *self, PyObject *cfg);

/* ---- output buffer and JSON text (json.c) ---- */

typedef struct {
    char *p;
    size_t n, cap;
} Buf;

#if defined(__GNUC__)
#define CRB_INLINE __attribute__((always_inline)) inline
#else
#define CRB_INLINE inline
#endif

/* the buffer grown to hold extra more bytes (json.c; out of line: the check stays small) */
int crb_buf_grow(Buf *b, size_t extra);

static CRB_INLINE int buf_reserve(Buf *b, size_t extra) {
    if (b->n + extra <= b->cap) return 0;
    return crb_buf_grow(b, extra);
}

/* memcpy for the short pieces of the output (names, words, numbers): up to 32 bytes as
 * overlapping 8-byte loads and stores, inline; longer ones through memcpy */
static inline void crb_copy(char *dst, const void *src, size_t n) {
    const uint8_t *s = (const uint8_t *)src;
    if (n >= 8 && n <= 16) {
        uint64_t a, z;
        memcpy(&a, s, 8);
        memcpy(&z, s + n - 8, 8);
        memcpy(dst, &a, 8);
        memcpy(dst + n - 8, &z, 8);
    } else if (n > 16 && n <= 32) {
        uint64_t a, b, y, z;
        memcpy(&a, s, 8);
        memcpy(&b, s + 8, 8);
        memcpy(&y, s + n - 16, 8);
        memcpy(&z, s + n - 8, 8);
        memcpy(dst, &a, 8);
        memcpy(dst + 8, &b, 8);
        memcpy(dst + n - 16, &y, 8);
        memcpy(dst + n - 8, &z, 8);
    } else if (n >= 4 && n < 8) {
        uint32_t a, z;
        memcpy(&a, s, 4);
        memcpy(&z, s + n - 4, 4);
        memcpy(dst, &a, 4);
        memcpy(dst + n - 4, &z, 4);
    } else if (n < 4) {
        for (size_t i = 0; i < n; i++) dst[i] = (char)s[i];
    } else {
        memcpy(dst, s, n);
    }
}

/* (always inlined: PUTS of a literal then copies a known length, without a branch on it) */
static CRB_INLINE int put(Buf *b, const char *s, size_t n) {
    if (n == 0) return 0;
    TRY(buf_reserve(b, n));
    crb_copy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

/* a JSON fragment made by configure (an escaped key with its ": ", a quoted word), after ", "
 * unless first */
static inline int put_frag(Buf *b, int *first, Str f) {
    TRY(buf_reserve(b, (size_t)f.n + 2));
    char *w = b->p + b->n;
    if (!*first) {
        *w++ = ',';
        *w++ = ' ';
    }
    *first = 0;
    crb_copy(w, f.p, (size_t)f.n);
    b->n = (size_t)(w + f.n - b->p);
    return 0;
}

static inline int put_str(Buf *b, Str f) { return put(b, (const char *)f.p, (size_t)f.n); }
#define PUTS(b, lit) put((b), (lit), sizeof(lit) - 1)

/* a literal key of these files (plain ASCII: written without escaping) */
/* (always inlined: the strlen of a literal is then folded) */
static CRB_INLINE int put_keyc(Buf *b, int *first, const char *k) {
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

/* Kept buffers: rebuild_one is not reentrant (module.c's busy flag), so the output buffers of a
 * call are handed back and reused by the next one (emptied), instead of being allocated and
 * grown again for every trace. Every crb_buf_take has its crb_buf_give, error paths included. */
enum { KB_HEAD, KB_SPANS, KB_ARTS, KB_MISS, KB_META, KB_DEV, KB_ERR, KB_RES, KB_PRE, KB_COUNT };
extern Buf crb_keep[KB_COUNT];

static inline Buf crb_buf_take(int i) {
    Buf b = crb_keep[i];
    crb_keep[i].p = NULL;
    crb_keep[i].n = crb_keep[i].cap = 0;
    b.n = 0;
    return b;
}

/* SWAR: nonzero when one of the 8 bytes of x is one json.dumps escapes (a control byte, the
 * quote, the backslash, DEL, a non-ASCII byte). The borrows of the subtractions may mark more
 * bytes than the bad ones, but only where there is one: "any" is exact. */
static inline uint64_t crb_bad_bytes(uint64_t x) {
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    uint64_t quote = x ^ (ones * '"'), bslash = x ^ (ones * '\\'), del = x ^ (ones * 0x7f);
    return (((x - ones * 0x20) & ~x) | x | ((quote - ones) & ~quote) | ((bslash - ones) & ~bslash) |
            ((del - ones) & ~del)) &
           highs;
}

/* the whole string needs no JSON escape (printable ASCII, no quote, no backslash): whole words,
 * the last one overlapping the one before (the bytes checked twice are harmless); short strings
 * as two overlapping halves */
static inline int crb_all_plain(const uint8_t *p, Py_ssize_t n) {
    if (n >= 8) {
        uint64_t bad = 0;
        for (Py_ssize_t i = 0; i + 8 < n; i += 8) bad |= crb_bad_bytes(crb_ld8(p + i));
        return !(bad | crb_bad_bytes(crb_ld8(p + n - 8)));
    }
    if (n >= 4) return !crb_bad_bytes((uint64_t)crb_ld4(p) | ((uint64_t)crb_ld4(p + n - 4) << 32));
    for (Py_ssize_t i = 0; i < n; i++)
        if (p[i] < 0x20 || p[i] >= 0x7f || p[i] == '"' || p[i] == '\\') return 0;
    return 1;
}

static inline void crb_buf_give(int i, Buf *b) {
    if (b->cap > ((size_t)1 << 20) || crb_keep[i].p != NULL) { /* a huge trace's memory is not kept */
        PyMem_RawFree(b->p);
    } else {
        crb_keep[i] = *b;
    }
    b->p = NULL;
    b->n = b->cap = 0;
}

extern const char crb_hex[17];

void crb_json_init(void);
int crb_put_u64(Buf *b, uint64_t v);
int crb_put_i64(Buf *b, int64_t v);
int crb_put_double(Buf *b, double x);
/* A JSON string (json.dumps, ensure_ascii=True) from valid UTF-8. */
int crb_put_jstr(Buf *b, Str s);
int crb_put_hex(Buf *b, Str id);
/* the 2 * id.n lowercase hex digits of id at w (no quotes) */
void crb_hex_into(char *w, Str id);
/* key of an object member: writes ", " unless first, then "key": */
int crb_put_key(Buf *b, int *first, Str k);
/* Python value (as json.loads + json_safe made it) -> JSON text, exactly as json.dumps. */
int crb_put_py(Buf *b, PyObject *v, int depth);

/* ---- protobuf wire reading (wire.c, otlp.c) ---- */

enum { V_NONE, V_STR, V_BOOL, V_INT, V_DBL, V_ARR, V_KVL };

typedef struct {
    Str key;
    Str s; /* string value, or the raw ArrayValue / KeyValueList message */
    union {
        int64_t i; /* V_BOOL, V_INT (every read of i or d is guarded by the type) */
        double d;  /* V_DBL */
    };
    const uint8_t *raw; /* the KeyValue message it was read from (interned lists: parse_kv's hints) */
    int32_t rawn;
    int kid;
    uint8_t type;
    uint8_t used, merged;
    uint8_t plain; /* V_STR: s needs no JSON escape (crb_put_attr_str copies it as it is) */
} Attr;
/* one cache line: the attribute array of a trace streams through L1 */
_Static_assert(sizeof(Attr) <= 64, "an Attr fits a cache line");

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
    /* the previous span's and the previous event's attribute lists (crb_push_attr_at's hints) */
    int prev_span_a0, prev_span_an, prev_ev_a0, prev_ev_an;
    /* the StageObservations made so far (owned references; the array is kept between calls) */
    PyObject **stage_v;
    int nstage, capstage;
} Ctx;

extern Ctx crb_g;

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

static inline int rd_varint(const uint8_t **pp, const uint8_t *end, uint64_t *out) {
    const uint8_t *p = *pp;
    if (p < end && *p < 0x80) { /* one byte: tags, lengths and small numbers */
        *out = *p;
        *pp = p + 1;
        return 0;
    }
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

static inline int rd_tag(const uint8_t **pp, const uint8_t *end, uint32_t *field, int *wt) {
    uint64_t t;
    TRY(rd_varint(pp, end, &t));
    if (t > 0xffffffffu) return BAIL;
    *field = (uint32_t)(t >> 3);
    *wt = (int)(t & 7);
    if (*field == 0) return BAIL;
    return 0;
}

static inline int rd_len(const uint8_t **pp, const uint8_t *end, Str *out) {
    uint64_t n;
    TRY(rd_varint(pp, end, &n));
    if (n > (uint64_t)(end - *pp)) return BAIL;
    out->p = *pp;
    out->n = (Py_ssize_t)n;
    *pp += n;
    return 0;
}

static inline int rd_fixed64(const uint8_t **pp, const uint8_t *end, uint64_t *out) {
    if (end - *pp < 8) return BAIL;
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | (*pp)[i];
    *pp += 8;
    *out = v;
    return 0;
}

int crb_skip_field(const uint8_t **pp, const uint8_t *end, int wt);
/* A length-delimited field holding valid UTF-8. */
int crb_rd_string(const uint8_t **pp, const uint8_t *end, Str *out);
/* AnyValue -> a (type + value); validates nested arrays / kvlists fully. */
int crb_parse_any(Str m, Attr *a, int depth);
/* KeyValue -> a; with intern set, a->kid is the interned id of the key (else -1) */
int crb_parse_kv(Str m, Attr *a, int depth, int intern);
/* Append one KeyValue to crb_g.attrs. */
int crb_push_attr(Str m);
/* the same, with the index of a hint attribute (the one at the same position of the previous
 * list of the same kind) or -1 */
int crb_push_attr_at(Str m, int hint);
/* No key twice in attrs[a0 .. a0+an) (attributes() is a dict comprehension). */
int crb_unique_keys(int a0, int an);
int crb_parse_traces_data(Str m);

/* ---- attribute indexes and values (values.c) ---- */

/* generation-stamped: one for span attributes, one for event attributes, one for the resource */
typedef struct {
    struct {
        unsigned gen; /* valid when == g */
        int idx;      /* into crb_g.attrs */
    } at[MAXKEYS];    /* (side by side: one cache line per lookup) */
    unsigned g;
    int a0, an;
} Index;

extern Index crb_IS, crb_IE, crb_IL;

void crb_index_build(Index *ix, int a0, int an);
static inline Attr *get(Index *ix, int kid) {
    if (kid < 0 || ix->at[kid].gen != ix->g) return NULL;
    return &crb_g.attrs[ix->at[kid].idx];
}

/* the attribute with id kid among attrs[a0 .. a0+an) (keys are unique), without an index: for
 * the one-attribute questions (the root marker, an artifact's id) */
static inline Attr *find_attr(int a0, int an, int kid) {
    if (kid < 0) return NULL;
    for (int i = a0; i < a0 + an; i++)
        if (crb_g.attrs[i].kid == kid) return &crb_g.attrs[i];
    return NULL;
}

/* consume: get + mark used */
static inline Attr *take(Index *ix, int kid) {
    Attr *a = get(ix, kid);
    if (a != NULL) a->used = 1;
    return a;
}

/* Iterate the elements of an ArrayValue attribute: calls back with each element. */
typedef int (*ElemFn)(const Attr *e, void *ud);

typedef struct {
    Buf *b;
    int first;
    Str *items;
    int nitems, cap;
} StrListCtx;

int crb_put_attr_value(Buf *b, const Attr *a, int depth);

/* a string attribute's value as a JSON string: one copy when the reader found it plain */
static inline int crb_put_attr_str(Buf *b, const Attr *a) {
    if (!a->plain) return crb_put_jstr(b, a->s);
    TRY(buf_reserve(b, (size_t)a->s.n + 2));
    char *w = b->p + b->n;
    *w++ = '"';
    crb_copy(w, a->s.p, (size_t)a->s.n);
    w[a->s.n] = '"';
    b->n += (size_t)a->s.n + 2;
    return 0;
}
int crb_each_elem(const Attr *a, ElemFn fn, void *ud);
int crb_put_nonneg_int_list(Buf *b, const Attr *a);
int crb_put_str_list(Buf *b, const Attr *a, Str *items, int *nitems, int cap);
PyObject *crb_parse_json_value(const Attr *a, int want_list);
int crb_put_merged(Buf *b, PyObject *parsed, Index *ix, int *first);
int crb_has_key(PyObject *parsed, Index *ix, int kid, const char *k);
int crb_valid_digest(Str d);

/* ---- the trace output (records.c, span.c, trace.c) ---- */

typedef struct {
    Buf head;  /* "request", "device", "capabilities" members */
    Buf spans, arts, miss, meta_extra;
    Str *art_ids;
    int nart, capart;
    Str *inputs; /* every input artifact id, checked at the end */
    int ninputs, capinputs;
    int nerrors;
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

void crb_out_free(Out *o);
int crb_put_device(Buf *b, Index *ix);
int crb_elem_collect_str(const Attr *e, void *ud);
int crb_root_facts(Out *o, Span *root, Str trace_id);
int crb_put_artifact(Out *o, int ev, Str producer);
int crb_put_missing(Out *o, int ev, Str span_id);
int crb_put_span(Out *o, Span *sp, int is_root);
/* group_stages(per_stage, seqs, observable): the stage histograms' values, see span.c */
PyObject *crb_group_stages(PyObject *self, PyObject *args);
/* A record of a configured slots class from its n field values (references stolen, NULL ones
 * allowed: then NULL back), not tracked by the garbage collector (its values are atomic or
 * tuples of them, so it can never be part of a cycle). cls NULL: an n-tuple. */
PyObject *crb_make_record(PyTypeObject *cls, PyObject **slots, const Py_ssize_t *offset, int n, PyObject **v);
/* A str of valid UTF-8: short ASCII ones (stage names, vocabulary words, service and model
 * names) from a small cache of the strs made before (str objects are immutable: one object serves
 * every equal value), others made anew. New reference, NULL with an exception set. */
PyObject *crb_str_obj(Str s);
/* A str of the 2 * id.n lowercase hex digits of id (span and trace ids). */
PyObject *crb_hex_obj(Str id);
/* The whole road; returns a new tuple (a TraceDocument with as_document, when configured), or
 * NULL to bail (exception cleared by the caller). */
PyObject *crb_rebuild(Str data, int as_document);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#endif /* VAUBAN_CREBUILD_H */
