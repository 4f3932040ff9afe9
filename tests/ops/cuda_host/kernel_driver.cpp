// runs the CUDA kernels of csrc/include/hstu on the CPU (HSTU_HOST_EMULATION: arch/emulation.h) for the host
// tests: tests/ops/cuda_host/emulated.py writes a problem into a directory, this program reads it, fills the kernel
// params the way the torch launchers do, launches through the same dispatch functions, writes the outputs.
//
//   kernel_driver <dir>
//
// <dir>/meta.txt holds "key value" lines (op, dtype, sizes, scalars, strides); each array is <dir>/<name>.bin
// (raw little-endian). outputs are written as <dir>/<name>.out.bin.
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "hstu/dispatch_bwd.h"
#include "hstu/dispatch_cached.h"
#include "hstu/dispatch_fwd.h"
#include "hstu/dispatch_fwd_sm90.h"
#include "hstu/host/workspace.h"

using namespace hstu;

namespace {

struct Problem {
  std::string dir;
  std::map<std::string, std::string> meta;
  std::map<std::string, std::vector<char>> arrays;

  bool has(const std::string& k) const { return meta.count(k) > 0; }
  long long num(const std::string& k, long long fallback = 0) const {
    auto it = meta.find(k);
    return it == meta.end() ? fallback : std::stoll(it->second);
  }
  double real(const std::string& k) const { return std::stod(meta.at(k)); }
  const std::string& str(const std::string& k) const { return meta.at(k); }

  template <typename T>
  T* array(const std::string& name, bool writable = false) {
    auto it = arrays.find(name);
    if (it == arrays.end()) {
      std::ifstream f(dir + "/" + name + ".bin", std::ios::binary);
      if (!f) return nullptr;
      std::vector<char> data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
      it = arrays.emplace(name, std::move(data)).first;
      if (it->second.empty()) it->second.resize(16);  // a zero-size tensor still needs a valid pointer
      emu::register_region(it->second.data(), it->second.size(), writable, it->first.c_str());
    }
    return reinterpret_cast<T*>(it->second.data());
  }
};

template <typename T>
struct Output {
  std::vector<T> data;
  std::string name;
  Output(const std::string& n, size_t count, T fill) : data(count > 0 ? count : 1, fill), name(n) {
    emu::register_region(data.data(), data.size() * sizeof(T), true, name.c_str());
  }
  void save(const std::string& dir, size_t count) const {
    std::ofstream f(dir + "/" + name + ".out.bin", std::ios::binary);
    f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(count * sizeof(T)));
  }
};

void check(arch::LaunchStatus s) {
  if (s != arch::kLaunchOk) emu::fail("launch failed");
}

// bias fields shared by both ops
void fill_bias(Problem& pr, BiasParams& b) {
  b.max_seq_len = static_cast<int>(pr.num("max_seq_len"));
  b.pos_weight = pr.array<float>("pos_weight");
  b.pos_head_stride = pr.num("pos_head_stride");
  b.time_weight = pr.array<float>("time_weight");
  b.time_head_stride = pr.num("time_head_stride");
  b.time_boundaries = pr.array<int64_t>("time_boundaries");
  b.num_boundaries = static_cast<int>(pr.num("num_boundaries"));
}

void fill_fwd(Problem& pr, AttentionFwdParams& p) {
  p.q = pr.array<uint16_t>("q");
  p.k = pr.array<uint16_t>("k");
  p.v = pr.array<uint16_t>("v");
  p.q_row_stride = pr.num("q_row_stride");
  p.q_head_stride = pr.num("q_head_stride");
  p.k_row_stride = pr.num("k_row_stride");
  p.k_head_stride = pr.num("k_head_stride");
  p.v_row_stride = pr.num("v_row_stride");
  p.v_head_stride = pr.num("v_head_stride");
  p.seq_offsets = pr.array<int32_t>("seq_offsets");
  p.num_targets = pr.array<int32_t>("num_targets");
  p.timestamps = pr.array<int64_t>("timestamps");
  p.query_timestamps = pr.array<int64_t>("query_timestamps");
  if (p.query_timestamps == nullptr) p.query_timestamps = p.timestamps;
  fill_bias(pr, p.bias);
  p.batch = static_cast<int>(pr.num("batch"));
  p.num_heads = static_cast<int>(pr.num("heads"));
  p.head_dim = static_cast<int>(pr.num("head_dim"));
  p.max_len = static_cast<int>(pr.num("max_len"));
  p.max_attn_len = static_cast<int>(pr.num("max_attn_len"));
  p.alpha = static_cast<float>(pr.real("alpha"));
  p.scale = static_cast<float>(pr.real("scale"));
}

// sm90: the wgmma / TMA kernel family (arch/sm90_emulation.h), else the sm80 one
template <typename Element, int kHeadDim>
void run_fwd(Problem& pr, bool sm90) {
  AttentionFwdParams p;
  fill_fwd(pr, p);
  const size_t L = pr.num("L"), H = p.num_heads, D = kHeadDim;
  Output<uint16_t> out("out", L * H * D, 0xffff);  // NaN: rows the kernel does not write show
  p.out = out.data.data();
  p.o_row_stride = static_cast<int64_t>(H * D);
  p.o_head_stride = static_cast<int64_t>(D);
  if (sm90) {
    check(run_attention_fwd_sm90<Element, kHeadDim>(p, static_cast<int64_t>(L), nullptr));
  } else {
    check(run_attention_fwd<Element, kHeadDim>(p, nullptr));
  }
  out.save(pr.dir, L * H * D);
}

template <typename Element, int kHeadDim>
void run_bwd(Problem& pr) {
  AttentionBwdParams p;
  fill_fwd(pr, p);
  const size_t L = pr.num("L"), H = p.num_heads, D = kHeadDim;
  p.dout = pr.array<uint16_t>("dout");
  p.do_row_stride = pr.num("do_row_stride");
  p.do_head_stride = pr.num("do_head_stride");
  p.deterministic = pr.num("deterministic") != 0;
  p.compute_dpos = pr.num("compute_dpos") != 0 && p.bias.pos_weight != nullptr;
  p.compute_dtime = pr.num("compute_dtime") != 0 && p.bias.time_weight != nullptr;
  Output<uint16_t> dq("dq", L * H * D, 0xffff), dk("dk", L * H * D, 0xffff), dv("dv", L * H * D, 0xffff);
  p.dk = dk.data.data();
  p.dv = dv.data.data();
  p.dk_row_stride = p.dv_row_stride = static_cast<int64_t>(H * D);
  p.dk_head_stride = p.dv_head_stride = static_cast<int64_t>(D);
  Output<float> dq_accum("dq_accum", p.deterministic ? 0 : L * H * D, 0.0f);
  if (p.deterministic) {
    p.dq = dq.data.data();
    p.dq_row_stride = static_cast<int64_t>(H * D);
    p.dq_head_stride = static_cast<int64_t>(D);
  } else {
    p.dq_accum = dq_accum.data.data();
    p.dq_accum_row_stride = static_cast<int64_t>(H * D);
    p.dq_accum_head_stride = static_cast<int64_t>(D);
  }
  const int hb_pos = static_cast<int>(pr.num("pos_heads", 1)), hb_time = static_cast<int>(pr.num("time_heads", 1));
  const int pos_width = 2 * p.bias.max_seq_len - 1, time_width = p.bias.num_boundaries + 1;
  Output<float> dpos("dpos_weight", static_cast<size_t>(hb_pos) * pos_width, 0.0f);
  Output<float> dtime("dtime_weight", static_cast<size_t>(hb_time) * time_width, 0.0f);
  p.dpos_weight = dpos.data.data();
  p.dpos_head_stride = hb_pos > 1 ? pos_width : 0;
  p.dtime_weight = dtime.data.data();
  p.dtime_head_stride = hb_time > 1 ? time_width : 0;
  const BwdWorkspace ws = bwd_workspace<kHeadDim>(p, static_cast<int64_t>(L));
  Output<float> dpos_partial("dpos_partial", ws.dpos_partial_floats, 0.0f);
  Output<float> dtime_partial("dtime_partial", ws.dtime_partial_floats, 0.0f);
  p.num_slots = ws.num_slots;
  p.pos_partial_width = ws.pos_partial_width;
  if (ws.dpos_partial_floats > 0) p.dpos_partial = dpos_partial.data.data();
  if (ws.dtime_partial_floats > 0) p.dtime_partial = dtime_partial.data.data();
  check(run_attention_bwd<Element, kHeadDim>(p, nullptr));
  if (!p.deterministic) {
    // what the torch launcher does with dq_accum: cast to the input dtype
    for (size_t i = 0; i < L * H * D; ++i)
      dq.data[i] = std::is_same<Element, bf16>::value ? host_float_to_bf16(dq_accum.data[i])
                                                      : host_float_to_fp16(dq_accum.data[i]);
  }
  dq.save(pr.dir, L * H * D);
  dk.save(pr.dir, L * H * D);
  dv.save(pr.dir, L * H * D);
  dpos.save(pr.dir, static_cast<size_t>(hb_pos) * pos_width);
  dtime.save(pr.dir, static_cast<size_t>(hb_time) * time_width);
}

template <typename Element, int kHeadDim>
void run_cached(Problem& pr) {
  CachedFwdParams p;
  p.q = pr.array<uint16_t>("q");
  p.k = pr.array<uint16_t>("k");
  p.v = pr.array<uint16_t>("v");
  p.k_cache = pr.array<uint16_t>("k_cache");
  p.v_cache = pr.array<uint16_t>("v_cache");
  p.q_row_stride = pr.num("q_row_stride");
  p.q_head_stride = pr.num("q_head_stride");
  p.k_row_stride = pr.num("k_row_stride");
  p.k_head_stride = pr.num("k_head_stride");
  p.v_row_stride = pr.num("v_row_stride");
  p.v_head_stride = pr.num("v_head_stride");
  p.kc_row_stride = pr.num("k_cache_row_stride");
  p.kc_head_stride = pr.num("k_cache_head_stride");
  p.vc_row_stride = pr.num("v_cache_row_stride");
  p.vc_head_stride = pr.num("v_cache_head_stride");
  p.cand_offsets = pr.array<int32_t>("cand_offsets");
  p.cache_offsets = pr.array<int32_t>("cache_offsets");
  p.timestamps = pr.array<int64_t>("timestamps");
  p.query_timestamps = pr.array<int64_t>("query_timestamps");
  if (p.query_timestamps == nullptr) p.query_timestamps = p.timestamps;
  p.cache_timestamps = pr.array<int64_t>("cache_timestamps");
  fill_bias(pr, p.bias);
  p.batch = static_cast<int>(pr.num("batch"));
  p.num_heads = static_cast<int>(pr.num("heads"));
  p.head_dim = static_cast<int>(pr.num("head_dim"));
  p.max_cands = static_cast<int>(pr.num("max_cands"));
  p.max_attn_len = static_cast<int>(pr.num("max_attn_len"));
  p.alpha = static_cast<float>(pr.real("alpha"));
  p.scale = static_cast<float>(pr.real("scale"));
  const size_t C = pr.num("C"), H = p.num_heads, D = kHeadDim;
  Output<uint16_t> out("out", C * H * D, 0xffff);
  p.out = out.data.data();
  p.o_row_stride = static_cast<int64_t>(H * D);
  p.o_head_stride = static_cast<int64_t>(D);
  check(run_cached_attention_fwd<Element, kHeadDim>(p, nullptr));
  out.save(pr.dir, C * H * D);
}

template <typename Element, int kHeadDim>
void run_op(Problem& pr) {
  const std::string& op = pr.str("op");
  if (op == "fwd" || op == "fwd_sm90") {
    run_fwd<Element, kHeadDim>(pr, op == "fwd_sm90");
  } else if (op == "bwd") {
    run_bwd<Element, kHeadDim>(pr);
  } else if (op == "cached") {
    run_cached<Element, kHeadDim>(pr);
  } else {
    emu::fail("unknown op %s", op.c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <problem dir>\n", argv[0]);
    return 2;
  }
  Problem pr;
  pr.dir = argv[1];
  std::ifstream meta(pr.dir + "/meta.txt");
  std::string key, value;
  while (meta >> key >> value) pr.meta[key] = value;
  const bool is_bf16 = pr.str("dtype") == "bf16";
  const int d = static_cast<int>(pr.num("head_dim"));
  if (d == 64) {
    is_bf16 ? run_op<bf16, 64>(pr) : run_op<fp16, 64>(pr);
  } else if (d == 128) {
    is_bf16 ? run_op<bf16, 128>(pr) : run_op<fp16, 128>(pr);
  } else {
    emu::fail("head dim %d not built", d);
  }
  return 0;
}
