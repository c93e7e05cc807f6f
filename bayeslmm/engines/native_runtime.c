/*
 * The few runtime functions that bayeslmm's numba kernels call, for the shared library that
 * bayeslmm.engines.native links them into: memory for the arrays a kernel allocates (numba's "NRT"
 * interface), the GIL and fatal-error hooks, and the double-precision BLAS/LAPACK wrappers behind
 * numba's np.dot, @, np.linalg.cholesky and np.linalg.inv.
 *
 * Inside numba these come from numba's own runtime, which importing numba sets up; here they let a
 * fit call the kernels without importing numba at all. Only what the kernels use is implemented,
 * with the signatures and the memory layout that numba's generated code expects (numba 0.6x):
 *
 * - A MemInfo is {refcount, destructor, destructor data, data, size, external allocator}; the
 *   generated code increments and decrements the refcount itself and calls NRT_MemInfo_call_dtor
 *   when it reaches zero. Arrays never outlive a kernel call, so plain malloc/free serve.
 * - The BLAS and LAPACK routines are SciPy's (scipy.linalg.cython_blas / cython_lapack, 32-bit
 *   Fortran integers), whose addresses Python hands over once through bayeslmm_set_linalg. Only the
 *   'd' (float64) kind is supported; the kernels use no other.
 *
 * Python's C API (PyGILState_*, Py_FatalError) is resolved against the running interpreter when
 * the library is loaded, as for any extension module.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef void (*nrt_dtor)(void *data, size_t size, void *info);

typedef struct {
    size_t refct; /* changed atomically by the generated code */
    nrt_dtor dtor;
    void *dtor_info;
    void *data;
    size_t size;
    void *external_allocator; /* always NULL here */
} MemInfo;

/* ------------------------------------------------------------------ memory */

void *NRT_Allocate(size_t size) { return malloc(size); }

void NRT_Free(void *ptr) { free(ptr); }

void *NRT_Reallocate(void *ptr, size_t size) { return realloc(ptr, size); }

static void meminfo_init(MemInfo *mi, void *data, size_t size, nrt_dtor dtor, void *info) {
    mi->refct = 1;
    mi->dtor = dtor;
    mi->dtor_info = info;
    mi->data = data;
    mi->size = size;
    mi->external_allocator = NULL;
}

/* MemInfo and data in one block; the data start at the first multiple of align after the MemInfo */
MemInfo *NRT_MemInfo_alloc_aligned(size_t size, unsigned align) {
    size_t pad = align > 1 ? align : 1;
    char *base = malloc(sizeof(MemInfo) + size + pad);
    if (base == NULL) return NULL;
    uintptr_t start = (uintptr_t)(base + sizeof(MemInfo));
    uintptr_t rem = start % pad;
    char *data = (char *)(start + (rem ? pad - rem : 0));
    meminfo_init((MemInfo *)base, data, size, NULL, NULL);
    return (MemInfo *)base;
}

MemInfo *NRT_MemInfo_alloc(size_t size) { return NRT_MemInfo_alloc_aligned(size, 1); }

MemInfo *NRT_MemInfo_alloc_safe_aligned(size_t size, unsigned align) {
    return NRT_MemInfo_alloc_aligned(size, align);
}

MemInfo *NRT_MemInfo_alloc_safe(size_t size) { return NRT_MemInfo_alloc_aligned(size, 1); }

MemInfo *NRT_MemInfo_new(void *data, size_t size, nrt_dtor dtor, void *info) {
    MemInfo *mi = malloc(sizeof(MemInfo));
    if (mi != NULL) meminfo_init(mi, data, size, dtor, info);
    return mi;
}

void NRT_MemInfo_call_dtor(MemInfo *mi) {
    if (mi->dtor != NULL) mi->dtor(mi->data, mi->size, mi->dtor_info);
    free(mi);
}

/* a separately allocated, resizable buffer; dtor_info is an optional destructor of its contents */
static void varsize_dtor(void *data, size_t size, void *info) {
    (void)size;
    if (info != NULL) ((void (*)(void *))info)(data);
    free(data);
}

MemInfo *NRT_MemInfo_new_varsize(size_t size) {
    void *data = malloc(size);
    if (data == NULL) return NULL;
    MemInfo *mi = NRT_MemInfo_new(data, size, varsize_dtor, NULL);
    if (mi == NULL) free(data);
    return mi;
}

MemInfo *NRT_MemInfo_new_varsize_dtor(size_t size, nrt_dtor dtor) {
    MemInfo *mi = NRT_MemInfo_new_varsize(size);
    if (mi != NULL) mi->dtor_info = (void *)dtor;
    return mi;
}

void *NRT_MemInfo_varsize_alloc(MemInfo *mi, size_t size) {
    mi->data = malloc(size);
    if (mi->data != NULL) mi->size = size;
    return mi->data;
}

void *NRT_MemInfo_varsize_realloc(MemInfo *mi, size_t size) {
    void *data = realloc(mi->data, size);
    if (data == NULL) return NULL;
    mi->data = data;
    mi->size = size;
    return data;
}

void NRT_MemInfo_varsize_free(MemInfo *mi, void *ptr) {
    free(ptr);
    if (ptr == mi->data) mi->data = NULL;
}

/* ------------------------------------------------------------------ interpreter hooks */

extern int PyGILState_Ensure(void);
extern void PyGILState_Release(int);
extern void Py_FatalError(const char *message);
extern void *PyUnicode_FromString(const char *text);
extern void PyErr_SetString(void *type, const char *message);
extern void Py_DecRef(void *object);
extern void *PyExc_RuntimeError;

/*
 * An exception that escapes a C function reaches these with the GIL held (numba's wrapper takes
 * it), to become a Python exception that the wrapper reports as unraisable. numba would unpickle
 * the exception it compiled in; here every such exception becomes one RuntimeError, whose message
 * says how to see the original (the kernels catch what they expect, so this is a bug's path).
 */
static const char RAISED[] =
    "a bayeslmm kernel raised an exception; run with BAYESLMM_NATIVE=0 to see it from numba";

void *numba_unpickle(const char *data, int n, const char *hashed) {
    (void)data; (void)n; (void)hashed;
    return PyUnicode_FromString(RAISED);
}

void *numba_runtime_build_excinfo_struct(void *struct_gv, void *exc_args) {
    (void)struct_gv; (void)exc_args;
    return PyUnicode_FromString(RAISED);
}

int numba_do_raise(void *packed) {
    PyErr_SetString(PyExc_RuntimeError, RAISED);
    Py_DecRef(packed); /* numba's consumes its argument */
    return 1;
}

void numba_gil_ensure(int *state) { *state = PyGILState_Ensure(); }

void numba_gil_release(int *state) { PyGILState_Release(*state); }

int numba_fatal_error(void) {
    PyGILState_Ensure();
    Py_FatalError("in a bayeslmm kernel");
    return 0;
}

/* ------------------------------------------------------------------ BLAS and LAPACK (float64) */

typedef double (*ddot_t)(int *n, double *x, int *incx, double *y, int *incy);
typedef void (*dgemv_t)(char *trans, int *m, int *n, double *alpha, double *a, int *lda, double *x,
                        int *incx, double *beta, double *y, int *incy);
typedef void (*dgemm_t)(char *ta, char *tb, int *m, int *n, int *k, double *alpha, double *a, int *lda,
                        double *b, int *ldb, double *beta, double *c, int *ldc);
typedef void (*dgetrf_t)(int *m, int *n, double *a, int *lda, int *ipiv, int *info);
typedef void (*dgetri_t)(int *n, double *a, int *lda, int *ipiv, double *work, int *lwork, int *info);
typedef void (*dpotrf_t)(char *uplo, int *n, double *a, int *lda, int *info);

static ddot_t ddot_ptr;
static dgemv_t dgemv_ptr;
static dgemm_t dgemm_ptr;
static dgetrf_t dgetrf_ptr;
static dgetri_t dgetri_ptr;
static dpotrf_t dpotrf_ptr;

/* Called once from Python with SciPy's routines, in this order. */
void bayeslmm_set_linalg(void *ddot, void *dgemv, void *dgemm, void *dgetrf, void *dgetri, void *dpotrf) {
    ddot_ptr = (ddot_t)ddot;
    dgemv_ptr = (dgemv_t)dgemv;
    dgemm_ptr = (dgemm_t)dgemm;
    dgetrf_ptr = (dgetrf_t)dgetrf;
    dgetri_ptr = (dgetri_t)dgetri;
    dpotrf_ptr = (dpotrf_t)dpotrf;
}

#define STATUS_ERROR (-1)
#define REQUIRE(kind, fn) \
    if ((kind) != 'd' || (fn) == NULL) return STATUS_ERROR

int numba_xxdot(char kind, char conjugate, ptrdiff_t n, void *dx, void *dy, void *result) {
    (void)conjugate;
    REQUIRE(kind, ddot_ptr);
    int n_ = (int)n, inc = 1;
    *(double *)result = ddot_ptr(&n_, dx, &inc, dy, &inc);
    return 0;
}

int numba_xxgemv(char kind, char trans, ptrdiff_t m, ptrdiff_t n, void *alpha, void *a, ptrdiff_t lda,
                 void *x, void *beta, void *y) {
    REQUIRE(kind, dgemv_ptr);
    int m_ = (int)m, n_ = (int)n, lda_ = (int)lda, inc = 1;
    dgemv_ptr(&trans, &m_, &n_, alpha, a, &lda_, x, &inc, beta, y, &inc);
    return 0;
}

int numba_xxgemm(char kind, char transa, char transb, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, void *alpha,
                 void *a, ptrdiff_t lda, void *b, ptrdiff_t ldb, void *beta, void *c, ptrdiff_t ldc) {
    REQUIRE(kind, dgemm_ptr);
    int m_ = (int)m, n_ = (int)n, k_ = (int)k, lda_ = (int)lda, ldb_ = (int)ldb, ldc_ = (int)ldc;
    dgemm_ptr(&transa, &transb, &m_, &n_, &k_, alpha, a, &lda_, b, &ldb_, beta, c, &ldc_);
    return 0;
}

/* LAPACK wrappers return info (> 0: a numerical failure the caller reports), or STATUS_ERROR */
int numba_xxgetrf(char kind, ptrdiff_t m, ptrdiff_t n, void *a, ptrdiff_t lda, int *ipiv) {
    REQUIRE(kind, dgetrf_ptr);
    int m_ = (int)m, n_ = (int)n, lda_ = (int)lda, info = 0;
    dgetrf_ptr(&m_, &n_, a, &lda_, ipiv, &info);
    return info < 0 ? STATUS_ERROR : info;
}

int numba_ez_xxgetri(char kind, ptrdiff_t n, void *a, ptrdiff_t lda, int *ipiv) {
    REQUIRE(kind, dgetri_ptr);
    int n_ = (int)n, lda_ = (int)lda, lwork = -1, info = 0;
    double query = 0.0;
    dgetri_ptr(&n_, a, &lda_, ipiv, &query, &lwork, &info); /* workspace query */
    if (info < 0) return STATUS_ERROR;
    lwork = (int)query > 1 ? (int)query : 1;
    double *work = malloc(sizeof(double) * (size_t)lwork);
    if (work == NULL) return STATUS_ERROR;
    dgetri_ptr(&n_, a, &lda_, ipiv, work, &lwork, &info);
    free(work);
    return info < 0 ? STATUS_ERROR : info;
}

int numba_xxpotrf(char kind, char uplo, ptrdiff_t n, void *a, ptrdiff_t lda) {
    REQUIRE(kind, dpotrf_ptr);
    int n_ = (int)n, lda_ = (int)lda, info = 0;
    dpotrf_ptr(&uplo, &n_, a, &lda_, &info);
    return info < 0 ? STATUS_ERROR : info;
}
