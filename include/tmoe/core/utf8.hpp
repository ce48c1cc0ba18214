#pragma once
// UTF-8 decoding and validation by the Unicode table of well-formed byte sequences (no
// overlong forms, surrogates or code points above U+10FFFF). Shared by the text cleaner
// (data/clean.hpp, which adds character classes) and the config loader, which accepts
// only valid UTF-8 strings.
#include <cstddef>
#include <string>
#include <string_view>

namespace tmoe::utf8 {

inline constexpr char32_t kReplacement = 0xFFFD;
inline constexpr char32_t kInvalid = 0xFFFFFFFF;

// Decodes the code point at s[pos] and advances pos past it; on an ill-formed sequence
// advances past its maximal subpart (at least one byte) and returns kInvalid.
inline char32_t next(std::string_view s, std::size_t& pos) {
  const auto b0 = static_cast<unsigned char>(s[pos]);
  if (b0 < 0x80) return ++pos, b0;
  int need = 0;
  char32_t cp = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the next byte
  if (b0 >= 0xC2 && b0 <= 0xDF) need = 1, cp = b0 & 0x1F;
  else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2, cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;       // overlong
    else if (b0 == 0xED) hi = 0x9F;  // surrogates D800..DFFF
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3, cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;       // overlong
    else if (b0 == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return ++pos, kInvalid;  // 80..C1 (continuation, overlong lead) or F5..FF
  }
  std::size_t p = pos + 1;
  for (int i = 0; i < need; ++i, ++p) {
    if (p >= s.size()) return pos = p, kInvalid;
    const auto b = static_cast<unsigned char>(s[p]);
    if (b < lo || b > hi) return pos = p, kInvalid;
    cp = (cp << 6) | (b & 0x3F);
    lo = 0x80, hi = 0xBF;
  }
  pos = p;
  return cp;
}

// Appends cp (a scalar value; anything else becomes U+FFFD) in UTF-8.
inline void append(std::string& out, char32_t cp) {
  if ((cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) cp = kReplacement;
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Byte offset of the first ill-formed sequence, or npos when s is valid UTF-8.
inline std::size_t first_invalid(std::string_view s) {
  for (std::size_t pos = 0; pos < s.size();) {
    const std::size_t at = pos;
    if (next(s, pos) == kInvalid) return at;
  }
  return std::string_view::npos;
}
inline bool valid(std::string_view s) { return first_invalid(s) == std::string_view::npos; }

}  // namespace tmoe::utf8
