// reads one query per line on stdin, answers one line per query on stdout: the hstu header math compiled by a
// host compiler (tests/test_cuda_host_math.py builds it with g++ and checks the answers against the naive op).
//
//   V n u W                  -> n*n digits: pair_valid(i, j) for i, j < n, row-major
//   P N pi pj                -> pos_bias_index(pi, pj, N)
//   T nb b_0 .. b_{nb-1} dt  -> time_bucket(dt, b, nb)
//   K m0 BM n u W BN         -> key tiles of a query block: "start:all_valid" per tile
//   Q n0 BN n u W BM         -> query tiles of a key block: "start:all_valid" per tile
//   C bits                   -> float (given as its bits) to bf16 and fp16 bits, then back: 4 hex words
#include <cinttypes>
#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "hstu/bias.h"
#include "hstu/mask.h"
#include "hstu/numeric.h"

using namespace hstu;

static void print_tiles(const TileRanges& r, int step, int q0, int q_step, bool key_side, int n, int u, int w) {
  for (int t = 0; t < r.count(); ++t) {
    const int s = r.start(t, step);
    const bool full = key_side ? tile_all_valid(q0, q0 + q_step, s, s + step, n, u, w)
                               : tile_all_valid(s, s + step, q0, q0 + q_step, n, u, w);
    std::printf("%s%d:%d", t ? " " : "", s, full ? 1 : 0);
  }
  std::printf("\n");
}

int main() {
  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    char op;
    in >> op;
    if (op == 'V') {
      int n, u, w;
      in >> n >> u >> w;
      std::string out;
      for (int i = 0; i < n; ++i)
        for (int j = 0; j < n; ++j) out.push_back(pair_valid(i, j, u, w) ? '1' : '0');
      std::printf("%s\n", out.c_str());
    } else if (op == 'P') {
      int N, pi, pj;
      in >> N >> pi >> pj;
      std::printf("%d\n", pos_bias_index(pi, pj, N));
    } else if (op == 'T') {
      int nb;
      in >> nb;
      std::vector<int64_t> b(nb > 0 ? nb : 1);
      for (int k = 0; k < nb; ++k) in >> b[k];
      int64_t dt;
      in >> dt;
      std::printf("%d\n", time_bucket(dt, b.data(), nb));
    } else if (op == 'K') {
      int m0, bm, n, u, w, bn;
      in >> m0 >> bm >> n >> u >> w >> bn;
      print_tiles(key_tiles(m0, bm, n, u, w, bn), bn, m0, bm, true, n, u, w);
    } else if (op == 'Q') {
      int n0, bn, n, u, w, bm;
      in >> n0 >> bn >> n >> u >> w >> bm;
      print_tiles(query_tiles(n0, bn, n, u, w, bm), bm, n0, bn, false, n, u, w);
    } else if (op == 'C') {
      uint32_t bits;
      in >> bits;
      const float x = bits_float(bits);
      const uint16_t b = host_float_to_bf16(x), h = host_float_to_fp16(x);
      std::printf("%04x %04x %08x %08x\n", b, h, float_bits(host_bf16_to_float(b)), float_bits(host_fp16_to_float(h)));
    } else {
      std::fprintf(stderr, "unknown query: %s\n", line.c_str());
      return 2;
    }
  }
  return 0;
}
