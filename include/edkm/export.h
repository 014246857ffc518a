#pragma once
// Symbol visibility: the library builds with hidden default visibility; public API is EDKM_API.
#if defined(_WIN32)
#if defined(EDKM_BUILDING_LIBRARY)
#define EDKM_API __declspec(dllexport)
#else
#define EDKM_API __declspec(dllimport)
#endif
#else
#define EDKM_API __attribute__((visibility("default")))
#endif

// Internal headers (under src/, not installed) whose functions edkm's other libraries, its tools
// and its tests call put their declarations between these: exported from a shared library, yet
// not public API.
#define EDKM_INTERNAL_BEGIN _Pragma("GCC visibility push(default)")
#define EDKM_INTERNAL_END _Pragma("GCC visibility pop")
