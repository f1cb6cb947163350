/* A frozen layer's streaming step in one call from Python: the compiled entry point of step().
 *
 * Why it exists: at B=1, H=256 the LSTM kernel reads 1.25 MiB of weights in ~10 us on two threads,
 * and around it the Python of step() (checks, new state arrays, the kept weights' check, the
 * ctypes call of 16 arguments) took ~16 us more. Here all of that is one METH_FASTCALL call that
 * checks the plain case, allocates the new state and runs the kernels of rnn_kernels.c, whose
 * addresses configure() hands in (this module links nothing of them).
 *
 * It only takes the plain case and declines the rest by returning None: then the layer's Python
 * step runs, which converts what can be converted and raises the errors that say what to fix, so
 * every rule about inputs and every message has one home (model_core/nn/recurrent_base.py).
 * Plain: x an ndarray (B, I) and the state ndarrays (L, B, H), all float32, C-contiguous, B >= 1,
 * L <= MAX_LAYERS; the layer's parameters still the arrays the plan was made from, still read-only
 * (as is the memory they view): a plan is only made for a frozen layer (RecurrentBase._refresh_step_plan).
 *
 * Arrays are read and made with NumPy's C API: its checks are field reads, where the buffer protocol
 * (the first version) spent ~1 us of a step on a dozen buffer exports and numpy.empty calls. The
 * GIL is released while the kernels run, as ctypes does.
 */
#ifndef MC_SOURCE_HASH
#define MC_SOURCE_HASH ""    /* the build passes this file's hash; the loader rebuilds on a mismatch */
#endif
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>
#include <stdint.h>
#include <string.h>

/* the plan's kinds: model_core/native/__init__.py's STEP_KINDS */
enum { KIND_LSTM = 0, KIND_GRU = 1, KIND_RNN_TANH = 2, KIND_RNN_RELU = 3 };

typedef int32_t (*lstm_step_fn)(int64_t, int64_t, int64_t, const float *, const float *, const float *, const float *,
                                int64_t, const float *, const float *, float *, float *, float *, float *, float *,
                                float *);
typedef int32_t (*gru_step_fn)(int64_t, int64_t, int64_t, const float *, const float *, const float *, const float *,
                               const float *, int64_t, const float *, float *, float *, float *, float *);
typedef int32_t (*rnn_step_fn)(int64_t, int64_t, int64_t, int64_t, const float *, const float *, const float *,
                               const float *, int64_t, const float *, float *, float *, float *);

/* a plan (RecurrentBase._refresh_step_plan): (kind, layers, input_size, hidden_size, params, names, kept,
 * readonly, weights); weights: per layer (w_ih, w_hh, packed, bias or None, b_hn or None), the
 * arrays the cell's step_weights made, which the plan keeps alive */
#define PLAN_SIZE 9
#define MAX_LAYERS 16

typedef struct { const float *w_ih, *w_hh, *bias, *b_hn; int64_t packed; } LayerWeights;

static lstm_step_fn lstm_step;
static gru_step_fn gru_step;
static rnn_step_fn rnn_step;
static unsigned long long steps_run;          /* steps this entry ran (tests: the fast path was taken) */

#define MAX_STATES 2

/* an exact ndarray of `ndim` dimensions, float32 in the machine's byte order, C-contiguous */
static PyArrayObject *plain_array(PyObject *a, int ndim)
{
    if (!PyArray_CheckExact(a)) return NULL;
    PyArrayObject *arr = (PyArrayObject *)a;
    if (PyArray_NDIM(arr) != ndim || PyArray_TYPE(arr) != NPY_FLOAT32 || !PyArray_ISNOTSWAPPED(arr)
        || !PyArray_IS_C_CONTIGUOUS(arr))
        return NULL;
    return arr;
}

/* an array's data (None: NULL); 0 where it is not an ndarray */
static int data_of(PyObject *a, const float **out)
{
    if (a == Py_None) { *out = NULL; return 1; }
    if (!PyArray_Check(a)) return 0;
    *out = PyArray_DATA((PyArrayObject *)a);         /* the plan keeps the array alive; nothing resizes it */
    return 1;
}

static int layer_weights(PyObject *spec, LayerWeights *w)
{
    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != 5) return 0;
    w->packed = PyLong_AsLongLong(PyTuple_GET_ITEM(spec, 2));
    if (w->packed == -1 && PyErr_Occurred()) { PyErr_Clear(); return 0; }
    return data_of(PyTuple_GET_ITEM(spec, 0), &w->w_ih) && data_of(PyTuple_GET_ITEM(spec, 1), &w->w_hh)
           && w->w_ih && w->w_hh && data_of(PyTuple_GET_ITEM(spec, 3), &w->bias)
           && data_of(PyTuple_GET_ITEM(spec, 4), &w->b_hn);
}

/* are the layer's parameters still the plan's arrays, and still read-only? */
static int plan_current(PyObject *params, PyObject *names, PyObject *kept, PyObject *readonly)
{
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *now = PyDict_GetItemWithError(params, PyTuple_GET_ITEM(names, i));     /* borrowed */
        if (!now) {
            if (PyErr_Occurred()) { PyErr_Clear(); return 0; }
            now = Py_None;
        }
        if (now != PyTuple_GET_ITEM(kept, i)) return 0;
    }
    n = PyTuple_GET_SIZE(readonly);
    for (Py_ssize_t i = 0; i < n; i++) {                 /* the parameters and the ndarrays they view */
        PyObject *a = PyTuple_GET_ITEM(readonly, i);
        if (!PyArray_Check(a) || PyArray_ISWRITEABLE((PyArrayObject *)a)) return 0;
    }
    return 1;
}

/* a new C-contiguous float32 array of `ndim` dimensions, the last of `dims` */
static PyArrayObject *new_array(int ndim, const npy_intp *dims)
{
    return (PyArrayObject *)PyArray_SimpleNew(ndim, dims + 3 - ndim, NPY_FLOAT32);
}

/* step(plan, x, state, torch_form) -> (y, state), or None where the layer's Python step should run.
 * torch_form: the state as torch gives it (LSTM (h, c), the others h), else the engine's tuple. */
static PyObject *step(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 4 || !PyTuple_CheckExact(args[0]) || PyTuple_GET_SIZE(args[0]) != PLAN_SIZE) {
        PyErr_SetString(PyExc_TypeError, "step(plan, x, state, torch_form) takes a plan made by RecurrentBase");
        return NULL;
    }
    if (!lstm_step) Py_RETURN_NONE;                                   /* not configured */
    PyObject *plan = args[0], *x = args[1], *state = args[2];
    int torch_form = PyObject_IsTrue(args[3]);
    int64_t head[4];
    for (int k = 0; k < 4; k++) head[k] = PyLong_AsLongLong(PyTuple_GET_ITEM(plan, k));
    if (PyErr_Occurred()) { PyErr_Clear(); Py_RETURN_NONE; }
    const int64_t kind = head[0], L = head[1], In = head[2], H = head[3];   /* In: not I, complex.h's */
    const int n_state = kind == KIND_LSTM ? 2 : 1;
    PyObject *weights = PyTuple_GET_ITEM(plan, 8);
    if (L < 1 || L > MAX_LAYERS || !PyTuple_Check(weights) || PyTuple_GET_SIZE(weights) != L) Py_RETURN_NONE;
    if (!plan_current(PyTuple_GET_ITEM(plan, 4), PyTuple_GET_ITEM(plan, 5), PyTuple_GET_ITEM(plan, 6),
                      PyTuple_GET_ITEM(plan, 7)))
        Py_RETURN_NONE;
    LayerWeights layer[MAX_LAYERS];
    for (int64_t l = 0; l < L; l++)
        if (!layer_weights(PyTuple_GET_ITEM(weights, l), &layer[l])) Py_RETURN_NONE;

    /* the state's arrays: torch's (h, c) or h, or the engine's tuple */
    PyObject *given[MAX_STATES];
    if (n_state == 1 && torch_form) {
        given[0] = state;
    } else {
        int seq = torch_form ? (PyTuple_Check(state) || PyList_Check(state)) : PyTuple_Check(state);
        if (!seq || PySequence_Fast_GET_SIZE(state) != n_state) Py_RETURN_NONE;
        for (int k = 0; k < n_state; k++) given[k] = PySequence_Fast_GET_ITEM(state, k);
    }
    PyArrayObject *xa = plain_array(x, 2), *sa[MAX_STATES], *out[MAX_STATES] = {0}, *y = NULL;
    if (!xa) Py_RETURN_NONE;
    const npy_intp B = PyArray_DIM(xa, 0);
    if (B < 1 || PyArray_DIM(xa, 1) != In) Py_RETURN_NONE;
    for (int k = 0; k < n_state; k++) {
        sa[k] = plain_array(given[k], 3);
        if (!sa[k] || PyArray_DIM(sa[k], 0) != L || PyArray_DIM(sa[k], 1) != B || PyArray_DIM(sa[k], 2) != H)
            Py_RETURN_NONE;
    }
    PyObject *result = NULL;
    const npy_intp dims[3] = {L, B, H};
    for (int k = 0; k < n_state; k++)
        if (!(out[k] = new_array(3, dims))) goto done;                /* MemoryError */
    if (!(y = new_array(2, dims))) goto done;

    int32_t rc = 0;
    const int64_t plane = (int64_t)B * H;
    Py_BEGIN_ALLOW_THREADS
    const float *in = PyArray_DATA(xa);
    int64_t in_size = In;
    for (int64_t l = 0; l < L && rc == 0; l++) {
        const LayerWeights *w = &layer[l];
        const float *h = (const float *)PyArray_DATA(sa[0]) + l * plane;
        float *h_out = (float *)PyArray_DATA(out[0]) + l * plane;
        if (kind == KIND_LSTM)
            rc = lstm_step(B, H, in_size, in, w->w_ih, w->bias, w->w_hh, w->packed, h,
                           (const float *)PyArray_DATA(sa[1]) + l * plane, h_out,
                           (float *)PyArray_DATA(out[1]) + l * plane, 0, 0, 0, 0);
        else if (kind == KIND_GRU)
            rc = gru_step(B, H, in_size, in, w->w_ih, w->bias, w->b_hn, w->w_hh, w->packed, h, h_out, 0, 0, 0);
        else
            rc = rnn_step(B, H, in_size, kind == KIND_RNN_RELU, in, w->w_ih, w->bias, w->w_hh, w->packed, h, h_out, 0,
                          0);
        in = h_out;
        in_size = H;
    }
    if (rc == 0) memcpy(PyArray_DATA(y), in, (size_t)plane * sizeof(float));   /* y: the top layer's h', its own array */
    Py_END_ALLOW_THREADS
    if (rc != 0) {                                                    /* no scratch memory: Python's step says so */
        result = Py_NewRef(Py_None);
        goto done;
    }

    steps_run++;
    PyObject *new_state;
    if (n_state == 1 && torch_form)
        new_state = Py_NewRef(out[0]);
    else
        new_state = n_state == 2 ? PyTuple_Pack(2, out[0], out[1]) : PyTuple_Pack(1, out[0]);
    if (new_state) {
        result = PyTuple_Pack(2, y, new_state);
        Py_DECREF(new_state);
    }
done:
    for (int k = 0; k < n_state; k++) Py_XDECREF(out[k]);
    Py_XDECREF(y);
    return result;
}

/* configure(lstm, gru, rnn): the addresses of rnn_kernels.c's mc_*_input_step_data */
static PyObject *configure(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "configure(lstm, gru, rnn)");
        return NULL;
    }
    void *fn[3];
    for (int k = 0; k < 3; k++) {
        fn[k] = PyLong_AsVoidPtr(args[k]);
        if (!fn[k]) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "configure: a kernel's address is 0");
            return NULL;
        }
    }
    lstm_step = (lstm_step_fn)fn[0];
    gru_step = (gru_step_fn)fn[1];
    rnn_step = (rnn_step_fn)fn[2];
    Py_RETURN_NONE;
}

static PyObject *steps(PyObject *self, PyObject *unused)
{
    (void)self; (void)unused;
    return PyLong_FromUnsignedLongLong(steps_run);
}

static PyMethodDef methods[] = {
    {"step", (PyCFunction)(void (*)(void))step, METH_FASTCALL, "step(plan, x, state, torch_form) -> (y, state) or None"},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL, "configure(lstm, gru, rnn)"},
    {"steps", steps, METH_NOARGS, "steps this entry ran"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_step_entry", "A frozen layer's step() in one call.", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__step_entry(void)
{
    import_array();                           /* NumPy's C API; an ImportError where it does not match */
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddStringConstant(m, "SOURCE_HASH", MC_SOURCE_HASH) < 0) Py_CLEAR(m);
    return m;
}
