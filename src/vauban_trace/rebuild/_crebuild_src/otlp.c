/* _crebuild: the OTLP messages, read into crb_g (the per-call attribute/event/span arrays).
 *
 * TracesData -> ResourceSpans -> ScopeSpans -> Span / Event / Status (their KeyValues through
 * wire.c), with the validation the Python road would do: no repeated singular fields, no links,
 * no entity references on the resource. Any of these bails (the caller then runs the Python
 * rebuild).
 */
#include "crebuild.h"

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
            TRY(crb_rd_string(&p, end, &s));
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

/* Append the KeyValue m to crb_g.attrs, hint as crb_push_attr_at's. A KeyValue whose bytes are
 * the hint's, key and value (repeated words, devices, counters, units...), is the hint's attribute
 * again: copied, not parsed (the hint's bytes were validated when it was read, and the copy's
 * key and value point at them: the same text). Returns 1 when the attribute has the hint's key
 * (such a copy, or the same interned name), 0 when not, BAIL. */
static inline int push_attr(Str m, int hint) {
    if (hint >= 0 && crb_g.nattrs < crb_g.capattrs) {
        const Attr *h = &crb_g.attrs[hint];
        if (h->rawn == m.n && crb_same_name(h->raw, m.p, m.n)) {
            Attr *a = &crb_g.attrs[crb_g.nattrs++];
            *a = *h;
            a->used = a->merged = 0;
            return 1;
        }
    }
    TRY(crb_push_attr_at(m, hint));
    int kid = crb_g.attrs[crb_g.nattrs - 1].kid;
    return hint >= 0 && kid >= 0 && kid == crb_g.attrs[hint].kid;
}

static int parse_event(Str m) {
    GROW(crb_g.events, crb_g.nevents, crb_g.capevents, Event);
    Event *e = &crb_g.events[crb_g.nevents];
    memset(e, 0, sizeof(*e));
    e->a0 = crb_g.nattrs;
    const uint8_t *p = m.p, *end = m.p + m.n;
    uint32_t seen = 0;
    int same = 0; /* attributes with the key of the previous event's at the same position */
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
            TRY(crb_rd_string(&p, end, &s));
            crb_g.events[crb_g.nevents].name = s;
            break;
        case 3: {
            if (wt != 2) return BAIL;
            TRY(rd_len(&p, end, &s));
            int pos = crb_g.nattrs - crb_g.events[crb_g.nevents].a0;
            int r = push_attr(s, pos < crb_g.prev_ev_an ? crb_g.prev_ev_a0 + pos : -1);
            if (r < 0) return BAIL;
            same += r;
            break;
        }
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
    /* the previous event's keys again, in the same order: they were found unique */
    if (same != e->an || e->an != crb_g.prev_ev_an) TRY(crb_unique_keys(e->a0, e->an));
    crb_g.prev_ev_a0 = e->a0;
    crb_g.prev_ev_an = e->an;
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
            TRY(crb_rd_string(&p, end, &sp->status_msg));
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
    int same = 0; /* attributes with the key of the previous span's at the same position */
    const uint8_t *first_event = end;
    /* Two passes: attributes first (contiguous in crb_g.attrs), then events (each pushes its
     * own attributes); the second starts at the first event (fields come in number order, so
     * that is after the attributes) */
    while (p < end) {
        uint32_t f;
        int wt;
        const uint8_t *at = p;
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
        case 3: if (wt != 2) return BAIL; TRY(crb_rd_string(&p, end, &s)); break;
        case 4: if (wt != 2) return BAIL; TRY(rd_len(&p, end, &sp.parent)); break;
        case 5: if (wt != 2) return BAIL; TRY(crb_rd_string(&p, end, &sp.name)); break;
        case 6: case 10: case 12: case 14:
            if (wt != 0) return BAIL;
            TRY(rd_varint(&p, end, &v));
            break;
        case 7: if (wt != 1) return BAIL; TRY(rd_fixed64(&p, end, &sp.start)); break;
        case 8: if (wt != 1) return BAIL; TRY(rd_fixed64(&p, end, &sp.end)); break;
        case 9: {
            if (wt != 2) return BAIL;
            TRY(rd_len(&p, end, &s));
            int pos = crb_g.nattrs - sp.a0;
            int r = push_attr(s, pos < crb_g.prev_span_an ? crb_g.prev_span_a0 + pos : -1);
            if (r < 0) return BAIL;
            same += r;
            break;
        }
        case 11:
            if (wt != 2) return BAIL;
            TRY(rd_len(&p, end, &s));
            if (first_event == end) first_event = at;
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
    /* the previous span's keys again, in the same order: they were found unique */
    if (same != sp.an || sp.an != crb_g.prev_span_an) TRY(crb_unique_keys(sp.a0, sp.an));
    crb_g.prev_span_a0 = sp.a0;
    crb_g.prev_span_an = sp.an;
    for (int i = sp.a0; i < sp.a0 + sp.an; i++)
        if (crb_g.attrs[i].kid == crb_cfg.spill_of) crb_g.has_spill = 1;
    p = first_event;
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
            TRY(crb_rd_string(&p, end, &s));
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
            TRY(crb_rd_string(&p, end, &s));
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
