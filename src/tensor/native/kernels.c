/*
 * Native kernels for generation (src/tensor/native.ts): a 4- or 8-bit GPTQ layer times int8 activations, y = x·Wᵀ;
 * a decode step's attention over the KV cache, SwiGLU's gating and the small norms (at the end).
 *
 * Why native: a decode step reads every weight once, so its speed is the rate the weights stream from memory.
 * On the 2-core AVX-512 VM, two threads of plain loads read 44-53 GB/s in a quiet hour; onnxruntime's MatMulNBits
 * (MLAS, int8 activations) streams 4-bit layers at 26-30 GB/s; and WebAssembly's 128-bit SIMD has no
 * unsigned-by-signed byte dot product, so a wasm kernel would spend more instructions per byte than that rate
 * allows. Here one instruction multiplies 64 codes (AVX-512 VNNI vpdpbusd; AVX2's vpmaddubsw + vpmaddwd
 * elsewhere), the weights sit on transparent huge pages, and two threads share the rows: `npm run bench:infer`.
 *
 * Input layout (MatMulNBits' own, so the loader's bytes serve both): per row, blocks of 128 input columns; a 4-bit
 * block is 64 bytes of codes, column 2k in byte k's low nibble and 2k+1 in its high one (an 8-bit block 128 bytes,
 * one a column); one float32 scale and one zero point per row and block: W[r, c] = scale·(code − zero). open()
 * re-lays the codes into panels (below).
 *
 * Activations: each row of x is quantized per block of 128 columns, a = round(x/sa) with sa = max|x|/127 (in the
 * layer's column order under act-order); for 4-bit layers the even columns' codes first, then the odd ones'. Per
 * block the integer sum Σ(code − zero)·a is exact (|Σ| ≤ 128·255·127); the output is Σ_blocks scale·sa·that in
 * float32. Against dequantize-then-matmul in exact arithmetic each x is off by at most sa/2: the bound
 * test/packed.test.ts checks.
 */
#define NAPI_VERSION 8
#include <immintrin.h>
#include <math.h>
#include <node_api.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

/* the largest block of input columns (one scale per row and block; the activations' int8 scale per block too) */
#define MAX_BLOCK 128
/* huge-page alignment: the codes of a layer are one run of 2 MB pages, not 4 KB ones (the prototype: 33 → 45 GB/s) */
#define HUGE (2u << 20)

/*
 * The weights in panels of 16 rows: per panel and block, quads of 64 bytes (16 for a 4-bit block of 128), quad t
 * holding each of the 16 rows' bytes 4t..4t+3 of that block (4-bit: columns 8t..8t+7). One vpdpbusd of a quad's low nibbles with the 4 activations of
 * its even columns broadcast to every lane gives each of the 16 rows (one per int32 lane) four of its products:
 * no horizontal sums, and a panel's scales and zero points are vectors (llama.cpp's repacked Q4_0 8x8 gemm kernels
 * interleave rows the same way). Row-major rows cost a horizontal sum and a scalar scale per row and block: 256
 * prompt tokens of a 7B model took 15.5 s that way against onnxruntime's 10.0.
 */
#define PANEL 16
#define QUAD (PANEL * 4)
/* quads a panel's block: 128 columns of 4 bits are 64 bytes a row (16 quads), of 8 bits 128 (32) */
#define QUADS(L) ((L)->block * (L)->bits / 32)

typedef struct {
  int rows, blocks, panels, bits; /* bits: 4, or 8 (one byte a code) */
  int block;                      /* columns a block: 16, 32, 64 or 128 (a layer's groups start on its multiples) */
  uint8_t *codes; /* [panels, blocks, QUADS quads, 16 rows, 4 bytes] */
  /*
   * [panels, blocks, 16] (rows past `rows`: 0): float16 where every scale is one (a checkpoint's are: 3% fewer
   * bytes a product streams than float32's), else float32; one of the two is set
   */
  uint16_t *halfScales;
  float *scales;
  uint8_t *zeros; /* [panels, blocks, 16], or NULL where every zero point is `zero` (symmetric: 8) */
  int zero;
  int32_t *order; /* kernel column i reads x[order[i]]; NULL for 0..cols-1 */
} Layer;

/* One call's activations: [m, blocks, block] codes (4-bit: even columns, then odd), [m, blocks] scales and code sums. */
typedef struct {
  int8_t *q;
  float *scale;
  int32_t *sum;
  size_t capacity, units; /* bytes of q; blocks of scale and sum */
} Act;

/* ---------------------------------------------------------------- kernels */

/*
 * Panels [p0, p1) of y for rows i0..i0+MC-1 of x, MC ≤ 4: each quad's nibbles are split once for all of them.
 * Per block the int32 sums Σcode·a are exact; minus zero·Σa, times scale·sa, they join float32 accumulators.
 */
#define VNNI_PANELS(BITS, MC)                                                                                 \
  __attribute__((target("avx512f,avx512bw,avx512vnni"))) static void vnni##BITS##_##MC(const Layer *L,       \
                                                                                        const Act *a, int i0, \
                                                                                        int p0, int p1,       \
                                                                                        float *y) {           \
    const int B = L->blocks, Q = QUADS(L);                                                                    \
    const __m512i mask = _mm512_set1_epi8(0x0F);                                                              \
    for (int p = p0; p < p1; p++) {                                                                           \
      __m512 f[MC];                                                                                           \
      for (int j = 0; j < MC; j++) f[j] = _mm512_setzero_ps();                                                \
      for (int b = 0; b < B; b++) {                                                                           \
        const size_t pb = (size_t)p * B + b;                                                                  \
        const uint8_t *q = L->codes + pb * Q * QUAD;                                                          \
        __m512i d[MC];                                                                                        \
        for (int j = 0; j < MC; j++) d[j] = _mm512_setzero_si512();                                           \
        for (int t = 0; t < Q; t++) {                                                                         \
          const __m512i v = _mm512_loadu_si512(q + t * QUAD);                                                 \
          const __m512i lo = _mm512_and_si512(v, mask);                                                       \
          const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);                                 \
          for (int j = 0; j < MC; j++) {                                                                      \
            const int32_t *ax = (const int32_t *)(a->q + ((size_t)(i0 + j) * B + b) * L->block);              \
            if (BITS == 8) {                                                                                  \
              d[j] = _mm512_dpbusd_epi32(d[j], v, _mm512_set1_epi32(ax[t]));                                  \
            } else {                                                                                          \
              d[j] = _mm512_dpbusd_epi32(d[j], lo, _mm512_set1_epi32(ax[t]));                                 \
              d[j] = _mm512_dpbusd_epi32(d[j], hi, _mm512_set1_epi32(ax[Q + t]));                             \
            }                                                                                                 \
          }                                                                                                   \
        }                                                                                                     \
        const __m512 s = L->halfScales ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(L->halfScales + pb * PANEL))) \
                                       : _mm512_loadu_ps(L->scales + pb * PANEL);                             \
        const __m512i z = L->zeros ? _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(L->zeros + pb * PANEL))) \
                                   : _mm512_set1_epi32(L->zero);                                              \
        for (int j = 0; j < MC; j++) {                                                                        \
          const size_t ab = (size_t)(i0 + j) * B + b;                                                         \
          const __m512i e = _mm512_sub_epi32(d[j], _mm512_mullo_epi32(z, _mm512_set1_epi32(a->sum[ab])));     \
          f[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(e), _mm512_mul_ps(s, _mm512_set1_ps(a->scale[ab])), f[j]); \
        }                                                                                                     \
      }                                                                                                       \
      const int valid = L->rows - p * PANEL < PANEL ? L->rows - p * PANEL : PANEL;                            \
      for (int j = 0; j < MC; j++)                                                                            \
        _mm512_mask_storeu_ps(y + (size_t)(i0 + j) * L->rows + p * PANEL, (__mmask16)((1u << valid) - 1), f[j]); \
    }                                                                                                         \
  }
VNNI_PANELS(4, 1)
VNNI_PANELS(4, 2)
VNNI_PANELS(4, 3)
VNNI_PANELS(4, 4)
VNNI_PANELS(8, 1)
VNNI_PANELS(8, 2)
VNNI_PANELS(8, 3)
VNNI_PANELS(8, 4)

/*
 * The same with AVX2, a panel as two halves of 8 rows: vpmaddubsw pairs code·a into int16 (|15·127·2| fits, and so
 * does the sum of the low and high nibbles' pairs), vpmaddwd sums the pairs into int32.
 */
#define AVX2_PANELS(BITS, MC)                                                                                  \
  __attribute__((target("avx2,fma,f16c"))) static void avx2##BITS##_##MC(const Layer *L, const Act *a, int i0,  \
                                                                         int p0, int p1, float *y) {           \
    const int B = L->blocks, Q = QUADS(L);                                                                     \
    const __m256i mask = _mm256_set1_epi8(0x0F);                                                               \
    const __m256i ones = _mm256_set1_epi16(1), sixteen = _mm256_set1_epi16(16);                                \
    for (int p = p0; p < p1; p++) {                                                                            \
      __m256 f[MC][2];                                                                                         \
      for (int j = 0; j < MC; j++) f[j][0] = f[j][1] = _mm256_setzero_ps();                                    \
      for (int b = 0; b < B; b++) {                                                                            \
        const size_t pb = (size_t)p * B + b;                                                                   \
        const uint8_t *q = L->codes + pb * Q * QUAD;                                                           \
        __m256i d[MC][2];                                                                                      \
        for (int j = 0; j < MC; j++) d[j][0] = d[j][1] = _mm256_setzero_si256();                               \
        for (int t = 0; t < Q; t++) {                                                                          \
          for (int h = 0; h < 2; h++) {                                                                        \
            const __m256i v = _mm256_loadu_si256((const __m256i *)(q + t * QUAD + 32 * h));                    \
            const __m256i lo = _mm256_and_si256(v, mask);                                                      \
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);                                \
            for (int j = 0; j < MC; j++) {                                                                     \
              const int32_t *ax = (const int32_t *)(a->q + ((size_t)(i0 + j) * B + b) * L->block);             \
              if (BITS == 8) {                                                                                 \
                /* a byte's two nibbles times the same activation, the high one's sum times 16 */              \
                const __m256i x = _mm256_set1_epi32(ax[t]);                                                    \
                d[j][h] = _mm256_add_epi32(d[j][h], _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x), ones));     \
                d[j][h] = _mm256_add_epi32(d[j][h], _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x), sixteen));  \
              } else {                                                                                         \
                const __m256i pr = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_set1_epi32(ax[t])),        \
                                                    _mm256_maddubs_epi16(hi, _mm256_set1_epi32(ax[Q + t])));   \
                d[j][h] = _mm256_add_epi32(d[j][h], _mm256_madd_epi16(pr, ones));                              \
              }                                                                                                \
            }                                                                                                  \
          }                                                                                                    \
        }                                                                                                      \
        for (int h = 0; h < 2; h++) {                                                                          \
          const __m256 s = L->halfScales ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(L->halfScales + pb * PANEL + 8 * h))) \
                                         : _mm256_loadu_ps(L->scales + pb * PANEL + 8 * h);                    \
          const __m256i z = L->zeros ? _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(L->zeros + pb * PANEL + 8 * h))) \
                                     : _mm256_set1_epi32(L->zero);                                              \
          for (int j = 0; j < MC; j++) {                                                                       \
            const size_t ab = (size_t)(i0 + j) * B + b;                                                        \
            const __m256i e = _mm256_sub_epi32(d[j][h], _mm256_mullo_epi32(z, _mm256_set1_epi32(a->sum[ab]))); \
            f[j][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(e), _mm256_mul_ps(s, _mm256_set1_ps(a->scale[ab])), f[j][h]); \
          }                                                                                                    \
        }                                                                                                      \
      }                                                                                                        \
      const int valid = L->rows - p * PANEL < PANEL ? L->rows - p * PANEL : PANEL;                             \
      for (int j = 0; j < MC; j++) {                                                                           \
        float out[PANEL];                                                                                      \
        _mm256_storeu_ps(out, f[j][0]);                                                                        \
        _mm256_storeu_ps(out + 8, f[j][1]);                                                                    \
        memcpy(y + (size_t)(i0 + j) * L->rows + p * PANEL, out, valid * sizeof(float));                        \
      }                                                                                                        \
    }                                                                                                          \
  }
AVX2_PANELS(4, 1)
AVX2_PANELS(4, 2)
AVX2_PANELS(4, 3)
AVX2_PANELS(4, 4)
AVX2_PANELS(8, 1)
AVX2_PANELS(8, 2)
AVX2_PANELS(8, 3)
AVX2_PANELS(8, 4)

typedef void GroupFn(const Layer *, const Act *, int i0, int p0, int p1, float *y);
/* per instruction set: 4-bit layers' kernels for 1-4 rows of x, then 8-bit ones' */
static GroupFn *const VNNI[8] = {vnni4_1, vnni4_2, vnni4_3, vnni4_4, vnni8_1, vnni8_2, vnni8_3, vnni8_4};
static GroupFn *const AVX2[8] = {avx24_1, avx24_2, avx24_3, avx24_4, avx28_1, avx28_2, avx28_3, avx28_4};
static GroupFn *const *kernels; /* the instruction set in use: VNNI, AVX2, or NULL (none: the caller falls back) */

/*
 * Panels [p0, p1) of y for every row of x, four rows of x at a time; a panel is read from memory once, the later
 * rows of x finding its codes in cache (a panel of a 4096-column layer: 32 KB).
 */
static void panelRange(const Layer *L, const Act *a, int m, int p0, int p1, float *y) {
  for (int p = p0; p < p1; p++)
    for (int i0 = 0; i0 < m; i0 += 4) kernels[(L->bits == 8 ? 4 : 0) + (m - i0 < 4 ? m - i0 : 4) - 1](L, a, i0, p, p + 1, y);
}

/* ---------------------------------------------------------------- activations */

static Act act;

static int reserve(Act *a, int m, const Layer *L) {
  const size_t units = (size_t)m * L->blocks, bytes = units * L->block;
  if (units <= a->units && bytes <= a->capacity) return 1;
  free(a->q), free(a->scale), free(a->sum);
  a->q = aligned_alloc(64, (bytes + 63) / 64 * 64);
  a->scale = malloc(units * sizeof(float));
  a->sum = malloc(units * sizeof(int32_t));
  const int ok = a->q && a->scale && a->sum;
  a->capacity = ok ? bytes : 0, a->units = ok ? units : 0;
  return ok;
}

/* (cvtss2si rounds to nearest, ties to even, under the default MXCSR: a baseline SSE instruction, not a libm call) */
static void quantize(const Layer *L, const float *x, int m, Act *a) {
  const int B = L->blocks, bs = L->block, half = bs / 2, cols = B * bs;
  for (int i = 0; i < m; i++) {
    const float *xi = x + (size_t)i * cols;
    for (int b = 0; b < B; b++) {
      float v[MAX_BLOCK], mx = 0;
      for (int c = 0; c < bs; c++) {
        const int k = b * bs + c;
        v[c] = xi[L->order ? L->order[k] : k];
        const float av = fabsf(v[c]);
        if (av > mx) mx = av;
      }
      const size_t ab = (size_t)i * B + b;
      const float inv = mx > 0 ? 127 / mx : 0;
      int8_t *q = a->q + ab * bs;
      int32_t sum = 0;
      if (L->bits == 8) {
        /* a quad's 4 bytes of a row are 4 consecutive columns: the activations in column order */
        for (int k = 0; k < bs; k++) sum += q[k] = (int8_t)_mm_cvt_ss2si(_mm_set_ss(v[k] * inv));
      } else {
        for (int k = 0; k < half; k++) {
          const int e = _mm_cvt_ss2si(_mm_set_ss(v[2 * k] * inv)), o = _mm_cvt_ss2si(_mm_set_ss(v[2 * k + 1] * inv));
          q[k] = (int8_t)e, q[half + k] = (int8_t)o;
          sum += e + o;
        }
      }
      a->scale[ab] = mx / 127;
      a->sum[ab] = sum;
    }
  }
}

/* ---------------------------------------------------------------- threads */

/*
 * Workers wait for a job spinning for SPIN_NS, then on a condition variable: a decode step calls the kernel every
 * few hundred microseconds, and a sleeping thread takes tens of microseconds to wake, but a spinning one would take
 * a core from onnxruntime's threads between steps. (7B decode, one run each: 0, 20 and 200 µs of spinning gave the
 * same tokens/s within this VM's noise.)
 */
#define SPIN_NS 100000
#define MAX_THREADS 64

/* A job: part `i` of `n` of the work (each thread one part, the caller part 0). */
typedef void Job(const void *arg, int i, int n);

/* Where part i of n of `total` items starts (part i runs to where part i + 1 starts). */
static int share(int total, int i, int n) { return (int)((long)total * i / n); }

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  atomic_uint seq;
  atomic_uint done;
  int threads;
  Job *job;
  const void *arg;
} pool = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static long long nanos(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void *worker(void *arg) {
  const int id = (int)(intptr_t)arg;
  unsigned seen = 0;
  for (;;) {
    const long long until = nanos() + SPIN_NS;
    unsigned s = atomic_load_explicit(&pool.seq, memory_order_acquire);
    for (int i = 1; s == seen; i++, s = atomic_load_explicit(&pool.seq, memory_order_acquire)) {
      _mm_pause();
      if (i % 64 == 0 && nanos() > until) {
        pthread_mutex_lock(&pool.mu);
        while ((s = atomic_load_explicit(&pool.seq, memory_order_acquire)) == seen) pthread_cond_wait(&pool.cv, &pool.mu);
        pthread_mutex_unlock(&pool.mu);
      }
    }
    seen = s;
    pool.job(pool.arg, id, pool.threads);
    atomic_fetch_add_explicit(&pool.done, 1, memory_order_release);
  }
  return NULL;
}

static int started;

static int start(int threads) {
  if (started) return 1;
  if (threads < 1) threads = 1;
  if (threads > MAX_THREADS) threads = MAX_THREADS;
  /* workers as many as start; the rows are split among those there are */
  int t = 1;
  for (pthread_t th; t < threads && pthread_create(&th, NULL, worker, (void *)(intptr_t)t) == 0; t++) pthread_detach(th);
  pool.threads = t;
  started = 1;
  return 1;
}

/* one call at a time: the activations buffer and the pool are shared (Node worker threads may share the addon) */
static pthread_mutex_t calls = PTHREAD_MUTEX_INITIALIZER;

/* Runs a job on every thread, this one included, and returns when all parts are done. */
static void run(Job *job, const void *arg) {
  pool.job = job, pool.arg = arg;
  atomic_store_explicit(&pool.done, 0, memory_order_relaxed);
  pthread_mutex_lock(&pool.mu);
  atomic_fetch_add_explicit(&pool.seq, 1, memory_order_release);
  pthread_cond_broadcast(&pool.cv);
  pthread_mutex_unlock(&pool.mu);
  job(arg, 0, pool.threads);
  while (atomic_load_explicit(&pool.done, memory_order_acquire) != (unsigned)(pool.threads - 1)) _mm_pause();
}

/* Runs a call's job on the pool, `prepare` (if any) first, one call at a time; 0 where memory or threads ran out. */
static int pooled(int threads, int (*prepare)(const void *), Job *job, const void *arg) {
  pthread_mutex_lock(&calls);
  const int ok = start(threads) && (!prepare || prepare(arg));
  if (ok) run(job, arg);
  pthread_mutex_unlock(&calls);
  return ok;
}

/* The product's job: part i of n of the panels, for every row of x (quantized first, by productInput). */
typedef struct {
  const Layer *layer;
  const float *x;
  int m;
  float *y;
} Product;

static int productInput(const void *arg) {
  const Product *P = arg;
  if (!reserve(&act, P->m, P->layer)) return 0;
  quantize(P->layer, P->x, P->m, &act);
  return 1;
}

static void productPart(const void *arg, int i, int n) {
  const Product *P = arg;
  const int panels = P->layer->panels;
  panelRange(P->layer, &act, P->m, share(panels, i, n), share(panels, i + 1, n), P->y);
}

/* ---------------------------------------------------------------- decode attention */

/*
 * One new position's attention over a head-major KV cache ([kvHeads, capacity, d] per layer, positions [lo, ctx)
 * seen): per query head, scores q·k·scale, their softmax, and Σ p·v. onnxruntime's graph of it costs a 7B decode
 * step 7.5-10.6 ms over 32 layers at a short context, its eight operators' fixed costs; this is a loop. The cache
 * is float32 or float16 (widened as loaded: after a long prompt a step reads every cached key and value, so their
 * bytes are its time). Four positions at a time: four independent dot products, and one pass over the output row
 * for four value rows.
 */
typedef struct {
  const float *q;
  const void *k, *v; /* float32, or float16 where half */
  float *out;
  int heads, kvHeads, d, lo, ctx, capacity, half;
  float scale;
} Attention;

__attribute__((target("avx512f"))) static inline __m512 f32x16(const float *p) { return _mm512_loadu_ps(p); }
__attribute__((target("avx512f"))) static inline __m512 f16x16(const uint16_t *p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
__attribute__((target("avx2,fma,f16c"))) static inline __m256 f32x8(const float *p) { return _mm256_loadu_ps(p); }
__attribute__((target("avx2,fma,f16c"))) static inline __m256 f16x8(const uint16_t *p) {
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

/* the heads [h0, h1), each head's scores in `s` (ctx floats); V a vector of W floats loaded by FLOAT, LOAD(p) W cache values */
#define ATTEND(NAME, TARGET, V, W, FLOAT, T, LOAD)                                                              \
  __attribute__((target(TARGET))) static void NAME(const Attention *A, int h0, int h1, float *s) {              \
    const int d = A->d, group = A->heads / A->kvHeads, lo = A->lo, ctx = A->ctx;                                \
    for (int h = h0; h < h1; h++) {                                                                             \
      const float *q = A->q + (size_t)h * d;                                                                    \
      const T *K = (const T *)A->k + (size_t)(h / group) * A->capacity * d;                                     \
      const T *Vs = (const T *)A->v + (size_t)(h / group) * A->capacity * d;                                    \
      float mx = -INFINITY;                                                                                     \
      int t = lo;                                                                                               \
      for (; t < ctx; t += 4) {                                                                                 \
        const int n = ctx - t < 4 ? ctx - t : 4;                                                                \
        const T *k0 = K + (size_t)t * d, *k1 = n > 1 ? k0 + d : k0, *k2 = n > 2 ? k1 + d : k0;                  \
        const T *k3 = n > 3 ? k2 + d : k0;                                                                      \
        V a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                                               \
        for (int c = 0; c < d; c += W) {                                                                        \
          const V x = FLOAT(q + c);                                                                             \
          a0 += x * LOAD(k0 + c), a1 += x * LOAD(k1 + c), a2 += x * LOAD(k2 + c), a3 += x * LOAD(k3 + c);       \
        }                                                                                                       \
        const V *acc[4] = {&a0, &a1, &a2, &a3};                                                                 \
        for (int j = 0; j < n; j++) {                                                                           \
          float dot = 0;                                                                                        \
          for (int l = 0; l < W; l++) dot += (*acc[j])[l];                                                      \
          s[t + j] = dot * A->scale;                                                                            \
          if (s[t + j] > mx) mx = s[t + j];                                                                     \
        }                                                                                                       \
      }                                                                                                         \
      float sum = 0;                                                                                            \
      for (t = lo; t < ctx; t++) sum += s[t] = expf(s[t] - mx);                                                 \
      for (t = lo; t < ctx; t++) s[t] /= sum;                                                                   \
      float *o = A->out + (size_t)h * d;                                                                        \
      memset(o, 0, d * sizeof(float));                                                                          \
      for (t = lo; t < ctx; t += 4) {                                                                           \
        /* past the last position: a weight of 0 on a row already read */                                       \
        const int n = ctx - t < 4 ? ctx - t : 4;                                                                \
        const T *v0 = Vs + (size_t)t * d, *v1 = n > 1 ? v0 + d : v0, *v2 = n > 2 ? v1 + d : v0;                 \
        const T *v3 = n > 3 ? v2 + d : v0;                                                                      \
        const float p0 = s[t], p1 = n > 1 ? s[t + 1] : 0, p2 = n > 2 ? s[t + 2] : 0, p3 = n > 3 ? s[t + 3] : 0; \
        for (int c = 0; c < d; c += W) {                                                                        \
          V a = FLOAT(o + c);                                                                                   \
          a += p0 * LOAD(v0 + c) + p1 * LOAD(v1 + c) + p2 * LOAD(v2 + c) + p3 * LOAD(v3 + c);                   \
          memcpy(o + c, &a, sizeof a);                                                                          \
        }                                                                                                       \
      }                                                                                                         \
    }                                                                                                           \
  }
ATTEND(attend512, "avx512f", __m512, 16, f32x16, float, f32x16)
ATTEND(attend512h, "avx512f", __m512, 16, f32x16, uint16_t, f16x16)
ATTEND(attend256, "avx2,fma,f16c", __m256, 8, f32x8, float, f32x8)
ATTEND(attend256h, "avx2,fma,f16c", __m256, 8, f32x8, uint16_t, f16x8)

static void attentionPart(const void *arg, int i, int n) {
  const Attention *A = arg;
  float *s = malloc((size_t)A->ctx * sizeof(float));
  if (!s) abort(); /* a few KB to a MB, per call: out of memory here is out of memory everywhere */
  const int h0 = share(A->heads, i, n), h1 = share(A->heads, i + 1, n);
  if (kernels == VNNI && A->d % 16 == 0) (A->half ? attend512h : attend512)(A, h0, h1, s);
  else (A->half ? attend256h : attend256)(A, h0, h1, s);
  free(s);
}

/* float32 rows [seq, kvHeads, d] into a float16 head-major cache [kvHeads, capacity, d] at positions start.. */
__attribute__((target("avx2,f16c"))) static void storeRows(const float *src, uint16_t *dst, int kvHeads, int d, int capacity,
                                                           int start, int seq) {
  for (int t = 0; t < seq; t++)
    for (int h = 0; h < kvHeads; h++) {
      const float *x = src + ((size_t)t * kvHeads + h) * d;
      uint16_t *y = dst + ((size_t)h * capacity + start + t) * d;
      for (int c = 0; c < d; c += 8)
        _mm_storeu_si128((__m128i *)(y + c), _mm256_cvtps_ph(_mm256_loadu_ps(x + c), _MM_FROUND_TO_NEAREST_INT));
    }
}

/*
 * A gated MLP's activation, silu(g)·u = g·u / (1 + e^-g), on a stacked gate/up product: each row of y is the gate's
 * outputs then the up's. In JavaScript (Math.exp per element) it cost a 7B decode step 4.4-5.9 ms, its 32 layers'
 * 352,256 values; here e^x is Cephes' expf (its range reduction and polynomial: within 2 ulp of float32 e^x), eight
 * at a time.
 */
__attribute__((target("avx2,fma"))) static inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  /* r = x - n·ln2, ln2 split in two so n·ln2's high part is exact */
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

__attribute__((target("avx2,fma"))) static void siluRows(const float *y, int m, int half, float *out) {
  for (int i = 0; i < m; i++) {
    const float *g = y + (size_t)i * 2 * half, *u = g + half;
    float *o = out + (size_t)i * half;
    int c = 0;
    for (; c + 8 <= half; c += 8) {
      const __m256 x = _mm256_loadu_ps(g + c);
      const __m256 d = _mm256_add_ps(_mm256_set1_ps(1), exp8(_mm256_sub_ps(_mm256_setzero_ps(), x)));
      _mm256_storeu_ps(o + c, _mm256_mul_ps(_mm256_div_ps(x, d), _mm256_loadu_ps(u + c)));
    }
    for (; c < half; c++) o[c] = g[c] / (1 + expf(-g[c])) * u[c];
  }
}

/*
 * RMSNorm of rows of x: x / sqrt(mean(x²) + eps) · w. A decode step norms two rows of the hidden size a layer: in
 * JavaScript 17 µs each at 4096 (its sum of squares one dependent chain), a millisecond of a 7B token.
 */
__attribute__((target("avx2,fma"))) static void normRows(const float *x, const float *w, int rows, int d, float eps, float *out) {
  for (int r = 0; r < rows; r++) {
    const float *xr = x + (size_t)r * d;
    float *o = out + (size_t)r * d;
    __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
    int c = 0;
    for (; c + 16 <= d; c += 16) {
      const __m256 u = _mm256_loadu_ps(xr + c), v = _mm256_loadu_ps(xr + c + 8);
      a = _mm256_fmadd_ps(u, u, a), b = _mm256_fmadd_ps(v, v, b);
    }
    float lanes[8], ss = 0;
    _mm256_storeu_ps(lanes, _mm256_add_ps(a, b));
    for (int l = 0; l < 8; l++) ss += lanes[l];
    for (; c < d; c++) ss += xr[c] * xr[c];
    const float inv = 1 / sqrtf(ss / d + eps);
    const __m256 s = _mm256_set1_ps(inv);
    for (c = 0; c + 8 <= d; c += 8) _mm256_storeu_ps(o + c, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + c), s), _mm256_loadu_ps(w + c)));
    for (; c < d; c++) o[c] = xr[c] * inv * w[c];
  }
}

/* ---------------------------------------------------------------- Node-API */

#define CHECK(call)                                              \
  do {                                                           \
    if ((call) != napi_ok) {                                     \
      napi_throw_error(env, NULL, "native: " #call " failed");   \
      return NULL;                                               \
    }                                                            \
  } while (0)

/* A typed array of type a or b: its data, its length in elements and (if `got`) which it was; else throws `what`. */
static void *typedEither(napi_env env, napi_value v, napi_typedarray_type a, napi_typedarray_type b, size_t *length,
                         napi_typedarray_type *got, const char *what) {
  bool is;
  napi_typedarray_type type;
  void *data;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is ||
      napi_get_typedarray_info(env, v, &type, length, &data, NULL, NULL) != napi_ok || (type != a && type != b)) {
    napi_throw_type_error(env, NULL, what);
    return NULL;
  }
  if (got) *got = type;
  return data;
}

static void *typed(napi_env env, napi_value v, napi_typedarray_type want, size_t *length, const char *what) {
  return typedEither(env, v, want, want, length, NULL, what);
}

/* whether the kernels run on this CPU; if not, throws naming the function */
static int usable(napi_env env, const char *fn) {
  if (kernels) return 1;
  char message[96];
  snprintf(message, sizeof message, "%s: no supported instruction set", fn);
  napi_throw_error(env, NULL, message);
  return 0;
}

static void *huge(size_t bytes) {
  void *p = NULL;
  const size_t size = (bytes + HUGE - 1) / HUGE * HUGE;
  if (posix_memalign(&p, HUGE, size) != 0) return NULL;
  madvise(p, size, MADV_HUGEPAGE);
  return p;
}

static void release(Layer *L) {
  free(L->codes), free(L->halfScales), free(L->scales), free(L->zeros), free(L->order);
  memset(L, 0, sizeof *L);
}

static void finalize(napi_env env, void *data, void *hint) {
  (void)env, (void)hint;
  release(data);
  free(data);
}

static Layer *layerOf(napi_env env, napi_value v) {
  void *p = NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok || !p || !((Layer *)p)->codes) {
    napi_throw_error(env, NULL, "native: not an open layer");
    return NULL;
  }
  return p;
}

/* isa(): the instruction set the kernel uses here, 'avx512vnni', 'avx2' or '' (none: not usable). */
static napi_value isa(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value out;
  const char *name = kernels == VNNI ? "avx512vnni" : kernels == AVX2 ? "avx2" : "";
  CHECK(napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &out));
  return out;
}

/* useIsa(name): choose a supported instruction set (tests run the AVX2 path on an AVX-512 machine). */
static napi_value useIsa(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  char name[32] = "";
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_string_utf8(env, argv[0], name, sizeof name, NULL));
  __builtin_cpu_init();
  const int vnni = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
  const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (!strcmp(name, "avx512vnni") && vnni) kernels = VNNI;
  else if (!strcmp(name, "avx2") && avx2) kernels = AVX2;
  else {
    napi_throw_error(env, NULL, "native: this CPU lacks that instruction set");
    return NULL;
  }
  return NULL;
}

/*
 * The codes into panels, from row-major blocks ([rows, blocks, block·bits/8] bytes) or from GPTQ's qweight
 * ([cols·bits/32, rows] int32 words: a quad's 4 bytes of a row are one word, word Q·b + t of the row, Q quads a
 * block); rows past the last are 0. With scales and zeros ([rows, blocks]).
 */
__attribute__((target("f16c"))) static void repack(Layer *L, const uint8_t *rowMajor, const uint32_t *words, const float *scales, const uint8_t *zeros) {
  const int B = L->blocks, Q = QUADS(L);
  memset(L->codes, 0, (size_t)L->panels * B * Q * QUAD);
  for (int r = 0; r < L->rows; r++) {
    const int p = r / PANEL, k = r % PANEL;
    for (int b = 0; b < B; b++) {
      const size_t pb = (size_t)p * B + b, rb = (size_t)r * B + b;
      uint8_t *q = L->codes + pb * Q * QUAD + 4 * k;
      for (int t = 0; t < Q; t++) {
        if (words) memcpy(q + t * QUAD, &words[((size_t)Q * b + t) * L->rows + r], 4);
        else memcpy(q + t * QUAD, rowMajor + rb * Q * 4 + 4 * t, 4);
      }
      if (L->halfScales) L->halfScales[pb * PANEL + k] = _cvtss_sh(scales[rb], _MM_FROUND_TO_NEAREST_INT);
      else L->scales[pb * PANEL + k] = scales[rb];
      if (L->zeros) L->zeros[pb * PANEL + k] = zeros[rb];
    }
  }
}

/* whether every x is a float16 value (kept exactly in 16 bits); a machine without F16C has no AVX2 kernels either */
__attribute__((target("f16c"))) static int halves(const float *x, size_t n) {
  if (!__builtin_cpu_supports("f16c")) return 0;
  for (size_t i = 0; i < n; i++)
    if (_cvtsh_ss(_cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT)) != x[i]) return 0;
  return 1;
}

/*
 * open(codes Uint8Array | Int32Array, scales Float32Array, zeros Uint8Array, rows, blocks, order Int32Array | null,
 * bits 4 | 8, block 16 | 32 | 64 | 128) → layer
 */
static napi_value openLayer(napi_env env, napi_callback_info info) {
  size_t argc = 8;
  napi_value argv[8];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int rows, blocks, bits, block;
  CHECK(napi_get_value_int32(env, argv[3], &rows));
  CHECK(napi_get_value_int32(env, argv[4], &blocks));
  CHECK(napi_get_value_int32(env, argv[6], &bits));
  CHECK(napi_get_value_int32(env, argv[7], &block));
  size_t nc, ns, nz, no = 0;
  napi_typedarray_type codesType;
  const void *codes = typedEither(env, argv[0], napi_uint8_array, napi_int32_array, &nc, &codesType,
                                  "native: codes must be a Uint8Array (row-major blocks) or an Int32Array (qweight)");
  if (!codes) return NULL;
  const int gptqWords = codesType == napi_int32_array;
  const float *scales = typed(env, argv[1], napi_float32_array, &ns, "native: scales must be a Float32Array");
  if (!scales) return NULL;
  const uint8_t *zeros = typed(env, argv[2], napi_uint8_array, &nz, "native: zeros must be a Uint8Array");
  if (!zeros) return NULL;
  napi_valuetype t;
  CHECK(napi_typeof(env, argv[5], &t));
  const int32_t *order = NULL;
  if (t != napi_null && t != napi_undefined) {
    order = typed(env, argv[5], napi_int32_array, &no, "native: order must be an Int32Array");
    if (!order) return NULL;
  }
  const size_t units = (size_t)rows * blocks, cols = (size_t)blocks * block;
  const size_t rowBytes = (size_t)block * bits / 8, codesLength = gptqWords ? units * rowBytes / 4 : units * rowBytes;
  if ((bits != 4 && bits != 8) || (block != 16 && block != 32 && block != 64 && block != MAX_BLOCK) || rows <= 0 || blocks <= 0 || nc != codesLength || ns != units || nz != units || (order && no != cols) || (order && gptqWords)) {
    napi_throw_range_error(env, NULL, "native: codes, scales, zeros or order do not match rows x blocks");
    return NULL;
  }
  int sameZero = 1;
  for (size_t i = 1; i < units && sameZero; i++) sameZero = zeros[i] == zeros[0];
  Layer *L = calloc(1, sizeof *L);
  const int panels = (rows + PANEL - 1) / PANEL;
  const size_t slots = (size_t)panels * blocks * PANEL;
  if (L) {
    L->rows = rows, L->blocks = blocks, L->panels = panels, L->bits = bits, L->block = block;
    L->codes = huge(slots * rowBytes);
    L->zero = zeros[0];
    if (!sameZero) L->zeros = calloc(slots, 1);
    if (halves(scales, units)) L->halfScales = calloc(slots, sizeof(uint16_t));
    else L->scales = calloc(slots, sizeof(float));
    L->order = order ? malloc(cols * sizeof(int32_t)) : NULL;
  }
  if (!L || !L->codes || !(L->scales || L->halfScales) || (!sameZero && !L->zeros) || (order && !L->order)) {
    if (L) release(L), free(L);
    napi_throw_error(env, NULL, "native: out of memory");
    return NULL;
  }
  repack(L, gptqWords ? NULL : codes, gptqWords ? codes : NULL, scales, zeros);
  if (order) memcpy(L->order, order, cols * sizeof(int32_t));
  napi_value out;
  if (napi_create_external(env, L, finalize, NULL, &out) != napi_ok) {
    release(L), free(L);
    napi_throw_error(env, NULL, "native: napi_create_external failed");
    return NULL;
  }
  return out;
}

/* matmul(layer, x Float32Array [m, cols], m, y Float32Array [m, rows], threads) */
static napi_value matmulLayer(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  const Layer *L = layerOf(env, argv[0]);
  if (!L) return NULL;
  int m, threads;
  CHECK(napi_get_value_int32(env, argv[2], &m));
  CHECK(napi_get_value_int32(env, argv[4], &threads));
  size_t nx, ny;
  const float *x = typed(env, argv[1], napi_float32_array, &nx, "native: x must be a Float32Array");
  if (!x) return NULL;
  float *y = typed(env, argv[3], napi_float32_array, &ny, "native: y must be a Float32Array");
  if (!y) return NULL;
  if (m <= 0 || nx != (size_t)m * L->blocks * L->block || ny != (size_t)m * L->rows) {
    napi_throw_range_error(env, NULL, "native: x or y does not match m and the layer");
    return NULL;
  }
  if (!usable(env, "native")) return NULL;
  const Product P = {L, x, m, y};
  if (!pooled(threads, productInput, productPart, &P)) napi_throw_error(env, NULL, "native: out of memory or threads");
  return NULL;
}

/*
 * attend(q [heads·d], k, v [kvHeads·capacity·d], out [heads·d], heads, kvHeads, d, lo, ctx, capacity, scale, threads):
 * d a multiple of 8; positions [lo, ctx) of the cache; k and v both float32 or both float16.
 */
static napi_value attend(napi_env env, napi_callback_info info) {
  size_t argc = 12;
  napi_value argv[12];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int shape[7], threads;
  double scale;
  for (int i = 0; i < 7; i++) CHECK(napi_get_value_int32(env, argv[4 + i], &shape[i]));
  CHECK(napi_get_value_double(env, argv[10], &scale));
  CHECK(napi_get_value_int32(env, argv[11], &threads));
  const int heads = shape[0], kvHeads = shape[1], d = shape[2], lo = shape[3], ctx = shape[4], capacity = shape[5];
  size_t nq, nk, nv, no;
  napi_typedarray_type kType, vType;
  const float *q = typed(env, argv[0], napi_float32_array, &nq, "attend: q must be a Float32Array");
  if (!q) return NULL;
  /* the cache: float32, or float16 bits */
  const char *cacheTypes = "attend: k and v must be Float32Arrays or Uint16Arrays (float16)";
  const void *k = typedEither(env, argv[1], napi_float32_array, napi_uint16_array, &nk, &kType, cacheTypes);
  if (!k) return NULL;
  const void *v = typedEither(env, argv[2], napi_float32_array, napi_uint16_array, &nv, &vType, cacheTypes);
  if (!v) return NULL;
  const int half = kType == napi_uint16_array;
  float *out = typed(env, argv[3], napi_float32_array, &no, "attend: out must be a Float32Array");
  if (!out) return NULL;
  const size_t cache = (size_t)kvHeads * capacity * d;
  if (heads <= 0 || kvHeads <= 0 || heads % kvHeads || d <= 0 || d % 8 || lo < 0 || lo >= ctx || ctx > capacity ||
      nq != (size_t)heads * d || no != nq || nk < cache || nv < cache || kType != vType) {
    napi_throw_range_error(env, NULL, "attend: shapes do not match");
    return NULL;
  }
  if (!usable(env, "attend")) return NULL;
  const Attention A = {q, k, v, out, heads, kvHeads, d, lo, ctx, capacity, half, (float)scale};
  if (!pooled(threads, NULL, attentionPart, &A)) napi_throw_error(env, NULL, "attend: no threads");
  return NULL;
}

/*
 * storeHalf(src [seq·kvHeads·d], dst [kvHeads·capacity·d] Uint16Array, kvHeads, d, capacity, start, seq): new keys
 * or values, as projected, into a float16 head-major cache, rounded to nearest even; d a multiple of 8.
 */
static napi_value storeHalf(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int shape[5];
  for (int i = 0; i < 5; i++) CHECK(napi_get_value_int32(env, argv[2 + i], &shape[i]));
  const int kvHeads = shape[0], d = shape[1], capacity = shape[2], start = shape[3], seq = shape[4];
  size_t ns, nd;
  const float *src = typed(env, argv[0], napi_float32_array, &ns, "storeHalf: src must be a Float32Array");
  if (!src) return NULL;
  uint16_t *dst = typed(env, argv[1], napi_uint16_array, &nd, "storeHalf: dst must be a Uint16Array");
  if (!dst) return NULL;
  if (kvHeads <= 0 || d <= 0 || d % 8 || start < 0 || seq < 0 || start + seq > capacity ||
      ns < (size_t)seq * kvHeads * d || nd < (size_t)kvHeads * capacity * d) {
    napi_throw_range_error(env, NULL, "storeHalf: shapes do not match");
    return NULL;
  }
  if (!usable(env, "storeHalf")) return NULL;
  storeRows(src, dst, kvHeads, d, capacity, start, seq);
  return NULL;
}

/* bytes(layer): what a product streams (codes, scales, zero points; the order, if any) */
static napi_value layerBytes(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  const Layer *L = layerOf(env, argv[0]);
  if (!L) return NULL;
  const size_t slots = (size_t)L->panels * L->blocks * PANEL;
  const size_t bytes = slots * ((size_t)L->block * L->bits / 8 + (L->halfScales ? 2 : 4) + (L->zeros ? 1 : 0)) +
                       (L->order ? (size_t)L->blocks * L->block * 4 : 0);
  CHECK(napi_create_double(env, (double)bytes, &out));
  return out;
}

/* siluMul(y Float32Array [m, 2·half], m, half, out Float32Array [m, half]): out = silu(gate)·up per row */
static napi_value siluMul(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int m, half;
  CHECK(napi_get_value_int32(env, argv[1], &m));
  CHECK(napi_get_value_int32(env, argv[2], &half));
  size_t ny, no;
  const float *y = typed(env, argv[0], napi_float32_array, &ny, "siluMul: y must be a Float32Array");
  if (!y) return NULL;
  float *out = typed(env, argv[3], napi_float32_array, &no, "siluMul: out must be a Float32Array");
  if (!out) return NULL;
  if (m < 0 || half < 0 || ny != (size_t)m * 2 * half || no != (size_t)m * half) {
    napi_throw_range_error(env, NULL, "siluMul: shapes do not match");
    return NULL;
  }
  if (!usable(env, "siluMul")) return NULL;
  siluRows(y, m, half, out);
  return NULL;
}

/* rmsNorm(x Float32Array [rows·d], w Float32Array [d], rows, eps, out Float32Array [rows·d]) */
static napi_value rmsNorm(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int rows;
  double eps;
  CHECK(napi_get_value_int32(env, argv[2], &rows));
  CHECK(napi_get_value_double(env, argv[3], &eps));
  size_t nx, nw, no;
  const float *x = typed(env, argv[0], napi_float32_array, &nx, "rmsNorm: x must be a Float32Array");
  if (!x) return NULL;
  const float *w = typed(env, argv[1], napi_float32_array, &nw, "rmsNorm: w must be a Float32Array");
  if (!w) return NULL;
  float *out = typed(env, argv[4], napi_float32_array, &no, "rmsNorm: out must be a Float32Array");
  if (!out) return NULL;
  if (rows < 0 || nw == 0 || nx != (size_t)rows * nw || no != nx) {
    napi_throw_range_error(env, NULL, "rmsNorm: shapes do not match");
    return NULL;
  }
  if (!usable(env, "rmsNorm")) return NULL;
  normRows(x, w, rows, (int)nw, (float)eps, out);
  return NULL;
}

/* close(layer): free the weights now rather than when the handle is collected */
static napi_value closeLayer(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void *p = NULL;
  CHECK(napi_get_value_external(env, argv[0], &p));
  if (p) release(p);
  return NULL;
}

NAPI_MODULE_INIT() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw")) kernels = VNNI;
  else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) kernels = AVX2;
  const struct {
    const char *name;
    napi_callback fn;
  } fns[] = {{"isa", isa}, {"useIsa", useIsa}, {"open", openLayer}, {"matmul", matmulLayer}, {"close", closeLayer}, {"bytes", layerBytes}, {"siluMul", siluMul}, {"rmsNorm", rmsNorm}, {"attend", attend}, {"storeHalf", storeHalf}};
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    napi_value f;
    if (napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &f) != napi_ok ||
        napi_set_named_property(env, exports, fns[i].name, f) != napi_ok)
      return NULL;
  }
  return exports;
}
