// host implementation of the arch layer (see arch.h): runs a kernel's CTAs on the CPU, one CTA at a time,
// every CUDA thread a cooperative fiber (ucontext) on one OS thread. for tests only.
//
// what it models, and what it checks:
//   - __syncthreads: a barrier over the CTA's threads; warp-collective ops (ldmatrix, mma.sync, shuffles): all
//     32 lanes must arrive at the same op, which then runs once on every lane's operands. a thread that exits
//     or diverges while others wait is reported as a deadlock (a divergent barrier or collective on a GPU).
//   - mma.sync m16n8k16 and ldmatrix (x4, .trans) with the fragment layouts of the PTX ISA; products are exact
//     and sums are taken in double, then rounded to fp32 (hardware accumulates with at least fp32 precision).
//   - cp.async: copies are queued and happen at cp.async.wait_group, so a read before the wait sees stale
//     (poisoned) shared memory. shared memory starts filled with 0xff bytes: NaN in fp32, bf16 and fp16.
//   - global memory: every access (cp.async source, loads, stores, atomics) must fall inside a region the
//     driver registered, with the right access; anything else aborts with the address.
//   - shared memory: ldmatrix rows and cp.async destinations must be inside the CTA's dynamic shared memory and
//     aligned as the hardware requires.
// not modelled: data races between threads (fibers switch only at barriers and collectives, so a missing
// barrier between a shared-memory write and another thread's read can go unnoticed here: racecheck on a GPU
// covers that), timing, and the approximation error of the fast-math instructions (exact functions here).
#pragma once

#include <sys/mman.h>
#include <ucontext.h>

#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

namespace hstu {
namespace emu {

[[noreturn]] inline void fail(const char* fmt, ...) {
  std::va_list args;
  va_start(args, fmt);
  std::fprintf(stderr, "hstu emulator: ");
  std::vfprintf(stderr, fmt, args);
  std::fprintf(stderr, "\n");
  va_end(args);
  std::fflush(stderr);
  std::abort();
}

// ---- global memory the kernel may touch ----

struct Region {
  const char* base;
  size_t bytes;
  bool writable;
  const char* name;
};

inline std::vector<Region>& regions() {
  static std::vector<Region> r;
  return r;
}

inline void register_region(const void* p, size_t bytes, bool writable, const char* name) {
  if (p != nullptr && bytes > 0) regions().push_back({static_cast<const char*>(p), bytes, writable, name});
}

inline void clear_regions() { regions().clear(); }

inline void check_global(const void* p, size_t bytes, bool write, const char* what) {
  const char* c = static_cast<const char*>(p);
  for (const Region& r : regions()) {
    if (c >= r.base && c + bytes <= r.base + r.bytes) {
      if (write && !r.writable) fail("%s writes read-only region %s at offset %td", what, r.name, c - r.base);
      if (reinterpret_cast<uintptr_t>(c) % (bytes < 16 ? bytes : 16) != 0) fail("%s misaligned at %p", what, p);
      return;
    }
  }
  fail("%s of %zu bytes at %p is outside every registered buffer", what, bytes, p);
}

// ---- one CTA ----

struct Copy {
  char* dst;
  const char* src;
  int bytes;
  bool fill_zero;
  long group;
};

struct Thread {
  ucontext_t ctx;
  bool done = false;
  int waiting = 0;  // 0: runnable, 1: block barrier, 2: warp collective, 3: mbarrier phase, 4: warpgroup collective
  unsigned long gen = 0;
  const void* wait_bar = nullptr;  // waiting == 3: the mbarrier and the parity of the phase awaited
  uint32_t wait_parity = 0;
  std::vector<Copy> copies;
  long committed = 0;
};

struct Warp {
  int arrived = 0;
  unsigned long gen = 0;
  int kind = 0;
  void* payload[32];
};

// an sm_90 mbarrier: arrivals still due in the current phase, TMA bytes still due, phases completed
struct Mbarrier {
  const void* addr;
  int expected = 0;
  int pending = 0;
  long long tx = 0;
  uint32_t phase = 0;
};

// the 128 threads of a warpgroup meeting at one wgmma (sm90 emulation)
struct Warpgroup {
  int arrived = 0;
  unsigned long gen = 0;
  void* payload[128];
};

struct Block {
  int bx = 0, by = 0, gy = 1;
  int nthreads = 0;
  std::vector<char> smem_storage;
  char* smem = nullptr;
  size_t smem_bytes = 0;
  std::vector<Thread> threads;
  std::vector<Warp> warps;
  std::vector<Warpgroup> groups;
  std::vector<Mbarrier> mbarriers;
  int barrier_arrived = 0;
  unsigned long barrier_gen = 0;
  ucontext_t scheduler;
  std::function<void()>* body = nullptr;
};

inline Mbarrier* find_mbarrier(Block& b, const void* addr) {
  for (Mbarrier& m : b.mbarriers)
    if (m.addr == addr) return &m;
  return nullptr;
}

// the phase with this parity has completed (mbarrier.try_wait.parity): the current phase has the other parity
inline bool mbarrier_phase_done(Block& b, const void* addr, uint32_t parity) {
  const Mbarrier* m = find_mbarrier(b, addr);
  return m != nullptr && (m->phase & 1u) != (parity & 1u);
}

inline Block*& current_block() {
  static Block* b = nullptr;
  return b;
}

inline int& current_thread() {
  static int t = 0;
  return t;
}

inline void yield_to_scheduler() {
  Block* b = current_block();
  swapcontext(&b->threads[current_thread()].ctx, &b->scheduler);
}

inline void thread_entry() {
  Block* b = current_block();
  (*b->body)();
  b->threads[current_thread()].done = true;
  // returning resumes uc_link: the scheduler
}

struct Stacks {
  std::vector<void*> stacks;
  static constexpr size_t kBytes = 512 * 1024;
  void* get(size_t i) {
    while (stacks.size() <= i) {
      void* s = mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (s == MAP_FAILED) fail("cannot map a fiber stack");
      stacks.push_back(s);
    }
    return stacks[i];
  }
};

inline Stacks& stacks() {
  static Stacks s;
  return s;
}

// (a function of its own: getcontext must not share a frame with live loop variables)
inline void init_fiber(ucontext_t& ctx, void* stack, ucontext_t* link) {
  getcontext(&ctx);
  ctx.uc_stack.ss_sp = stack;
  ctx.uc_stack.ss_size = Stacks::kBytes;
  ctx.uc_link = link;
  makecontext(&ctx, thread_entry, 0);
}

inline void run_block(int bx, int by, int gy, int nthreads, size_t smem_bytes, std::function<void()>& body) {
  Block b;
  b.bx = bx;
  b.by = by;
  b.gy = gy;
  b.nthreads = nthreads;
  b.smem_storage.assign(smem_bytes + 256, static_cast<char>(0xff));
  b.smem = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(b.smem_storage.data()) + 127) & ~uintptr_t(127));
  b.smem_bytes = smem_bytes;
  b.threads.resize(nthreads);
  b.warps.resize((nthreads + 31) / 32);
  b.groups.resize((nthreads + 127) / 128);
  b.body = &body;
  if (nthreads % 32 != 0) fail("block of %d threads: not a whole number of warps", nthreads);
  current_block() = &b;
  for (int t = 0; t < nthreads; ++t) init_fiber(b.threads[t].ctx, stacks().get(t), &b.scheduler);
  int live = nthreads;
  while (live > 0) {
    bool progress = false;
    live = 0;
    for (int t = 0; t < nthreads; ++t) {
      Thread& th = b.threads[t];
      if (th.done) continue;
      ++live;
      if (th.waiting == 1 && b.barrier_gen == th.gen) continue;
      if (th.waiting == 2 && b.warps[t / 32].gen == th.gen) continue;
      if (th.waiting == 3 && !mbarrier_phase_done(b, th.wait_bar, th.wait_parity)) continue;
      if (th.waiting == 4 && b.groups[t / 128].gen == th.gen) continue;
      th.waiting = 0;
      current_thread() = t;
      swapcontext(&b.scheduler, &th.ctx);
      progress = true;
    }
    if (live > 0 && !progress) {
      int at_barrier = 0, at_warp = 0, at_mbar = 0, at_group = 0, done = 0;
      for (const Thread& th : b.threads) {
        done += th.done;
        at_barrier += !th.done && th.waiting == 1;
        at_warp += !th.done && th.waiting == 2;
        at_mbar += !th.done && th.waiting == 3;
        at_group += !th.done && th.waiting == 4;
      }
      fail("deadlock in block (%d, %d): %d threads at __syncthreads, %d at a warp collective, %d waiting on an "
           "mbarrier phase, %d at a warpgroup collective, %d exited (a barrier or collective not reached by every "
           "thread, or an mbarrier phase that never completes)", bx, by, at_barrier, at_warp, at_mbar, at_group,
           done);
    }
  }
  current_block() = nullptr;
}

inline void launch(arch::Dim3 grid, int nthreads, size_t smem_bytes, std::function<void()> body) {
  for (unsigned y = 0; y < grid.y; ++y)
    for (unsigned x = 0; x < grid.x; ++x) run_block(static_cast<int>(x), static_cast<int>(y), grid.y, nthreads,
                                                     smem_bytes, body);
}

inline Block& block() {
  Block* b = current_block();
  if (b == nullptr) fail("an arch function was called outside a kernel launch");
  return *b;
}

inline void check_smem(const void* p, size_t bytes, size_t align, const char* what) {
  Block& b = block();
  const char* c = static_cast<const char*>(p);
  if (c < b.smem || c + bytes > b.smem + b.smem_bytes)
    fail("%s at %p: outside the %zu bytes of dynamic shared memory", what, p, b.smem_bytes);
  if ((c - b.smem) % align != 0) fail("%s at shared offset %td: not %zu-byte aligned", what, c - b.smem, align);
}

// every lane of the calling warp hands in `payload`; the last to arrive runs exec over all 32, the others wait
template <typename Payload>
inline void warp_collective(int kind, Payload& payload, void (*exec)(Payload* const*)) {
  Block& b = block();
  const int t = current_thread();
  Warp& w = b.warps[t / 32];
  if (w.arrived > 0 && w.kind != kind) fail("warp %d: lanes meet different collectives (%d vs %d)", t / 32, w.kind, kind);
  w.kind = kind;
  w.payload[t % 32] = &payload;
  if (++w.arrived == 32) {
    exec(reinterpret_cast<Payload* const*>(w.payload));
    w.arrived = 0;
    ++w.gen;
    return;
  }
  Thread& th = b.threads[t];
  th.waiting = 2;
  th.gen = w.gen;
  yield_to_scheduler();
}

}  // namespace emu

namespace arch {

#define HSTU_ARCH_FN inline

HSTU_ARCH_FN int thread_idx() { return emu::current_thread(); }
HSTU_ARCH_FN int block_idx_x() { return emu::block().bx; }
HSTU_ARCH_FN int block_idx_y() { return emu::block().by; }
HSTU_ARCH_FN int grid_dim_y() { return emu::block().gy; }
HSTU_ARCH_FN char* dynamic_smem() { return emu::block().smem; }

HSTU_ARCH_FN void sync_threads() {
  emu::Block& b = emu::block();
  const int t = emu::current_thread();
  if (++b.barrier_arrived == b.nthreads) {
    b.barrier_arrived = 0;
    ++b.barrier_gen;
    return;
  }
  b.threads[t].waiting = 1;
  b.threads[t].gen = b.barrier_gen;
  emu::yield_to_scheduler();
}

// ---- warp-collective ----

struct ShflPayload {
  float v;
  int mask;
  float out;
};

HSTU_ARCH_FN float shfl_xor(float v, int lane_mask) {
  ShflPayload p{v, lane_mask, 0.0f};
  emu::warp_collective<ShflPayload>(1, p, [](ShflPayload* const* lanes) {
    for (int l = 0; l < 32; ++l) lanes[l]->out = lanes[l ^ (lanes[l]->mask & 31)]->v;
  });
  return p.out;
}

struct LdmatrixPayload {
  const uint16_t* row;
  uint32_t r[4];
};

inline void ldmatrix_exec(LdmatrixPayload* const* lanes, bool trans) {
  for (int l = 0; l < 32; ++l) emu::check_smem(lanes[l]->row, 16, 16, "ldmatrix row");
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, c = 2 * (l & 3);
    for (int m = 0; m < 4; ++m) {
      uint16_t lo, hi;
      if (!trans) {
        lo = lanes[8 * m + g]->row[c];
        hi = lanes[8 * m + g]->row[c + 1];
      } else {
        lo = lanes[8 * m + c]->row[g];
        hi = lanes[8 * m + c + 1]->row[g];
      }
      lanes[l]->r[m] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
    }
  }
}

HSTU_ARCH_FN void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
  LdmatrixPayload p{static_cast<const uint16_t*>(smem_row), {0, 0, 0, 0}};
  emu::warp_collective<LdmatrixPayload>(2, p, [](LdmatrixPayload* const* lanes) { ldmatrix_exec(lanes, false); });
  for (int i = 0; i < 4; ++i) r[i] = p.r[i];
}

HSTU_ARCH_FN void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
  LdmatrixPayload p{static_cast<const uint16_t*>(smem_row), {0, 0, 0, 0}};
  emu::warp_collective<LdmatrixPayload>(3, p, [](LdmatrixPayload* const* lanes) { ldmatrix_exec(lanes, true); });
  for (int i = 0; i < 4; ++i) r[i] = p.r[i];
}

template <typename Element>
inline float to_float(uint16_t bits);
template <>
inline float to_float<bf16>(uint16_t bits) {
  return host_bf16_to_float(bits);
}
template <>
inline float to_float<fp16>(uint16_t bits) {
  return host_fp16_to_float(bits);
}

struct MmaPayload {
  const uint32_t* a;
  uint32_t b0, b1;
  float* d;
};

template <typename Element>
inline void mma_exec(MmaPayload* const* lanes) {
  double A[16][16], B[16][8], C[16][8];
  auto half = [](uint32_t reg, int h) { return to_float<Element>(static_cast<uint16_t>(reg >> (16 * h))); };
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, tig = l & 3;
    for (int q = 0; q < 4; ++q)
      for (int h = 0; h < 2; ++h) A[g + 8 * (q & 1)][2 * tig + h + 8 * (q >> 1)] = half(lanes[l]->a[q], h);
    for (int h = 0; h < 2; ++h) {
      B[2 * tig + h][g] = half(lanes[l]->b0, h);
      B[2 * tig + h + 8][g] = half(lanes[l]->b1, h);
    }
    for (int e = 0; e < 4; ++e) C[g + 8 * (e >> 1)][2 * tig + (e & 1)] = lanes[l]->d[e];
  }
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, tig = l & 3;
    for (int e = 0; e < 4; ++e) {
      const int row = g + 8 * (e >> 1), col = 2 * tig + (e & 1);
      double acc = C[row][col];
      for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
      lanes[l]->d[e] = static_cast<float>(acc);
    }
  }
}

template <typename Element>
HSTU_ARCH_FN void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t b0, const uint32_t b1) {
  MmaPayload p{a, b0, b1, d};
  emu::warp_collective<MmaPayload>(4, p, mma_exec<Element>);
}

// ---- async copies ----

inline void cp_async(void* smem, const void* gmem, bool pred, int bytes) {
  emu::check_smem(smem, bytes, bytes, "cp.async destination");
  if (pred) emu::check_global(gmem, bytes, false, "cp.async source");
  emu::Thread& th = emu::block().threads[emu::current_thread()];
  th.copies.push_back({static_cast<char*>(smem), static_cast<const char*>(gmem), bytes, !pred, th.committed});
}

HSTU_ARCH_FN void cp_async_16(void* smem, const void* gmem, bool pred) { cp_async(smem, gmem, pred, 16); }
HSTU_ARCH_FN void cp_async_8(void* smem, const void* gmem, bool pred) { cp_async(smem, gmem, pred, 8); }
HSTU_ARCH_FN void cp_async_4(void* smem, const void* gmem, bool pred) { cp_async(smem, gmem, pred, 4); }

HSTU_ARCH_FN void cp_async_commit() { ++emu::block().threads[emu::current_thread()].committed; }

template <int N>
HSTU_ARCH_FN void cp_async_wait() {
  emu::Thread& th = emu::block().threads[emu::current_thread()];
  std::vector<emu::Copy> still;
  for (const emu::Copy& c : th.copies) {
    // groups 0 .. committed - 1 exist; all but the N most recent must be complete; uncommitted copies may wait
    if (c.group < th.committed - N) {
      if (c.fill_zero) {
        std::memset(c.dst, 0, c.bytes);
      } else {
        std::memcpy(c.dst, c.src, c.bytes);
      }
    } else {
      still.push_back(c);
    }
  }
  th.copies.swap(still);
}

// ---- global memory ----

template <typename T>
HSTU_ARCH_FN T load_global(const T* p) {
  emu::check_global(p, sizeof(T), false, "load");
  return *p;
}

template <typename T>
HSTU_ARCH_FN void store_global(T* p, T v) {
  emu::check_global(p, sizeof(T), true, "store");
  *p = v;
}

HSTU_ARCH_FN float load_global_rw(const float* p) {
  emu::check_global(p, sizeof(float), false, "load");
  return *p;
}

HSTU_ARCH_FN void atomic_add(float* p, float v) {
  emu::check_global(p, sizeof(float), true, "atomicAdd");
  *p += v;
}

HSTU_ARCH_FN void atomic_add2(float* p, float a, float b) {
  emu::check_global(p, 2 * sizeof(float), true, "atomicAdd (v2)");
  p[0] += a;
  p[1] += b;
}

// ---- conversions ----

template <typename Element>
inline uint32_t pack2(float lo, float hi);
template <>
inline uint32_t pack2<bf16>(float lo, float hi) {
  return static_cast<uint32_t>(host_float_to_bf16(lo)) | (static_cast<uint32_t>(host_float_to_bf16(hi)) << 16);
}
template <>
inline uint32_t pack2<fp16>(float lo, float hi) {
  return static_cast<uint32_t>(host_float_to_fp16(lo)) | (static_cast<uint32_t>(host_float_to_fp16(hi)) << 16);
}

// ---- math (exact here; the device versions approximate) ----

HSTU_ARCH_FN float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
HSTU_ARCH_FN float sigmoid_tanh(float x) { return 0.5f * std::tanh(0.5f * x) + 0.5f; }

#undef HSTU_ARCH_FN

}  // namespace arch
}  // namespace hstu
