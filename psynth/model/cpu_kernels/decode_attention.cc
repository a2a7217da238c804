// A decode step's attention on CPU, as an XLA FFI custom call (psynth/model/cpu_kernel.py).
//
// Each row has one query token (H heads) that reads its cache slots and its own new token:
//   q [B, H, E] (already scaled by E^-1/2), k/v [B, S, K, E], slot positions [B, S] int32,
//   slot valid [B, S] bool, query positions [B] int32, own k/v [B, K, E] -> out [B, H, E].
// Query head h reads kv head h / G (G = H / K). A slot is seen iff it is valid and its
// position is <= the query's; the own token is seen iff the query's position is >= 0.
//
// Why a kernel: the step is bound by reading the cache (64 rows x 320 slots: ~1 GB of K/V over
// 30 layers). XLA on CPU reads it at a third of the rate of a plain sum, spending the rest on
// small batched matmuls and separate softmax passes. Here each row streams its K slots once
// (scores of all heads), its V slots once (the weighted sum), and skips unseen slots
// entirely. Float32 throughout; the softmax sums in slot order, so a row's result does not
// depend on the other rows of the batch or on padding slots.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Problem {
  const float *q, *k, *v, *own_k, *own_v;
  const int32_t *slot_pos, *query_pos;
  const bool *valid;
  float *out;
  int64_t B, S, K, G, E;
};

// Scratch of one thread: scores [H, S + 1] (the own token last), output sums [H, E], and the
// indices of the seen slots [S].
struct Scratch {
  std::vector<float> scores, acc;
  std::vector<int32_t> seen;
  explicit Scratch(const Problem &p)
      : scores(p.K * p.G * (p.S + 1)), acc(p.K * p.G * p.E), seen(p.S) {}
};

inline float dot(const float *a, const float *b, int64_t n) {
  float d = 0.f;
  for (int64_t e = 0; e < n; ++e) d += a[e] * b[e];
  return d;
}

inline void axpy(float w, const float *x, float *y, int64_t n) {
  for (int64_t e = 0; e < n; ++e) y[e] += w * x[e];
}

// Row b, kv heads [k0, k1) with their query heads.
void attend_row(const Problem &p, int64_t b, int64_t k0, int64_t k1, Scratch &w) {
  const int64_t S = p.S, K = p.K, G = p.G, E = p.E, H = K * G, stride = S + 1;
  const int32_t qpos = p.query_pos[b];
  const int32_t *slot_pos = p.slot_pos + b * S;
  const bool *valid = p.valid + b * S;
  const float *k = p.k + b * S * K * E, *v = p.v + b * S * K * E, *q = p.q + b * H * E;
  int32_t *seen = w.seen.data();
  float *scores = w.scores.data(), *acc = w.acc.data();
  int64_t n = 0;
  for (int64_t s = 0; s < S; ++s)
    if (valid[s] && slot_pos[s] <= qpos) seen[n++] = static_cast<int32_t>(s);
  const int64_t cols = n + (qpos >= 0 ? 1 : 0);
  auto k_row = [&](int64_t i, int64_t kh) {
    return i < n ? k + (seen[i] * K + kh) * E : p.own_k + (b * K + kh) * E;
  };
  auto v_row = [&](int64_t i, int64_t kh) {
    return i < n ? v + (seen[i] * K + kh) * E : p.own_v + (b * K + kh) * E;
  };
  for (int64_t i = 0; i < cols; ++i)  // slot-major: K is read in its memory order
    for (int64_t kh = k0; kh < k1; ++kh)
      for (int64_t g = 0; g < G; ++g)
        scores[(kh * G + g) * stride + i] = dot(q + (kh * G + g) * E, k_row(i, kh), E);
  for (int64_t h = k0 * G; h < k1 * G; ++h) {
    float *sc = scores + h * stride;
    float m = -INFINITY, l = 0.f;
    for (int64_t i = 0; i < cols; ++i) m = std::max(m, sc[i]);
    for (int64_t i = 0; i < cols; ++i) l += (sc[i] = std::exp(sc[i] - m));
    // A query that sees nothing (a padding row) gets zeros; nothing reads it.
    const float inv = cols > 0 ? 1.f / l : 0.f;
    for (int64_t i = 0; i < cols; ++i) sc[i] *= inv;
  }
  std::fill(acc + k0 * G * E, acc + k1 * G * E, 0.f);
  for (int64_t i = 0; i < cols; ++i)
    for (int64_t kh = k0; kh < k1; ++kh)
      for (int64_t g = 0; g < G; ++g)
        axpy(scores[(kh * G + g) * stride + i], v_row(i, kh), acc + (kh * G + g) * E, E);
  std::copy(acc + k0 * G * E, acc + k1 * G * E, p.out + b * H * E + k0 * G * E);
}

// Work items are claimed from a counter, so a thread never waits for an item nobody started.
struct Work {
  Problem p;
  int64_t splits;  // items per row: 1 (whole rows) or K (one kv head each)
  std::atomic<int64_t> next{0}, done{0};

  int64_t items() const { return p.B * splits; }
  void run() {
    Scratch w(p);
    const int64_t span = p.K / splits;
    for (int64_t i; (i = next.fetch_add(1)) < items();) {
      const int64_t k0 = (i % splits) * span;
      attend_row(p, i / splits, k0, k0 + span, w);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error DecodeAttention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                           ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                           ffi::Buffer<ffi::S32> slot_pos, ffi::Buffer<ffi::PRED> valid,
                           ffi::Buffer<ffi::S32> query_pos, ffi::Buffer<ffi::F32> own_k,
                           ffi::Buffer<ffi::F32> own_v, ffi::ResultBuffer<ffi::F32> out) {
  auto qd = q.dimensions(), kd = k.dimensions();
  if (qd.size() != 3 || kd.size() != 4)
    return ffi::Error::InvalidArgument("psynth decode attention: q must be [B, H, E] and k [B, S, K, E]");
  const int64_t B = kd[0], S = kd[1], K = kd[2], E = kd[3];
  if (qd[0] != B || qd[2] != E || qd[1] % K != 0 || v.element_count() != k.element_count() ||
      slot_pos.element_count() != B * S || valid.element_count() != B * S ||
      query_pos.element_count() != B || own_k.element_count() != B * K * E ||
      own_v.element_count() != B * K * E)
    return ffi::Error::InvalidArgument("psynth decode attention: operand shapes do not match");
  auto work = std::make_shared<Work>();
  work->p = Problem{q.typed_data(), k.typed_data(), v.typed_data(), own_k.typed_data(),
                    own_v.typed_data(), slot_pos.typed_data(), query_pos.typed_data(),
                    valid.typed_data(), out->typed_data(), B, S, K, qd[1] / K, E};
  const int64_t threads = std::max<int64_t>(pool.num_threads(), 1);
  // Whole rows keep each row's K/V reads contiguous; with few rows, split them by kv head.
  work->splits = B >= 2 * threads ? 1 : K;
  const int64_t helpers = std::min(threads, work->items()) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([work] { work->run(); });
  work->run();
  while (work->done.load(std::memory_order_acquire) < work->items()) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    PsynthDecodeAttention, DecodeAttention,
    ffi::Ffi::Bind()
        .Ctx<ffi::ThreadPool>()
        .Arg<ffi::Buffer<ffi::F32>>()   // q [B, H, E]
        .Arg<ffi::Buffer<ffi::F32>>()   // k [B, S, K, E]
        .Arg<ffi::Buffer<ffi::F32>>()   // v [B, S, K, E]
        .Arg<ffi::Buffer<ffi::S32>>()   // slot positions [B, S]
        .Arg<ffi::Buffer<ffi::PRED>>()  // slot valid [B, S]
        .Arg<ffi::Buffer<ffi::S32>>()   // query positions [B]
        .Arg<ffi::Buffer<ffi::F32>>()   // own k [B, K, E]
        .Arg<ffi::Buffer<ffi::F32>>()   // own v [B, K, E]
        .Ret<ffi::Buffer<ffi::F32>>()); // out [B, H, E]
