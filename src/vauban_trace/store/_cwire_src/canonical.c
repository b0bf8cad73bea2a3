/* _cwire canonical checks: is a message exactly what upb's deterministic serialization writes?
 *
 * The field tables of the OTLP trace messages (kind, repeated, oneof membership, sub-message
 * type per field number), the strict UTF-8 check behind utf8_ok's ASCII fast path, and the
 * canonical-form checks: the table-driven cw_check_msg (the reference for every message type)
 * and the hand-specialised checks of the hot messages with the same verdicts: KeyValue and
 * AnyValue, and cw_check_span (Span and Event written out field by field, with an inline fast
 * path for the common KeyValue; it captures what rows.c needs of the span). The rules are those
 * of the manual at the top of rows.c. Every read is bounded by the end pointer it is given (the
 * SSE2 window of utf8_in by the end of the enclosing message).
 */
#include "cwire.h"

/* ---------- field tables ---------- */

enum { K_NONE = 0, K_STR, K_BYTES, K_MSG, K_I32, K_U32, K_I64, K_BOOL, K_F64, K_F32 };

typedef struct {
    uint8_t kind;
    uint8_t rep;   /* repeated */
    uint8_t oneof; /* member of the message's (only) oneof */
    uint8_t sub;   /* message type for K_MSG */
} Field;

typedef struct {
    int max;
    Field f[17];
} Msg;

#define F(k) {k, 0, 0, 0}
#define R(k) {k, 1, 0, 0}
#define M(t) {K_MSG, 0, 0, t}
#define RM(t) {K_MSG, 1, 0, t}
#define O(k) {k, 0, 1, 0}
#define OM(t) {K_MSG, 0, 1, t}
#define NO {K_NONE, 0, 0, 0}

static const Msg MSGS[T_COUNT] = {
    [T_KEYVALUE] = {3, {NO, F(K_STR), M(T_ANYVALUE), F(K_I32)}},
    [T_ANYVALUE] = {8, {NO, O(K_STR), O(K_BOOL), O(K_I64), O(K_F64), OM(T_ARRAY), OM(T_KVLIST), O(K_BYTES),
                        O(K_I32)}},
    [T_ARRAY] = {1, {NO, RM(T_ANYVALUE)}},
    [T_KVLIST] = {1, {NO, RM(T_KEYVALUE)}},
    [T_ENTITYREF] = {4, {NO, F(K_STR), F(K_STR), R(K_STR), R(K_STR)}},
    [T_RESOURCE] = {3, {NO, RM(T_KEYVALUE), F(K_U32), RM(T_ENTITYREF)}},
    [T_SCOPE] = {4, {NO, F(K_STR), F(K_STR), RM(T_KEYVALUE), F(K_U32)}},
    [T_SPAN] = {16, {NO, F(K_BYTES), F(K_BYTES), F(K_STR), F(K_BYTES), F(K_STR), F(K_I32), F(K_F64), F(K_F64),
                     RM(T_KEYVALUE), F(K_U32), RM(T_EVENT), F(K_U32), RM(T_LINK), F(K_U32), M(T_STATUS),
                     F(K_F32)}},
    [T_EVENT] = {4, {NO, F(K_F64), F(K_STR), RM(T_KEYVALUE), F(K_U32)}},
    [T_LINK] = {6, {NO, F(K_BYTES), F(K_BYTES), F(K_STR), RM(T_KEYVALUE), F(K_U32), F(K_F32)}},
    [T_STATUS] = {3, {NO, NO, F(K_STR), F(K_I32)}},
};

/* ---------- UTF-8 ---------- */

int cw_utf8_slow(P p, size_t n) {
    P end = p + n;
    while (p < end) {
        if (end - p >= 8) {
            uint64_t w;
            memcpy(&w, p, 8);
            if (!(w & 0x8080808080808080ULL)) {
                p += 8;
                continue;
            }
        }
        uint8_t c = *p;
        if (c < 0x80) {
            p++;
        } else if (c >= 0xC2 && c <= 0xDF) {
            if (end - p < 2 || (p[1] & 0xC0) != 0x80) return 0;
            p += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            if (end - p < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return 0;
            if (c == 0xE0 && p[1] < 0xA0) return 0;
            if (c == 0xED && p[1] > 0x9F) return 0;
            p += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            if (end - p < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80) return 0;
            if (c == 0xF0 && p[1] < 0x90) return 0;
            if (c == 0xF4 && p[1] > 0x8F) return 0;
            p += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

/* ---------- canonical checks ---------- */

static int check_field(const Field *fd, int wire, P *pp, P end, int depth, int num, Capture *cap) {
    P p = *pp;
    uint64_t v = 0;
    size_t n = 0;
    P start;
    switch (fd->kind) {
    case K_STR:
    case K_BYTES:
    case K_MSG:
        if (wire != 2 || !rd_len(&p, end, &n)) return 0;
        start = p;
        p += n;
        if (fd->kind == K_STR) {
            if (n == 0 && !fd->rep && !fd->oneof) return 0;
            if (!utf8_ok(start, n)) return 0;
        } else if (fd->kind == K_BYTES) {
            if (n == 0 && !fd->rep && !fd->oneof) return 0;
        } else {
            if (depth >= MAX_DEPTH) return 0;
            if (!cw_check_msg(fd->sub, start, p, depth + 1, NULL)) return 0;
        }
        if (cap && !fd->rep) {
            cap->ptr[num] = start;
            cap->len[num] = n;
        }
        break;
    case K_I32:
    case K_U32:
    case K_I64:
    case K_BOOL:
        if (wire != 0 || !rd_varint(&p, end, &v)) return 0;
        if (fd->kind == K_I32 && v != (uint64_t)(int64_t)(int32_t)(uint32_t)v) return 0;
        if (fd->kind == K_U32 && v > 0xFFFFFFFFULL) return 0;
        if (fd->kind == K_BOOL && v > 1) return 0;
        if (v == 0 && !fd->oneof) return 0;
        break;
    case K_F64:
        if (wire != 1 || end - p < 8) return 0;
        memcpy(&v, p, 8); /* little-endian hosts only (checked at import) */
        p += 8;
        if (v == 0 && !fd->oneof) return 0;
        break;
    case K_F32: {
        uint32_t w;
        if (wire != 5 || end - p < 4) return 0;
        memcpy(&w, p, 4);
        p += 4;
        v = w;
        if (v == 0 && !fd->oneof) return 0;
        break;
    }
    default:
        return 0;
    }
    if (cap) cap->val[num] = v;
    *pp = p;
    return 1;
}

/* Hand-specialised checks of the hot messages (same rules as cw_check_msg's tables): a KeyValue
 * and an AnyValue. Tags of fields 1..15 are one byte when minimal, so comparing that byte is
 * the whole tag check. */
static int check_any(P p, P end, int depth);

static int check_kv(P p, P end, int depth) {
    size_t n;
    uint64_t v;
    if (p < end && *p == 0x0a) { /* key */
        p++;
        if (!rd_len(&p, end, &n) || n == 0 || !utf8_ok(p, n)) return 0;
        p += n;
    }
    if (p < end && *p == 0x12) { /* value */
        p++;
        if (!rd_len(&p, end, &n)) return 0;
        P a = p, a_end = p + n;
        p = a_end;
        /* inline the common scalar values; the rest (and anything odd) goes to check_any */
        if (n >= 2 && *a == 0x0a && a[1] < 0x80 && (size_t)a[1] == n - 2) {
            if (!utf8_ok(a + 2, n - 2)) return 0;
        } else if (n == 2 && *a == 0x18 && a[1] < 0x80) {
        } else if (n == 9 && *a == 0x21) {
        } else if (n == 2 && *a == 0x10 && a[1] <= 1) {
        } else if (depth >= MAX_DEPTH || !check_any(a, a_end, depth + 1)) {
            return 0;
        }
    }
    if (p < end && *p == 0x18) { /* key_strindex */
        p++;
        if (!rd_varint(&p, end, &v) || v == 0 || v != (uint64_t)(int64_t)(int32_t)(uint32_t)v) return 0;
    }
    return p == end;
}

static int check_any(P p, P end, int depth) {
    size_t n;
    uint64_t v;
    if (p == end) return 1; /* no value set */
    switch (*p++) {
    case 0x0a: /* string_value */
        if (!rd_len(&p, end, &n) || !utf8_ok(p, n)) return 0;
        p += n;
        break;
    case 0x10: /* bool_value */
        if (!rd_varint(&p, end, &v) || v > 1) return 0;
        break;
    case 0x18: /* int_value */
        if (!rd_varint(&p, end, &v)) return 0;
        break;
    case 0x21: /* double_value */
        if (end - p < 8) return 0;
        p += 8;
        break;
    case 0x2a: /* array_value: values = 1 (AnyValue) */
    case 0x32: { /* kvlist_value: values = 1 (KeyValue) */
        int kv = p[-1] == 0x32;
        if (!rd_len(&p, end, &n) || depth >= MAX_DEPTH) return 0;
        P q = p, qend = p + n;
        p = qend;
        while (q < qend) {
            size_t m;
            if (*q++ != 0x0a || !rd_len(&q, qend, &m)) return 0;
            if (kv ? !check_kv(q, q + m, depth + 1) : !check_any(q, q + m, depth + 1)) return 0;
            q += m;
        }
        break;
    }
    case 0x3a: /* bytes_value */
        if (!rd_len(&p, end, &n)) return 0;
        p += n;
        break;
    case 0x40: /* string_value_strindex */
        if (!rd_varint(&p, end, &v) || v != (uint64_t)(int64_t)(int32_t)(uint32_t)v) return 0;
        break;
    default:
        return 0;
    }
    return p == end;
}

/* ---------- the span, specialised ----------
 *
 * A canonical message writes its known fields in field-number order, each singular one at most
 * once and each repeated one as one contiguous run, with minimal one-byte tags for fields 1..15:
 * so consuming the fields in order, each only when its exact tag byte comes next, and requiring
 * that nothing is left, is the whole order/duplicate/unknown-field/wire-type check that
 * cw_check_msg does with the tables. The field rules are those of check_field. */

#define AT(t) (p < end && *p == (t))
#define I32_OK(v) ((v) == (uint64_t)(int64_t)(int32_t)(uint32_t)(v))

/* utf8_ok(s, n) for a string inside a message whose bytes may be read up to ``limit``: a
 * string of at most 64 bytes with 64 readable bytes from its start is tested for ASCII in one
 * branch-free 64-byte window (SSE2), whatever its length. */
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
CW_INLINE int utf8_in(P s, size_t n, P limit) {
#if defined(__SSE2__)
    if (n <= 64 && limit - s >= 64) {
        uint64_t m0 = (uint32_t)_mm_movemask_epi8(_mm_loadu_si128((const __m128i *)s));
        uint64_t m1 = (uint32_t)_mm_movemask_epi8(_mm_loadu_si128((const __m128i *)(s + 16)));
        uint64_t m2 = (uint32_t)_mm_movemask_epi8(_mm_loadu_si128((const __m128i *)(s + 32)));
        uint64_t m3 = (uint32_t)_mm_movemask_epi8(_mm_loadu_si128((const __m128i *)(s + 48)));
        uint64_t high = m0 | m1 << 16 | m2 << 32 | m3 << 48; /* bit i: byte i is not ASCII */
        uint64_t mine = n ? ~0ULL >> (64 - n) : 0;
        if (!(high & mine)) return 1;
        return cw_utf8_slow(s, n);
    }
#else
    (void)limit;
#endif
    return utf8_ok(s, n);
}

/* The common KeyValue (a one-byte key length, a one-byte value length, the value running to the
 * end: a string, an int, a double or a bool) accepted inline; anything else is left to check_kv,
 * which decides. Accepting here implies check_kv accepts. [p, limit) may be read. */
CW_INLINE int kv_ok(P p, P end, P limit, int depth) {
    size_t left = (size_t)(end - p);
    if (left >= 4 && p[0] == 0x0a && p[1] != 0 && p[1] < 0x80) {
        size_t kn = p[1];
        if (kn + 4 <= left && p[2 + kn] == 0x12 && p[3 + kn] < 0x80 && kn + 4 + p[3 + kn] == left) {
            P a = p + 4 + kn;
            size_t n = p[3 + kn];
            if (n >= 2 && a[0] == 0x0a && a[1] == n - 2) {
                /* key and value strings; the framing bytes between them are below 0x80, so
                 * the whole KeyValue is ASCII exactly when both strings are */
                if (utf8_in(p, left, limit) || (utf8_ok(p + 2, kn) && utf8_ok(a + 2, n - 2))) return 1;
            } else if (n >= 2 && a[0] == 0x18 && depth < MAX_DEPTH) { /* check_kv: check_any past 1 byte */
                P q = a + 1;
                uint64_t v;
                if (rd_varint(&q, end, &v) && q == end && utf8_in(p + 2, kn, limit)) return 1;
            } else if ((n == 9 && a[0] == 0x21) || (n == 2 && a[0] == 0x10 && a[1] <= 1)) {
                if (utf8_in(p + 2, kn, limit)) return 1;
            }
        }
    }
    return check_kv(p, end, depth);
}

/* A run of KeyValue fields with one-byte tag ``tag`` at *pp, in a message at ``depth``. */
CW_INLINE int kv_run(P *pp, P end, uint8_t tag, int depth) {
    P p = *pp;
    size_t n;
    while (p < end && *p == tag) {
        p++;
        if (!rd_len(&p, end, &n) || depth >= MAX_DEPTH || !kv_ok(p, p + n, end, depth + 1)) return 0;
        p += n;
    }
    *pp = p;
    return 1;
}

/* A non-empty length-delimited payload after a tag byte (a singular string or bytes field). */
CW_INLINE int ld_nonempty(P *pp, P end, P *s, size_t *n) {
    P p = *pp + 1;
    if (!rd_len(&p, end, n) || *n == 0) return 0;
    *s = p;
    *pp = p + *n;
    return 1;
}

/* A non-zero varint after a tag byte, at most ``max`` when ``i32`` is 0, else an int32. */
CW_INLINE int varint_nonzero(P *pp, P end, int i32) {
    P p = *pp + 1;
    uint64_t v;
    if (!rd_varint(&p, end, &v) || v == 0) return 0;
    if (i32 ? !I32_OK(v) : v > 0xFFFFFFFFULL) return 0;
    *pp = p;
    return 1;
}

/* A non-zero fixed64 after a tag byte. */
CW_INLINE int fixed64_nonzero(P *pp, P end, uint64_t *v) {
    P p = *pp + 1;
    if (end - p < 8) return 0;
    memcpy(v, p, 8); /* little-endian hosts only (checked at import) */
    if (*v == 0) return 0;
    *pp = p + 8;
    return 1;
}

/* Event: time_unix_nano = 1 (fixed64), name = 2, attributes = 3, dropped_attributes_count = 4. */
static int check_event(P p, P end, int depth) {
    P s;
    size_t n;
    uint64_t v;
    if (AT(0x09) && !fixed64_nonzero(&p, end, &v)) return 0;
    if (AT(0x12) && (!ld_nonempty(&p, end, &s, &n) || !utf8_in(s, n, end))) return 0;
    if (!kv_run(&p, end, 0x1a, depth)) return 0;
    if (AT(0x20) && !varint_nonzero(&p, end, 0)) return 0;
    return p == end;
}

int cw_check_span(P p, P end, int depth, SpanFields *f) {
    P s;
    size_t n;
    f->trace_id = f->span_id = f->parent = f->name = NULL;
    f->trace_id_n = f->span_id_n = f->parent_n = f->name_n = 0;
    f->start = f->end = 0;
    if (AT(0x0a) && !ld_nonempty(&p, end, &f->trace_id, &f->trace_id_n)) return 0;
    if (AT(0x12) && !ld_nonempty(&p, end, &f->span_id, &f->span_id_n)) return 0;
    if (AT(0x1a) && (!ld_nonempty(&p, end, &s, &n) || !utf8_ok(s, n))) return 0; /* trace_state */
    if (AT(0x22) && !ld_nonempty(&p, end, &f->parent, &f->parent_n)) return 0;
    if (AT(0x2a) && (!ld_nonempty(&p, end, &f->name, &f->name_n) || !utf8_in(f->name, f->name_n, end))) return 0;
    if (AT(0x30) && !varint_nonzero(&p, end, 1)) return 0; /* kind */
    if (AT(0x39) && !fixed64_nonzero(&p, end, &f->start)) return 0;
    if (AT(0x41) && !fixed64_nonzero(&p, end, &f->end)) return 0;
    if (!kv_run(&p, end, 0x4a, depth)) return 0;
    if (AT(0x50) && !varint_nonzero(&p, end, 0)) return 0; /* dropped_attributes_count */
    while (AT(0x5a)) {                                       /* events */
        p++;
        if (!rd_len(&p, end, &n) || depth >= MAX_DEPTH || !check_event(p, p + n, depth + 1)) return 0;
        p += n;
    }
    if (AT(0x60) && !varint_nonzero(&p, end, 0)) return 0; /* dropped_events_count */
    while (AT(0x6a)) {                                       /* links */
        p++;
        if (!rd_len(&p, end, &n) || depth >= MAX_DEPTH || !cw_check_msg(T_LINK, p, p + n, depth + 1, NULL)) return 0;
        p += n;
    }
    if (AT(0x70) && !varint_nonzero(&p, end, 0)) return 0; /* dropped_links_count */
    if (AT(0x7a)) {                                          /* status */
        p++;
        if (!rd_len(&p, end, &n) || depth >= MAX_DEPTH || !cw_check_msg(T_STATUS, p, p + n, depth + 1, NULL)) return 0;
        p += n;
    }
    if (end - p >= 2 && p[0] == 0x85 && p[1] == 0x01) { /* flags (field 16, fixed32) */
        uint32_t w;
        p += 2;
        if (end - p < 4) return 0;
        memcpy(&w, p, 4);
        if (w == 0) return 0;
        p += 4;
    }
    return p == end;
}

/* Is [p, end) a canonical serialization of message ``type``? */
int cw_check_msg(int type, P p, P end, int depth, Capture *cap) {
    if (type == T_KEYVALUE) return check_kv(p, end, depth);
    if (type == T_ANYVALUE) return check_any(p, end, depth);
    const Msg *m = &MSGS[type];
    int last = 0, oneof_seen = 0;
    while (p < end) {
        uint64_t key;
        if (!rd_varint(&p, end, &key)) return 0;
        uint64_t num = key >> 3;
        int wire = (int)(key & 7);
        if (num == 0 || num > (uint64_t)m->max) return 0;
        const Field *fd = &m->f[num];
        if (fd->kind == K_NONE) return 0;
        if ((int)num < last || ((int)num == last && !fd->rep)) return 0;
        if (fd->oneof) {
            if (oneof_seen) return 0;
            oneof_seen = 1;
        }
        last = (int)num;
        if (cap) cap->seen |= 1u << num;
        if (!check_field(fd, wire, &p, end, depth, (int)num, cap)) return 0;
        if (fd->sub == T_KEYVALUE && fd->kind == K_MSG && num < 16) {
            /* the rest of a run of attributes: same one-byte tag, straight to check_kv */
            const uint8_t tag = (uint8_t)key;
            while (p < end && *p == tag) {
                size_t n;
                p++;
                if (!rd_len(&p, end, &n) || depth >= MAX_DEPTH || !check_kv(p, p + n, depth + 1)) return 0;
                p += n;
            }
        }
    }
    return 1;
}
