#pragma once
// Position policies. `Rope` rotates queries and keys inside attention; `LearnedPositions`
// adds a trained (context, C) table to the token embedding. The model asks
// `P::learned` to know whether the embedding carries a position table.
namespace tmoe {

struct Rope {
  static constexpr const char* name = "rope";
  static constexpr bool learned = false;
  static constexpr bool rotary = true;
};

struct LearnedPositions {
  static constexpr const char* name = "learned";
  static constexpr bool learned = true;
  static constexpr bool rotary = false;
};

}  // namespace tmoe
