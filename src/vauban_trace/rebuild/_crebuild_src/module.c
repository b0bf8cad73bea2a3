/* vauban_trace.rebuild._crebuild: serialized OTLP protobuf of ONE clean trace -> the exact
 * ``Trace.to_json()`` text of ``rebuild_traces`` plus a small summary.
 *
 * This is an accelerator of the Python rebuild (the reference implementation), never a second
 * road: it handles only the clean common case and returns None for anything else, so that the
 * caller falls back to ``rebuild_traces``. Bailing is always safe; a wrong document is a bug.
 *
 * Every attribute name and vocabulary word comes from ``configure(cfg)`` (taken from
 * ``vauban_trace.semconv`` and ``vauban_trace.contract`` by ``_documents.py``): nothing here
 * spells an attribute name. The JSON field names of the contract records are checked against the
 * dataclass field tuples passed in ``cfg`` (a mismatch makes ``configure`` raise, and the caller
 * then runs without the accelerator).
 *
 * Layout: wire parsing (validating UTF-8, refusing bytes values, non-finite doubles, repeated
 * keys, repeated singular fields, links, string-index fields) -> trace analysis (one trace id,
 * unique span ids, one root, no orphan, one resource) -> JSON emission in the Python rebuild's
 * exact key order, bailing on every value the Python road would refuse or report.
 *
 * Files (one concern each, shared declarations in crebuild.h): module.c (this: rebuild_one,
 * rebuild_document, the method table, PyInit), config.c (configure and the vocabulary's JSON fragments), names.c (the
 * interned attribute names), json.c (JSON text as json.dumps writes it), wire.c (protobuf fields,
 * KeyValue and AnyValue, UTF-8), otlp.c (the OTLP messages), values.c (attribute indexes and
 * values as JSON), records.c (request, device, capabilities, artifacts, missing), span.c (one
 * span and its profile, the C-made records, group_stages), trace.c (trace analysis, resource, metadata, assembly).
 *
 * Speed (bench/bench_rebuild_native.py): the output buffers are kept from one call to the next,
 * the vocabulary's keys and words are escaped once by configure, attribute names are looked up
 * in a compact hash table, doubles that are short decimals are written without dtoa (exactly
 * repr's text), and the Trace JSON is copied once, into the str. The spans of a trace repeat
 * themselves, and the reader uses it: an attribute whose KeyValue bytes are those of the
 * attribute at the same position of the previous span's (or event's) list is that attribute
 * again (copied, not parsed nor validated again), one with the same key bytes takes its name id,
 * and a list with the previous list's keys needs no duplicate-key check (wire.c, otlp.c). String
 * values found JSON-plain while they are validated are written without a second scan; short
 * ASCII strs (stage names, words, service and model names) come from a small cache of str
 * objects (span.c).
 *
 * Cost seen from the collector: bench/collector_steps.py / the session notes' steps.py time the
 * rebuild of 512 traces while keeping all 512 TraceDocuments alive (12 MB of new Trace JSON strs:
 * fresh heap pages, page faults when glibc gave the previous run's memory back, and a full
 * garbage collection that the allocations make due), which costs ~0.7 µs/span more than
 * bench_rebuild_native.py's loop, where each document is dropped before the next one (the
 * collector's assembler keeps one batch of documents at a time: measured like the bench).
 */
#include "crebuild.h"

static int busy;

static PyObject *rebuild(PyObject *arg, int as_document) {
    if (!crb_cfg.ready || busy || (as_document && crb_cfg.doc_cls == NULL)) Py_RETURN_NONE;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) { /* not contiguous bytes: the Python road */
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    busy = 1;
    Str data = {(const uint8_t *)view.buf, view.len};
    PyObject *r = crb_rebuild(data, as_document);
    busy = 0;
    PyBuffer_Release(&view);
    if (r == NULL) {
        if (PyErr_Occurred()) {
            /* KeyboardInterrupt & co. (raised in a json.loads call) and MemoryError propagate;
             * anything else only means "not the clean case": the Python road reproduces it */
            if (!PyErr_ExceptionMatches(PyExc_Exception) || PyErr_ExceptionMatches(PyExc_MemoryError)) return NULL;
            PyErr_Clear();
        }
        Py_RETURN_NONE;
    }
    return r;
}

static PyObject *rebuild_one(PyObject *self, PyObject *arg) { return rebuild(arg, 0); }

static PyObject *rebuild_document(PyObject *self, PyObject *arg) { return rebuild(arg, 1); }

static PyMethodDef methods[] = {
    {"configure", crb_configure, METH_O, "configure(cfg: dict) -> None: attribute names and vocabularies."},
    {"rebuild_one", rebuild_one, METH_O,
     "rebuild_one(data) -> (trace_id, json, complete, service, root_name, start, end, span_count, stages, "
     "root_labels) | None (None: not the clean one-trace case; use the Python rebuild). stages is a tuple of "
     "StageObservation when configure() was given stage_class, else of 7-tuples."},
    {"rebuild_document", rebuild_document, METH_O,
     "rebuild_document(data) -> TraceDocument | None: rebuild_one's result as the TraceDocument configure() was "
     "given as document_class (native=True), made in C; None as rebuild_one, or without document_class."},
    {"group_stages", crb_group_stages, METH_VARARGS,
     "group_stages(per_stage: dict, seqs: list, observable: tuple) -> int | None: the stage histograms' values "
     "of the StageObservations in seqs appended to per_stage (see _documents.group_stage_values); None: not "
     "plain StageObservations, nothing appended."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_crebuild", "Native accelerator of rebuild_traces.", -1,
                                 methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__crebuild(void) {
    crb_names_reset();
    crb_json_init();
    return PyModule_Create(&mod);
}
