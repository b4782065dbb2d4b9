// classify.h — classification (SEE-2.1, SEE-2.1b) and the per-recipient protection decision
// the crypto stage applies (issue #6), from the policy document (policy.proto) compiled by the
// control thread into an immutable CompiledPolicy that workers read without a lock.
//
// Trigger words: `[SEEMAIL]`, `[IN-CONFIDENCE]`, `[SENSITIVE]`, `[RESTRICTED]` (or the
// document's list) in the Subject, in any letter case, opened by `[` or `{` and closed by `]`
// or `}` in any mix, with a space, hyphen or underscore where the word has a space or hyphen
// ("[IN CONFIDENCE]" as the seed writes it), also inside RFC 2047 encoded words and in the
// protected inner Subject of an RFC 9788 wrapped message.
//
// Decision for one recipient, in this order (the reason is kept for hold/, the log and audit):
//   1. classified mail to an address or domain on neither the SEEMAIL nor the TRUSTED list (nor
//      a configured partner): HOLD — never sent, in clear or otherwise (SEE-2.1b);
//   2. sealing is required for classified mail, partners, SEEMAIL-listed domains and
//      domains whose rule says SEAL_REQUIRED: sealed, or held when that cannot be done;
//   3. sealing when a valid certificate is known: TRUSTED-listed domains, SEAL_WHEN_POSSIBLE,
//      or the configuration's seal_when_known;
//   4. a SIGN rule: signed (and encrypted when a certificate is known);
//   5. everything else passes as it is (SEE-AG-1); a NONE rule says so explicitly.
// A sender rule (per-sender override) then raises the result to at least its protection;
// it never lowers one, and a hold stays a hold.
// Lists and rules match an address exactly, else its domain or a parent domain (the most
// specific entry wins).
//
// SECURITY: Subjects are untrusted and may be disguised (duplicated, folded, encoded, wrapped):
// every Subject field is read, decoded and as written, in linear time; a decoded word is bounded
// by its encoded size. Where two readers could disagree (the policy and a mail client), the
// stricter reading wins: any trigger word in any Subject classifies the message.
//
// STANDARDS: RFC 5322 §3.6.5, RFC 2047 (encoded words), RFC 9788 (wrapped messages).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "dataplane/policy/cidr.h"
#include "mailseal/v1/policy.pb.h"

namespace mailseal::policy {

// DecodeRfc2047 decodes the encoded words of a header value (RFC 2047 B and Q encodings;
// bytes are kept as they are, whatever the charset — trigger words are ASCII). Whitespace
// between adjacent encoded words is dropped. Bounded by the input size.
std::string DecodeRfc2047(std::string_view value);

// FindTriggerWord: the first trigger word in `subject` (already decoded), normalised to
// "[WORD]" as listed (upper case, hyphens), or "" when none. `words` are upper case; empty:
// the four SEE-2.1 words.
std::string FindTriggerWord(std::string_view subject, const std::vector<std::string>& words = {});

// Classify: the trigger word of a whole message, or "". The rule (issue #12): every Subject
// field of the header counts (a duplicated field, "Subject :" with blanks before the colon,
// folded or RFC 2047-encoded in any charset, UTF-16 included), and so does every Subject of the
// inner message when any Content-Type field says it is an RFC 9788 wrapped message; the first
// word found is the classification (it is what the label and an outer Subject show).
std::string Classify(std::string_view message, const std::vector<std::string>& words = {});

enum class Protection { kPass, kSign, kSealIfKnown, kSealRequired, kHold };
const char* ProtectionName(Protection p);

struct Decision {
  Protection protection = Protection::kPass;
  bool triple_wrap = false;
  std::string reason;   // why (always set)
};

struct CompiledPolicy {
  uint64_t version = 0;
  std::vector<std::string> trigger_words;     // upper case
  std::map<std::string, std::string> seemail;  // address or domain -> note
  std::map<std::string, std::string> trusted;
  std::map<std::string, mailseal::v1::DomainRule> rules;
  std::map<std::string, mailseal::v1::DomainRule> sender_rules;
  mailseal::v1::Notifications notifications;
  uint32_t hold_expiry_s = 0;
  std::string classification_header;   // empty: no label header (SEE-1.9)
  bool seemail_version_header = false;  // SEE-1.8
  struct Server {
    Cidr block;
    std::string name;   // lower case; empty: any
    mailseal::v1::TrustedServer::Kind kind;
    std::string shown;  // "lists.agency-b.test [192.0.2.10]" for marks
  };
  std::vector<Server> trusted_servers;

  // RequiresTls: a domain rule covering the recipient says require_tls (SM-6.1).
  bool RequiresTls(const std::string& recipient) const;

  // DecideRecipient: the decision from the recipient's lists and rules alone.
  Decision DecideRecipient(const std::string& recipient, const std::string& classification, bool partner,
                           bool seal_when_known) const;

  // TrustedServerFor: the Trusted Listserv / Trusted Server entry matching the SMTP client
  // ("ip:port" or "[ip]:port" as the spool records it) and its EHLO name, or null (SEE 2.11).
  const Server* TrustedServerFor(const std::string& client_address, const std::string& helo) const;

  // Decide for one recipient. `classification` from Classify; `partner`: the configuration
  // names the recipient's domain a partner; `seal_when_known`: the configuration's setting;
  // `sender`: the reverse path (its sender rule, if any, raises the result).
  Decision Decide(const std::string& recipient, const std::string& classification, bool partner,
                  bool seal_when_known, const std::string& sender = "") const;
};

// Label: `message` with the field `header: WORD` (word without brackets) in place of any field
// of that name (an outside one is never trusted); unchanged when `header` or `word` is empty.
std::string Label(const std::string& message, const std::string& header, const std::string& word);

// Compile: the document as workers use it (the document was validated when it was stored).
std::shared_ptr<const CompiledPolicy> Compile(const mailseal::v1::PolicyDocument& doc);

}  // namespace mailseal::policy
