#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *ping(PyObject *self, PyObject *args) { return PyLong_FromLong(1); }
static PyMethodDef methods[] = {{"ping", ping, METH_NOARGS, "ping"}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_crebuild", NULL, -1, methods};
PyMODINIT_FUNC PyInit__crebuild(void) { return PyModule_Create(&mod); }
