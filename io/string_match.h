// ends_with for tensor keys and file names (C++17 has no std::string::ends_with), and ASCII
// lower-casing for the names compared case-insensitively (recipe values, PEFT shorthands).
#pragma once

#include <string>

namespace gemma {

inline bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// `s` with A-Z lowered; other bytes (UTF-8 included) unchanged, whatever the C locale.
inline std::string ascii_lower(std::string s) {
  for (char& c : s) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return s;
}

}  // namespace gemma
