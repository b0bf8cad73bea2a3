/* _crebuild: protobuf wire reading: fields, UTF-8, AnyValue and KeyValue, into crb_g (the
 * per-call attribute/event/span arrays; the OTLP messages that hold them are read by otlp.c).
 *
 * With the validation the Python road would do: UTF-8 of every string, no bytes values, no
 * non-finite doubles, no repeated keys, no string-index fields. Any of these bails (the caller
 * then runs the Python rebuild). The common shapes (a KeyValue of key then value, an AnyValue of
 * one scalar) take a short road first; anything else goes through the general field loop.
 */
#include "crebuild.h"

Ctx crb_g; /* the arrays of the call in progress (rebuild_one is not reentrant) */

int crb_skip_field(const uint8_t **pp, const uint8_t *end, int wt) {
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
    /* ASCII fast path: whole words, the last one overlapping (short strings: two halves) */
    const uint64_t highs = 0x8080808080808080ull;
    if (s.n >= 8) {
        uint64_t any = crb_ld8(end - 8);
        for (const uint8_t *q = p; q + 8 < end; q += 8) any |= crb_ld8(q);
        if (!(any & highs)) return 0;
    } else if (s.n >= 4) {
        uint32_t a, z;
        memcpy(&a, p, 4);
        memcpy(&z, end - 4, 4);
        if (!((a | z) & 0x80808080u)) return 0;
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

/* a string value: valid UTF-8 (else BAIL), and *plain set when JSON writes it as it is (one scan
 * for both in the common case: printable ASCII is valid UTF-8) */
static inline int value_utf8(Str s, uint8_t *plain) {
    if (crb_all_plain(s.p, s.n)) {
        *plain = 1;
        return 0;
    }
    *plain = 0;
    return valid_utf8(s);
}

static int rd_string(const uint8_t **pp, const uint8_t *end, Str *out) {
    TRY(rd_len(pp, end, out));
    return valid_utf8(*out);
}

/* A length-delimited field holding valid UTF-8 (the messages of otlp.c). */
int crb_rd_string(const uint8_t **pp, const uint8_t *end, Str *out) { return rd_string(pp, end, out); }

/* AnyValue -> a (type + value); validates nested arrays / kvlists fully. */
int crb_parse_any(Str m, Attr *a, int depth) {
    if (depth > 24) return BAIL;
    const uint8_t *p = m.p, *end = m.p + m.n;
    int set = 0;
    a->type = V_NONE;
    /* the common case first: one string, int or double field that fills the message (anything
     * else, or a malformed one, is left to the loop below, which decides it the same way) */
    if (m.n >= 2) {
        const uint8_t *q = p + 1;
        if (p[0] == 0x0a) { /* field 1, length-delimited */
            Str s;
            if (rd_len(&q, end, &s) == 0 && q == end) {
                TRY(value_utf8(s, &a->plain));
                a->type = V_STR;
                a->s = s;
                return 0;
            }
        } else if (p[0] == 0x18) { /* field 3, varint */
            uint64_t v;
            if (rd_varint(&q, end, &v) == 0 && q == end) {
                a->type = V_INT;
                a->i = (int64_t)v;
                return 0;
            }
        } else if (p[0] == 0x21 && m.n == 9) { /* field 4, fixed64 */
            uint64_t v;
            TRY(rd_fixed64(&q, end, &v));
            memcpy(&a->d, &v, 8);
            if (!isfinite(a->d)) return BAIL;
            a->type = V_DBL;
            return 0;
        }
    }
    while (p < end) {
        uint32_t f;
        int wt;
        TRY(rd_tag(&p, end, &f, &wt));
        uint64_t v;
        Str s;
        switch (f) {
        case 1:
            if (wt != 2 || set++) return BAIL;
            TRY(rd_len(&p, end, &a->s));
            TRY(value_utf8(a->s, &a->plain));
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
                    TRY(crb_parse_any(e, &tmp, depth + 1));
                } else {
                    TRY(crb_skip_field(&q, qe, wt2));
                }
            }
            break;
        }
        case 6: { /* KeyValueList: 1 repeated KeyValue, keys unique */
            if (wt != 2 || set++) return BAIL;
            TRY(rd_len(&p, end, &s));
            a->type = V_KVL;
            a->s = s;
            int base = crb_g.nscratch;
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
                    TRY(crb_parse_kv(e, &tmp, depth + 1, 0));
                    for (int i = base; i < crb_g.nscratch; i++)
                        if (str_eq(crb_g.scratch[i], tmp.key)) return BAIL;
                    GROW(crb_g.scratch, crb_g.nscratch, crb_g.capscratch, Str);
                    crb_g.scratch[crb_g.nscratch++] = tmp.key;
                } else {
                    TRY(crb_skip_field(&q, qe, wt2));
                }
            }
            crb_g.nscratch = base;
            break;
        }
        case 7: /* bytes */
        case 8: /* string_value_strindex */
            return BAIL;
        default: TRY(crb_skip_field(&p, end, wt));
        }
    }
    return 0;
}

/* KeyValue -> a. With intern, a->kid is the interned id of the key; hint (or NULL) is the
 * attribute at the same position of the previous list of the same kind (span or event
 * attributes): lists of one trace nearly always repeat the same keys in the same order, so a key
 * equal to the hint's (bytes in the input just read, still in cache) takes its id, and its
 * validity (the hint's key was checked), without the name table. (A KeyValue equal to the hint's
 * as a whole is not parsed at all: otlp.c's push_attr.) */
static int parse_kv(Str m, Attr *a, int depth, int intern, const Attr *hint) {
    const uint8_t *p = m.p, *end = m.p + m.n;
    int seen_key = 0, seen_val = 0;
    a->raw = m.p;
    a->rawn = m.n <= INT32_MAX ? (int32_t)m.n : -1;
    a->key.p = m.p;
    a->key.n = 0;
    a->type = V_NONE;
    a->used = a->merged = 0;
    /* the common case first: key (field 1) then value (field 2), nothing else */
    if (m.n >= 4 && p[0] == 0x0a) {
        const uint8_t *q = p + 1;
        Str k, v;
        if (rd_len(&q, end, &k) == 0 && q < end && *q == 0x12) {
            q++;
            if (rd_len(&q, end, &v) == 0 && q == end) {
                int kid;
                if (hint != NULL && hint->key.n == k.n && crb_same_name(hint->key.p, k.p, k.n)) {
                    kid = hint->kid;
                } else {
                    TRY(valid_utf8(k));
                    kid = intern ? crb_lookup_key(k.p, k.n) : -1;
                }
                a->key = k;
                TRY(crb_parse_any(v, a, depth + 1));
                a->kid = kid;
                return 0;
            }
        }
    }
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
            TRY(crb_parse_any(v, a, depth + 1));
        } else if (f == 3) {
            return BAIL; /* key_strindex */
        } else {
            TRY(crb_skip_field(&p, end, wt));
        }
    }
    a->kid = intern ? crb_lookup_key(a->key.p, a->key.n) : -1;
    return 0;
}

int crb_parse_kv(Str m, Attr *a, int depth, int intern) { return parse_kv(m, a, depth, intern, NULL); }

/* Append one KeyValue to crb_g.attrs; hint: the index in crb_g.attrs of the attribute at the
 * same position of the previous list of its kind, or -1 (see parse_kv). */
int crb_push_attr_at(Str m, int hint) {
    GROW(crb_g.attrs, crb_g.nattrs, crb_g.capattrs, Attr);
    Attr *a = &crb_g.attrs[crb_g.nattrs];
    TRY(parse_kv(m, a, 0, 1, hint >= 0 ? &crb_g.attrs[hint] : NULL));
    crb_g.nattrs++;
    return 0;
}

int crb_push_attr(Str m) { return crb_push_attr_at(m, -1); }

/* No key twice in attrs[a0 .. a0+an) (attributes() is a dict comprehension). Interned names
 * are unique, so known keys are checked with a generation-stamped "seen" mark per id; only the
 * names configure did not intern are compared with each other. */
int crb_unique_keys(int a0, int an) {
    static unsigned seen[MAXKEYS], gen;
    if (++gen == 0) {
        memset(seen, 0, sizeof(seen));
        gen = 1;
    }
    int unknown = 0;
    for (int i = a0; i < a0 + an; i++) {
        int k = crb_g.attrs[i].kid;
        if (k < 0) {
            unknown++;
        } else {
            if (seen[k] == gen) return BAIL;
            seen[k] = gen;
        }
    }
    if (unknown < 2) return 0;
    for (int i = a0 + 1; i < a0 + an; i++) {
        const Attr *x = &crb_g.attrs[i];
        if (x->kid >= 0) continue;
        for (int j = a0; j < i; j++) {
            const Attr *y = &crb_g.attrs[j];
            if (y->kid < 0 && str_eq(x->key, y->key)) return BAIL;
        }
    }
    return 0;
}
