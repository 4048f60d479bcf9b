/* stream_ref: a small STREAM-style memory bandwidth reference (after John McCalpin's STREAM).
 *
 * Five kernels over float64 arrays, each timed as one OpenMP parallel loop:
 *   copy  c = a          2 arrays moved per element
 *   scale b = s*c        2
 *   add   c = a + b      3
 *   triad a = b + s*c    3
 *   read  sum += a*a     1   (read-only dot product: what a GEMV does with its weights)
 * Bytes are counted STREAM's way (no write-allocate traffic); GB/s = 1e9 bytes/s.
 * One untimed warm-up pass, then TRIALS timed passes; every trial's time is printed.
 *
 * Build: cc -O3 -fopenmp -march=native bench/stream_ref.c -o bench/stream_ref
 * Run:   OMP_NUM_THREADS=2 OMP_PROC_BIND=true OMP_PLACES='{0},{1}' bench/stream_ref ARRAY_BYTES [TRIALS]
 * Output: one JSON object on stdout (see bench/README.md).
 *
 * Built with -DSTREAM_REF_LIB -shared -fPIC it is a library instead (no main): bench/bandwidth_vs_c.py loads it
 * into its own process and alternates its kernels with the Python probe's, trial by trial (stream_ref_bind,
 * stream_ref_fill, stream_ref_kernel below).
 */
#define _GNU_SOURCE
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>

#ifdef STREAM_REF_LIB
static const double SCALAR = 3.0;

/* Thread tid's share of n elements among nth threads: [*lo, *hi), as schedule(static) splits them. */
static void share(long n, long *lo, long *hi) {
    long nth = omp_get_num_threads(), tid = omp_get_thread_num(), q = n / nth, r = n % nth;
    if (tid < r) {
        q++;
        r = 0;
    }
    *lo = q * tid + r;
    *hi = *lo + q;
}

/* Pins the OpenMP team of the calling thread: thread i to cpus[i], n threads from now on. Returns 0, or the
 * number of threads that could not be pinned. Call it again for another set of CPUs. */
int stream_ref_bind(const int *cpus, int n) {
    int failed = 0;
    omp_set_dynamic(0);
    omp_set_num_threads(n);
#pragma omp parallel reduction(+ : failed)
    {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpus[omp_get_thread_num()], &set);
        failed += sched_setaffinity(0, sizeof(set), &set) != 0;
    }
    return failed;
}

/* STREAM's start values, each thread writing its own share (first touch places the pages). */
void stream_ref_fill(double *a, double *b, double *c, long n) {
#pragma omp parallel
    {
        long lo, hi;
        share(n, &lo, &hi);
        for (long j = lo; j < hi; j++) {
            a[j] = 1.0;
            b[j] = 2.0;
            c[j] = 0.0;
        }
    }
}

/* One kernel (0 copy, 1 scale, 2 add, 3 triad, 4 read) over the bound threads, timed as the Python probe times
 * its trials: from the first thread's start to the last thread's finish, each thread stamping its own share (the
 * team's wake-up before and its join after fall outside the window, as the probe's barrier does). Returns the
 * seconds; the read kernel's sum goes to *sum_out. */
double stream_ref_kernel(int k, double *restrict a, double *restrict b, double *restrict c, long n,
                         double *sum_out) {
    double first = 1e300, last = 0.0, sum = 0.0;
#pragma omp parallel reduction(min : first) reduction(max : last) reduction(+ : sum)
    {
        long lo, hi;
        share(n, &lo, &hi);
        double t0 = omp_get_wtime(), part = 0.0;
        switch (k) {
        case 0:
            for (long j = lo; j < hi; j++) c[j] = a[j];
            break;
        case 1:
            for (long j = lo; j < hi; j++) b[j] = SCALAR * c[j];
            break;
        case 2:
            for (long j = lo; j < hi; j++) c[j] = a[j] + b[j];
            break;
        case 3:
            for (long j = lo; j < hi; j++) a[j] = b[j] + SCALAR * c[j];
            break;
        case 4:
#pragma omp simd reduction(+ : part)
            for (long j = lo; j < hi; j++) part += a[j] * a[j];
            break;
        }
        first = t0;
        last = omp_get_wtime();
        sum = part;
    }
    *sum_out = sum;
    return last - first;
}
#else

#define NKERNELS 5
static const char *NAMES[NKERNELS] = {"copy", "scale", "add", "triad", "read"};
static const int ARRAYS_MOVED[NKERNELS] = {2, 2, 3, 3, 1};
static const double SCALAR = 3.0;

/* Page-aligned, and huge pages where the kernel allows them (numpy asks for them too). */
static double *alloc_array(size_t n) {
    void *p = NULL;
    size_t bytes = n * sizeof(double);
    if (posix_memalign(&p, 2u << 20, bytes) != 0) return NULL;
#ifdef MADV_HUGEPAGE
    madvise(p, bytes, MADV_HUGEPAGE);
#endif
    return p;
}

/* Runs one kernel over all threads; returns its wall time in seconds. */
static double run_kernel(int k, double *restrict a, double *restrict b, double *restrict c, long n,
                         double *sum_out) {
    double t0 = omp_get_wtime();
    double sum = 0.0;
    switch (k) {
    case 0:
#pragma omp parallel for schedule(static)
        for (long j = 0; j < n; j++) c[j] = a[j];
        break;
    case 1:
#pragma omp parallel for schedule(static)
        for (long j = 0; j < n; j++) b[j] = SCALAR * c[j];
        break;
    case 2:
#pragma omp parallel for schedule(static)
        for (long j = 0; j < n; j++) c[j] = a[j] + b[j];
        break;
    case 3:
#pragma omp parallel for schedule(static)
        for (long j = 0; j < n; j++) a[j] = b[j] + SCALAR * c[j];
        break;
    case 4:
#pragma omp parallel for simd schedule(static) reduction(+ : sum)
        for (long j = 0; j < n; j++) sum += a[j] * a[j];
        break;
    }
    double t1 = omp_get_wtime();
    *sum_out = sum;
    return t1 - t0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s ARRAY_BYTES [TRIALS]\n", argv[0]);
        return 2;
    }
    long long array_bytes = atoll(argv[1]);
    int trials = argc > 2 ? atoi(argv[2]) : 10;
    long n = (long)(array_bytes / (long long)sizeof(double));
    if (n < 1 || trials < 1) {
        fprintf(stderr, "stream_ref: ARRAY_BYTES must be >= 8 and TRIALS >= 1\n");
        return 2;
    }
    double *a = alloc_array(n), *b = alloc_array(n), *c = alloc_array(n);
    double *times = malloc(sizeof(double) * NKERNELS * trials);
    if (!a || !b || !c || !times) {
        fprintf(stderr, "stream_ref: out of memory\n");
        return 1;
    }

    /* First touch from the thread that will use each chunk (same static schedule as the kernels). */
#pragma omp parallel for schedule(static)
    for (long j = 0; j < n; j++) {
        a[j] = 1.0;
        b[j] = 2.0;
        c[j] = 0.0;
    }

    /* Scalar model of the values, to check the arrays at the end. */
    double ea = 1.0, eb = 2.0, ec = 0.0, esum = 0.0, sum = 0.0;
    for (int t = -1; t < trials; t++) { /* t == -1: warm-up, not recorded */
        for (int k = 0; k < NKERNELS; k++) {
            double s = run_kernel(k, a, b, c, n, &sum);
            if (t >= 0) times[t * NKERNELS + k] = s;
        }
        ec = ea;
        eb = SCALAR * ec;
        ec = ea + eb;
        ea = eb + SCALAR * ec;
        esum = ea * ea * (double)n;
    }
    /* -march=native may fuse b + s*c into an FMA, so compare with a relative tolerance. */
    int ok = fabs(a[n - 1] - ea) <= 1e-12 * fabs(ea) && fabs(b[0] - eb) <= 1e-12 * fabs(eb) &&
             fabs(c[n / 2] - ec) <= 1e-12 * fabs(ec) && fabs(sum - esum) <= 1e-9 * fabs(esum);

    printf("{\"engine\": \"c-openmp\", \"array_bytes\": %lld, \"elements\": %ld, \"threads\": %d, "
           "\"trials\": %d, \"check_ok\": %s, \"kernels\": {",
           (long long)n * (long long)sizeof(double), n, omp_get_max_threads(), trials, ok ? "true" : "false");
    for (int k = 0; k < NKERNELS; k++) {
        double bytes = (double)ARRAYS_MOVED[k] * (double)n * sizeof(double);
        double best = 1e300, worst = 0.0, total = 0.0;
        printf("%s\"%s\": {\"bytes_per_trial\": %.0f, \"seconds\": [", k ? ", " : "", NAMES[k], bytes);
        for (int t = 0; t < trials; t++) {
            double s = times[t * NKERNELS + k];
            best = s < best ? s : best;
            worst = s > worst ? s : worst;
            total += s;
            printf("%s%.9f", t ? ", " : "", s);
        }
        printf("], \"best_gbps\": %.4f, \"avg_gbps\": %.4f, \"min_seconds\": %.9f, \"max_seconds\": %.9f}",
               bytes / best / 1e9, bytes / (total / trials) / 1e9, best, worst);
    }
    printf("}}\n");
    free(a);
    free(b);
    free(c);
    free(times);
    return ok ? 0 : 1;
}
#endif /* STREAM_REF_LIB */
