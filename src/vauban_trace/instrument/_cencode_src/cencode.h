/* _cencode internal header: the growable output buffer and the protobuf wire writers shared by
 * module.c (the module, the request/resource/scope walk) and span.c (one SDK span, its events,
 * links and attribute values). Not a public API: only PyInit__cencode is exported.
 *
 * Every ce_ function returns 0 on success and -1 to DECLINE: the input is something this encoder
 * does not reproduce exactly (an unusual type, a value protobuf would refuse, a Python error while
 * reading an attribute); the caller then clears any Python error and the module returns None, so
 * that the official encoder handles the batch. An exception that is not an Exception
 * (KeyboardInterrupt, SystemExit) raised by code run while reading propagates instead.
 */
#ifndef VAUBAN_CENCODE_H
#define VAUBAN_CENCODE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__)
#pragma GCC visibility push(hidden)
#endif

#define CE_MAX_DEPTH 32 /* nesting of attribute values (lists / dicts) */
/* The deepest AnyValue message written, counted from its ResourceSpans (0): the official encoder
 * builds its messages by copying them through upb's parser, whose depth limit (100) then raises
 * DecodeError for the whole batch (32 nested dicts in an event's attributes: level 101); bytes
 * deeper than that could not be parsed back either. A list adds 2 levels, a dict 3. */
#define CE_MAX_LEVEL 100

typedef struct {
    uint8_t *data;
    size_t len;
    size_t cap;
} Buf;

int ce_grow(Buf *b, size_t need);

static inline int ce_reserve(Buf *b, size_t n) {
    return (b->len + n <= b->cap) ? 0 : ce_grow(b, n);
}

static inline int ce_varint(Buf *b, uint64_t v) {
    if (ce_reserve(b, 10) < 0) return -1;
    uint8_t *p = b->data + b->len;
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    b->len = (size_t)(p - b->data);
    return 0;
}

static inline int ce_fixed64(Buf *b, uint32_t field, uint64_t v) {
    if (ce_varint(b, ((uint64_t)field << 3) | 1) < 0 || ce_reserve(b, 8) < 0) return -1;
    for (int i = 0; i < 8; i++) b->data[b->len++] = (uint8_t)(v >> (8 * i));
    return 0;
}

static inline int ce_fixed32(Buf *b, uint32_t field, uint32_t v) {
    if (ce_varint(b, ((uint64_t)field << 3) | 5) < 0 || ce_reserve(b, 4) < 0) return -1;
    for (int i = 0; i < 4; i++) b->data[b->len++] = (uint8_t)(v >> (8 * i));
    return 0;
}

static inline int ce_uint_field(Buf *b, uint32_t field, uint64_t v) {
    if (ce_varint(b, (uint64_t)field << 3) < 0) return -1;
    return ce_varint(b, v);
}

static inline int ce_bytes_field(Buf *b, uint32_t field, const void *data, size_t n) {
    if (ce_varint(b, ((uint64_t)field << 3) | 2) < 0 || ce_varint(b, n) < 0 || ce_reserve(b, n) < 0) return -1;
    if (n) memcpy(b->data + b->len, data, n);
    b->len += n;
    return 0;
}

/* A length-delimited submessage: ce_begin writes the tag and a one-byte length placeholder and
 * returns the offset of the body; ce_end fixes the length (moving the body when it needs more than
 * one byte). Returns (size_t)-1 on failure. */
static inline size_t ce_begin(Buf *b, uint32_t field) {
    if (ce_varint(b, ((uint64_t)field << 3) | 2) < 0 || ce_reserve(b, 1) < 0) return (size_t)-1;
    b->data[b->len++] = 0;
    return b->len;
}

int ce_end(Buf *b, size_t body);

/* The span's attributes and values (span.c). */
int ce_attributes(Buf *b, uint32_t field, PyObject *attrs, int level);
int ce_span(Buf *b, uint32_t field, PyObject *span);
int ce_str_field(Buf *b, uint32_t field, PyObject *s, int optional);

/* Interned attribute names (module.c fills them at import). */
extern PyObject *ce_s_attributes, *ce_s__attributes, *ce_s__dict, *ce_s_name, *ce_s_version,
    *ce_s_schema_url, *ce_s_resource, *ce_s_instrumentation_scope, *ce_s_trace_id, *ce_s_span_id,
    *ce_s_trace_state, *ce_s_is_remote, *ce_s_parent, *ce_s_kind, *ce_s_value, *ce_s_start_time,
    *ce_s_end_time, *ce_s_events, *ce_s_links, *ce_s_status, *ce_s_status_code, *ce_s_description,
    *ce_s_dropped_attributes, *ce_s_dropped_events, *ce_s_dropped_links, *ce_s_timestamp,
    *ce_s_context, *ce_s_items, *ce_s_get_span_context, *ce_sixty_four;

/* The SDK types whose layout this module relies on, exactly (module.c imports them at import):
 * opentelemetry.attributes.BoundedAttributes, opentelemetry.sdk.trace.ReadableSpan,
 * opentelemetry.trace.SpanKind. */
extern PyTypeObject *ce_t_bounded_attributes, *ce_t_readable_span, *ce_t_span_kind;

#endif
