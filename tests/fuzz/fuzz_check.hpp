// FUZZ_CHECK: a property a fuzzer asserts beyond "no crash, no sanitizer report". It traps, so that
// libFuzzer records the input as a finding even in a build without assertions (NDEBUG).
#pragma once

#define FUZZ_CHECK(cond)                                                                                     \
    do {                                                                                                     \
        if (!(cond)) {                                                                                       \
            __builtin_trap();                                                                                \
        }                                                                                                    \
    } while (0)
