// Fuzzy pooling over 2x2 windows with stride 2 (floor mode), forward and backward, one pass over
// the input each. The same functions as fuzzy_type2_2x2 / fuzzy_type1_2x2 in fuzzy.py, written per
// window so that nothing but the input, the output and their gradients touches memory.
//
// Built on first use by wildwatch.models.fuzzy_native (torch.utils.cpp_extension) for the machine's
// vector instructions: the loop over a row's windows is written without branches (selects only)
// so that the compiler vectorises it. The layers fall back to the tensor expressions in fuzzy.py
// where no compiler is available.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

namespace {

constexpr double SIGMA_EPS = 1e-4;

#define WINDOW_INLINE inline __attribute__((always_inline))

}  // namespace

// The C library's exponentials, declared with their vector versions (glibc's libmvec, linked with
// -lmvec), so that a loop over windows calls one exp per vector of values; without -ffast-math the
// rest of the arithmetic stays IEEE, as PyTorch's. Elsewhere the loop calls the scalar exp.
#ifdef WILDWATCH_MVEC
extern "C" {
__attribute__((__simd__("notinbranch"))) float expf(float) noexcept;
__attribute__((__simd__("notinbranch"))) double exp(double) noexcept;
}
#endif

namespace {

WINDOW_INLINE float vexp(float x) { return ::expf(x); }
WINDOW_INLINE double vexp(double x) { return ::exp(x); }

// Gradient of amax/amin: the upstream value split evenly among the tied extremes (as autograd does).
// Selects, not branches, here as in the rest of the per-window code: what lets the compiler
// vectorise the loop over a row's windows.
template <typename T>
WINDOW_INLINE void spread(const T* v, T extreme, T g, T* dv) {
  T n = 0;
  for (int i = 0; i < 4; ++i) n += v[i] == extreme ? T(1) : T(0);
  const T share = g / n;
  for (int i = 0; i < 4; ++i) dv[i] += v[i] == extreme ? share : T(0);
}

template <typename T>
WINDOW_INLINE T sign(T x) {
  return x > 0 ? T(1) : (x < 0 ? T(-1) : T(0));
}

// ---- type 2 ----------------------------------------------------------------------------------

// One window: returns the pooled value and, with GRAD, writes the gradient of gy * value into dv.
// A plain function of local values (no object), which is what lets the row loop vectorise.
template <typename T, bool GRAD>
WINDOW_INLINE T type2(T v0, T v1, T v2, T v3, T gy, T& g0, T& g1, T& g2, T& g3) {
  const T v[4] = {v0, v1, v2, v3};
  const T total = v[0] + v[1] + v[2] + v[3];
  const T mx = std::max(std::max(v[0], v[1]), std::max(v[2], v[3]));
  const T mn = std::min(std::min(v[0], v[1]), std::min(v[2], v[3]));
  const T mean = total * T(0.25);
  const T mid = (total - mx - mn) * T(0.5);
  T d[4], z1[4], z2[4], e1[4], e2[4], bar[4], active[4];
  T abs_sum = 0;
  for (int i = 0; i < 4; ++i) {
    d[i] = v[i] - mean;
    abs_sum += std::abs(d[i]);
  }
  const T inv = T(1) / (abs_sum * T(0.25) + T(SIGMA_EPS));
  const T shift = (mean - mid) * inv;
  T worst = 0;  // max over the window of min over k of q_k
  for (int i = 0; i < 4; ++i) {
    z1[i] = d[i] * inv;
    z2[i] = z1[i] + shift;
    const T q1 = z1[i] * z1[i], q2 = z2[i] * z2[i];
    e1[i] = vexp(T(-0.5) * q1);
    e2[i] = vexp(T(-0.5) * q2);
    bar[i] = (e1[i] + e2[i]) * T(0.5);
    worst = std::max(worst, std::min(q1, q2));
  }
  const T tau = vexp(T(-0.5) * worst);
  T kept_sum = 0, bar_sum = 0;
  for (int i = 0; i < 4; ++i) {
    kept_sum += bar[i] >= tau ? bar[i] : T(0);
    bar_sum += bar[i];
  }
  const bool fallback = !(kept_sum > 0);  // none passes: all count
  const T wsum = fallback ? bar_sum : kept_sum;
  T num = 0;
  for (int i = 0; i < 4; ++i) {
    active[i] = (fallback | (bar[i] >= tau)) ? T(1) : T(0);  // the mask has no gradient
    num += active[i] * bar[i] * v[i];
  }
  const T y = num / wsum;
  if constexpr (GRAD) {
    T dz1[4], dz2[4], dd[4], dv[4];
    const T g = gy / wsum;
    for (int i = 0; i < 4; ++i) {
      dv[i] = g * active[i] * bar[i];  // y = Σ w v / Σ w, through v
      // through w = (e1 + e2) / 2, e = exp(-z² / 2), for the values kept
      const T gw = active[i] * g * (v[i] - y) * T(0.5);
      dz1[i] = -gw * e1[i] * z1[i];
      dz2[i] = -gw * e2[i] * z2[i];
    }
    // z2 = z1 + (mean - mid) * inv, z1 = d * inv
    T d_shift = 0, d_inv = 0;
    for (int i = 0; i < 4; ++i) {
      d_shift += dz2[i];
      const T dz = dz1[i] + dz2[i];
      dd[i] = dz * inv;
      d_inv += dz * d[i];
    }
    d_inv += d_shift * (mean - mid);
    const T d_diff = d_shift * inv;  // d(mean - mid)
    // inv = 1 / (mean|d| + eps)
    const T d_sigma = -d_inv * inv * inv * T(0.25);
    T d_mean = d_diff;
    for (int i = 0; i < 4; ++i) {
      dd[i] += d_sigma * sign(d[i]);
      dv[i] += dd[i];  // d = v - mean
      d_mean -= dd[i];
    }
    // mean = total / 4, mid = (total - max - min) / 2
    const T d_total = d_mean * T(0.25) - d_diff * T(0.5);
    for (int i = 0; i < 4; ++i) dv[i] += d_total;
    spread(v, mx, d_diff * T(0.5), dv);
    spread(v, mn, d_diff * T(0.5), dv);
    g0 = dv[0];
    g1 = dv[1];
    g2 = dv[2];
    g3 = dv[3];
  }
  return y;
}

template <typename T>
struct Type2 {
  WINDOW_INLINE static T value(T v0, T v1, T v2, T v3) {
    T unused;
    return type2<T, false>(v0, v1, v2, v3, T(0), unused, unused, unused, unused);
  }
  WINDOW_INLINE static void grad(T v0, T v1, T v2, T v3, T gy, T& g0, T& g1, T& g2, T& g3) {
    type2<T, true>(v0, v1, v2, v3, gy, g0, g1, g2, g3);
  }
};

// ---- type 1 ----------------------------------------------------------------------------------

template <typename T>
struct Type1 {
  T lo, hi, r, t[4], mu[4], msum, y;
  int pick;  // 0 small, 1 medium, 2 large
  bool flat;

  static T small(T t) { return std::min(std::max((T(0.5) - t) * T(3), T(0)), T(1)); }
  static T medium(T t) { return std::min(std::max(T(1) - std::abs(t - T(0.5)) * T(3), T(0)), T(1)); }
  static T large(T t) { return std::min(std::max((t - T(0.5)) * T(3), T(0)), T(1)); }

  WINDOW_INLINE explicit Type1(const T* v) {
    lo = std::min(std::min(v[0], v[1]), std::min(v[2], v[3]));
    hi = std::max(std::max(v[0], v[1]), std::max(v[2], v[3]));
    r = hi - lo;
    flat = r <= 0;
    const T rr = flat ? T(1) : r;
    T s = 0, m = 0, l = 0;
    for (int i = 0; i < 4; ++i) {
      t[i] = (v[i] - lo) / rr;
      s += small(t[i]);
      m += medium(t[i]);
      l += large(t[i]);
    }
    pick = ((s >= m) & (s >= l)) ? 0 : (m >= l ? 1 : 2);
    msum = 0;
    T num = 0;
    for (int i = 0; i < 4; ++i) {
      mu[i] = pick == 0 ? small(t[i]) : (pick == 1 ? medium(t[i]) : large(t[i]));
      msum += mu[i];
      num += mu[i] * v[i];
    }
    y = flat ? v[0] : num / std::max(msum, T(1e-12));
  }

  // d mu / d t of the picked set; the clamps pass the gradient strictly inside their range, as torch.clamp
  T slope(T ti) const {
    const T c3 = T(3);
    if (pick == 0) {
      const T a = (T(0.5) - ti) * c3;
      return ((a > 0) & (a < 1)) ? -c3 : T(0);
    }
    if (pick == 2) {
      const T a = (ti - T(0.5)) * c3;
      return ((a > 0) & (a < 1)) ? c3 : T(0);
    }
    const T u = ti - T(0.5);
    const T a = T(1) - std::abs(u) * c3;
    return ((a > 0) & (a < 1)) ? -c3 * sign(u) : T(0);
  }

  WINDOW_INLINE static T value(T v0, T v1, T v2, T v3) {
    const T v[4] = {v0, v1, v2, v3};
    return Type1(v).y;
  }
  WINDOW_INLINE static void grad(T v0, T v1, T v2, T v3, T gy, T& g0, T& g1, T& g2, T& g3) {
    const T v[4] = {v0, v1, v2, v3};
    T dv[4];
    Type1(v).backward(v, gy, dv);
    g0 = dv[0];
    g1 = dv[1];
    g2 = dv[2];
    g3 = dv[3];
  }

  WINDOW_INLINE void backward(const T* v, T gy, T* dv) const {
    for (int i = 0; i < 4; ++i) dv[i] = 0;
    if (flat) {
      dv[0] = gy;
      return;
    }
    const T m = std::max(msum, T(1e-12));
    const bool through_sum = msum >= T(1e-12);
    T d_lo = 0, d_r = 0;
    for (int i = 0; i < 4; ++i) {
      dv[i] += gy * mu[i] / m;
      T dmu = gy * v[i] / m;
      if (through_sum) dmu -= gy * y / m;
      const T dt = dmu * slope(t[i]);
      // t = (v - lo) / r
      dv[i] += dt / r;
      d_lo -= dt / r;
      d_r -= dt * (v[i] - lo) / (r * r);
    }
    // r = hi - lo
    spread(v, hi, d_r, dv);
    spread(v, lo, d_lo - d_r, dv);
  }
};

// One row of windows; a function of its own with unaliased pointers, so that the loop vectorises.
template <template <typename> class Rule, typename T>
void forward_row(const T* __restrict top, const T* __restrict bottom, T* __restrict out, int64_t wo) {
#pragma omp simd
  for (int64_t j = 0; j < wo; ++j) {
    out[j] = Rule<T>::value(top[2 * j], top[2 * j + 1], bottom[2 * j], bottom[2 * j + 1]);
  }
}

template <template <typename> class Rule, typename T>
void backward_row(const T* __restrict top, const T* __restrict bottom, const T* __restrict g, T* __restrict gtop,
                  T* __restrict gbottom, int64_t wo) {
#pragma omp simd
  for (int64_t j = 0; j < wo; ++j) {
    Rule<T>::grad(top[2 * j], top[2 * j + 1], bottom[2 * j], bottom[2 * j + 1], g[j], gtop[2 * j], gtop[2 * j + 1],
                  gbottom[2 * j], gbottom[2 * j + 1]);
  }
}

template <template <typename> class Rule, typename T>
void forward_kernel(const T* x, T* y, int64_t planes, int64_t h, int64_t w) {
  const int64_t ho = h / 2, wo = w / 2;
  at::parallel_for(0, planes * ho, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t p = row / ho, i = row % ho;
      const T* top = x + (p * h + 2 * i) * w;
      forward_row<Rule, T>(top, top + w, y + (p * ho + i) * wo, wo);
    }
  });
}

template <template <typename> class Rule, typename T>
void backward_kernel(const T* x, const T* gy, T* gx, int64_t planes, int64_t h, int64_t w) {
  const int64_t ho = h / 2, wo = w / 2;
  at::parallel_for(0, planes * ho, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t p = row / ho, i = row % ho;
      const int64_t base = (p * h + 2 * i) * w;
      backward_row<Rule, T>(x + base, x + base + w, gy + (p * ho + i) * wo, gx + base, gx + base + w, wo);
    }
  });
}

void check(const torch::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), "fuzzy 2x2 kernel: CPU tensors only");
  TORCH_CHECK(x.dim() == 4, "fuzzy 2x2 kernel: expected N x C x H x W, got ", x.dim(), " dimensions");
  TORCH_CHECK(x.size(2) >= 2 && x.size(3) >= 2, "input ", x.size(2), "x", x.size(3),
              " is smaller than the pooling kernel 2");
}

template <template <typename> class Rule>
torch::Tensor forward(torch::Tensor x) {
  check(x);
  x = x.contiguous();
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  auto y = torch::empty({n, c, h / 2, w / 2}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fuzzy_2x2_forward", [&] {
    forward_kernel<Rule, scalar_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), n * c, h, w);
  });
  return y;
}

template <template <typename> class Rule>
torch::Tensor backward(torch::Tensor x, torch::Tensor gy) {
  check(x);
  x = x.contiguous();
  gy = gy.contiguous();
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  // rows and columns that floor mode drops get no gradient
  auto gx = (h % 2 || w % 2) ? torch::zeros_like(x) : torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fuzzy_2x2_backward", [&] {
    backward_kernel<Rule, scalar_t>(x.data_ptr<scalar_t>(), gy.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(),
                                    n * c, h, w);
  });
  return gx;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("type2_forward", &forward<Type2>, "type-2 fuzzy pooling, 2x2 windows, stride 2");
  m.def("type2_backward", &backward<Type2>, "its gradient with respect to the input");
  m.def("type1_forward", &forward<Type1>, "type-1 fuzzy pooling, 2x2 windows, stride 2");
  m.def("type1_backward", &backward<Type1>, "its gradient with respect to the input");
}
