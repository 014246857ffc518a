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
