/* _crebuild: JSON text writers, byte for byte what json.dumps writes (ensure_ascii=True).
 *
 * Integers, floats (repr through PyOS_double_to_string), string escaping (a word-at-a-time scan
 * for the bytes that need it, then \uXXXX escapes with surrogate pairs), hex ids, object keys,
 * and Python values (as json.loads made them) for the metadata parsed by parse_json_attr.
 */
#include "crebuild.h"

#include <float.h>

#if defined(__GNUC__)
__attribute__((noinline))
#endif
int crb_buf_grow(Buf *b, size_t extra) {
    if (b->n + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + extra) cap *= 2;
    char *p = (char *)PyMem_RawRealloc(b->p, cap);
    if (p == NULL) return BAIL;
    b->p = p;
    b->cap = cap;
    return 0;
}

/* "00" .. "99": integers are written two digits at a time */
static char DIGITS2[200];
/* each byte as its two lowercase hex digits */
static char HEX2[512];

/* exactly 8 digits of v < 10^8 at w: two halves of 4 digits, each two pairs (independent
 * 32-bit multiply-shift divisions rather than a chain of them) */
static inline void put8(char *w, uint32_t v) {
    uint32_t hi = v / 10000, lo = v % 10000;
    memcpy(w, DIGITS2 + 2 * (hi / 100), 2);
    memcpy(w + 2, DIGITS2 + 2 * (hi % 100), 2);
    memcpy(w + 4, DIGITS2 + 2 * (lo / 100), 2);
    memcpy(w + 6, DIGITS2 + 2 * (lo % 100), 2);
}

static const uint64_t POW10U[20] = {1ull, 10ull, 100ull, 1000ull, 10000ull, 100000ull, 1000000ull, 10000000ull,
                                    100000000ull, 1000000000ull, 10000000000ull, 100000000000ull,
                                    1000000000000ull, 10000000000000ull, 100000000000000ull,
                                    1000000000000000ull, 10000000000000000ull, 100000000000000000ull,
                                    1000000000000000000ull, 10000000000000000000ull};

/* the number of decimal digits of v (1 for 0): the binary length times log10(2), corrected */
static inline int ndigits(uint64_t v) {
    int bits = 64 - __builtin_clzll(v | 1);
    int t = (bits * 1233) >> 12; /* floor(bits * log10(2)): the digits, or one more */
    return v ? t + 1 - (v < POW10U[t]) : 1;
}

/* the decimal digits of v, ending at end (written from the right): 8-digit chunks while more
 * than 8 are left (timestamps have 19), then pairs */
static inline void digits_before(char *end, uint64_t v) {
    char *w = end;
    while (v >= 100000000u) {
        uint64_t q = v / 100000000u;
        w -= 8;
        put8(w, (uint32_t)(v - q * 100000000u));
        v = q;
    }
    uint32_t r = (uint32_t)v;
    while (r >= 100) {
        w -= 2;
        memcpy(w, DIGITS2 + 2 * (r % 100), 2);
        r /= 100;
    }
    if (r >= 10) {
        w -= 2;
        memcpy(w, DIGITS2 + 2 * r, 2);
    } else {
        *--w = (char)('0' + r);
    }
}

/* the decimal digits of v, straight into the buffer */
int crb_put_u64(Buf *b, uint64_t v) {
    int nd = ndigits(v);
    TRY(buf_reserve(b, 20));
    digits_before(b->p + b->n + nd, v);
    b->n += (size_t)nd;
    return 0;
}

int crb_put_i64(Buf *b, int64_t v) {
    if (v < 0) {
        TRY(PUTS(b, "-"));
        return crb_put_u64(b, (uint64_t)0 - (uint64_t)v);
    }
    return crb_put_u64(b, (uint64_t)v);
}

/* Exact powers of ten (10^22 is the largest one a double holds exactly). */
static const double POW10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* repr(x) without dtoa, for the doubles that are short decimals (durations, statistics): writes
 * the text to out (32 bytes) and returns its length, or 0 when x is not such a case (dtoa then).
 *
 * repr is the decimal string with the fewest significant digits that reads back as x (the
 * closest one when several have that many), in fixed notation when its decimal point position
 * decpt is in (-4, 16], with ".0" when it has no fraction. For ax = |x| > 0 and k = 0, 1, ...
 * we look for an integer c with c / 10^k reading back as ax:
 *   - reading back is exact to test: c < 2^53 and 10^k (k <= 22) are exact doubles, so c / 10^k
 *     in IEEE arithmetic is the double nearest to the decimal c * 10^-k, which is what
 *     float("c e-k") gives (both round half to even);
 *   - while ulp(ax) * 10^k < 1, the scaled interval of the reals that read back as ax is
 *     narrower than 1: at most one such c, within 0.5 of ax * 10^k, hence within 1 of the
 *     rounded product p (p < 2^53: p is off by 0.5 at most): c is floor(p) or floor(p) + 1;
 *   - the first k with a c has the fewest significant digits (all the candidates share ax's
 *     decimal magnitude, but an exact power of ten, which is the first k found anyway).
 * Anything else (ties between candidates, x >= 2^53, exponent notation) goes to dtoa. */
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0 /* double arithmetic in double precision */
static int short_repr(double x, char *out) {
    double ax = fabs(x);
    if (!(ax >= 1e-4) || ax >= 9007199254740992.0) return 0;
    uint64_t bits;
    memcpy(&bits, &ax, 8);
    bits++; /* the next double up (ax is finite and positive) */
    double up;
    memcpy(&up, &bits, 8);
    double ulp = up - ax;
    for (int k = 0; k <= 22; k++) {
        double pk = POW10[k];
        if (ulp * pk >= 1.0) return 0; /* two decimals may read back as ax at this scale */
        double p = ax * pk;
        if (p < 0.5) continue; /* no c >= 1 within 1 of p: the next scale */
        if (p >= 9007199254740992.0) return 0;
        uint64_t c = (uint64_t)p; /* floor: p >= 0 */
        if ((double)c / pk != ax) {
            c++;
            if ((double)c / pk != ax) continue;
        }
        /* digits of c (1 <= c < 2^53: 16 at most), then the decimal point k digits from the right */
        char dig[24];
        int nd = ndigits(c);
        digits_before(dig + nd, c);
        int decpt = nd - k;
        if (decpt <= -4 || decpt > 16) return 0; /* exponent notation: dtoa */
        if (k > 0 && dig[nd - 1] == '0') return 0; /* not the shortest (cannot happen): dtoa */
        char *w = out;
        if (x < 0) *w++ = '-';
        if (decpt <= 0) { /* "0." and -decpt (0 to 3) zeros, then the digits */
            memcpy(w, "0.000", (size_t)(2 - decpt));
            w += 2 - decpt;
            memcpy(w, dig, (size_t)nd);
            w += nd;
        } else {
            memcpy(w, dig, (size_t)decpt);
            w += decpt;
            *w++ = '.';
            if (k == 0) {
                *w++ = '0';
            } else {
                memcpy(w, dig + decpt, (size_t)k);
                w += k;
            }
        }
        return (int)(w - out);
    }
    return 0;
}
#else
static int short_repr(double x, char *out) { return 0; }
#endif

int crb_put_double(Buf *b, double x) {
    if (!isfinite(x)) return BAIL;
    char fast[48]; /* 32 needed (see short_repr) */
    int n = short_repr(x, fast);
    if (n > 0) return put(b, fast, (size_t)n);
    if (x == 0) return signbit(x) ? PUTS(b, "-0.0") : PUTS(b, "0.0");
    char *s = PyOS_double_to_string(x, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (s == NULL) return BAIL;
    int r = put(b, s, strlen(s));
    PyMem_Free(s);
    return r;
}

const char crb_hex[17] = "0123456789abcdef";
Buf crb_keep[KB_COUNT];

static int put_u16esc(Buf *b, unsigned c) {
    char t[6] = {'\\', 'u', crb_hex[(c >> 12) & 15], crb_hex[(c >> 8) & 15], crb_hex[(c >> 4) & 15], crb_hex[c & 15]};
    return put(b, t, 6);
}

/* bytes json.dumps copies as they are: printable ASCII but the quote and the backslash */
static uint8_t PLAIN[256];

void crb_json_init(void) {
    for (int i = 0; i < 100; i++) {
        DIGITS2[2 * i] = (char)('0' + i / 10);
        DIGITS2[2 * i + 1] = (char)('0' + i % 10);
    }
    for (int i = 0; i < 256; i++) {
        HEX2[2 * i] = crb_hex[i >> 4];
        HEX2[2 * i + 1] = crb_hex[i & 15];
    }
    for (int c = 0x20; c <= 0x7e; c++) PLAIN[c] = 1;
    PLAIN['"'] = PLAIN['\\'] = 0;
}

#define bad_bytes crb_bad_bytes
#define ld8 crb_ld8
#define all_plain crb_all_plain

/* first byte at or after q that json.dumps escapes (end if none): 8 bytes at a time */
static const uint8_t *plain_run(const uint8_t *q, const uint8_t *end) {
    while (end - q >= 8 && !bad_bytes(ld8(q))) q += 8;
    while (q < end && PLAIN[*q]) q++;
    return q;
}

/* crb_put_jstr of a string with something to escape (out of line: the plain case stays small) */
#if defined(__GNUC__)
__attribute__((noinline))
#endif
static int put_jstr_escaped(Buf *b, Str s) {
    const uint8_t *p = s.p, *end = s.p + s.n;
    TRY(buf_reserve(b, (size_t)s.n + 2));
    b->p[b->n++] = '"';
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

/* A JSON string (json.dumps, ensure_ascii=True) from valid UTF-8. */
int crb_put_jstr(Buf *b, Str s) {
    if (!all_plain(s.p, s.n)) return put_jstr_escaped(b, s);
    /* the common case: nothing to escape */
    TRY(buf_reserve(b, (size_t)s.n + 2));
    char *w = b->p + b->n;
    *w++ = '"';
    crb_copy(w, s.p, (size_t)s.n);
    w[s.n] = '"';
    b->n += (size_t)s.n + 2;
    return 0;
}

/* the 8 lowercase hex digits of 4 bytes, in order, as one word (little-endian stores): each byte
 * spread to two nibbles, then '0' or 'a' - 10 added per nibble without a branch */
static inline uint64_t hex8(const uint8_t *p) {
    uint64_t x = (uint64_t)p[0] | ((uint64_t)p[1] << 16) | ((uint64_t)p[2] << 32) | ((uint64_t)p[3] << 48);
    /* byte i of the result: high nibble of p[i/2] for even i, low nibble for odd i */
    x = ((x >> 4) & 0x000f000f000f000full) | ((x & 0x000f000f000f000full) << 8);
    const uint64_t ones = 0x0101010101010101ull;
    uint64_t letters = ((x + ones * 6) >> 4) & ones; /* 1 where the nibble is >= 10 */
    return x + ones * '0' + letters * ('a' - '0' - 10);
}

/* the 2 * id.n lowercase hex digits of id at w */
void crb_hex_into(char *w, Str id) {
    Py_ssize_t i = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    for (; i + 4 <= id.n; i += 4, w += 8) {
        uint64_t h = hex8(id.p + i);
        memcpy(w, &h, 8);
    }
#endif
    for (; i < id.n; i++, w += 2) memcpy(w, HEX2 + 2 * id.p[i], 2);
}

int crb_put_hex(Buf *b, Str id) {
    TRY(buf_reserve(b, (size_t)id.n * 2 + 2));
    char *w = b->p + b->n;
    *w++ = '"';
    crb_hex_into(w, id);
    w += 2 * id.n;
    *w++ = '"';
    b->n = (size_t)(w - b->p);
    return 0;
}

/* key of an object member: writes ", " unless first, then "key": */
int crb_put_key(Buf *b, int *first, Str k) {
    if (!*first) TRY(PUTS(b, ", "));
    *first = 0;
    TRY(crb_put_jstr(b, k));
    return PUTS(b, ": ");
}

/* Python value (as json.loads + json_safe made it) -> JSON text, exactly as json.dumps. */
int crb_put_py(Buf *b, PyObject *v, int depth) {
    if (depth > 64) return BAIL;
    if (v == Py_None) return PUTS(b, "null");
    if (v == Py_True) return PUTS(b, "true");
    if (v == Py_False) return PUTS(b, "false");
    if (PyUnicode_CheckExact(v)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(v, &n);
        if (s == NULL) return BAIL; /* lone surrogates: let Python do it */
        Str t = {(const uint8_t *)s, n};
        return crb_put_jstr(b, t);
    }
    if (PyLong_CheckExact(v)) {
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (!overflow) {
            if (x == -1 && PyErr_Occurred()) return BAIL;
            return crb_put_i64(b, x);
        }
        PyObject *s = PyObject_Str(v);
        if (s == NULL) return BAIL;
        Py_ssize_t n;
        const char *c = PyUnicode_AsUTF8AndSize(s, &n);
        int r = c == NULL ? BAIL : put(b, c, (size_t)n);
        Py_DECREF(s);
        return r;
    }
    if (PyFloat_CheckExact(v)) return crb_put_double(b, PyFloat_AS_DOUBLE(v));
    if (PyList_CheckExact(v) || PyTuple_CheckExact(v)) {
        TRY(PUTS(b, "["));
        Py_ssize_t n = PySequence_Fast_GET_SIZE(v);
        for (Py_ssize_t i = 0; i < n; i++) {
            if (i) TRY(PUTS(b, ", "));
            /* the list may not change under us: no Python code runs while writing */
            TRY(crb_put_py(b, PySequence_Fast_GET_ITEM(v, i), depth + 1));
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
            TRY(crb_put_key(b, &first, ks));
            TRY(crb_put_py(b, val, depth + 1));
        }
        return PUTS(b, "}");
    }
    return BAIL;
}
