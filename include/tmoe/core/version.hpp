#pragma once
// The library version (kept equal to project(VERSION) in CMakeLists.txt; a test checks).
// Checkpoints record it, so a file says which tmoe wrote it.
#define TMOE_VERSION_MAJOR 0
#define TMOE_VERSION_MINOR 1
#define TMOE_VERSION_PATCH 0

namespace tmoe {
inline constexpr const char* kVersion = "0.1.0";
}  // namespace tmoe
