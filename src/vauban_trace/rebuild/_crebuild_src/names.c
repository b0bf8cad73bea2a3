/* _crebuild: the interned attribute names.
 *
 * Every attribute of every span and event is looked up once (its id indexes the attribute tables
 * of values.c), so the lookup is built for speed (it is inline, crebuild.h): a hash of at most
 * three words of the name, and an open-addressing table of 8-byte entries that each hold the full
 * hash, the name's length and its id, so that a probe compares hash and length in one test; the
 * names themselves lie side by side in an arena (in interning order: related names share cache
 * lines), read only to confirm a probe that matched. The table is small (2 KiB for the ~100 names
 * of the vocabulary) and stays in L1 while the input, the attribute array and the output of a
 * trace stream through it: the 64-byte slots of an earlier version (one line per name) missed the
 * cache on most lookups. configure interns into the whole table, then packs it into the smallest
 * power of two at least twice the number of names.
 */
#include "crebuild.h"

_Alignas(64) uint64_t crb_ktab[1 << CRB_KMAXBITS];
int crb_kbits = CRB_KMAXBITS;
uint32_t crb_koff[MAXKEYS];
uint8_t crb_karena[CRB_KARENA];
static int nkeys;
static size_t arena_used;

void crb_names_reset(void) {
    memset(crb_ktab, 0, sizeof(crb_ktab));
    crb_kbits = CRB_KMAXBITS;
    nkeys = 0;
    arena_used = 0;
}

static void entry_insert(uint64_t e) {
    uint32_t i = (uint32_t)(e >> 32) >> (32 - crb_kbits), mask = (1u << crb_kbits) - 1;
    while (crb_ktab[i] != 0) i = (i + 1) & mask;
    crb_ktab[i] = e;
}

/* the table packed into the smallest power of two at least twice the number of names */
int crb_names_pack(void) {
    uint64_t *all = (uint64_t *)PyMem_RawMalloc(sizeof(uint64_t) * (size_t)(nkeys ? nkeys : 1));
    if (all == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int k = 0;
    for (int i = 0; i < (1 << crb_kbits); i++)
        if (crb_ktab[i] != 0) all[k++] = crb_ktab[i];
    int bits = 4;
    while ((1 << bits) < 2 * nkeys) bits++;
    memset(crb_ktab, 0, sizeof(crb_ktab));
    crb_kbits = bits;
    for (int i = 0; i < k; i++) entry_insert(all[i]);
    PyMem_RawFree(all);
    return 0;
}

/* Intern a key; returns its id or -1 (with an exception set). */
int crb_intern_key(const char *s, Py_ssize_t n) {
    int id = crb_lookup_key((const uint8_t *)s, n);
    if (id >= 0) return id;
    if (nkeys >= MAXKEYS || crb_kbits != CRB_KMAXBITS) {
        PyErr_SetString(PyExc_ValueError, "too many attribute names");
        return -1;
    }
    if (n > CRB_KMAXLEN || (size_t)n > sizeof(crb_karena) - arena_used) {
        PyErr_SetString(PyExc_ValueError, "attribute names too long");
        return -1;
    }
    memcpy(crb_karena + arena_used, s, (size_t)n);
    id = nkeys++;
    crb_koff[id] = (uint32_t)arena_used;
    arena_used += (size_t)n;
    entry_insert(crb_kentry(crb_key_hash((const uint8_t *)s, n), n, id));
    return id;
}
