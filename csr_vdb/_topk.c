/* Exact sparse top-k over posting lists, cache-tiled (the optional native CPU path of SparseIndex).
 *
 * Built on first use by csr_vdb/native.py with the system C compiler (plain C99, no Python or
 * torch headers) and called through ctypes, which releases the GIL: SparseIndex runs one call per
 * worker thread on its own slice of queries.
 *
 * For each query, rows are scored one tile of `tile_rows` at a time: the query's posting lists
 * (rows ascending inside each list) are walked from per-latent cursors into a tile-sized float32
 * buffer that stays in the core's cache, then the tile is scanned once into a bounded heap and
 * cleared. Scores are float32 sums taken in the query's slot order, the same order as the pure
 * torch path, so both paths return identical scores. Ranking: score descending, then row
 * ascending; untouched rows score 0 and take part like any other row.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* heap entry a is worse than b: lower score, or equal score and larger row */
static int worse(float sa, int64_t ra, float sb, int64_t rb) { return sa < sb || (sa == sb && ra > rb); }

static void sift_down(float *hs, int64_t *hr, int64_t n, int64_t i) {
    for (;;) {
        int64_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && worse(hs[l], hr[l], hs[m], hr[m])) m = l;
        if (r < n && worse(hs[r], hr[r], hs[m], hr[m])) m = r;
        if (m == i) return;
        float ts = hs[i]; hs[i] = hs[m]; hs[m] = ts;
        int64_t tr = hr[i]; hr[i] = hr[m]; hr[m] = tr;
        i = m;
    }
}

static void sift_up(float *hs, int64_t *hr, int64_t i) {
    while (i > 0) {
        int64_t p = (i - 1) / 2;
        if (!worse(hs[i], hr[i], hs[p], hr[p])) return;
        float ts = hs[i]; hs[i] = hs[p]; hs[p] = ts;
        int64_t tr = hr[i]; hr[i] = hr[p]; hr[p] = tr;
        i = p;
    }
}

#define SCAN 64

/* a row scored after every row already in the full heap: it enters only with a strictly higher
 * score than the worst entry (rows arrive in ascending order, so an equal score never wins) */
static inline void offer(float *hs, int64_t *hr, int64_t n_heap, float s, int64_t row) {
    if (s > hs[0]) {
        hs[0] = s; hr[0] = row;
        sift_down(hs, hr, n_heap, 0);
    }
}

/* Returns 0, or -1 when a buffer cannot be allocated.
 *
 * n_rows: rows of the index; ptr [h + 1]: posting offsets; docs/vals: posting rows (ascending
 * within a list) and values; nq x qw queries (q_idx in [0, h), q_val; 0 = padding);
 * top_k <= n_rows; out_scores/out_rows [nq, top_k]. */
int csr_topk(int64_t n_rows, const int64_t *ptr, const int32_t *docs, const float *vals,
             int64_t nq, int64_t qw, const int64_t *q_idx, const float *q_val,
             int64_t top_k, int64_t tile_rows, float *out_scores, int64_t *out_rows) {
    if (tile_rows > n_rows) tile_rows = n_rows;
    if (tile_rows < 1) tile_rows = 1;
    float *tile = calloc((size_t)tile_rows, sizeof(float));
    int64_t *cur = malloc(sizeof(int64_t) * (size_t)(qw > 0 ? qw : 1));
    int64_t *end = malloc(sizeof(int64_t) * (size_t)(qw > 0 ? qw : 1));
    float *hs = malloc(sizeof(float) * (size_t)top_k);
    int64_t *hr = malloc(sizeof(int64_t) * (size_t)top_k);
    if (!tile || !cur || !end || !hs || !hr) {
        free(tile); free(cur); free(end); free(hs); free(hr);
        return -1;
    }
    for (int64_t q = 0; q < nq; q++) {
        const int64_t *qi = q_idx + q * qw;
        const float *qv = q_val + q * qw;
        for (int64_t j = 0; j < qw; j++) {
            cur[j] = qv[j] != 0.0f ? ptr[qi[j]] : 0;
            end[j] = qv[j] != 0.0f ? ptr[qi[j] + 1] : 0;
        }
        int64_t n_heap = 0;
        for (int64_t t0 = 0; t0 < n_rows; t0 += tile_rows) {
            int64_t t1 = t0 + tile_rows < n_rows ? t0 + tile_rows : n_rows;
            for (int64_t j = 0; j < qw; j++) {
                int64_t c = cur[j], e = end[j];
                float w = qv[j];
                while (c < e && docs[c] < t1) {
                    tile[docs[c] - t0] += w * vals[c];
                    c++;
                }
                cur[j] = c;
            }
            int64_t len = t1 - t0, r = 0;
            /* fill the heap with the first rows, then keep only strictly better scores: rows come
             * in ascending order, so an equal score never beats an entry already held */
            for (; r < len && n_heap < top_k; r++) {
                hs[n_heap] = tile[r]; hr[n_heap] = t0 + r;
                sift_up(hs, hr, n_heap);
                n_heap++;
            }
            /* blocks of SCAN rows: a branch-free max first (vectorisable), the heap only for a
             * block that holds a score above the current worst one */
            for (; r < len && r % SCAN; r++) offer(hs, hr, n_heap, tile[r], t0 + r);
            for (; r + SCAN <= len; r += SCAN) {
                float m = tile[r];
                for (int i = 1; i < SCAN; i++) m = tile[r + i] > m ? tile[r + i] : m;
                if (m > hs[0])
                    for (int i = 0; i < SCAN; i++) offer(hs, hr, n_heap, tile[r + i], t0 + r + i);
            }
            for (; r < len; r++) offer(hs, hr, n_heap, tile[r], t0 + r);
            memset(tile, 0, sizeof(float) * (size_t)len);
        }
        /* heap -> best first: repeatedly move the worst entry to the back */
        float *os = out_scores + q * top_k;
        int64_t *orow = out_rows + q * top_k;
        for (int64_t n = n_heap; n > 0; n--) {
            os[n - 1] = hs[0]; orow[n - 1] = hr[0];
            hs[0] = hs[n - 1]; hr[0] = hr[n - 1];
            sift_down(hs, hr, n - 1, 0);
        }
    }
    free(tile); free(cur); free(end); free(hs); free(hr);
    return 0;
}
