// parser.h — streaming RFC 5322 + MIME structure parser (issue #4, first part).
//
// Feed() takes the message in chunks of any size; the parser never holds more than one header
// block (bounded) and a few hundred bytes of the current body line. It records every part as
// byte offsets into the stream, so callers (S/MIME sealing, policy) read the exact bytes of a
// part from the spool without the parser ever copying or changing them: a signed part's bytes
// stay as they arrived (SEE-AG-2). Header fields are kept raw (folding, 8-bit bytes and RFC
// 2047 encoded words byte-exact), with an unfolded view for matching.
//
// SECURITY: input is untrusted. Depth, part count, header size per part, header field count and
// boundary length are bounded (Limits); exceeding one is a clear, sticky error. Nothing is read
// outside the fed bytes; memory grows only with the number of parts (bounded).
// STANDARDS: RFC 5322 (header fields), RFC 2045/2046 (MIME, multipart, boundaries),
// RFC 1847 (multipart/signed), RFC 8551 (application/pkcs7-mime).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "dataplane/base/status.h"

namespace mailseal::mime {

struct Limits {
  uint32_t max_depth = 16;              // nesting of multiparts and message/rfc822
  uint32_t max_parts = 500;
  uint32_t max_header_bytes = 256 * 1024;  // one part's header block
  uint32_t max_header_fields = 1000;       // per part
  uint32_t max_boundary = 200;             // RFC 2046 says 70; real mail is sloppier
};

struct HeaderField {
  std::string name;   // as written (case kept)
  std::string raw;    // the whole field, name to final line end, byte-exact
  // Value: the unfolded value (line ends removed, leading/trailing blanks trimmed).
  std::string Value() const;
};

struct Part {
  int parent = -1;              // index into parts(), -1 for the message itself
  std::vector<int> children;
  uint32_t depth = 0;
  uint64_t begin = 0;           // first byte of the header block
  uint64_t body_begin = 0;      // first byte after the blank line ending the header
  uint64_t end = 0;             // one past the last body byte (the CRLF before a boundary
                                // delimiter belongs to the delimiter, RFC 2046 §5.1.1)
  bool header_complete = false; // the blank line was seen
  bool closed = false;          // multipart: its close delimiter was seen
  std::vector<HeaderField> headers;
  std::string type = "text";    // lower case
  std::string subtype = "plain";
  std::map<std::string, std::string> params;  // lower-case names, values unquoted
  std::string transfer_encoding = "7bit";     // lower case
  std::string problem;          // non-fatal damage ("multipart without boundary"...), for verdicts

  bool IsMultipart() const { return type == "multipart"; }
  // IsSigned: a user's (or another gateway's) S/MIME structure, never to be altered.
  bool IsSigned() const;
  const HeaderField* Find(std::string_view name) const;  // case-insensitive
};

class Parser {
 public:
  explicit Parser(Limits limits = Limits());
  // Feed parses the next bytes. After an error every call returns it again.
  Status Feed(std::string_view chunk);
  // Finish ends the input: open parts end at the last byte. A multipart without its close
  // delimiter is reported by Part::closed == false, not as an error.
  Status Finish();

  const std::vector<Part>& parts() const { return parts_; }
  uint64_t size() const { return pos_; }

 private:
  enum class Mode { kHeader, kBody };
  // line: the line's bytes (for body lines only its start); line_len: its full length;
  // end_len: 2 for CRLF, 1 for LF, 0 at the end of input.
  Status Line(std::string_view line, uint64_t line_begin, uint64_t line_len, uint64_t end_len);
  Status HeaderLine(std::string_view line, uint64_t line_begin);
  Status EndHeader(uint64_t body_begin);
  Status StartPart(int parent, uint64_t begin);
  // Returns the index in boundaries_ of the multipart whose delimiter `line` is, or -1;
  // *close tells whether it is the close delimiter.
  int MatchBoundary(std::string_view line, bool* close) const;
  void EndPartsAbove(size_t stack_size, uint64_t end);
  void ParseContentType(Part& p);

  Limits limits_;
  Status error_;
  std::vector<Part> parts_;
  // Open parts, innermost last. Each entry: part index.
  std::vector<int> open_;
  // Multiparts whose delimiters we look for: (part index, "--boundary").
  std::vector<std::pair<int, std::string>> boundaries_;
  Mode mode_ = Mode::kHeader;
  int current_ = -1;            // part whose header or body we are in
  uint64_t pos_ = 0;            // stream offset of the next byte
  uint64_t header_bytes_ = 0;
  std::string line_;            // the current line (headers: whole; body: its first bytes)
  uint64_t line_begin_ = 0;
  uint64_t line_len_ = 0;       // bytes of the current line seen so far
  bool last_cr_ = false;        // the previous piece ended with CR (CRLF split across chunks)
  bool line_overflow_ = false;  // body line longer than we keep: cannot be a delimiter
  uint64_t prev_line_end_len_ = 0;  // 2 for CRLF, 1 for LF: what precedes a delimiter
};

// HeaderValues: the unfolded values (leading blanks removed) of every `name` field
// (case-insensitive; blanks before the colon allowed, RFC 5322 §4.5.3) of the header block at
// the start of `message`, in order; it stops at the blank line, and `body_at` (if given) is
// where the body begins. For a quick look at a few fields (policy, expiry) without a full
// parse; reads no further than the header block. Every occurrence counts: a reader that looked
// only at the first could disagree with a mail client that shows another (issue #12).
std::vector<std::string> HeaderValues(std::string_view message, std::string_view name, size_t* body_at = nullptr);

// FirstHeaderValue: the first of HeaderValues, "" when absent.
std::string FirstHeaderValue(std::string_view message, std::string_view name, size_t* body_at = nullptr);

}  // namespace mailseal::mime
