// policy_classify_fuzz.cc — issue #6: everything that reads a message's Subject for policy
// (RFC 2047 decoding, trigger words, the RFC 9788 inner Subject, the classification label) on
// hostile input: no crash, no unbounded growth, and the label is idempotent.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "dataplane/policy/classify.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string in(reinterpret_cast<const char*>(data), size);
  std::string decoded = mailseal::policy::DecodeRfc2047(in);
  if (decoded.size() > in.size()) std::abort();   // decoding never grows the text
  std::string word = mailseal::policy::FindTriggerWord(decoded);
  if (!word.empty() && (word.front() != '[' || word.back() != ']')) std::abort();
  std::string cls = mailseal::policy::Classify(in);
  std::string once = mailseal::policy::Label(in, "X-Classification", cls);
  std::string twice = mailseal::policy::Label(once, "X-Classification", cls);
  if (once != twice) std::abort();   // our label replaces, never accumulates
  if (once.size() > in.size() + 64) std::abort();
  mailseal::policy::CompiledPolicy p;
  (void)p.TrustedServerFor(in.substr(0, 64), in.substr(0, 32));
  return 0;
}
