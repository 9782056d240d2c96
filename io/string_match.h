// ends_with for tensor keys and file names (C++17 has no std::string::ends_with).
#pragma once

#include <string>

namespace gemma {

inline bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace gemma
