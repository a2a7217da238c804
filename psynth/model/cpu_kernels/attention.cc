// Attention on CPU as XLA FFI custom calls (loaded by psynth/model/cpu_kernel.py).
//
// Two handlers, one contract (psynth/model/attention.py): grouped-query attention where query
// head h reads kv head h / G; a query at position p sees a key iff the key is valid and its
// position is <= p; float32 throughout; a query that sees nothing gets zeros (nobody reads it).
//
//   PsynthDecodeAttention   one query token per row (a decode step) over its cache and its
//                           own new token. Bound by reading the cache: each row streams its K
//                           slots once, then its V slots once, and skips slots it cannot see.
//   PsynthPrefillAttention  T query tokens per row over cache slots and their own tokens,
//                           flash style: blocks of 32 queries x 64 keys, a streaming softmax,
//                           blocks nobody in the query block can see skipped (the causal upper
//                           triangle, empty cache blocks). Bound by FLOPs: register-blocked
//                           multiply-adds and a 16-lane exp.
//
// Why kernels: XLA on CPU computes these as many small batched matmuls with separate softmax
// passes; it read a decode step's cache at a third of a plain sum's rate, and a 32-row prefill's
// attention took 3x this kernel's time (results/throughput_smollm2_135m.md).
//
// A row's result depends only on that row, and keys are visited in the same blocks however
// many padding slots follow: batching or padding a row leaves its output bit for bit the same.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// ------------------------------------------------------------------ 16-lane float vectors

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

inline v16 bcast(float x) { return v16{} + x; }
inline v16 load(const float *p) { v16 r; std::memcpy(&r, p, sizeof(r)); return r; }
inline void store(float *p, v16 x) { std::memcpy(p, &x, sizeof(x)); }
// Horizontal sum / max of 16 lanes: four halvings.
template <typename Op>
inline float reduce(v16 x, Op op) {
  x = op(x, __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
  x = op(x, __builtin_shufflevector(x, x, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11));
  x = op(x, __builtin_shufflevector(x, x, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13));
  x = op(x, __builtin_shufflevector(x, x, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14));
  return x[0];
}
inline v16 vmax(v16 a, v16 b) { return a > b ? a : b; }
inline float hsum(v16 x) { return reduce(x, [](v16 a, v16 b) { return a + b; }); }
inline float hmax(v16 x) { return reduce(x, vmax); }

// exp of 16 lanes: 2^n times Cephes' expf polynomial on [-ln2/2, ln2/2] (about 1 ulp);
// arguments below -87.3 (an unseen key's -inf included) give 0. Softmax arguments are <= 0.
inline v16 vexp(v16 x) {
  const v16 lo = bcast(-87.33654475f);
  const v16i dead = x < lo;
  x = dead ? lo : x;
  const v16 fx = x * 1.44269504088896341f + 0.5f;
  v16i n = __builtin_convertvector(fx, v16i);  // truncates: floor below
  v16 nf = __builtin_convertvector(n, v16);
  const v16i over = nf > fx;
  n = over ? n - 1 : n;
  nf = over ? nf - 1.f : nf;
  x = x - nf * 0.693359375f + nf * 2.12194440e-4f;
  v16 y = bcast(1.9875691500e-4f);
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * (x * x) + x + 1.f;
  const v16i bits = (n + 127) << 23;
  v16 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return dead ? v16{} : y * scale;
}

// Runs items 0..n-1 on the caller and the XLA intra-op pool's other threads. Items are claimed
// from a counter, so the caller only ever waits for items already running.
template <typename Job>
void parallel_items(ffi::ThreadPool &pool, std::shared_ptr<Job> job, int64_t n) {
  struct Counter { std::atomic<int64_t> next{0}, done{0}; };
  auto c = std::make_shared<Counter>();
  auto run = [job, c, n] {
    typename Job::Scratch w(*job);
    for (int64_t i; (i = c->next.fetch_add(1)) < n;) {
      job->item(i, w);
      c->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(std::max<int64_t>(pool.num_threads(), 1), n) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(decltype(run)(run));  // a copy each
  run();
  while (c->done.load(std::memory_order_acquire) < n) std::this_thread::yield();
}

// ------------------------------------------------------------------ decode

struct Decode {
  const float *q, *k, *v, *own_k, *own_v;  // q [B,H,E]; k, v [B,S,K,E]; own [B,K,E]
  const int32_t *slot_pos, *query_pos;     // [B,S], [B]
  const bool *valid;                       // [B,S]
  float *out;                              // [B,H,E]
  int64_t B, S, K, G, E;
  int64_t splits;  // items per row: 1 (whole rows) or K (one kv head each)

  int64_t stride() const { return (S + 1 + 15) / 16 * 16; }  // scores per head, 16-padded

  struct Scratch {  // scores [H, stride], output sums [H, E], seen slot indices [S]
    std::vector<float> scores, acc;
    std::vector<int32_t> seen;
    explicit Scratch(const Decode &d)
        : scores(d.K * d.G * d.stride()), acc(d.K * d.G * d.E), seen(d.S) {}
  };

  void item(int64_t i, Scratch &w) const {
    const int64_t span = K / splits, k0 = (i % splits) * span;
    row(i / splits, k0, k0 + span, w);
  }

  // Row b, kv heads [k0, k1) with their query heads.
  void row(int64_t b, int64_t k0, int64_t k1, Scratch &w) const {
    const int64_t H = K * G, st = stride();
    const int32_t qpos = query_pos[b];
    const int32_t *pos = slot_pos + b * S;
    const bool *ok = valid + b * S;
    const float *kb = k + b * S * K * E, *vb = v + b * S * K * E, *qb = q + b * H * E;
    int32_t *seen = w.seen.data();
    float *scores = w.scores.data(), *acc = w.acc.data();
    int64_t n = 0;
    for (int64_t s = 0; s < S; ++s)
      if (ok[s] && pos[s] <= qpos) seen[n++] = static_cast<int32_t>(s);
    const int64_t cols = n + (qpos >= 0 ? 1 : 0);  // the own token is the last column
    auto k_row = [&](int64_t j, int64_t kh) {
      return j < n ? kb + (seen[j] * K + kh) * E : own_k + (b * K + kh) * E;
    };
    auto v_row = [&](int64_t j, int64_t kh) {
      return j < n ? vb + (seen[j] * K + kh) * E : own_v + (b * K + kh) * E;
    };
    for (int64_t j = 0; j < cols; ++j)  // slot-major: K read in its memory order
      for (int64_t kh = k0; kh < k1; ++kh) {
        const float *kr = k_row(j, kh);
        for (int64_t g = 0; g < G; ++g) {
          const float *qh = qb + (kh * G + g) * E;
          float d = 0.f;
          for (int64_t e = 0; e < E; ++e) d += qh[e] * kr[e];
          scores[(kh * G + g) * st + j] = d;
        }
      }
    const int64_t padded = (cols + 15) / 16 * 16;
    for (int64_t h = k0 * G; h < k1 * G; ++h) {
      float *sc = scores + h * st;
      float m = -INFINITY;
      for (int64_t j = 0; j < cols; ++j) m = std::max(m, sc[j]);
      std::fill(sc + cols, sc + padded, -INFINITY);
      v16 sum = {};
      for (int64_t j = 0; j < padded; j += 16) {
        const v16 e = vexp(load(sc + j) - m);
        store(sc + j, e);
        sum += e;
      }
      const float inv = cols > 0 ? 1.f / hsum(sum) : 0.f;
      for (int64_t j = 0; j < cols; ++j) sc[j] *= inv;
    }
    std::fill(acc + k0 * G * E, acc + k1 * G * E, 0.f);
    for (int64_t j = 0; j < cols; ++j)
      for (int64_t kh = k0; kh < k1; ++kh) {
        const float *vr = v_row(j, kh);
        for (int64_t g = 0; g < G; ++g) {
          const float p = scores[(kh * G + g) * st + j];
          float *a = acc + (kh * G + g) * E;
          for (int64_t e = 0; e < E; ++e) a[e] += p * vr[e];
        }
      }
    std::copy(acc + k0 * G * E, acc + k1 * G * E, out + b * H * E + k0 * G * E);
  }
};

ffi::Error DecodeAttention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                           ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                           ffi::Buffer<ffi::S32> slot_pos, ffi::Buffer<ffi::PRED> valid,
                           ffi::Buffer<ffi::S32> query_pos, ffi::Buffer<ffi::F32> own_k,
                           ffi::Buffer<ffi::F32> own_v, ffi::ResultBuffer<ffi::F32> out) {
  auto qd = q.dimensions(), kd = k.dimensions();
  if (qd.size() != 3 || kd.size() != 4)
    return ffi::Error::InvalidArgument("psynth decode attention: q must be [B,H,E], k [B,S,K,E]");
  const int64_t B = kd[0], S = kd[1], K = kd[2], E = kd[3];
  if (qd[0] != B || qd[2] != E || qd[1] % K != 0 || v.element_count() != k.element_count() ||
      slot_pos.element_count() != B * S || valid.element_count() != B * S ||
      query_pos.element_count() != B || own_k.element_count() != B * K * E ||
      own_v.element_count() != B * K * E)
    return ffi::Error::InvalidArgument("psynth decode attention: operand shapes do not match");
  auto d = std::make_shared<Decode>(Decode{
      q.typed_data(), k.typed_data(), v.typed_data(), own_k.typed_data(), own_v.typed_data(),
      slot_pos.typed_data(), query_pos.typed_data(), valid.typed_data(), out->typed_data(),
      B, S, K, qd[1] / K, E, 1});
  // Whole rows keep each row's K/V reads contiguous; with few rows, split them by kv head.
  d->splits = B >= 2 * std::max<int64_t>(pool.num_threads(), 1) ? 1 : K;
  parallel_items(pool, d, B * d->splits);
  return ffi::Error::Success();
}

// ------------------------------------------------------------------ prefill

constexpr int QB = 32;  // query tokens per block
constexpr int KB = 64;  // keys per block

struct Keys {  // one key source of one row: kt [K, E, n] (transposed), v [n, K, E]
  const float *kt, *v;
  const int32_t *pos;  // [n]
  const bool *valid;   // [n], or null: valid iff pos >= 0 (the queries' own tokens)
  int64_t n;
  bool ok(int64_t j) const { return valid ? valid[j] : pos[j] >= 0; }
};

template <int NV>  // head_dim E = 16 * NV
struct Prefill {
  static constexpr int E = 16 * NV;
  const float *q;                                          // [B, T, H, E], scaled
  const float *kt_c, *v_c; const int32_t *pos_c; const bool *valid_c;  // [B,K,E,S], [B,S,K,E]
  const float *kt_o, *v_o;                                 // [B, K, E, T], [B, T, K, E]
  const int32_t *query_pos;                                // [B, T]
  float *out;                                              // [B, T, H, E]
  int64_t B, T, S, K, G;

  int64_t q_blocks() const { return (T + QB - 1) / QB; }

  struct Scratch {  // rows r = g * nt + t of one (row, kv head, query block)
    std::vector<float> Q, Kt, Sc, O, m, l;
    std::vector<int32_t> rpos;
    explicit Scratch(const Prefill &p)
        : Q(p.G * QB * E), Kt(E * KB), Sc(p.G * QB * KB), O(p.G * QB * E), m(p.G * QB),
          l(p.G * QB), rpos(p.G * QB) {}
  };

  void item(int64_t i, Scratch &w) const {
    // Latest query blocks first: they see the most keys (the long rows of the triangle).
    const int64_t qb = q_blocks() - 1 - i % q_blocks(), rest = i / q_blocks();
    run(rest / K, rest % K, qb * QB, w);
  }

  void run(int64_t b, int64_t kh, int64_t t0, Scratch &w) const {
    const int64_t H = K * G, nt = std::min<int64_t>(QB, T - t0), rows = G * nt;
    int32_t qmax = -1, qmin = INT32_MAX;
    for (int64_t t = 0; t < nt; ++t) {
      const int32_t qp = query_pos[b * T + t0 + t];
      qmax = std::max(qmax, qp);
      qmin = std::min(qmin, qp);
    }
    for (int64_t g = 0; g < G; ++g)
      for (int64_t t = 0; t < nt; ++t) {
        std::memcpy(&w.Q[(g * nt + t) * E], q + ((b * T + t0 + t) * H + kh * G + g) * E,
                    E * sizeof(float));
        w.rpos[g * nt + t] = query_pos[b * T + t0 + t];
      }
    std::fill(w.O.begin(), w.O.begin() + rows * E, 0.f);
    std::fill(w.m.begin(), w.m.begin() + rows, -INFINITY);
    std::fill(w.l.begin(), w.l.begin() + rows, 0.f);
    if (qmax >= 0) {
      const Keys sources[2] = {
          {S ? kt_c + b * K * E * S : nullptr, S ? v_c + b * S * K * E : nullptr,
           S ? pos_c + b * S : nullptr, S ? valid_c + b * S : nullptr, S},
          {kt_o + b * K * E * T, v_o + b * T * K * E, query_pos + b * T, nullptr, T}};
      for (const Keys &keys : sources)
        for (int64_t j0 = 0; j0 < keys.n; j0 += KB) {
          const int64_t nk = std::min<int64_t>(KB, keys.n - j0);
          int32_t kmin = INT32_MAX;
          for (int64_t j = j0; j < j0 + nk; ++j)
            if (keys.ok(j)) kmin = std::min(kmin, keys.pos[j]);
          if (kmin <= qmax) block(keys, j0, nk, kh, rows, qmin, w);  // else nobody sees one
        }
    }
    for (int64_t g = 0; g < G; ++g)
      for (int64_t t = 0; t < nt; ++t) {
        const int64_t r = g * nt + t;
        const float inv = w.l[r] > 0.f ? 1.f / w.l[r] : 0.f;
        float *o = out + ((b * T + t0 + t) * H + kh * G + g) * E;
        for (int e = 0; e < E; ++e) o[e] = w.O[r * E + e] * inv;
      }
  }

  // Keys [j0, j0 + nk) of one source against the query block's rows.
  void block(const Keys &keys, int64_t j0, int64_t nk, int64_t kh, int64_t rows, int32_t qmin,
             Scratch &w) const {
    float *Kt = w.Kt.data(), *Sc = w.Sc.data(), *O = w.O.data();
    const float *src = keys.kt + kh * E * keys.n + j0;
    for (int e = 0; e < E; ++e) {  // Kt [E, KB]; missing keys zero (masked below)
      std::memcpy(Kt + e * KB, src + e * keys.n, nk * sizeof(float));
      std::fill(Kt + e * KB + nk, Kt + (e + 1) * KB, 0.f);
    }
    bool all_seen = nk == KB;  // every query of the block sees every key: no mask
    for (int64_t j = j0; j < j0 + nk; ++j) all_seen &= keys.ok(j) && keys.pos[j] <= qmin;
    // Scores: 4 rows x 64 keys in 16 accumulators; each Kt load feeds 4 multiply-adds.
    constexpr int RB = 4;
    for (int64_t r = 0; r < rows; r += RB) {
      v16 a[RB][KB / 16] = {};
      const float *qr[RB];
      for (int i = 0; i < RB; ++i) qr[i] = &w.Q[std::min<int64_t>(r + i, rows - 1) * E];
      for (int e = 0; e < E; ++e) {
        v16 kk[KB / 16];
        for (int c = 0; c < KB / 16; ++c) kk[c] = load(Kt + e * KB + 16 * c);
        for (int i = 0; i < RB; ++i) {
          const v16 x = bcast(qr[i][e]);
          for (int c = 0; c < KB / 16; ++c) a[i][c] += x * kk[c];
        }
      }
      for (int i = 0; i < RB && r + i < rows; ++i)
        for (int c = 0; c < KB / 16; ++c) store(Sc + (r + i) * KB + 16 * c, a[i][c]);
    }
    // Mask, then the streaming softmax: running max m, denominator l, output O rescaled.
    for (int64_t r = 0; r < rows; ++r) {
      float *s = Sc + r * KB;
      if (!all_seen)
        for (int64_t j = 0; j < KB; ++j) {
          const bool seen = j < nk && keys.ok(j0 + j) && keys.pos[j0 + j] <= w.rpos[r];
          s[j] = seen ? s[j] : -INFINITY;
        }
      v16 mv = load(s);
      for (int c = 1; c < KB / 16; ++c) mv = vmax(mv, load(s + 16 * c));
      const float mx = hmax(mv);
      if (mx == -INFINITY) {  // this row sees none of these keys
        std::fill(s, s + KB, 0.f);
        continue;
      }
      // The running max rarely moves after the first blocks: then nothing is rescaled.
      const float m_new = std::max(w.m[r], mx);
      const float corr = m_new == w.m[r] ? 1.f : std::exp(w.m[r] - m_new);
      v16 sum = {};
      for (int c = 0; c < KB / 16; ++c) {
        const v16 e = vexp(load(s + 16 * c) - m_new);
        store(s + 16 * c, e);
        sum += e;
      }
      w.l[r] = w.l[r] * corr + hsum(sum);
      w.m[r] = m_new;
      if (corr != 1.f)
        for (int e = 0; e < E; ++e) O[r * E + e] *= corr;
    }
    // O += P @ V: PB rows x E in 16 accumulators; each V load feeds PB multiply-adds.
    constexpr int PB = 16 / NV;
    for (int64_t r = 0; r < rows; r += PB) {
      v16 a[PB][NV];
      const float *p[PB];
      for (int i = 0; i < PB; ++i) {
        const int64_t ri = std::min<int64_t>(r + i, rows - 1);
        p[i] = Sc + ri * KB;
        for (int c = 0; c < NV; ++c) a[i][c] = load(O + ri * E + 16 * c);
      }
      for (int64_t j = 0; j < nk; ++j) {
        const float *vr = keys.v + ((j0 + j) * K + kh) * E;
        v16 vv[NV];
        for (int c = 0; c < NV; ++c) vv[c] = load(vr + 16 * c);
        for (int i = 0; i < PB; ++i) {
          const v16 x = bcast(p[i][j]);
          for (int c = 0; c < NV; ++c) a[i][c] += x * vv[c];
        }
      }
      for (int i = 0; i < PB && r + i < rows; ++i)
        for (int c = 0; c < NV; ++c) store(O + (r + i) * E + 16 * c, a[i][c]);
    }
  }
};

template <int NV>
ffi::Error run_prefill(ffi::ThreadPool &pool, const Prefill<NV> &p) {
  auto job = std::make_shared<Prefill<NV>>(p);
  parallel_items(pool, job, p.B * p.K * p.q_blocks());
  return ffi::Error::Success();
}

ffi::Error PrefillAttention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                            ffi::Buffer<ffi::F32> kt_c, ffi::Buffer<ffi::F32> v_c,
                            ffi::Buffer<ffi::S32> pos_c, ffi::Buffer<ffi::PRED> valid_c,
                            ffi::Buffer<ffi::S32> query_pos, ffi::Buffer<ffi::F32> kt_o,
                            ffi::Buffer<ffi::F32> v_o, ffi::ResultBuffer<ffi::F32> out) {
  auto qd = q.dimensions(), cd = kt_c.dimensions(), od = kt_o.dimensions();
  if (qd.size() != 4 || cd.size() != 4 || od.size() != 4)
    return ffi::Error::InvalidArgument(
        "psynth prefill attention: q must be [B,T,H,E], cache and own keys [B,K,E,slots]");
  const int64_t B = qd[0], T = qd[1], H = qd[2], E = qd[3], K = od[1], S = cd[3];
  if (od[0] != B || od[2] != E || od[3] != T || cd[0] != B || cd[1] != K || cd[2] != E ||
      H % K != 0 || v_c.element_count() != B * S * K * E || pos_c.element_count() != B * S ||
      valid_c.element_count() != B * S || query_pos.element_count() != B * T ||
      v_o.element_count() != B * T * K * E)
    return ffi::Error::InvalidArgument("psynth prefill attention: operand shapes do not match");
  auto make = [&](auto nv) {
    using P = Prefill<decltype(nv)::value>;
    return run_prefill(pool, P{q.typed_data(), kt_c.typed_data(), v_c.typed_data(),
                               pos_c.typed_data(), valid_c.typed_data(), kt_o.typed_data(),
                               v_o.typed_data(), query_pos.typed_data(), out->typed_data(),
                               B, T, S, K, H / K});
  };
  switch (E) {
    case 16: return make(std::integral_constant<int, 1>{});
    case 32: return make(std::integral_constant<int, 2>{});
    case 64: return make(std::integral_constant<int, 4>{});
    case 128: return make(std::integral_constant<int, 8>{});
  }
  return ffi::Error::InvalidArgument("psynth prefill attention: head_dim must be 16, 32, 64 "
                                     "or 128");
}

}  // namespace

#define PSYNTH_ATTENTION_BINDING                                                 \
  ffi::Ffi::Bind()                                                               \
      .Ctx<ffi::ThreadPool>()                                                    \
      .Arg<ffi::Buffer<ffi::F32>>()  /* q */                                     \
      .Arg<ffi::Buffer<ffi::F32>>()  /* cache k (prefill: transposed) */         \
      .Arg<ffi::Buffer<ffi::F32>>()  /* cache v */                               \
      .Arg<ffi::Buffer<ffi::S32>>()  /* cache positions */                       \
      .Arg<ffi::Buffer<ffi::PRED>>() /* cache valid */                           \
      .Arg<ffi::Buffer<ffi::S32>>()  /* query positions */                       \
      .Arg<ffi::Buffer<ffi::F32>>()  /* own k (prefill: transposed) */           \
      .Arg<ffi::Buffer<ffi::F32>>()  /* own v */                                 \
      .Ret<ffi::Buffer<ffi::F32>>()  /* out */

XLA_FFI_DEFINE_HANDLER_SYMBOL(PsynthDecodeAttention, DecodeAttention, PSYNTH_ATTENTION_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(PsynthPrefillAttention, PrefillAttention, PSYNTH_ATTENTION_BINDING);
