// parser.cc — see parser.h.
#include "dataplane/mime/parser.h"
#include "dataplane/base/strings.h"

#include <strings.h>

#include <algorithm>
#include <cctype>
#include <cstring>

namespace mailseal::mime {
namespace {

bool IEquals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Line content without its line end; *end_len is 2 (CRLF), 1 (LF) or 0 (none).
std::string_view Content(std::string_view line, uint64_t* end_len) {
  *end_len = 0;
  if (!line.empty() && line.back() == '\n') {
    line.remove_suffix(1);
    *end_len = 1;
    if (!line.empty() && line.back() == '\r') {
      line.remove_suffix(1);
      *end_len = 2;
    }
  }
  return line;
}

bool IsToken(std::string_view s) {
  if (s.empty()) return false;
  for (unsigned char c : s)
    if (c <= 32 || c >= 127 || std::strchr("()<>@,;:\\\"/[]?=", c)) return false;
  return true;
}

}  // namespace

std::string HeaderField::Value() const {
  size_t colon = raw.find(':');
  std::string_view v = colon == std::string::npos ? std::string_view() : std::string_view(raw).substr(colon + 1);
  std::string out;
  for (char c : v)
    if (c != '\r' && c != '\n') out += c;
  return std::string(Trim(out));
}

bool Part::IsSigned() const {
  return (type == "multipart" && subtype == "signed") ||
         (type == "application" && (subtype == "pkcs7-mime" || subtype == "x-pkcs7-mime"));
}

const HeaderField* Part::Find(std::string_view name) const {
  for (const HeaderField& f : headers)
    if (IEquals(f.name, name)) return &f;
  return nullptr;
}

Parser::Parser(Limits limits) : limits_(limits) {}

Status Parser::StartPart(int parent, uint64_t begin) {
  if (parts_.size() >= limits_.max_parts)
    return error_ = InvalidArgumentError(StrCat("more than ", limits_.max_parts, " MIME parts"));
  Part p;
  p.parent = parent;
  p.begin = p.body_begin = p.end = begin;
  if (parent >= 0) {
    p.depth = parts_[static_cast<size_t>(parent)].depth + 1;
    if (p.depth > limits_.max_depth)
      return error_ = InvalidArgumentError(StrCat("MIME nesting deeper than ", limits_.max_depth));
    const Part& par = parts_[static_cast<size_t>(parent)];
    if (par.type == "multipart" && par.subtype == "digest") {  // RFC 2046 §5.1.5 default
      p.type = "message";
      p.subtype = "rfc822";
    }
  }
  parts_.push_back(std::move(p));
  int idx = static_cast<int>(parts_.size() - 1);
  if (parent >= 0) parts_[static_cast<size_t>(parent)].children.push_back(idx);
  open_.push_back(idx);
  current_ = idx;
  mode_ = Mode::kHeader;
  header_bytes_ = 0;
  return OkStatus();
}

void Parser::EndPartsAbove(size_t stack_size, uint64_t end) {
  // An empty body: the blank line ending a header is also the line end before the delimiter;
  // such a part ends where its body begins, and so do the parts that enclose it.
  for (size_t i = stack_size; i < open_.size(); ++i)
    end = std::max(end, parts_[static_cast<size_t>(open_[i])].body_begin);
  while (open_.size() > stack_size) {
    parts_[static_cast<size_t>(open_.back())].end = end;
    open_.pop_back();
  }
  // Delimiters of multiparts that are no longer open are no longer looked for.
  while (!boundaries_.empty() &&
         std::find(open_.begin(), open_.end(), boundaries_.back().first) == open_.end())
    boundaries_.pop_back();
}

void Parser::ParseContentType(Part& p) {
  if (const HeaderField* cte = p.Find("Content-Transfer-Encoding")) p.transfer_encoding = base::AsciiLower(cte->Value());
  const HeaderField* ct = p.Find("Content-Type");
  if (!ct) return;  // default (text/plain, or message/rfc822 in a digest)
  std::string v = ct->Value();
  size_t semi = v.find(';');
  std::string_view full = Trim(std::string_view(v).substr(0, semi));
  size_t slash = full.find('/');
  std::string_view type = slash == std::string_view::npos ? full : Trim(full.substr(0, slash));
  std::string_view sub = slash == std::string_view::npos ? std::string_view() : Trim(full.substr(slash + 1));
  if (!IsToken(type) || !IsToken(sub)) {
    p.type = "text";  // RFC 2045 §5.2: an unreadable Content-Type means text/plain
    p.subtype = "plain";
    p.problem = "unreadable Content-Type, treated as text/plain";
    return;
  }
  p.type = base::AsciiLower(type);
  p.subtype = base::AsciiLower(sub);
  // Parameters: name=token or name="quoted string", separated by ';'.
  std::string_view rest = semi == std::string::npos ? std::string_view() : std::string_view(v).substr(semi + 1);
  while (!rest.empty()) {
    rest = Trim(rest);
    size_t eq = rest.find('=');
    if (eq == std::string_view::npos) break;
    std::string name = base::AsciiLower(Trim(rest.substr(0, eq)));
    rest.remove_prefix(eq + 1);
    rest = Trim(rest);
    std::string value;
    if (!rest.empty() && rest.front() == '"') {
      size_t i = 1;
      for (; i < rest.size() && rest[i] != '"'; ++i) {
        if (rest[i] == '\\' && i + 1 < rest.size()) ++i;
        value += rest[i];
      }
      rest.remove_prefix(std::min(rest.size(), i + 1));
      size_t next = rest.find(';');
      rest = next == std::string_view::npos ? std::string_view() : rest.substr(next + 1);
    } else {
      size_t next = rest.find(';');
      value = std::string(Trim(rest.substr(0, next)));
      rest = next == std::string_view::npos ? std::string_view() : rest.substr(next + 1);
    }
    if (!name.empty() && p.params.size() < 64 && !p.params.count(name)) p.params[name] = value;
  }
}

Status Parser::EndHeader(uint64_t body_begin) {
  Part& p = parts_[static_cast<size_t>(current_)];
  p.body_begin = body_begin;
  p.header_complete = true;
  ParseContentType(p);
  mode_ = Mode::kBody;
  if (p.type == "multipart") {
    auto b = p.params.find("boundary");
    if (b == p.params.end() || b->second.empty()) {
      p.problem = "multipart without boundary: body kept opaque";
    } else if (b->second.size() > limits_.max_boundary) {
      p.problem = "multipart boundary too long: body kept opaque";
    } else {
      boundaries_.emplace_back(current_, "--" + b->second);
    }
    return OkStatus();
  }
  if (p.type == "message" && p.subtype == "rfc822" &&
      (p.transfer_encoding == "7bit" || p.transfer_encoding == "8bit" || p.transfer_encoding == "binary")) {
    return StartPart(current_, body_begin);  // the enclosed message's header starts here
  }
  return OkStatus();
}

Status Parser::HeaderLine(std::string_view line, uint64_t line_begin) {
  uint64_t end_len;
  std::string_view content = Content(line, &end_len);
  if (end_len == 0 && !content.empty() && content.back() == '\r') content.remove_suffix(1);
  Part& p = parts_[static_cast<size_t>(current_)];
  if (content.empty()) return EndHeader(line_begin + line.size());
  if ((content.front() == ' ' || content.front() == '\t') && !p.headers.empty()) {
    p.headers.back().raw.append(line);  // folded continuation
    return OkStatus();
  }
  if (p.headers.size() >= limits_.max_header_fields)
    return error_ = InvalidArgumentError(StrCat("more than ", limits_.max_header_fields, " header fields in one part"));
  HeaderField f;
  size_t colon = content.find(':');
  if (colon == std::string_view::npos || colon == 0 || !IsToken(Trim(content.substr(0, colon)))) {
    if (p.problem.empty()) p.problem = "malformed header line";
  } else {
    f.name = std::string(Trim(content.substr(0, colon)));
  }
  f.raw = std::string(line);
  p.headers.push_back(std::move(f));
  return OkStatus();
}

int Parser::MatchBoundary(std::string_view content, bool* close) const {
  if (content.size() < 3 || content[0] != '-' || content[1] != '-') return -1;
  for (int i = static_cast<int>(boundaries_.size()) - 1; i >= 0; --i) {
    const std::string& d = boundaries_[static_cast<size_t>(i)].second;
    if (content.compare(0, d.size(), d) != 0) continue;
    std::string_view rest = content.substr(d.size());
    *close = rest.size() >= 2 && rest[0] == '-' && rest[1] == '-';
    if (*close) rest.remove_prefix(2);
    if (Trim(rest).empty()) return i;  // transport padding allowed
  }
  return -1;
}

Status Parser::Line(std::string_view line, uint64_t line_begin, uint64_t line_len, uint64_t end_len) {
  if (mode_ == Mode::kHeader) return HeaderLine(line, line_begin);
  // `line` may be only the start of a long body line (line_overflow_): such a line is never
  // a delimiter, and only its length and line end matter.
  bool close = false;
  int bi = -1;
  if (!line_overflow_) {
    std::string_view content = line.substr(0, line.size() >= end_len ? line.size() - end_len : 0);
    bi = MatchBoundary(content, &close);
  }
  if (bi < 0) {
    prev_line_end_len_ = end_len;
    return OkStatus();
  }
  int mp = boundaries_[static_cast<size_t>(bi)].first;
  Part& m = parts_[static_cast<size_t>(mp)];
  // The line end before the delimiter belongs to the delimiter (not when the delimiter is the
  // very first line of the multipart's body).
  uint64_t end = line_begin == m.body_begin ? line_begin : line_begin - prev_line_end_len_;
  auto at = std::find(open_.begin(), open_.end(), mp);
  EndPartsAbove(static_cast<size_t>(at - open_.begin()) + 1, end);
  prev_line_end_len_ = end_len;
  current_ = mp;
  if (close) {
    m.closed = true;
    boundaries_.pop_back();  // mp's own: the innermost after EndPartsAbove
    mode_ = Mode::kBody;     // epilogue
    return OkStatus();
  }
  return StartPart(mp, line_begin + line_len);
}

Status Parser::Feed(std::string_view chunk) {
  if (!error_.ok()) return error_;
  if (chunk.empty()) return OkStatus();
  if (parts_.empty()) {
    if (Status s = StartPart(-1, 0); !s.ok()) return s;
  }
  const size_t keep = limits_.max_boundary + 16;  // delimiter + "--" + padding + CRLF
  while (!chunk.empty()) {
    if (line_len_ == 0) line_begin_ = pos_;
    const char* lf = static_cast<const char*>(std::memchr(chunk.data(), '\n', chunk.size()));
    size_t take = lf ? static_cast<size_t>(lf - chunk.data()) + 1 : chunk.size();
    std::string_view piece = chunk.substr(0, take);
    if (mode_ == Mode::kHeader) {
      header_bytes_ += piece.size();
      if (header_bytes_ > limits_.max_header_bytes)
        return error_ = InvalidArgumentError(StrCat("header of MIME part ", current_, " is larger than ",
                                                    limits_.max_header_bytes, " bytes"));
      line_.append(piece);
    } else if (!line_overflow_) {
      if (line_.size() + piece.size() > keep) {
        line_overflow_ = true;
        line_.clear();
      } else {
        line_.append(piece);
      }
    }
    bool cr_before_lf = lf ? (take >= 2 ? piece[take - 2] == '\r' : last_cr_) : false;
    last_cr_ = piece.back() == '\r';
    line_len_ += take;
    pos_ += take;
    chunk.remove_prefix(take);
    if (lf) {
      Status s = Line(line_, line_begin_, line_len_, cr_before_lf ? 2 : 1);
      line_.clear();
      line_overflow_ = false;
      line_len_ = 0;
      if (!s.ok()) return error_ = s;
    }
  }
  return OkStatus();
}

Status Parser::Finish() {
  if (!error_.ok()) return error_;
  if (parts_.empty()) return InvalidArgumentError("empty message");
  if (line_len_ > 0) {
    // A last line without line end: a delimiter there still counts.
    if (Status s = Line(line_, line_begin_, line_len_, 0); !s.ok()) return error_ = s;
    line_.clear();
    line_len_ = 0;
  }
  if (mode_ == Mode::kHeader) {
    Part& p = parts_[static_cast<size_t>(current_)];
    if (!p.header_complete) {
      p.body_begin = pos_;
      ParseContentType(p);
      if (p.problem.empty()) p.problem = "message ends inside a header";
    }
  }
  EndPartsAbove(0, pos_);
  return OkStatus();
}

std::vector<std::string> HeaderValues(std::string_view message, std::string_view name, size_t* body_at) {
  std::vector<std::string> values;
  bool in_field = false;
  size_t pos = 0;
  while (pos < message.size()) {
    size_t eol = message.find('\n', pos);
    if (eol == std::string_view::npos) eol = message.size();
    std::string_view line = message.substr(pos, eol - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    pos = eol + 1;
    if (line.empty()) break;
    if (line[0] == ' ' || line[0] == '\t') {
      if (in_field) values.back().append(line);
      continue;
    }
    in_field = false;
    size_t colon = line.find(':');
    if (colon == std::string_view::npos || colon < name.size()) continue;
    // RFC 5322 §4.5.3 (obsolete syntax): blanks may stand between the name and the colon.
    std::string_view between = line.substr(name.size(), colon - name.size());
    if (strncasecmp(line.data(), name.data(), name.size()) != 0 ||
        between.find_first_not_of(" \t") != std::string_view::npos)
      continue;
    values.emplace_back(line.substr(colon + 1));
    in_field = true;
  }
  if (body_at) *body_at = std::min(pos, message.size());
  for (std::string& v : values) {
    size_t b = v.find_first_not_of(" \t");
    v.erase(0, b == std::string::npos ? v.size() : b);
  }
  return values;
}

std::string FirstHeaderValue(std::string_view message, std::string_view name, size_t* body_at) {
  std::vector<std::string> values = HeaderValues(message, name, body_at);
  return values.empty() ? "" : std::move(values.front());
}

}  // namespace mailseal::mime
