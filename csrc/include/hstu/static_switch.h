// compile-time dispatch on runtime flags: each branch instantiates the body with a constexpr flag.
//
//   HSTU_BOOL_SWITCH(params.has_pos, kHasPos, [&] { run<kHasPos>(params); });
#pragma once

#define HSTU_BOOL_SWITCH(COND, CONST_NAME, ...) \
  [&] {                                         \
    if (COND) {                                 \
      constexpr static bool CONST_NAME = true;  \
      return __VA_ARGS__();                     \
    } else {                                    \
      constexpr static bool CONST_NAME = false; \
      return __VA_ARGS__();                     \
    }                                           \
  }()
