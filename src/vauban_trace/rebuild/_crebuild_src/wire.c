/* _crebuild: OTLP protobuf wire reading into crb_g (the per-call attribute/event/span arrays).
 *
 * TracesData -> ResourceSpans -> ScopeSpans -> Span / Event / Status / KeyValue / AnyValue, with
 * the validation the Python road would do: UTF-8 of every string, no bytes values, no non-finite
 * doubles, no repeated keys, no repeated singular fields, no links, no string-index fields. Any
 * of these bails (the caller then runs the Python rebuild).
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

static int rd_string(const uint8_t **pp, const uint8_t *end, Str *out) {
    TRY(rd_len(pp, end, out));
    return valid_utf8(*out);
}

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
                TRY(valid_utf8(s));
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

int crb_parse_kv(Str m, Attr *a, int depth, int intern) {
    const uint8_t *p = m.p, *end = m.p + m.n;
    int seen_key = 0, seen_val = 0;
    uint32_t h = 0;
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
                TRY(valid_utf8(k));
                a->key = k;
                TRY(crb_parse_any(v, a, depth + 1));
                a->kid = intern ? crb_lookup_hashed(k.p, k.n, crb_key_hash(k.p, k.n)) : -1;
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
            if (intern) h = crb_key_hash(a->key.p, a->key.n);
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
    if (intern && !seen_key) h = crb_key_hash(a->key.p, 0);
    a->kid = intern ? crb_lookup_hashed(a->key.p, a->key.n, h) : -1;
    return 0;
}

/* Append one KeyValue to crb_g.attrs. */
int crb_push_attr(Str m) {
    GROW(crb_g.attrs, crb_g.nattrs, crb_g.capattrs, Attr);
    Attr *a = &crb_g.attrs[crb_g.nattrs];
    TRY(crb_parse_kv(m, a, 0, 1));
    crb_g.nattrs++;
    return 0;
}

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
            TRY(crb_parse_kv(s, &tmp, 0, 0));
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
            TRY(crb_skip_field(&p, end, wt));
        }
    }
    return 0;
}

static int parse_event(Str m) {
    GROW(crb_g.events, crb_g.nevents, crb_g.capevents, Event);
    Event *e = &crb_g.events[crb_g.nevents];
    memset(e, 0, sizeof(*e));
    e->a0 = crb_g.nattrs;
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
            crb_g.events[crb_g.nevents].time = v;
            break;
        case 2:
            if (wt != 2 || (seen & 4)) return BAIL;
            seen |= 4;
            TRY(rd_string(&p, end, &s));
            crb_g.events[crb_g.nevents].name = s;
            break;
        case 3:
            if (wt != 2) return BAIL;
            TRY(rd_len(&p, end, &s));
            TRY(crb_push_attr(s));
            break;
        case 4:
            if (wt != 0 || (seen & 16)) return BAIL;
            seen |= 16;
            TRY(rd_varint(&p, end, &v));
            break;
        default: TRY(crb_skip_field(&p, end, wt));
        }
    }
    e = &crb_g.events[crb_g.nevents];
    e->an = crb_g.nattrs - e->a0;
    TRY(crb_unique_keys(e->a0, e->an));
    crb_g.nevents++;
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
            TRY(crb_skip_field(&p, end, wt));
        }
    }
    return 0;
}

static int parse_span(Str m, Str resource, int seq) {
    GROW(crb_g.spans, crb_g.nspans, crb_g.capspans, Span);
    Span sp;
    memset(&sp, 0, sizeof(sp));
    sp.resource = resource;
    sp.seq = seq;
    sp.a0 = crb_g.nattrs;
    sp.e0 = crb_g.nevents;
    const uint8_t *p = m.p, *end = m.p + m.n;
    uint32_t seen = 0;
    int attrs_done = 0; /* attributes must be contiguous in crb_g.attrs: events push their own */
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
            TRY(crb_push_attr(s));
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
            TRY(crb_skip_field(&p, end, wt));
            break;
        default: TRY(crb_skip_field(&p, end, wt));
        }
    }
    sp.an = crb_g.nattrs - sp.a0;
    attrs_done = 1;
    (void)attrs_done;
    TRY(crb_unique_keys(sp.a0, sp.an));
    for (int i = sp.a0; i < sp.a0 + sp.an; i++)
        if (crb_g.attrs[i].kid == crb_cfg.spill_of) crb_g.has_spill = 1;
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
            TRY(crb_skip_field(&p, end, wt));
        }
    }
    sp.en = crb_g.nevents - sp.e0;
    crb_g.spans[crb_g.nspans++] = sp;
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
            TRY(crb_skip_field(&p, end, wt));
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
            TRY(crb_skip_field(&p, end, wt));
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
            TRY(crb_skip_field(&p, end, wt));
        }
    }
    return 0;
}

int crb_parse_traces_data(Str m) {
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
            TRY(crb_skip_field(&p, end, wt));
        }
    }
    return 0;
}
