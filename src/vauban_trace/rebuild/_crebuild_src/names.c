/* _crebuild: the interned attribute names.
 *
 * Every attribute of every span and event is looked up here once (its id indexes the attribute
 * tables of values.c), so the lookup is built for speed: a hash of at most three words of the
 * name, and an open-addressing table of 64-byte slots that each hold the full hash, the id and
 * the name itself, so that a lookup touches one cache line (the input, the attribute array and
 * the output of a trace compete for L1). configure interns into the whole table, then packs it
 * into the smallest power of two at least twice the number of names.
 */
#include "crebuild.h"

static inline uint64_t ld8(const uint8_t *p) { return crb_ld8(p); }

static inline uint32_t ld4(const uint8_t *p) {
    uint32_t w;
    memcpy(&w, p, 4);
    return w;
}

/* names shorter than 8 bytes as one word: every byte is in it (so equal words and lengths mean
 * equal names) */
static inline uint64_t small_word(const uint8_t *p, Py_ssize_t n) {
    if (n >= 4) return ld4(p) | ((uint64_t)ld4(p + n - 4) << 32);
    if (n > 0) return (uint64_t)p[0] | ((uint64_t)p[n >> 1] << 8) | ((uint64_t)p[n - 1] << 16);
    return 0;
}

static inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

/* The name hash reads at most three words of the name instead of every byte: names of the
 * vocabulary share long prefixes ("vauban.usl.") and suffixes (".provenance") but differ in
 * length or in the first, middle or last 8 bytes (names agreeing on all of these only share a
 * probe chain). One multiply on the XOR of the rotated words: the top bits of the product
 * depend on every input bit, so the stored hash and the slot index are both taken from the top. */
static inline uint32_t key_hash(const uint8_t *p, Py_ssize_t n) {
    uint64_t x = (uint64_t)n * 0x9e3779b97f4a7c15ull;
    if (n < 8) {
        x ^= small_word(p, n);
    } else {
        x ^= ld8(p) ^ rotl(ld8(p + n - 8), 29);
        if (n > 16) x ^= rotl(ld8(p + (n >> 1) - 4), 47);
    }
    return (uint32_t)((x * 0xff51afd7ed558ccdull) >> 32);
}

/* a slot: one cache line (names longer than SLOT_NAME live in key_arena) */
#define SLOT_NAME 48
typedef struct {
    uint32_t h;  /* full hash of the name */
    int32_t id;  /* -1: empty */
    uint64_t n;
    union { /* at offset 16: a slot is 64 bytes */
        uint8_t name[SLOT_NAME]; /* n <= SLOT_NAME */
        const uint8_t *p;        /* longer: the name in key_arena */
    } u;
} Slot;

#define MAXBITS 10 /* 2 * MAXKEYS slots */
static _Alignas(64) Slot table[1 << MAXBITS];
_Static_assert(sizeof(Slot) == 64, "a slot is one cache line");
static int hbits = MAXBITS;
static int nkeys;
static uint8_t key_arena[1 << 15];
static size_t key_arena_used;

void crb_names_reset(void) {
    for (int i = 0; i < (1 << MAXBITS); i++) table[i].id = -1;
    hbits = MAXBITS;
    nkeys = 0;
    key_arena_used = 0;
}

static inline const uint8_t *slot_name(const Slot *s) { return s->n <= SLOT_NAME ? s->u.name : s->u.p; }

#define SLOT_OF(h) ((h) >> (32 - hbits))

/* equal names, of the same length n: a fixed set of (overlapping) word loads per length class
 * that covers every byte, OR-ed together, so that the only branch is the class */
static inline int same_name(const uint8_t *x, const uint8_t *y, Py_ssize_t n) {
    if (n < 8) return small_word(x, n) == small_word(y, n);
    uint64_t d = (ld8(x) ^ ld8(y)) | (ld8(x + n - 8) ^ ld8(y + n - 8));
    if (n <= 16) return d == 0;
    d |= (ld8(x + 8) ^ ld8(y + 8)) | (ld8(x + n - 16) ^ ld8(y + n - 16));
    if (n <= 32) return d == 0;
    d |= (ld8(x + 16) ^ ld8(y + 16)) | (ld8(x + 24) ^ ld8(y + 24)) | (ld8(x + n - 32) ^ ld8(y + n - 32)) |
         (ld8(x + n - 24) ^ ld8(y + n - 24));
    if (n <= 64) return d == 0;
    for (Py_ssize_t i = 32; d == 0 && i < n - 32; i += 8) d |= ld8(x + i) ^ ld8(y + i);
    return d == 0;
}

int crb_lookup_key(const uint8_t *p, Py_ssize_t n) {
    uint32_t h = key_hash(p, n), i = SLOT_OF(h), mask = (1u << hbits) - 1;
    for (;;) {
        const Slot *s = &table[i];
        if (s->id < 0) return -1;
        if (s->h == h && s->n == (uint64_t)n && same_name(slot_name(s), p, n)) return s->id;
        i = (i + 1) & mask;
    }
}

static void slot_insert(const Slot *from) {
    uint32_t i = SLOT_OF(from->h), mask = (1u << hbits) - 1;
    while (table[i].id >= 0) i = (i + 1) & mask;
    table[i] = *from;
}

/* the table packed into the smallest power of two at least twice the number of names */
int crb_names_pack(void) {
    Slot *all = (Slot *)PyMem_RawMalloc(sizeof(Slot) * (size_t)(nkeys ? nkeys : 1));
    if (all == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int k = 0;
    for (int i = 0; i < (1 << hbits); i++)
        if (table[i].id >= 0) all[k++] = table[i];
    int bits = 4;
    while ((1 << bits) < 2 * nkeys) bits++;
    for (int i = 0; i < (1 << MAXBITS); i++) table[i].id = -1;
    hbits = bits;
    for (int i = 0; i < k; i++) slot_insert(&all[i]);
    PyMem_RawFree(all);
    return 0;
}

/* Intern a key; returns its id or -1 (with an exception set). */
int crb_intern_key(const char *s, Py_ssize_t n) {
    int id = crb_lookup_key((const uint8_t *)s, n);
    if (id >= 0) return id;
    if (nkeys >= MAXKEYS || hbits != MAXBITS) {
        PyErr_SetString(PyExc_ValueError, "too many attribute names");
        return -1;
    }
    Slot sl;
    memset(&sl, 0, sizeof(sl));
    if (n <= SLOT_NAME) {
        memcpy(sl.u.name, s, (size_t)n);
    } else {
        if ((size_t)n > sizeof(key_arena) - key_arena_used) {
            PyErr_SetString(PyExc_ValueError, "attribute names too long");
            return -1;
        }
        uint8_t *o = key_arena + key_arena_used;
        memcpy(o, s, (size_t)n);
        key_arena_used += (size_t)n;
        sl.u.p = o;
    }
    id = nkeys++;
    sl.h = key_hash((const uint8_t *)s, n);
    sl.id = id;
    sl.n = (uint64_t)n;
    slot_insert(&sl);
    return id;
}
