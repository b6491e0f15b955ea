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

/* ------------------------------------------------------------------------------------------------
 * Row-wise top-K of a dense float32 matrix, for TopK training (csr_row_topk).
 *
 * For each row of x [n, h], writes the positions of its K largest entries to out [n, K]: slots
 * 0..k-1 hold the k largest in descending order (ties: smaller position first), slots k..K-1 the
 * next K-k in no particular order. Selection is a radix select on order-preserving 32-bit
 * keys (a byte per level), O(h) per row with no data-dependent sort, which is several times
 * faster than a general top-k for K of a few hundred out of a few thousand. NaN keys order above
 * +inf (inputs are validated to be finite before they reach this).
 */
static inline uint32_t fkey(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* Key of the K-th largest of keys[0..m) (1 <= K <= m) and how many entries equal to it are
 * taken (the rest of the K are strictly larger). Radix select, one byte per level from the top;
 * it stops as soon as the candidates left are exactly the ones still needed. cand: scratch of m. */
static uint32_t kth_key(const uint32_t *keys, int64_t m, int64_t K, int32_t *cand, int64_t *take_eq) {
    /* a long first level counts into four interleaved histograms: skewed data sends most keys to
     * a few bins, and one counter bumped back to back stalls on its own store; short levels use
     * one (clearing 4 KB per level would cost more than it saves) */
    int32_t hist[4][256];
    int64_t nc = m, need = K;
    uint32_t prefix = 0;
    for (int sh = 24; sh >= 0; sh -= 8) {
        int wide = sh == 24 && nc >= 1024;
        memset(hist, 0, wide ? sizeof hist : sizeof hist[0]);
        int64_t c = 0;
        if (sh == 24) {
            if (wide)
                for (; c + 4 <= nc; c += 4) {
                    hist[0][keys[c] >> 24]++; hist[1][keys[c + 1] >> 24]++;
                    hist[2][keys[c + 2] >> 24]++; hist[3][keys[c + 3] >> 24]++;
                }
            for (; c < nc; c++) hist[0][keys[c] >> 24]++;
        } else {
            for (; c < nc; c++) hist[0][(keys[cand[c]] >> sh) & 0xFFu]++;
        }
        int64_t above = 0;
        int b = 255;
        for (; b > 0; b--) {
            int64_t cnt = hist[0][b];
            if (wide) cnt += (int64_t)hist[1][b] + hist[2][b] + hist[3][b];
            if (above + cnt >= need) break;
            above += cnt;
        }
        need -= above;
        prefix |= (uint32_t)b << sh;
        /* branch-free compaction of the keys whose digit is b */
        int64_t w = 0;
        if (sh == 24) {
            for (int64_t i = 0; i < nc; i++) { cand[w] = (int32_t)i; w += (keys[i] >> 24) == (uint32_t)b; }
        } else {
            for (int64_t i = 0; i < nc; i++) {
                int32_t v = cand[i];
                cand[w] = v;
                w += ((keys[v] >> sh) & 0xFFu) == (uint32_t)b;
            }
        }
        nc = w;
        if (nc == need) {
            /* every candidate is taken: the threshold is their smallest key, all its copies taken */
            uint32_t t = keys[cand[0]];
            for (int64_t i = 1; i < nc; i++) t = keys[cand[i]] < t ? keys[cand[i]] : t;
            int64_t eq = 0;
            for (int64_t i = 0; i < nc; i++) eq += keys[cand[i]] == t;
            *take_eq = eq;
            return t;
        }
    }
    *take_eq = need;
    return prefix;
}

/* positions of the K largest keys: the larger ones in ascending position order, then the ones
 * tied with the K-th in ascending position order */
static void select_top(const uint32_t *keys, int64_t m, int64_t K, int32_t *cand, int32_t *out) {
    if (K >= m) {
        for (int64_t i = 0; i < m; i++) out[i] = (int32_t)i;
        return;
    }
    int64_t eq;
    uint32_t t = kth_key(keys, m, K, cand, &eq);
    int64_t w = 0;
    for (int64_t i = 0; i < m; i++) { out[w] = (int32_t)i; w += keys[i] > t; }
    for (int64_t i = 0; i < m && eq > 0; i++)
        if (keys[i] == t) { out[w++] = (int32_t)i; eq--; }
}

/* select_top for K much smaller than m: a strided sample of the keys gives a threshold a little
 * below the K-th largest, one branch-free pass collects the keys at or above it (about 1.5 K of
 * them), and select_top runs on those only. Falls back to select_top on everything when the
 * guess leaves fewer than K. Same result as select_top. scratch: 3 * m int32. */
static void select_top_sampled(const uint32_t *keys, int64_t m, int64_t K, int32_t *scratch, int32_t *out) {
    const int64_t stride = 4;
    if (m < 16 * stride || K * 6 > m) {
        select_top(keys, m, K, scratch, out);
        return;
    }
    int32_t *cand = scratch, *work = scratch + m;
    uint32_t *ckeys = (uint32_t *)(scratch + 2 * m);
    int64_t ns = m / stride;
    for (int64_t i = 0; i < ns; i++) ckeys[i] = keys[i * stride];
    /* expected sample entries above the true threshold, plus a margin of ~2.5 standard deviations */
    double e = (double)K * (double)ns / (double)m, root = e > 1.0 ? e : 1.0;
    for (int it = 0; it < 20; it++) root = 0.5 * (root + e / root); /* sqrt(e), no libm */
    int64_t r = (int64_t)(e + 2.5 * root + 4.0);
    if (r > ns) r = ns;
    int64_t eq;
    uint32_t guess = kth_key(ckeys, ns, r, work, &eq);
    int64_t w = 0;
    for (int64_t i = 0; i < m; i++) { cand[w] = (int32_t)i; w += keys[i] >= guess; }
    if (w < K) {
        select_top(keys, m, K, work, out);
        return;
    }
    for (int64_t c = 0; c < w; c++) ckeys[c] = keys[cand[c]];
    select_top(ckeys, w, K, work, out);
    for (int64_t s = 0; s < K; s++) out[s] = cand[out[s]];
}

int csr_row_topk(int64_t n, int64_t h, const float *x, int64_t K, int64_t k, int64_t *out) {
    if (K < 1 || K > h || k < 1 || k > K) return 2;
    uint32_t *keys = malloc(sizeof(uint32_t) * (size_t)h);
    int32_t *cand = malloc(sizeof(int32_t) * 3 * (size_t)h);
    int32_t *sel = malloc(sizeof(int32_t) * (size_t)K);
    uint32_t *skeys = malloc(sizeof(uint32_t) * (size_t)K);
    int32_t *head = malloc(sizeof(int32_t) * (size_t)K);
    char *in_head = malloc((size_t)K);
    if (!keys || !cand || !sel || !skeys || !head || !in_head) {
        free(keys); free(cand); free(sel); free(skeys); free(head); free(in_head);
        return 1;
    }
    for (int64_t r = 0; r < n; r++) {
        const float *row = x + r * h;
        int64_t *o = out + r * K;
        for (int64_t j = 0; j < h; j++) keys[j] = fkey(row[j]);
        select_top_sampled(keys, h, K, cand, sel);
        for (int64_t s = 0; s < K; s++) skeys[s] = keys[sel[s]];
        /* the k largest of the K, then sorted descending (ties: smaller position first; equal keys
         * sit in sel in ascending position, so comparing slot numbers compares positions) */
        select_top(skeys, K, k, cand, head);
        memset(in_head, 0, (size_t)K);
        for (int64_t a = 1; a < k; a++) {
            int32_t v = head[a];
            int64_t b = a - 1;
            while (b >= 0 && skeys[head[b]] < skeys[v]) { head[b + 1] = head[b]; b--; }
            head[b + 1] = v;
        }
        for (int64_t a = 0; a < k; a++) { o[a] = sel[head[a]]; in_head[head[a]] = 1; }
        int64_t w = k;
        for (int64_t s = 0; s < K; s++)
            if (!in_head[s]) o[w++] = sel[s];
    }
    free(keys); free(cand); free(sel); free(skeys); free(head); free(in_head);
    return 0;
}

/* ------------------------------------------------------------------------------------------------
 * Non-negative orthogonal matching pursuit over a dictionary's Gram matrix (csr_pursuit), the
 * native path of csr_vdb/pursuit.py (same steps, same order).
 *
 * Row r: c0[r, i] = <atom cand[r, i], target_r> for its C candidate atoms; gram [h, h] = W W^T.
 * Each of k steps picks the candidate with the largest residual correlation
 * c0[i] - sum_s gram[cand_i, chosen_s] z_s, then refits all chosen coefficients by coordinate
 * descent on the non-negative least-squares problem (step_sweeps sweeps; final_sweeps at the end).
 * Writes out_idx [n, k] (atom ids) and out_val [n, k] (>= 0).
 */
static void cd_sweeps(float *z, float *g, const float *cs, const float *gss, int64_t k, int64_t t, int sweeps) {
    for (int sw = 0; sw < sweeps; sw++)
        for (int64_t a = 0; a < t; a++) {
            float diag = gss[a * k + a] > 1e-12f ? gss[a * k + a] : 1e-12f;
            float nz = z[a] + (cs[a] - g[a]) / diag;
            nz = nz > 0.0f ? nz : 0.0f;
            float delta = nz - z[a];
            if (delta != 0.0f)
                for (int64_t b = 0; b < t; b++) g[b] += gss[b * k + a] * delta;
            z[a] = nz;
        }
}

int csr_pursuit(int64_t n, int64_t C, const float *c0, const int64_t *cand, int64_t h, const float *gram,
                int64_t k, int step_sweeps, int final_sweeps, int64_t *out_idx, float *out_val) {
    if (k < 1 || C < k) return 2;
    /* gsc[t * C + i] = gram[chosen_t, cand_i]: one contiguous row per chosen atom, so the residual
     * correlations are k axpy passes over C floats (vectorisable), not C dot products */
    float *gsc = malloc(sizeof(float) * (size_t)(C * k));
    float *score = malloc(sizeof(float) * (size_t)C);
    float *gss = malloc(sizeof(float) * (size_t)(k * k));
    float *z = malloc(sizeof(float) * (size_t)k), *g = malloc(sizeof(float) * (size_t)k);
    float *cs = malloc(sizeof(float) * (size_t)k);
    int64_t *pos = malloc(sizeof(int64_t) * (size_t)k);
    char *taken = malloc((size_t)C);
    if (!gsc || !score || !gss || !z || !g || !cs || !pos || !taken) {
        free(gsc); free(score); free(gss); free(z); free(g); free(cs); free(pos); free(taken);
        return 1;
    }
    for (int64_t r = 0; r < n; r++) {
        const float *c = c0 + r * C;
        const int64_t *cd = cand + r * C;
        memset(taken, 0, (size_t)C);
        for (int64_t t = 0; t < k; t++) {
            memcpy(score, c, sizeof(float) * (size_t)C);
            for (int64_t b = 0; b < t; b++) {
                const float *row = gsc + b * C;
                float zb = z[b];
                if (zb != 0.0f)
                    for (int64_t i = 0; i < C; i++) score[i] -= row[i] * zb;
            }
            float best = 0.0f;
            int64_t p = -1;
            for (int64_t i = 0; i < C; i++)
                if (!taken[i] && (p < 0 || score[i] > best)) { best = score[i]; p = i; }
            taken[p] = 1;
            pos[t] = p;
            const float *grow = gram + cd[p] * h;
            float *nrow = gsc + t * C;
            for (int64_t i = 0; i < C; i++) nrow[i] = grow[cd[i]];
            for (int64_t a = 0; a <= t; a++) {
                float v = nrow[pos[a]];
                gss[a * k + t] = v;
                gss[t * k + a] = v;
            }
            cs[t] = c[p];
            z[t] = best > 0.0f ? best : 0.0f;
            for (int64_t a = 0; a <= t; a++) {
                float acc = 0.0f;
                for (int64_t b = 0; b <= t; b++) acc += gss[a * k + b] * z[b];
                g[a] = acc;
            }
            cd_sweeps(z, g, cs, gss, k, t + 1, step_sweeps);
        }
        cd_sweeps(z, g, cs, gss, k, k, final_sweeps);
        for (int64_t t = 0; t < k; t++) {
            out_idx[r * k + t] = cd[pos[t]];
            out_val[r * k + t] = z[t];
        }
    }
    free(gsc); free(score); free(gss); free(z); free(g); free(cs); free(pos); free(taken);
    return 0;
}
