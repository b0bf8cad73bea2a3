/* _crebuild: attribute values -> JSON.
 *
 * The generation-stamped attribute indexes (span, event, resource), AnyValue / ArrayValue /
 * KeyValueList written as JSON, the list readers of the request and artifact fields, the
 * parse_json_attr call for JSON-in-a-string attributes, and the metadata merge (parsed dict
 * updated with the attributes nobody consumed).
 */
#include "crebuild.h"

Index crb_IS, crb_IE, crb_IL;

void crb_index_build(Index *ix, int a0, int an) {
    ix->g++;
    if (ix->g == 0) {
        memset(ix->at, 0, sizeof(ix->at));
        ix->g = 1;
    }
    ix->a0 = a0;
    ix->an = an;
    for (int i = a0; i < a0 + an; i++) {
        int k = crb_g.attrs[i].kid;
        if (k >= 0) {
            ix->at[k].idx = i;
            ix->at[k].gen = ix->g;
        }
    }
}
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
            TRY(crb_parse_any(e, &tmp, depth + 1));
            if (!first) TRY(PUTS(b, ", "));
            first = 0;
            TRY(crb_put_attr_value(b, &tmp, depth + 1));
        } else {
            TRY(crb_skip_field(&q, qe, wt));
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
            TRY(crb_parse_kv(e, &tmp, depth + 1, 0));
            TRY(crb_put_key(b, &first, tmp.key));
            TRY(crb_put_attr_value(b, &tmp, depth + 1));
        } else {
            TRY(crb_skip_field(&q, qe, wt));
        }
    }
    return PUTS(b, "}");
}

int crb_put_attr_value(Buf *b, const Attr *a, int depth) {
    switch (a->type) {
    case V_NONE: return PUTS(b, "null");
    case V_STR: return crb_put_attr_str(b, a);
    case V_BOOL: return a->i ? PUTS(b, "true") : PUTS(b, "false");
    case V_INT: return crb_put_i64(b, a->i);
    case V_DBL: return crb_put_double(b, a->d);
    case V_ARR: return put_array_msg(b, a->s, depth);
    case V_KVL: return put_kvlist_msg(b, a->s, depth);
    }
    return BAIL;
}

/* Iterate the elements of an ArrayValue attribute: calls back with each element. */
int crb_each_elem(const Attr *a, ElemFn fn, void *ud) {
    const uint8_t *q = a->s.p, *qe = a->s.p + a->s.n;
    while (q < qe) {
        uint32_t f;
        int wt;
        TRY(rd_tag(&q, qe, &f, &wt));
        if (f == 1) {
            Str e;
            Attr tmp;
            TRY(rd_len(&q, qe, &e));
            TRY(crb_parse_any(e, &tmp, 1));
            TRY(fn(&tmp, ud));
        } else {
            TRY(crb_skip_field(&q, qe, wt));
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
    return crb_put_i64(lc->b, e->i);
}

int crb_put_nonneg_int_list(Buf *b, const Attr *a) {
    if (a->type != V_ARR) return BAIL;
    ListCtx lc = {b, 1};
    TRY(PUTS(b, "["));
    TRY(crb_each_elem(a, elem_nonneg_int, &lc));
    return PUTS(b, "]");
}

/* _str_list: a str is [str]; an array must hold only strings (StrListCtx: crebuild.h). */

static int elem_str(const Attr *e, void *ud) {
    StrListCtx *lc = (StrListCtx *)ud;
    if (e->type != V_STR) return BAIL;
    if (lc->items != NULL) {
        if (lc->nitems >= lc->cap) return BAIL;
        lc->items[lc->nitems++] = e->s;
    }
    if (!lc->first) TRY(PUTS(lc->b, ", "));
    lc->first = 0;
    return crb_put_attr_str(lc->b, e);
}

int crb_put_str_list(Buf *b, const Attr *a, Str *items, int *nitems, int cap) {
    StrListCtx lc = {b, 1, items, 0, cap};
    TRY(PUTS(b, "["));
    if (a->type == V_STR) TRY(elem_str(a, &lc));
    else if (a->type == V_ARR) TRY(crb_each_elem(a, elem_str, &lc));
    else return BAIL;
    if (nitems != NULL) *nitems = lc.nitems;
    return PUTS(b, "]");
}

/* parse_json_attr on a string attribute: a new reference to the parsed dict (or list when
 * want_list), NULL to bail. */
PyObject *crb_parse_json_value(const Attr *a, int want_list) {
    if (a->type != V_STR) return NULL;
    PyObject *text = PyUnicode_DecodeUTF8((const char *)a->s.p, a->s.n, "strict");
    if (text == NULL) return NULL;
    PyObject *res = PyObject_CallOneArg(crb_cfg.parse_json, text);
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
int crb_put_merged(Buf *b, PyObject *parsed, Index *ix, int *first) {
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
            TRY(crb_put_key(b, first, ks));
            Attr *hit = NULL;
            for (int i = ix->a0; i < ix->a0 + ix->an; i++) {
                Attr *a = &crb_g.attrs[i];
                if (!a->used && !a->merged && str_eq(a->key, ks)) {
                    hit = a;
                    break;
                }
            }
            if (hit != NULL) {
                hit->merged = 1;
                TRY(crb_put_attr_value(b, hit, 0));
            } else {
                TRY(crb_put_py(b, val, 0));
            }
        }
    }
    for (int i = ix->a0; i < ix->a0 + ix->an; i++) {
        Attr *a = &crb_g.attrs[i];
        if (a->used || a->merged) continue;
        TRY(crb_put_key(b, first, a->key));
        TRY(crb_put_attr_value(b, a, 0));
    }
    return 0;
}

/* a parsed dict or the remaining attributes hold key k: used to refuse collisions with the keys
 * the rebuild adds afterwards (dict assignment would keep the earlier position). */
int crb_has_key(PyObject *parsed, Index *ix, int kid, const char *k) {
    if (parsed != NULL && PyDict_GetItemString(parsed, k) != NULL) return 1;
    Attr *a = get(ix, kid);
    return a != NULL && !a->used;
}

/* nonzero where a byte of x (all below 0x80) is not a lowercase hex digit: SWAR range checks,
 * adding 0x80 - lo to every byte sets its high bit exactly when the byte is >= lo (no carry
 * crosses bytes below 0x80) */
static inline uint64_t not_hex(uint64_t x) {
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    uint64_t ge0 = x + ones * (0x80 - '0'), gt9 = x + ones * (0x80 - '9' - 1);
    uint64_t gea = x + ones * (0x80 - 'a'), gtf = x + ones * (0x80 - 'f' - 1);
    uint64_t hex = (ge0 & ~gt9) | (gea & ~gtf);
    return ~hex & highs;
}

/* the digits of a digest: all lowercase hex */
static int lower_hex(const uint8_t *p, Py_ssize_t n) {
    const uint64_t highs = 0x8080808080808080ull;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x = crb_ld8(p + i);
        if ((x & highs) || not_hex(x)) return 0;
    }
    for (; i < n; i++) {
        uint8_t c = p[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return 0;
    }
    return 1;
}

int crb_valid_digest(Str d) {
    for (int i = 0; i < crb_cfg.digest_alg.n; i++) {
        Str alg = crb_cfg.digest_alg.w[i];
        if (d.n == alg.n + 1 + crb_cfg.digest_len[i] && memcmp(d.p, alg.p, (size_t)alg.n) == 0 && d.p[alg.n] == ':')
            return lower_hex(d.p + alg.n + 1, d.n - alg.n - 1) ? 0 : BAIL;
    }
    return BAIL;
}
