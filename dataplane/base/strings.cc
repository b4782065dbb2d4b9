// strings.cc — see strings.h.
#include "dataplane/base/strings.h"

namespace mailseal::base {

std::string AsciiLower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

bool DomainListCovers(const std::vector<std::string>& list, std::string_view domain) {
  for (const std::string& d : list) {
    if (d.empty()) continue;
    if (d.front() == '.') {
      if (domain.size() > d.size() && domain.compare(domain.size() - d.size(), d.size(), d) == 0) return true;
    } else if (domain == d) {
      return true;
    }
  }
  return false;
}

}  // namespace mailseal::base
