#pragma once
// tmoe — umbrella header for CPU programs.
#include "tmoe/backend/cpu/cpu.hpp"
#include "tmoe/common.hpp"
