// reply.cc — see reply.h.
#include "dataplane/smtp/reply.h"

#include <string>

namespace mailseal::smtp {

std::string Reply::Wire() const {
  std::string out;
  std::string code_str = std::to_string(code);
  std::string_view rest = text;
  do {
    size_t nl = rest.find('\n');
    std::string_view line = rest.substr(0, nl);
    bool last = nl == std::string_view::npos;
    out += code_str;
    out += last ? ' ' : '-';
    if (!enhanced.empty()) {
      out += enhanced;
      out += ' ';
    }
    out += line;
    out += "\r\n";
    rest = last ? std::string_view() : rest.substr(nl + 1);
    if (last) break;
  } while (true);
  return out;
}

std::string Reply::OneLine() const {
  std::string out = std::to_string(code);
  if (!enhanced.empty()) out += " " + enhanced;
  out += ' ';
  for (char c : text) out += c == '\n' ? ' ' : c;
  return out;
}

}  // namespace mailseal::smtp
